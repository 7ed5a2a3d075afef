"""Spark steps of the DAGs, each in its own driver process.

A DAG task never starts Spark in the Airflow process that runs it: it
launches ``python -m lamina.orchestration.spark_jobs STEP ARGS.json OUT.json``
(``run_spark_step``), the way ``spark-submit`` launches a driver in client
mode, with the master and configuration of the ``[spark]`` settings
(``local[2]`` by default, a cluster master when configured). The driver
builds its session with ``lamina.batch.spark.spark_session`` from those
settings, runs one library function and writes its JSON result to OUT.

The driver dies with the task process (``PR_SET_PDEATHSIG``): a task killed
with ``kill -9`` leaves no Spark job behind that could still commit. Every
step is idempotent (see ``lamina.orchestration.tasks``), so the retry simply
runs it again.

``spark_submit_equivalent`` shows the ``spark-submit`` command line a
cluster deployment would use for the same step (it is logged with each
step).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lamina.config import Settings, load_settings
from lamina.errors import LaminaError
from lamina.logs import get_logger

log = get_logger(__name__)

#: Delta's Spark package, the one ``configure_spark_with_delta_pip`` adds.
DELTA_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.0"


class SparkStepError(LaminaError):
    """A Spark step's driver process failed; the message carries its last
    output lines."""


#: Steps whose Spark configuration adds ``[spark] train_conf`` to ``conf``.
TRAINING_STEPS = frozenset({"train"})


def step_conf(settings: Settings, step: str) -> dict[str, str]:
    """The Spark configuration ``step`` runs with: ``[spark] conf``, and for
    the training step ``[spark] train_conf`` over it (its GPU requests)."""
    conf = dict(settings.spark.conf)
    if step in TRAINING_STEPS:
        conf |= settings.spark.train_conf
    return conf


def spark_submit_equivalent(settings: Settings, step: str) -> list[str]:
    """The ``spark-submit`` command line for ``step`` with the ``[spark]``
    settings (master and ``step_conf``): what a cluster deployment runs."""
    command = ["spark-submit", "--master", settings.spark.master, "--packages", DELTA_PACKAGE]
    for key, value in sorted(step_conf(settings, step).items()):
        command += ["--conf", f"{key}={value}"]
    return [*command, "-m", "lamina.orchestration.spark_jobs", step]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def run_spark_step(config: str | None, step: str, args: dict[str, Any], *,
                   timeout_s: float | None = None) -> dict[str, Any]:
    """Run Spark step ``step`` (a name in ``STEPS``) with ``args`` in a
    driver process of its own and return its JSON result. ``config`` is the
    settings file (None: ``LAMINA_CONFIG``/``lamina.toml``/the environment,
    as for the CLI). SparkStepError, with the driver's last output lines,
    if it fails."""
    if step not in STEPS:
        raise SparkStepError(f"unknown Spark step {step!r} (known: {', '.join(sorted(STEPS))})")
    settings = load_settings(config)
    with tempfile.TemporaryDirectory(prefix=f"lamina-{step}-") as scratch:
        args_file, out_file = Path(scratch) / "args.json", Path(scratch) / "out.json"
        args_file.write_text(json.dumps({"config": config, **args}))
        command = [sys.executable, "-m", "lamina.orchestration.spark_jobs", step,
                   str(args_file), str(out_file)]
        log.info("spark step starting", step=step, master=settings.spark.master,
                 spark_submit=" ".join(spark_submit_equivalent(settings, step)))
        began = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              preexec_fn=_die_with_parent, env=os.environ.copy())
        if done.returncode != 0 or not out_file.exists():
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
            raise SparkStepError(
                f"Spark step {step} failed (exit {done.returncode}) on master "
                f"{settings.spark.master}; its last lines:\n{tail}")
        result: dict[str, Any] = json.loads(out_file.read_text())
    log.info("spark step done", step=step, seconds=round(time.monotonic() - began, 1))
    return result


# --- the steps (run in the driver process) -----------------------------------


def _views(settings: Settings, args: dict[str, Any]) -> dict[str, Any]:
    from lamina.batch.views import batch_run_command

    return batch_run_command(settings, args["snapshot"], args["cutoff_ms"], None)


def _publish(settings: Settings, args: dict[str, Any]) -> dict[str, Any]:
    from lamina.batch.store_publish import batch_publish_command

    return batch_publish_command(settings, version=args["version"])


def _training_sets(settings: Settings, args: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import asdict

    from lamina.batch.spark import spark_session
    from lamina.batch.training_set import write_training_set

    spark = spark_session(settings.spark.master, app_name="lamina-training-set",
                          extra_conf=settings.spark.conf)
    written: dict[str, Any] = {}
    try:
        for name, (start, end) in args["windows"].items():
            meta = write_training_set(spark, settings.master_uri, args["out"][name],
                                      snapshot=args["snapshot"], start_ms=start, end_ms=end,
                                      label_maturity_ms=args["label_maturity_ms"],
                                      as_of_ms=args["as_of_ms"])
            written[name] = asdict(meta)
    finally:
        spark.stop()
    return written


def _train(settings: Settings, args: dict[str, Any]) -> dict[str, Any]:
    from lamina.batch.commands import train_command

    # train_command starts the session (with the step's conf and its GPU
    # requests) only if the model is not trained yet: a retry after the
    # model was saved starts no JVM.
    return train_command(args["training_set"], models_dir=settings.models_uri,
                         registry=settings.registry_uri, snapshot_id=args["snapshot"],
                         params=args.get("params"), seed=args.get("seed", 42),
                         workers=args.get("workers", 0), spark_master=settings.spark.master,
                         spark_conf=step_conf(settings, "train"))


def _consistency(settings: Settings, args: dict[str, Any]) -> dict[str, Any]:
    from lamina.batch.consistency import consistency_command

    report, path = consistency_command(settings, since_ms=args["since_ms"],
                                       until_ms=args["until_ms"], snapshot=args["snapshot"])
    return {"path": str(path), **{k: report[k] for k in (
        "since", "until", "snapshot", "events", "mismatched_events", "unexplained", "causes",
        "not_landed", "undecodable")}}


STEPS: dict[str, Callable[[Settings, dict[str, Any]], dict[str, Any]]] = {
    "views": _views,
    "publish": _publish,
    "training_sets": _training_sets,
    "train": _train,
    "consistency": _consistency,
}


def main(argv: list[str]) -> int:
    """``STEP ARGS.json OUT.json``: run one step, write its result to OUT."""
    from lamina.logs import configure

    step, args_file, out_file = argv
    configure("INFO")
    args = json.loads(Path(args_file).read_text())
    settings = load_settings(args.pop("config"))
    result = STEPS[step](settings, args)
    partial = Path(out_file).with_suffix(".partial")
    partial.write_text(json.dumps(result, default=str))
    partial.replace(out_file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
