"""Training: local Keras, distributed on Spark barrier tasks, GPU assignment.

Real Spark: a `local[2]` session for the barrier tests, and a standalone
master + worker (from pyspark's own `bin/spark-class`, on loopback, random
ports) advertising two fake GPUs for the GPU-assignment test. There is no GPU
here: that test proves each barrier task is given its own device address and
starts TensorFlow with it, and that TensorFlow then falls back to CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lamina.batch.distributed import train_distributed, weights_digest
from lamina.batch.model import TrainingError, train_local
from lamina.models.errors import ModelError
from lamina.models.saved_model import load_model, model_card, save_model
from lamina.models.scoring import numpy_scorer, score

pytestmark = pytest.mark.integration  # TensorFlow and MLflow

FEATURES = [f"f{i}" for i in range(6)]
PARAMS = {"epochs": 2, "batch_size": 256, "hidden": [32, 16], "learning_rate": 0.005}


def synthetic_training_set(n: int = 5000, seed: int = 0) -> pd.DataFrame:
    """Card-like rows: a skewed amount, a shifted feature, an interaction;
    about 7% positives."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    x[:, 0] = np.exp(x[:, 0] + 3)  # amount-like
    x[:, 1] += 50
    logit = -3.6 + 0.02 * x[:, 0] + 1.2 * x[:, 2] - 0.8 * x[:, 3] * x[:, 4]
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    frame["event_time"] = 1_767_225_600_000 + np.arange(n, dtype=np.int64) * 60_000
    frame["event_id"] = [f"evt-{seed}-{i:06d}" for i in range(n)]
    frame["merchant_category"] = np.array(["grocery", "travel", "online"])[rng.integers(0, 3, n)]
    return frame


@pytest.fixture(scope="module")
def training_set() -> pd.DataFrame:
    return synthetic_training_set()


@pytest.fixture(scope="module")
def barrier_spark(request: pytest.FixtureRequest) -> Any:
    """The shared session of tests/spark_fixtures.py (never stopped here:
    other modules use it)."""
    session = request.getfixturevalue("spark")
    # Two barrier tasks need two task slots at once, or Spark waits forever.
    assert session.sparkContext.defaultParallelism >= 2, "the test session needs local[2]"
    return session


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# --- local ------------------------------------------------------------------------


def test_local_training_is_bit_reproducible_for_a_seed(training_set: pd.DataFrame) -> None:
    first, history = train_local(training_set, FEATURES, PARAMS, seed=7)
    again, history_again = train_local(training_set, FEATURES, PARAMS, seed=7)
    other, _ = train_local(training_set, FEATURES, PARAMS, seed=8)
    assert _same(first.get_weights(), again.get_weights())
    assert history["loss"] == history_again["loss"]
    assert not _same(first.get_weights(), other.get_weights())
    assert len(history["loss"]) == PARAMS["epochs"] and history["auc"][-1] > 0.75


def test_imbalance_weighting_keeps_probabilities_calibrated(
        training_set: pd.DataFrame) -> None:
    # Positives weigh ~13x in training; the prior correction must bring the
    # mean prediction back to the base rate, not 13x above it.
    model, _ = train_local(training_set, FEATURES, {**PARAMS, "epochs": 3}, seed=1)
    predicted = score(model, training_set, features=FEATURES)
    base_rate = training_set["label"].mean()
    assert predicted.mean() == pytest.approx(base_rate, rel=0.35)


def test_training_set_problems_are_refused_with_the_column_named(
        training_set: pd.DataFrame) -> None:
    with pytest.raises(TrainingError, match="missing.*f9"):
        train_local(training_set, [*FEATURES, "f9"], PARAMS)
    broken = training_set.copy()
    broken.loc[3, "f2"] = np.nan
    with pytest.raises(TrainingError, match="NaN.*f2"):
        train_local(broken, FEATURES, PARAMS)
    with pytest.raises(TrainingError, match="both classes"):
        train_local(training_set.assign(label=0), FEATURES, PARAMS)
    with pytest.raises(TrainingError, match="unknown training parameter"):
        train_local(training_set, FEATURES, {"epoch": 2})


