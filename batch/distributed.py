"""Distributed training: one TensorFlow worker per Spark barrier task.

How a run goes (`train_distributed`):

1. The driver validates the training set and computes what every worker must
   agree on: the normalization statistics over the *whole* set, the weight of
   a positive, the initial output bias.
2. The rows are split round-robin into `num_workers` partitions and handed
   to a barrier stage (`mapInPandas(..., barrier=True)`): Spark starts all
   tasks together or none. Each task sorts its shard (by event time and
   event id, so the shard's order does not depend on how Spark read it),
   reads the accelerator addresses Spark assigned to it
   (`BarrierTaskContext.get().resources()["gpu"]`), binds a free port, and
   shares `host:port` and its row count with the others via `allGather`.
3. Each task then runs the TensorFlow worker in a *fresh Python process*
   (`python -m lamina.batch.distributed WORKDIR`) with `TF_CONFIG` naming the
   cluster and its index, and `CUDA_VISIBLE_DEVICES` set to its GPU
   addresses ("" when it has none: TensorFlow falls back to CPU). A fresh
   process because TF reads both variables once, at start-up, and its
   collective runtime can be configured only once per process, while Spark
   reuses its Python workers from task to task.
4. The workers train under `MultiWorkerMirroredStrategy` (ring all-reduce on
   CPU) with the same seed and deterministic kernels. Every worker runs the
   same number of steps (from the smallest shard), or the all-reduce would
   wait forever for the one that ran out. Each step takes
   `batch_size / num_workers` rows from every shard: the global batch is
   `batch_size`, as in `train_local`.
5. Every worker returns its report (device, rows, history, a SHA-256 of its
   final weights); the chief (index 0) also returns the weights and, given
   `model_dir` (a path every task can write, e.g. shared storage), saves the
   model there with `save_model`.

A worker subprocess exits by itself if its Spark task goes away (it watches
its parent), so a killed stage leaves no trainer behind.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lamina.batch.model import (
    LABEL,
    TrainingError,
    TrainParams,
    build_model,
    correct_prior,
    epoch_timer,
    history_dict,
    positive_weight,
    seed_everything,
    training_arrays,
    weighted_prior_logit,
)
from lamina.logs import get_logger
from lamina.models.saved_model import save_model
from lamina.models.scoring import to_pandas
from lamina.models.tf import tensorflow

log = get_logger(__name__)

# Columns that give a shard a stable order, when the training set has them.
ORDER_COLUMNS = ("event_time", "event_id")
ROW_COLUMN = "_lamina_row"
RESULT_SCHEMA = "rank int, report string, weights binary"


@dataclass(frozen=True)
class WorkerReport:
    """What one barrier task did."""

    rank: int
    address: str  # host:port of its TF worker
    gpu_addresses: list[str]  # what Spark assigned to the task
    cuda_visible_devices: str  # what the TF process was started with
    tf_gpus: list[str]  # GPUs TensorFlow found (none: it trained on CPU)
    device: str  # "GPU" or "CPU"
    rows: int  # rows in its shard
    steps_per_epoch: int
    history: dict[str, list[float]]
    weights_sha256: str
    # Where the TF process spent its time: importing TF, joining the cluster
    # (strategy + model), fit, saving.
    phases: dict[str, float]
    seconds: float  # the whole task: shard, start-up, training, saving


@dataclass(frozen=True)
class DistributedResult:
    """A distributed training run: the chief's weights and history, every
    worker's report, and where the chief saved the model (if asked)."""

    weights: list[np.ndarray] = field(repr=False)
    history: dict[str, list[float]]
    workers: list[WorkerReport]
    model_dir: Path | None
    seconds: float  # driver wall time, including Spark scheduling

    @property
    def identical_weights(self) -> bool:
        return len({w.weights_sha256 for w in self.workers}) == 1

    @property
    def examples_per_s(self) -> float:
        """Global training throughput in the last epoch (steady state)."""
        rates = self.history.get("examples_per_s", [])
        return float(rates[-1]) if rates else 0.0


