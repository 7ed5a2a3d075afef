"""Training throughput: examples/s of the fraud MLP on CPU, single-process
Keras (`train_local`, the reference) next to `train_distributed` with 1 and
with 2 Spark barrier workers, on the same synthetic data in the same run.

* Data: ROWS rows x len(FEATURES) float32 features (NumPy, seed DATA_SEED,
  standard normal), label = Bernoulli(sigmoid(BIAS + 1.5*x0 + 1.0*x3)), about
  2 % positives: a function of two features, so the model has something to
  learn, though what it learns is not a figure.
* Params: `TrainParams(batch_size=4096, epochs=3)`, otherwise the defaults.
  The global batch is 4096, not the default 1024: on CPU every distributed
  step pays a ring all-reduce of roughly 20 ms, which at 1024 rows per step
  dominates the step and measures the all-reduce, not training; 4096 is a
  batch a CPU run would actually use (see the note of the row).
* Figure: examples/s of the LAST epoch (steady state: the first one also
  traces the graph and, distributed, warms the collective runtime), from the
  `examples_per_s` history; for the distributed runs the chief's history
  (global examples: steps x global batch per epoch).
* Start-up: the wall time of a run minus the sum of its epoch times: for a
  distributed run that is the statistics pass, the shuffle into
  `num_workers` partitions, barrier scheduling, starting the TF process,
  importing TF and joining the cluster, and returning the weights.
* Threads: single-process Keras uses TensorFlow's default pools (all cores
  of the affinity mask); each distributed worker gets
  `cores // num_workers` intra/inter-op threads (`threads_per_worker`), so
  every configuration may use the whole machine.
* The Spark session is `local[N]` (N = the cores available, at least 2, so
  the 2 barrier tasks can run at once), started once, not timed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from benchmarks.common import BenchmarkError, best_of, fmt_ratio
from benchmarks.report import Row

ROWS = 200_000
EPOCHS = 3
BATCH_SIZE = 4096
DATA_SEED = 7
TRAIN_SEED = 42
BIAS = -5.3  # with the two weights below: about 2 % positives
TARGET = 0.8  # 2 workers >= 0.8x single-process
WORKERS = (1, 2)


@dataclass(frozen=True)
class TrainRun:
    """One training run: its per-epoch history and its wall time."""

    label: str
    examples_per_s: list[float]
    epoch_seconds: list[float]
    wall_s: float
    phases: dict[str, float] = field(default_factory=dict)  # chief's, distributed only

    @property
    def rate(self) -> float:
        """Examples/s in the last epoch."""
        if not self.examples_per_s:
            raise BenchmarkError(f"{self.label}: the history has no examples_per_s")
        return self.examples_per_s[-1]

    @property
    def startup_s(self) -> float:
        return self.wall_s - sum(self.epoch_seconds)


@dataclass
class TrainingResults:
    local: list[TrainRun] = field(default_factory=list)
    distributed: dict[int, list[TrainRun]] = field(default_factory=dict)
    cores: int = 0
    positives: int = 0
    spark_start_s: float | None = None
    affinity_note: str = ""


def synthetic_data(rows: int = ROWS, seed: int = DATA_SEED) -> pd.DataFrame:
    """`rows` rows of the FEATURES columns plus a 0/1 `label` and an
    `event_id` (the row number: a stable shard order for the workers)."""
    from lamina.batch.model import LABEL
    from lamina.schemas.card_views import FEATURES

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, len(FEATURES)), dtype=np.float32)
    logit = BIAS + 1.5 * x[:, 0] + 1.0 * x[:, 3]
    y = rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))
    df = pd.DataFrame(x, columns=list(FEATURES))
    df[LABEL] = y.astype(np.int32)
    df["event_id"] = np.arange(rows, dtype=np.int64)
    return df


def restore_affinity(cores: set[int]) -> str:
    """Let every thread of this process run on `cores` again (the Kafka
    figures pin it to one core); what Spark, its Python workers and TF start
    afterwards inherits that. Returns the note saying what it did."""
    before = os.sched_getaffinity(0)
    if before == cores:
        return f"This process was not pinned: it ran on cores {sorted(cores)}."
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
    os.sched_setaffinity(0, cores)
    return (f"Before the training figures this process's affinity was restored from cores "
            f"{sorted(before)} (pinned for the Kafka figures) to {sorted(cores)} "
            "(`os.sched_setaffinity`, every thread), so Spark, its workers and TF could use "
            "them all.")


def measure_training(cores: set[int], rounds: int,
                     say: Callable[[str], None]) -> TrainingResults:
    """`rounds` rounds of single-process, 1-worker and 2-worker training,
    interleaved; the Spark session is stopped at the end."""
    from lamina.batch import spark as lamina_spark
    from lamina.batch.distributed import train_distributed
    from lamina.batch.model import TrainParams, train_local
    from lamina.schemas.card_views import FEATURES

    results = TrainingResults(affinity_note=restore_affinity(cores))
    results.cores = len(os.sched_getaffinity(0))
    df = synthetic_data()
    results.positives = int(df["label"].sum())
    params = TrainParams(batch_size=BATCH_SIZE, epochs=EPOCHS)
    say(f"training data: {len(df):,} rows x {len(FEATURES)} features, "
        f"{results.positives:,} positives")
    slots = max(2, results.cores)
    spark = lamina_spark.spark_session(f"local[{slots}]", app_name="lamina-bench-training",
                                       extra_conf={"spark.ui.enabled": "false"})
    results.spark_start_s = lamina_spark.last_start_seconds
    try:
        sdf = spark.createDataFrame(df).cache()
        sdf.count()  # materialised once, not part of any run
        for round_no in range(1, rounds + 1):
            began = time.perf_counter()
            _model, history = train_local(df, FEATURES, params, seed=TRAIN_SEED)
            results.local.append(TrainRun("single-process", history["examples_per_s"],
                                          history["epoch_seconds"],
                                          time.perf_counter() - began))
            say(f"round {round_no}: single-process Keras {results.local[-1].rate:,.0f} ex/s")
            for workers in WORKERS:
                threads = max(1, results.cores // workers)
                result = train_distributed(spark, sdf, FEATURES, params, seed=TRAIN_SEED,
                                           num_workers=workers, threads_per_worker=threads)
                run = TrainRun(f"{workers} worker(s)", result.history["examples_per_s"],
                               result.history["epoch_seconds"], result.seconds,
                               dict(result.workers[0].phases))
                results.distributed.setdefault(workers, []).append(run)
                say(f"round {round_no}: {workers} barrier worker(s) {run.rate:,.0f} ex/s "
                    f"({run.wall_s:.1f} s wall, start-up {run.startup_s:.1f} s)")
        sdf.unpersist()
    finally:
        spark.stop()
    return results


def _runs(runs: list[TrainRun]) -> str:
    return f"best of {len(runs)}: " + ", ".join(f"{r.rate:,.0f}" for r in runs)


def _fmt(rate: float) -> str:
    return f"{rate:,.0f} ex/s"


def training_rows(results: TrainingResults) -> list[Row]:
    from lamina.schemas.card_views import FEATURES

    ref = best_of(results.local, lambda r: r.rate)
    reference = f"single-process Keras {_fmt(ref.rate)}"
    rows = [Row("training, single-process Keras (train_local; reference)", _fmt(ref.rate), "—",
                "1.00×", "—",
                f"{ROWS:,} rows x {len(FEATURES)} features, {results.positives:,} positives, "
                f"global batch {BATCH_SIZE}, {EPOCHS} epochs, last epoch; TF default thread "
                f"pools on {results.cores} core(s); epochs "
                + ", ".join(f"{s:.2f}" for s in ref.epoch_seconds)
                + f" s, start-up {ref.startup_s:.1f} s; {_runs(results.local)}")]
    for workers, runs in sorted(results.distributed.items()):
        best = best_of(runs, lambda r: r.rate)
        ratio = best.rate / ref.rate
        threads = max(1, results.cores // workers)
        target, met = "—", ""
        if workers == 2:
            target = f"≥ {TARGET:.1f}×"
            met = f"target {'met' if ratio >= TARGET else 'NOT met'}; "
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in best.phases.items() if k != "fit")
        rows.append(Row(
            f"training, train_distributed, {workers} barrier worker(s)", _fmt(best.rate),
            reference, fmt_ratio(ratio), target,
            f"{met}MultiWorkerMirroredStrategy (ring all-reduce), {threads} TF thread(s) per "
            f"worker, chief's last epoch; epochs "
            + ", ".join(f"{s:.2f}" for s in best.epoch_seconds)
            + f" s; fixed start-up (wall {best.wall_s:.1f} s minus epochs) "
            f"{best.startup_s:.1f} s (chief: {phases}); {_runs(runs)}"))
    return rows


def training_notes(results: TrainingResults) -> list[str]:
    spark = (f", started in {results.spark_start_s:.1f} s (not timed)"
             if results.spark_start_s is not None else "")
    return [
        results.affinity_note,
        f"Training: global batch {BATCH_SIZE} rather than the default 1024 because on CPU "
        "each distributed step pays a ring all-reduce of about 20 ms, which dominates a "
        "1024-row step; the figure is the last of the epochs (steady state). The distributed "
        f"runs share one `local[{max(2, results.cores)}]` Spark session{spark} and read the "
        "same data as a cached Spark DataFrame; the fixed start-up is per run (statistics "
        "pass, shuffle into the shards, barrier scheduling, a fresh TF process, TF import, "
        "cluster join).",
    ]