def test_saved_model_loads_and_scores_like_the_trained_one(
        training_set: pd.DataFrame, tmp_path: Path) -> None:
    model, _ = train_local(training_set, FEATURES, PARAMS, seed=3)
    x = training_set[FEATURES].to_numpy(np.float32)
    expected = score(model, x)
    path = save_model(model, tmp_path / "model", features=FEATURES, seed=3)
    assert model_card(path)["features"] == FEATURES
    with pytest.raises(ModelError, match="not empty"):
        save_model(model, path, features=FEATURES)

    began = time.perf_counter()
    loaded = load_model(path)
    load_s = time.perf_counter() - began
    np.testing.assert_array_equal(score(loaded, x), expected)
    # The pure-NumPy forward pass agrees to float32 rounding.
    np.testing.assert_allclose(numpy_scorer(loaded)(x), expected, atol=1e-5)

    batch = x[:1000]
    score(loaded, batch)  # trace once
    calls = 200
    began = time.perf_counter()
    for _ in range(calls):
        score(loaded, batch)
    tf_rows_s = calls * len(batch) / (time.perf_counter() - began)
    forward = numpy_scorer(loaded)
    began = time.perf_counter()
    for _ in range(calls):
        forward(batch)
    np_rows_s = calls * len(batch) / (time.perf_counter() - began)
    print(f"\nSavedModel load {load_s * 1000:.0f} ms; score batch 1000: "
          f"{tf_rows_s:,.0f} rows/s (TF graph), {np_rows_s:,.0f} rows/s (NumPy)")


def test_the_numpy_scorer_scores_extreme_inputs_without_a_warning(
        training_set: pd.DataFrame) -> None:
    # Inputs far outside the training range drive the logit past exp's
    # range: the score is 0.0 or 1.0, finite, and no RuntimeWarning is raised
    # (the speed layer would log one per micro-batch).
    model, _ = train_local(training_set, FEATURES, PARAMS, seed=3)
    forward = numpy_scorer(model)
    x = training_set[FEATURES].to_numpy(np.float32)[:4]
    extreme = np.concatenate([x * 1e20, x * -1e20, x])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = forward(extreme)
    assert np.isfinite(scores).all() and ((scores >= 0.0) & (scores <= 1.0)).all()
    assert {0.0, 1.0} & set(scores[:8].tolist())  # saturated, not NaN
    np.testing.assert_allclose(scores[8:], score(model, x), atol=1e-5)


# --- distributed on barrier tasks -------------------------------------------------------


def test_two_barrier_workers_end_identical_and_a_rerun_reproduces_them(
        barrier_spark: Any, training_set: pd.DataFrame, tmp_path: Path) -> None:
    spark = barrier_spark
    first = train_distributed(spark, training_set, FEATURES, PARAMS, seed=11, num_workers=2,
                              model_dir=tmp_path / "model")
    assert [w.rank for w in first.workers] == [0, 1]
    assert first.identical_weights
    assert sum(w.rows for w in first.workers) == len(training_set)
    assert {w.device for w in first.workers} == {"CPU"}
    assert first.workers[0].weights_sha256 == weights_digest(first.weights)
    assert first.history["auc"][-1] > 0.75

    again = train_distributed(spark, training_set, FEATURES, PARAMS, seed=11, num_workers=2)
    assert again.identical_weights
    assert _same(first.weights, again.weights)
    assert first.history["loss"] == again.history["loss"]
    assert first.history["auc"] == again.history["auc"]

    # The chief saved the model; it loads anywhere and has the chief's weights.
    loaded = load_model(tmp_path / "model")
    assert _same(loaded.get_weights(), first.weights)
    assert model_card(tmp_path / "model")["features"] == FEATURES


def test_distributed_refuses_shards_smaller_than_a_batch(
        barrier_spark: Any, training_set: pd.DataFrame) -> None:
    with pytest.raises(TrainingError, match="fewer rows"):
        train_distributed(barrier_spark, training_set.head(100), FEATURES,
                          {**PARAMS, "batch_size": 512}, num_workers=2)