def weights_digest(weights: Sequence[np.ndarray]) -> str:
    """SHA-256 over the bytes, shapes and dtypes of a weight list."""
    digest = hashlib.sha256()
    for w in weights:
        arr = np.ascontiguousarray(w)
        digest.update(f"{arr.dtype.str}{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def _weights_to_bytes(weights: Sequence[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, *weights)
    return buf.getvalue()


def _weights_from_bytes(data: bytes) -> list[np.ndarray]:
    with np.load(io.BytesIO(data)) as npz:
        return [npz[f"arr_{i}"] for i in range(len(npz.files))]


# --- driver side ---------------------------------------------------------------


def _is_spark_dataframe(frame: Any) -> bool:
    return type(frame).__module__.startswith("pyspark.sql")


def _spark_stats(df: Any, features: Sequence[str]) -> tuple[int, int, np.ndarray, np.ndarray]:
    """rows, positives, mean and population variance per feature, with the
    same checks `training_arrays` makes on a local frame."""
    from pyspark.sql import functions as F

    missing = [c for c in (*features, LABEL) if c not in df.columns]
    if missing:
        raise TrainingError(f"column(s) missing from the training set: {missing}")
    aggs = [F.count(F.lit(1)).alias("rows"),
            F.sum(F.col(LABEL).cast("long")).alias("positives"),
            F.sum(F.when(~F.col(LABEL).isin(0, 1) | F.col(LABEL).isNull(), 1)
                  .otherwise(0)).alias("bad_labels")]
    for i, name in enumerate(features):
        col = F.col(name).cast("double")
        aggs += [F.avg(col).alias(f"m{i}"), F.var_pop(col).alias(f"v{i}"),
                 F.sum(F.when(col.isNull() | F.isnan(col), 1).otherwise(0)).alias(f"n{i}")]
    row = df.agg(*aggs).collect()[0]
    if row["bad_labels"]:
        raise TrainingError(f"'{LABEL}' must be 0 or 1 ({row['bad_labels']} rows are not)")
    bad = [name for i, name in enumerate(features) if row[f"n{i}"]]
    if bad:
        raise TrainingError(f"feature column(s) with null or NaN values: {bad}")
    rows, positives = int(row["rows"]), int(row["positives"] or 0)
    if positives == 0 or positives == rows:
        raise TrainingError(
            f"the training set needs both classes; it has {positives} positive(s) in {rows} rows")
    mean = np.array([row[f"m{i}"] for i in range(len(features))], dtype=np.float64)
    variance = np.array([row[f"v{i}"] for i in range(len(features))], dtype=np.float64)
    return rows, positives, mean, variance


def _as_spark(spark: Any, train_df: Any, features: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    """The training set as a Spark DataFrame of the columns the workers need,
    and the statistics every worker must share."""
    if _is_spark_dataframe(train_df):
        rows, positives, mean, variance = _spark_stats(train_df, features)
        order = [c for c in ORDER_COLUMNS if c in train_df.columns]
        sdf = train_df.select(*features, LABEL, *order)
    else:
        pdf = to_pandas(train_df)
        arrays = training_arrays(pdf, features)
        rows, positives = arrays.rows, arrays.positives
        mean, variance = arrays.mean, arrays.variance
        order = [c for c in ORDER_COLUMNS if c in pdf.columns] or [ROW_COLUMN]
        local = pd.DataFrame(arrays.x, columns=list(features))
        local[LABEL] = arrays.y.astype(np.int32)
        for c in order:
            local[c] = np.arange(len(pdf), dtype=np.int64) if c == ROW_COLUMN else (
                pdf[c].to_numpy())
        sdf = spark.createDataFrame(local)
    stats = {"rows": rows, "positives": positives, "mean": mean.tolist(),
             "variance": variance.tolist(), "order": order}
    return sdf, stats


def train_distributed(
    spark: Any,
    train_df: Any,
    features: Sequence[str],
    params: TrainParams | dict[str, Any] | None = None,
    seed: int = 42,
    num_workers: int = 2,
    *,
    model_dir: str | Path | None = None,
    threads_per_worker: int | None = None,
    timeout_s: float = 1800.0,
) -> DistributedResult:
    """Train the MLP on `num_workers` Spark barrier tasks.

    `train_df` is a pandas DataFrame, a pyarrow Table or a Spark DataFrame
    with the feature columns and a 0/1 `label` (and ideally `event_time`,
    `event_id`, which give each shard a stable order). The cluster needs
    `num_workers` free task slots at once (barrier scheduling); with GPU
    scheduling configured (`spark.task.resource.gpu.amount`), each task trains
    on the GPUs Spark assigned to it.

    Returns the chief's final weights and history and every worker's report.
    All workers end with identical weights (`identical_weights`), and a rerun
    with the same data, params, seed and `num_workers` reproduces them bit for
    bit on CPU. Given `model_dir`, the chief saves the model there (a path all
    executors can write). Raises TrainingError if the data is refused or a
    worker fails (with the end of its log).
    """
    if num_workers < 1:
        raise TrainingError(f"num_workers must be at least 1, got {num_workers}")
    p = TrainParams.from_dict(params)
    if p.batch_size % num_workers:
        raise TrainingError(f"batch_size {p.batch_size} must be a multiple of num_workers "
                            f"({num_workers}): it is the global batch, split evenly")
    began = time.perf_counter()
    features = tuple(features)
    sdf, stats = _as_spark(spark, train_df, features)
    per_worker_batch = p.batch_size // num_workers
    if stats["rows"] // num_workers < per_worker_batch:
        # Checked here too, not only in the tasks: a failing barrier stage is
        # retried by Spark several times before the error comes back.
        raise TrainingError(
            f"{stats['rows']} rows in {num_workers} shards give fewer rows per shard than "
            f"one per-worker batch ({per_worker_batch}); use fewer workers or a smaller batch")
    w_pos = positive_weight(p, stats["rows"], stats["positives"])
    threads = threads_per_worker or int(spark.conf.get("spark.task.cpus", "1"))
    spec = {
        "features": list(features),
        "params": p.to_dict(),
        "seed": seed,
        "num_workers": num_workers,
        "mean": stats["mean"],
        "variance": stats["variance"],
        "pos_weight": w_pos,
        "output_bias": weighted_prior_logit(stats["positives"], stats["rows"], w_pos),
        "order": stats["order"],
        "threads": threads,
        "model_dir": str(Path(model_dir).resolve()) if model_dir else None,
        "timeout_s": timeout_s,
    }
    log.info("distributed training starting", workers=num_workers, rows=stats["rows"],
             positives=stats["positives"], seed=seed, threads=threads)
    task = functools.partial(_barrier_task, spec)
    rows = (sdf.repartition(num_workers)
            .mapInPandas(task, RESULT_SCHEMA, barrier=True)
            .collect())
    results = sorted(rows, key=lambda r: r["rank"])
    if [r["rank"] for r in results] != list(range(num_workers)):
        raise TrainingError(f"expected reports from {num_workers} workers, got {len(results)}")
    reports = [WorkerReport(**json.loads(r["report"])) for r in results]
    chief = results[0]
    result = DistributedResult(
        weights=_weights_from_bytes(bytes(chief["weights"])),
        history=reports[0].history,
        workers=reports,
        model_dir=Path(spec["model_dir"]) if spec["model_dir"] else None,
        seconds=time.perf_counter() - began,
    )
    log.info("distributed training done", workers=num_workers, seconds=round(result.seconds, 2),
             identical_weights=result.identical_weights,
             examples_per_s=round(result.examples_per_s),
             devices=",".join(w.device for w in reports))
    return result


# --- barrier task (runs in a Spark executor's Python worker) --------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _barrier_task(spec: dict[str, Any], batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    from pyspark import BarrierTaskContext

    began = time.perf_counter()
    ctx = BarrierTaskContext.get()
    rank = ctx.partitionId()
    frames = list(batches)
    shard = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=[*spec["features"], LABEL])
    if spec["order"] and len(shard):
        shard = shard.sort_values(spec["order"], kind="mergesort", ignore_index=True)
    x = shard.loc[:, spec["features"]].to_numpy(dtype=np.float32)
    y = shard[LABEL].to_numpy(dtype=np.float32)

    gpu = ctx.resources().get("gpu")
    gpu_addresses = [str(a) for a in gpu.addresses] if gpu is not None else []
    # getTaskInfos() is ordered by partition id; the address is the executor's.
    host = ctx.getTaskInfos()[rank].address.rsplit(":", 1)[0]
    port = _free_port()
    me = {"rank": rank, "address": f"{host}:{port}", "rows": len(x)}
    peers = sorted((json.loads(m) for m in ctx.allGather(json.dumps(me))),
                   key=lambda peer: peer["rank"])
    per_worker_batch = max(1, spec["params"]["batch_size"] // spec["num_workers"])
    steps = min(peer["rows"] for peer in peers) // per_worker_batch
    if steps < 1:
        raise TrainingError(
            f"a shard has fewer rows ({min(peer['rows'] for peer in peers)}) than one "
            f"per-worker batch ({per_worker_batch}); use fewer workers or a smaller batch")

    with tempfile.TemporaryDirectory(prefix=f"lamina-tf-{rank}-") as tmp:
        workdir = Path(tmp)
        np.savez(workdir / "shard.npz", x=x, y=y)
        worker_spec = {**spec, "rank": rank, "steps_per_epoch": steps,
                       "gpu_addresses": gpu_addresses, "address": me["address"],
                       "parent_pid": os.getpid()}
        (workdir / "spec.json").write_text(json.dumps(worker_spec))
        env = dict(os.environ)
        env["TF_USE_LEGACY_KERAS"] = "1"
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_addresses)
        env["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": [peer["address"] for peer in peers]},
            "task": {"type": "worker", "index": rank},
        })
        with open(workdir / "worker.log", "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "lamina.batch.distributed", tmp],
                                    env=env, stdout=out, stderr=subprocess.STDOUT)
            try:
                code = proc.wait(timeout=spec["timeout_s"])
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = -1
            finally:
                if proc.poll() is None:  # the task is being killed: take the worker along
                    proc.kill()
        result_path = workdir / "result.json"
        if code != 0 or not result_path.exists():
            tail = (workdir / "worker.log").read_bytes()[-3000:].decode(errors="replace")
            raise TrainingError(f"TF worker {rank} failed (exit {code}); its log ends:\n{tail}")
        report = json.loads(result_path.read_text())
        report["seconds"] = time.perf_counter() - began
        weights = (workdir / "weights.npz").read_bytes() if rank == 0 else b""
    yield pd.DataFrame({"rank": [rank], "report": [json.dumps(report)], "weights": [weights]})