# --- GPU assignment on a standalone cluster ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_log(path: Path, marker: str, proc: subprocess.Popen[bytes],
                  timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and marker in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"
    raise RuntimeError(f"'{marker}' not seen in {path}:\n{tail}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        # Its own process group (start_new_session): the JVM and the
        # executors a worker launched go together.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def standalone_gpu_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Spark standalone master and one worker advertising GPUs "0" and "1"
    (a discovery script, no real device); yields the master URL."""
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    base = tmp_path_factory.mktemp("spark-standalone")
    script = base / "discover_gpus.sh"
    script.write_text('#!/bin/sh\necho \'{"name": "gpu", "addresses": ["0", "1"]}\'\n')
    script.chmod(0o755)
    props = base / "worker.properties"
    props.write_text(f"spark.worker.resource.gpu.amount 2\n"
                     f"spark.worker.resource.gpu.discoveryScript {script}\n")
    env = {**os.environ, "SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(base / "logs"), "PYSPARK_PYTHON": sys.executable,
           "SPARK_NO_DAEMONIZE": "1"}
    spark_class = str(spark_home / "bin" / "spark-class")
    master_port = _free_port()
    master_log, worker_log = base / "master.log", base / "worker.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(master_log, "wb") as out:
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                 "--port", str(master_port), "--webui-port", str(_free_port())],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        _wait_for_log(master_log, "I have been elected leader", procs[0])
        url = f"spark://127.0.0.1:{master_port}"
        with open(worker_log, "wb") as out:
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", url,
                 "--host", "127.0.0.1", "--port", str(_free_port()),
                 "--webui-port", str(_free_port()), "--cores", "2", "--memory", "2g",
                 "--work-dir", str(base / "work"), "--properties-file", str(props)],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        _wait_for_log(worker_log, "Successfully registered with master", procs[1])
        yield url
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(base, ignore_errors=True)


# The driver runs in its own process: a Python process holds one SparkContext,
# and this module's local[2] session may already be running.
_DRIVER = textwrap.dedent("""
    import json, sys
    import pandas as pd
    from lamina.batch.spark import spark_session
    from lamina.batch.distributed import train_distributed

    data, features, params = pd.read_parquet(sys.argv[2]), json.loads(sys.argv[3]), json.loads(
        sys.argv[4])
    spark = spark_session(sys.argv[1], app_name="lamina-gpu-assignment", extra_conf={
        "spark.executor.resource.gpu.amount": "2",
        "spark.task.resource.gpu.amount": "1",
        "spark.executor.cores": "2",
        "spark.cores.max": "2",
        "spark.executor.memory": "1g",
        "spark.ui.enabled": "false",
    })
    try:
        result = train_distributed(spark, data, features, params, seed=5, num_workers=2)
    finally:
        spark.stop()
    print("RESULT " + json.dumps({
        "identical": result.identical_weights,
        "workers": [{"rank": w.rank, "gpu": w.gpu_addresses, "cuda": w.cuda_visible_devices,
                     "tf_gpus": w.tf_gpus, "device": w.device} for w in result.workers],
    }))
""")


def test_each_barrier_task_trains_with_its_own_gpu_address(
        standalone_gpu_cluster: str, tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    data = tmp_path / "training.parquet"
    synthetic_training_set(2000).to_parquet(data)
    proc = subprocess.run(
        [sys.executable, str(driver), standalone_gpu_cluster, str(data), json.dumps(FEATURES),
         json.dumps({**PARAMS, "epochs": 1})],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT "):])
    workers = result["workers"]
    assert [w["rank"] for w in workers] == [0, 1]
    # One address each, and not the same one.
    assert all(len(w["gpu"]) == 1 for w in workers)
    assert sorted(w["gpu"][0] for w in workers) == ["0", "1"]
    # TensorFlow was started with exactly that device visible...
    assert all(w["cuda"] == w["gpu"][0] for w in workers)
    # ...found no real GPU behind it, and trained on CPU.
    assert all(w["tf_gpus"] == [] and w["device"] == "CPU" for w in workers)
    assert result["identical"]