# --- TF worker process -----------------------------------------------------------


def _exit_with_parent(parent_pid: int) -> None:
    """Exit if the Spark task that started this process goes away."""

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(3)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def run_worker(workdir: Path) -> None:
    """Train one TF worker as `TF_CONFIG` says; write result.json and the
    weights (weights.npz) into `workdir`. The process entry point."""
    started = time.perf_counter()
    spec = json.loads((workdir / "spec.json").read_text())
    _exit_with_parent(int(spec["parent_pid"]))
    with np.load(workdir / "shard.npz") as shard:
        x, y = shard["x"], shard["y"]
    tf = tensorflow()
    phases = {"import_tf": time.perf_counter() - started}
    threads = int(spec["threads"])
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    seed = int(spec["seed"])
    seed_everything(seed)
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    implementation = (tf.distribute.experimental.CommunicationImplementation.AUTO if gpus
                      else tf.distribute.experimental.CommunicationImplementation.RING)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=implementation))
    params = TrainParams.from_dict(spec["params"])
    mean = np.asarray(spec["mean"], dtype=np.float64)
    variance = np.asarray(spec["variance"], dtype=np.float64)
    with strategy.scope():
        model = build_model(len(spec["features"]), params, mean=mean, variance=variance,
                            output_bias=float(spec["output_bias"]), seed=seed)
    w_pos = float(spec["pos_weight"])
    weights = np.where(y > 0, np.float32(w_pos), np.float32(1.0)).astype(np.float32)
    rank = int(spec["rank"])
    phases["join_cluster"] = time.perf_counter() - started - phases["import_tf"]

    def dataset_fn(context: Any) -> Any:
        from lamina.batch.model import make_dataset

        per_replica = context.get_per_replica_batch_size(params.batch_size)
        return make_dataset(x, y, weights, batch_size=per_replica, seed=seed + rank,
                            repeat=True)

    timer = epoch_timer()
    steps = int(spec["steps_per_epoch"])
    fit_began = time.perf_counter()
    history = model.fit(tf.keras.utils.experimental.DatasetCreator(dataset_fn),
                        epochs=params.epochs, steps_per_epoch=steps, verbose=0,
                        callbacks=[timer])
    phases["fit"] = time.perf_counter() - fit_began
    save_began = time.perf_counter()
    correct_prior(model, w_pos)
    final = [np.asarray(w) for w in model.get_weights()]
    np.savez(workdir / "weights.npz", *final)
    if rank == 0 and spec["model_dir"]:
        # A plain (non-distributed) copy: the artifact must load anywhere.
        plain = build_model(len(spec["features"]), params, mean=mean, variance=variance,
                            seed=seed)
        plain.set_weights(final)
        save_model(plain, spec["model_dir"], features=spec["features"], params=params.to_dict(),
                   seed=seed, extra={"trained_by": f"{spec['num_workers']} barrier workers"})
    # Examples seen per epoch across all workers: steps x the global batch.
    global_rows = steps * (params.batch_size // spec["num_workers"]) * spec["num_workers"]
    report = {
        "rank": rank,
        "address": spec["address"],
        "gpu_addresses": spec["gpu_addresses"],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "tf_gpus": gpus,
        "device": "GPU" if gpus else "CPU",
        "rows": len(x),
        "steps_per_epoch": steps,
        "history": history_dict(history.history, timer.seconds, global_rows),
        "weights_sha256": weights_digest(final),
        "phases": {**phases, "save": time.perf_counter() - save_began},
    }
    (workdir / "result.json").write_text(json.dumps(report))


if __name__ == "__main__":
    # TF's collective runtime can keep non-daemon threads alive; once the work
    # is written (or has failed) leave without waiting for them.
    try:
        run_worker(Path(sys.argv[1]))
        code = 0
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
