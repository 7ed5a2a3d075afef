"""Lamina's landing benchmarks, each figure beside its reference in the same run.

How to run
----------
    make bench                                   # = .venv/bin/python -m benchmarks.run
    .venv/bin/python -m benchmarks.run --quick   # 100k records: a smoke run
    .venv/bin/python -m benchmarks.run --events 300000 --only lander
    .venv/bin/python -m benchmarks.run --quick --no-append   # print only
    .venv/bin/python -m benchmarks.run --only views          # batch views, 10M
    .venv/bin/python -m benchmarks.run --only training-set   # point-in-time builder
    .venv/bin/python -m benchmarks.run --only online-state   # speed-layer state per event
    .venv/bin/python -m benchmarks.run --only speed          # the speed layer, scored
    .venv/bin/python -m benchmarks.run --only dag-parse      # Airflow parse time per DAG file
    .venv/bin/python -m benchmarks.run --only serving        # HTTP lookups, batch, freshness
    .venv/bin/python -m benchmarks.run --only dag-run        # retraining DAG run vs the CLI
    .venv/bin/python -m benchmarks.run --only speed-latency  # produce->score at 50 % load
    .venv/bin/python -m benchmarks.run --only speed-recovery # catch-up after kill -9

The run starts its own single-node Kafka (temporary directory, random ports),
prints a markdown table and appends it, with the machine, UTC date, git commit
and this command, to docs/benchmarks.md. It never runs in the test suite.

Setup
-----
* The broker's JVM is pinned to core 1 (`taskset -a -cp 1`, every thread),
  this process (and so every client thread it starts) to core 0, kcat with
  `taskset -c 0`: client and broker never fight for a core. Without two
  cores or taskset nothing is pinned, and the notes say so.
* `bench.raw` (3 partitions) is loaded with the first N records of the
  generator (transactions=N; labels, duplicates and malformed records at the
  generator's default fractions), keyed like a producer keys them, with
  confluent-kafka. Loading is not timed as a figure.
* Every figure is run twice, interleaved round by round with its
  reference, and the better run of each is reported (both are in the note).

Figures (events/s are records of the topic per second of wall time)
-------------------------------------------------------------------
* kafka-python raw consume -- THE REFERENCE. `lamina.kafkaio.make_consumer`
  settings (the lander's client), the 3 partitions assigned, seek to the
  beginning, poll until N records; from creating the consumer to closing it.
* confluent-kafka / kcat raw consume -- the client tax: the same read with
  librdkafka (`consume(num_messages=10000)`, no commits) and with kcat
  (`-o beginning -e -q -f '%o\\n'`, lines counted, process start included).
  Ratio to kafka-python.
* lander committed -- `Lander` with its default commit rule (50k events or
  2 s), a unique consumer group, dead letters to `bench.dlq`, a fresh
  `MasterDataset`, `run(max_events=N)`; from creating the consumer until
  `run` returns with everything committed. Records consumed per second, and
  rows landed per second, as a ratio to the reference (target >= 0.5x).
  Then the time split of `LanderStats`: poll_s (Kafka), validate_s
  (validation and buffering), commit_s (dedup, dead letters, Delta commit)
  and the rest (group join, table creation, close), as shares of the wall
  time; commit_s is split further by timing what commit_batch calls
  (`benchmarks/landing.py`, `COMMIT_STEPS`): table loads, dead letters,
  the Arrow rows, the event_date column and the Delta write, the remainder
  being commit_batch's replay and duplicate filtering. A watchdog stops a
  lander that makes no progress for 20 s (a start that consumed nothing is
  retried, up to 3 times, and listed in the notes;
  a stall midway fails the run). Afterwards the table is checked: row
  count == landed == the generator's valid events, each once; dead letters
  == malformed records; duplicates dropped == duplicates produced. A
  mismatch fails the run.
* validation alone -- each path of the validator over the N loaded values in
  memory on one core (`benchmarks/validation.py`): the lander's call
  `validate_envelope` (the typed msgspec decoder, the reference for what it
  does not accept), `validate` (the same plus the payload dict) and the
  reference alone (`EventValidator(typed=False)`: orjson + fastjsonschema),
  each as a ratio to the raw consume: it must be well above 1x or
  validation alone caps the lander. `--only validation` runs just these
  (with the reference consume they are measured against).
* views -- batch views over 10M transactions (`benchmarks/views.py`, which
  says exactly what runs): Lamina's Spark job (`run_batch_views`) next to
  the same aggregation in DuckDB on the same Parquet files (the reference,
  target >= 0.5x) and in bare Spark SQL, then where the job's time goes. The
  master dataset is generated once and cached under `.lamina/bench/`
  (`--views-transactions N` to change its size). Needs no broker.
* training-set -- the point-in-time training-set builder
  (`benchmarks/training_set.py`): `build_training_set` on 40k generated
  transactions (25,216 rows) next to the same features and labels as one
  DuckDB statement on the same Parquet files (the reference). Needs no broker.
* training -- examples/s of the fraud MLP on CPU (`benchmarks/training.py`):
  single-process Keras (`train_local`, the reference of these rows) next to
  `train_distributed` with 1 and with 2 Spark barrier workers, same
  synthetic data (200k rows), global batch 4096, 3 epochs, last epoch
  (target: 2 workers >= 0.8x single-process), plus each distributed run's
  fixed start-up (wall minus epochs). Runs after the broker is stopped, with
  this process's affinity restored to every core it had at start (the Kafka
  figures pin it to one core). It needs no broker: `--only training` starts
  none.
* stores -- tile stores (`benchmarks/tile_store.py`, which says exactly what
  runs): SQLite and Redis on the same batch records and realtime tiles,
  publish and write rates next to raw writes of the same rows, and the
  snapshot and features lookup p50/p99 next to a raw read of the same
  records. Starts its own redis-server; needs no broker (`--only stores`).
* dag-parse -- Airflow's parse time of each file in dags/
  (`benchmarks/dag_parse.py`) next to a minimal one-task DAG parsed the
  same way (the reference); target under a second per file. Needs no broker.
* dag-run -- the scheduler's overhead (`benchmarks/dag_run.py`, which says
  exactly what runs): one `lamina_retraining` run with `dag.test()` next to
  the same steps as CLI commands (the reference), same data, interleaved
  rounds, with each task's duration next to its commands' wall time. Needs
  no broker; minutes per round (real Spark, TensorFlow and MLflow).
* online-state -- the speed layer's per-event state work
  (`benchmarks/online_state.py`): per transaction in arrival order,
  `OnlineState.features_before(event_time)` then `add`, next to the offline
  `FeatureSweep` computing the same features for the same events (the
  reference); 200k generated transactions (20k with --quick), identical
  features checked on a sample. Needs no broker.
* speed -- the speed layer end to end (`benchmarks/speed.py`, which says
  exactly what runs): a generated stream on its own broker, scored by a
  trained champion, into SQLite and into Redis, next to the raw
  kafka-python consume of the same topic (target >= 0.3x), where its time
  goes, and `score_batch` rows/s next to the bare NumPy forward pass at
  batch 1, 64 and 1000 (target >= 0.5x at 1000). 100k stream records (20k
  with --quick).
* serving -- the serving API over HTTP (`benchmarks/serving.py`, which says
  exactly what runs): `lamina serve` on one pinned core, the load from the
  other, single-entity lookups at 1, 8 and 32 clients over SQLite and Redis
  next to a constant FastAPI endpoint and the raw store read (targets at 8
  clients: p99 < 3 ms and >= 0.6x the constant's requests/s), where a
  request's time goes, the 1,000-entity batch lookup next to 1,000 single
  lookups and raw reads, and produce -> served freshness with the speed
  layer running next to Kafka's produce -> consume. Starts its own
  redis-server and broker.
* speed-latency -- produce->score latency of the speed layer at a steady
  50 % of its sustained maximum (`benchmarks/speed_latency.py`, which says
  exactly what runs): p50/p90/p99/p99.9 to each score record's produce
  time, next to a plain consumer's produce->consume latency of the same
  paced stream (target p99 < 100 ms), both stores, then a sweep of the
  micro-batch settings on SQLite.
* speed-recovery -- `lamina speed run` as a subprocess killed with SIGKILL
  mid-stream and restarted on a known backlog: restart -> caught up next to
  backlog / raw consume rate and backlog / the speed layer's sustained
  rate, both stores; the tiles checked exact afterwards.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Generic, TypeVar

from benchmarks import consume
from benchmarks.common import (
    DLQ_TOPIC,
    RAW_PARTITIONS,
    RAW_TOPIC,
    BenchmarkError,
    Timed,
    best_of,
    fmt_rate,
    fmt_ratio,
)
from benchmarks.dag_parse import (
    DagParseResults,
    dag_parse_notes,
    dag_parse_rows,
    measure_dag_parse,
)
from benchmarks.dag_run import DagRunResults, dag_run_notes, dag_run_rows, measure_dag_run
from benchmarks.landing import (
    COMMIT_STEPS,
    STALL_S,
    LanderRun,
    LoadedTopic,
    check_landed,
    land,
    load_topic,
)
from benchmarks.machine import (
    BENCH_CORE,
    BROKER_CORE,
    can_pin,
    cpu_steal,
    cpu_times,
    describe_machine,
    git_commit,
    load_average,
    pin_pid_threads,
    pin_self,
)
from benchmarks.online_state import DEFAULT_TRANSACTIONS as ONLINE_TRANSACTIONS
from benchmarks.online_state import QUICK_TRANSACTIONS as ONLINE_QUICK_TRANSACTIONS
from benchmarks.online_state import (
    OnlineStateResults,
    measure_online_state,
    online_state_notes,
    online_state_rows,
)
from benchmarks.report import Row, append_section, render_section
from benchmarks.serving import ServingResults, measure_serving, serving_notes, serving_rows
from benchmarks.speed import DEFAULT_STREAM as SPEED_STREAM
from benchmarks.speed import QUICK_STREAM as SPEED_QUICK_STREAM
from benchmarks.speed import SpeedResults, measure_speed, speed_notes, speed_rows
from benchmarks.speed_latency import (
    LatencyResults,
    RecoveryResults,
    latency_notes,
    latency_rows,
    measure_latency,
    measure_recovery,
    recovery_notes,
    recovery_rows,
)
from benchmarks.tile_store import DEFAULT_TRANSACTIONS as STORE_TRANSACTIONS
from benchmarks.tile_store import (
    LOOKUPS,
    QUICK_LOOKUPS,
    TileStoreResults,
    measure_tile_stores,
    tile_store_notes,
    tile_store_rows,
)
from benchmarks.tile_store import QUICK_TRANSACTIONS as STORE_QUICK_TRANSACTIONS
from benchmarks.training import (
    TrainingResults,
    measure_training,
    restore_affinity,
    training_notes,
    training_rows,
)
from benchmarks.training_set import DEFAULT_TRANSACTIONS as TRAINING_SET_TRANSACTIONS
from benchmarks.training_set import (
    TrainingSetResults,
    measure_training_set,
    training_set_notes,
    training_set_rows,
)
from benchmarks.validation import VALIDATION_PATHS, validation_rate
from benchmarks.views import (
    DEFAULT_TRANSACTIONS,
    QUICK_TRANSACTIONS,
    ViewsResults,
    measure_views,
    views_notes,
    views_rows,
)
from benchmarks.views import (
    DRIVER_MEMORY as VIEWS_DRIVER_MEMORY,
)
from lamina import kafkaio
from lamina.broker import KafkaCluster, kafka_libs
from lamina.consumer import CONSUMER_GC_THRESHOLD, consumer_gc
from lamina.errors import LaminaError
from lamina.generator import KIND_DUPLICATE, KIND_VALID
from lamina.logs import configure as configure_logging
from lamina.schemas.topics import TopicSpec
from lamina.topics import create_topics

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "docs" / "benchmarks.md"
DEFAULT_EVENTS = 1_000_000
QUICK_EVENTS = 100_000
ROUNDS = 2  # default; --rounds N on a busy machine
#: The suites measured together on one broker (the "kafka" entry of SUITE_TABLE).
KAFKA_SUITE_NAMES = ("lander", "validation", "clients")
KAFKA_SUITES = frozenset(KAFKA_SUITE_NAMES)
LANDER_TARGET = 0.5
LANDER_ATTEMPTS = 3  # per round: a stalled start (no partitions) is retried
COMMIT_STEP_NOTES = {
    "table load": "DeltaTable loads (one per commit, plus one per partition assignment)",
    "dead letters": "KafkaDeadLetters.send, acks=all, waited for",
    "Arrow rows": "lander._rows: the kept records as an Arrow table",
    "event_date column": "dataset.with_event_date (timestamp -> date32 -> text casts)",
    "Delta write": "MasterDataset.append minus the event_date column: Parquet + commit",
}


@dataclass
class Results:
    """Every run of every figure (`rounds` each), in the order they ran."""

    rounds: int = ROUNDS
    raw: list[Timed] = field(default_factory=list)
    #: kafka-python raw again, with the lander's garbage-collector setting.
    raw_gc: list[Timed] = field(default_factory=list)
    confluent: list[Timed] = field(default_factory=list)
    kcat: list[Timed] = field(default_factory=list)
    kcat_missing: bool = False
    lander: list[LanderRun] = field(default_factory=list)
    lander_stalls: list[str] = field(default_factory=list)
    validation: dict[str, list[Timed]] = field(default_factory=dict)


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- arguments ---------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Lamina's landing benchmarks; appends a table to docs/benchmarks.md.",
    )
    parser.add_argument("--events", type=int, default=None,
                        help=f"records in the topic (default {DEFAULT_EVENTS:,})")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run with {QUICK_EVENTS:,} records (unless --events)")
    parser.add_argument("--views-naive", action="store_true",
                        help="also time the naive bare Spark SQL (a parse per hop; minutes at 10M)")
    parser.add_argument("--views-driver-memory", default=VIEWS_DRIVER_MEMORY,
                        help="the Spark driver's heap for the views suite's Spark jobs "
                        f"(default {VIEWS_DRIVER_MEMORY}; a JVM size such as 2g or 4096m)")
    parser.add_argument("--views-transactions", type=int, default=None,
                        help="transactions in the batch-views master dataset (default "
                        f"{DEFAULT_TRANSACTIONS:,}; {QUICK_TRANSACTIONS:,} with --quick)")
    parser.add_argument("--only", default=",".join(SUITES),
                        help="comma-separated subset of " + ",".join(SUITES)
                        + "; the kafka-python reference runs with any Kafka figure")
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help=f"runs of every figure, the best reported (default {ROUNDS}); "
                        "more on a machine shared with other work")
    parser.add_argument("--speed-events", type=int, default=None,
                        help=f"stream records of the speed suite (default {SPEED_STREAM:,}; "
                        f"{SPEED_QUICK_STREAM:,} with --quick)")
    parser.add_argument("--speed-stores", default="sqlite,redis",
                        help="tile stores of the speed suite, of sqlite,redis (default both)")
    parser.add_argument("--no-append", action="store_true",
                        help="print the table only; do not append it to docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = QUICK_EVENTS if args.quick else DEFAULT_EVENTS
    if args.events < 1:
        parser.error("--events must be at least 1")
    if args.views_transactions is None:
        args.views_transactions = QUICK_TRANSACTIONS if args.quick else DEFAULT_TRANSACTIONS
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.speed_events is not None and args.speed_events < 1000:
        parser.error("--speed-events must be at least 1000")
    args.speed_stores = tuple(s.strip() for s in args.speed_stores.split(",") if s.strip())
    if not args.speed_stores or set(args.speed_stores) - {"sqlite", "redis"}:
        parser.error(f"--speed-stores takes sqlite and/or redis, got {args.speed_stores!r}")
    if not re.fullmatch(r"[1-9][0-9]*[kKmMgG]", args.views_driver_memory):
        parser.error("--views-driver-memory takes a JVM size such as 2g or 4096m, got "
                     f"{args.views_driver_memory!r}")
    if args.views_transactions < 1000:
        parser.error("--views-transactions must be at least 1000")
    args.suites = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = args.suites - set(SUITES)
    if unknown or not args.suites:
        parser.error(f"--only takes names from {','.join(SUITES)}, got {args.only!r}")
    return args


def command_line(argv: list[str] | None) -> str:
    """The command as typed from the repo root, e.g.
    `.venv/bin/python -m benchmarks.run --quick`."""
    python = Path(sys.executable)
    try:
        shown = str(python.relative_to(REPO)) if python.is_relative_to(REPO) else str(python)
    except ValueError:
        shown = str(python)
    args = sys.argv[1:] if argv is None else argv
    return shlex.join([shown, "-m", "benchmarks.run", *args])


# -- the broker --------------------------------------------------------------


def start_broker(workdir: Path) -> KafkaCluster:
    cluster = KafkaCluster(workdir / "kafka", kafka_libs(REPO / ".lamina"), nodes=1)
    say(f"starting Kafka in {cluster.cluster_dir}")
    cluster.start()
    return cluster


def pin_cores(cluster: KafkaCluster) -> tuple[bool, str]:
    """Broker on BROKER_CORE, this process on BENCH_CORE; returns whether it
    pinned, and the note saying what it did."""
    if not can_pin():
        return False, ("Nothing pinned (needs cores 0 and 1 and taskset): client and broker "
                       "share the CPUs.")
    pids = [pid for pid in cluster.pids if pid is not None]
    for pid in pids:
        pin_pid_threads(pid, BROKER_CORE)
    pin_self(BENCH_CORE)
    return True, (f"The broker's JVM (pid {', '.join(map(str, pids))}) is pinned to core "
            f"{BROKER_CORE} (`taskset -a -cp {BROKER_CORE}`, all threads); this process and "
            f"its client threads to core {BENCH_CORE} (`os.sched_setaffinity`), kcat with "
            f"`taskset -c {BENCH_CORE}`.")


def create_bench_topics(bootstrap: str) -> None:
    create_topics(bootstrap, [TopicSpec(RAW_TOPIC, RAW_PARTITIONS, -1),
                              TopicSpec(DLQ_TOPIC, 1, -1)])


def warm_up_group_coordinator(bootstrap: str) -> None:
    """Commit one group offset so the broker creates `__consumer_offsets`
    and loads the coordinator now: a fresh broker does that on the first
    group use, and it must not be timed as part of the first lander run."""
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    consumer = kafkaio.make_consumer(bootstrap, group_id="bench-warm-up")
    try:
        tp = TopicPartition(DLQ_TOPIC, 0)
        consumer.assign([tp])
        consumer.commit({tp: OffsetAndMetadata(0, "", -1)})
    finally:
        consumer.close()


# -- measuring ---------------------------------------------------------------


def measure(bootstrap: str, loaded: LoadedTopic, suites: set[str], workdir: Path,
            pinned: bool, rounds: int = ROUNDS) -> Results:
    """`rounds` rounds of reference, clients and lander, then validation."""
    results = Results(rounds=rounds)
    n = loaded.records
    results.kcat_missing = consume.kcat_version() is None
    for round_no in range(1, rounds + 1):
        results.raw.append(consume.kafka_python_raw(bootstrap, RAW_TOPIC, RAW_PARTITIONS, n))
        say(f"round {round_no}: kafka-python raw {fmt_rate(results.raw[-1].rate)}")
        if "clients" in suites:
            results.confluent.append(consume.confluent_raw(bootstrap, RAW_TOPIC,
                                                           RAW_PARTITIONS, n))
            say(f"round {round_no}: confluent-kafka raw {fmt_rate(results.confluent[-1].rate)}")
            if not results.kcat_missing:
                results.kcat.append(consume.kcat_raw(bootstrap, RAW_TOPIC, n, pinned))
                say(f"round {round_no}: kcat raw {fmt_rate(results.kcat[-1].rate)}")
        if "lander" in suites:
            with consumer_gc():
                results.raw_gc.append(consume.kafka_python_raw(bootstrap, RAW_TOPIC,
                                                               RAW_PARTITIONS, n))
            say(f"round {round_no}: kafka-python raw, the lander's GC setting "
                f"{fmt_rate(results.raw_gc[-1].rate)}")
            run = land_checked(bootstrap, loaded, workdir, round_no, results)
            results.lander.append(run)
            say(f"round {round_no}: lander {fmt_rate(run.consumed_rate)} "
                f"({run.seconds:.1f} s, {run.stats.commits} commits, checked)")
    if "validation" in suites:
        expected_valid = loaded.kinds[KIND_VALID] + loaded.kinds[KIND_DUPLICATE]
        for round_no in range(1, rounds + 1):
            for path in VALIDATION_PATHS:
                timed = validation_rate(loaded.values, expected_valid, path)
                results.validation.setdefault(path, []).append(timed)
                say(f"round {round_no}: validation, {path}: {fmt_rate(timed.rate)}")
    return results


def land_checked(bootstrap: str, loaded: LoadedTopic, workdir: Path, round_no: int,
                 results: Results) -> LanderRun:
    """One lander run that landed everything, checked; a start that never
    consumed anything (see LanderRun.stalled_at_start) is noted and retried."""
    for attempt in range(1, LANDER_ATTEMPTS + 1):
        dataset_dir = workdir / f"master-{round_no}-{attempt}"
        run = land(bootstrap, RAW_TOPIC, DLQ_TOPIC, loaded.records, dataset_dir)
        if run.stalled_at_start:
            results.lander_stalls.append(f"round {round_no}, attempt {attempt}: {run.stall}")
            say(f"round {round_no}: the lander consumed nothing and was stopped: {run.stall} "
                f"(attempt {attempt} of {LANDER_ATTEMPTS})")
            shutil.rmtree(dataset_dir, ignore_errors=True)
            continue
        check_landed(run, loaded)
        shutil.rmtree(dataset_dir, ignore_errors=True)
        return run
    raise BenchmarkError(f"the lander consumed nothing in {LANDER_ATTEMPTS} attempts: "
                         + "; ".join(results.lander_stalls))


# -- the table -----------------------------------------------------------------


def _runs(rates: list[float]) -> str:
    return f"best of {len(rates)}: " + ", ".join(f"{r:,.0f}" for r in rates)


def _cpu(share: float | None) -> str:
    return "" if share is None else f"; CPU {share:.0%} of wall"


def _rate_row(figure: str, runs: list[Timed], ref: Timed, target: str, note: str) -> Row:
    best = best_of(runs, lambda t: t.rate)
    return Row(figure, fmt_rate(best.rate), f"kafka-python raw {fmt_rate(ref.rate)}",
               fmt_ratio(best.rate / ref.rate), target,
               f"{note}{_cpu(best.cpu_share)}; {_runs([t.rate for t in runs])}")


def kafka_rows(results: Results, loaded: LoadedTopic, suites: Collection[str]) -> list[Row]:
    ref = best_of(results.raw, lambda t: t.rate)
    rows = [Row("kafka-python raw consume (reference)", fmt_rate(ref.rate), "—", "1.00×", "—",
                f"make_consumer settings, 3 partitions assigned, from the beginning; "
                f"{ref.seconds:.2f} s for {ref.events:,} records{_cpu(ref.cpu_share)}; "
                f"{_runs([t.rate for t in results.raw])}")]
    if "clients" in suites:
        rows.append(_rate_row("confluent-kafka raw consume", results.confluent, ref, "—",
                              "client tax: librdkafka, consume(num_messages=10000), no commits"))
        if results.kcat:
            rows.append(_rate_row("kcat raw consume", results.kcat, ref, "—",
                                  "`kcat -C -o beginning -e -q -f '%o\\n'`, lines counted, "
                                  "process start included"))
        else:
            rows.append(Row("kcat raw consume", "not measured", "—", "—", "—",
                            "kcat is not installed (`apt-get install -y kcat`)"))
    if "lander" in suites:
        if results.raw_gc:
            rows.append(_rate_row(
                "kafka-python raw consume, the lander's GC setting", results.raw_gc, ref, "—",
                f"the reference run inside lamina.consumer.consumer_gc() (first GC threshold "
                f"{CONSUMER_GC_THRESHOLD:,}, as the lander runs): how much of the lander's "
                f"gain the bare client would get too; not the target's reference"))
        rows += lander_rows(results.lander, len(results.lander_stalls), ref)
    if "validation" in suites:
        for path, runs in results.validation.items():
            best = best_of(runs, lambda t: t.rate)
            cpu = f"{best.cpu_rate:,.0f} ev/s" if best.cpu_rate else "n/a"
            rows.append(_rate_row(f"validation alone, {path}", runs, ref,
                                  "≫ 1× (not the bottleneck)",
                                  f"{loaded.records:,} loaded values in memory, one core; "
                                  f"{best.seconds * 1e6 / best.events:.2f} µs/event; per CPU "
                                  f"second of the thread {cpu} (wall is lower when other "
                                  "processes share the core)"))
    return rows


def lander_rows(runs: list[LanderRun], stalls: int, ref: Timed) -> list[Row]:
    best = best_of(runs, lambda r: r.consumed_rate)
    stalled = (f"; {stalls} more start(s) consumed nothing and were retried (see notes)"
               if stalls else "")
    stats, wall = best.stats, best.seconds
    ratio = best.consumed_rate / ref.rate
    met = "met" if ratio >= LANDER_TARGET else "NOT met"
    reference = f"kafka-python raw {fmt_rate(ref.rate)}"
    rows = [
        Row("lander, records consumed and committed", fmt_rate(best.consumed_rate), reference,
            fmt_ratio(ratio), f"≥ {LANDER_TARGET:.1f}×",
            f"target {met}; {stats.consumed:,} records in {wall:.2f} s wall (consumer "
            f"creation to run() return), {stats.commits} commits"
            f"{_cpu(best.cpu_seconds / wall)}; "
            f"{_runs([r.consumed_rate for r in runs])}{stalled}"),
        Row("lander, rows landed", fmt_rate(best.landed_rate), reference,
            fmt_ratio(best.landed_rate / ref.rate), "—",
            f"{stats.landed:,} rows = the valid events, each once (checked in the table); "
            f"{stats.dead_lettered:,} dead-lettered, {stats.duplicates_dropped:,} duplicates "
            "dropped"),
    ]
    if ref.cpu_rate is not None and best.cpu_seconds > 0:
        cpu_rate = stats.consumed / best.cpu_seconds
        rows.append(Row(
            "lander, records per CPU second", fmt_rate(cpu_rate),
            f"kafka-python raw {fmt_rate(ref.cpu_rate)} per CPU second",
            fmt_ratio(cpu_rate / ref.cpu_rate), "—",
            "this process's CPU time (all threads) instead of wall time: the ratio with the "
            "core to itself, which a busy machine lowers less than the wall-time one"))
    other = wall - stats.poll_s - stats.validate_s - stats.commit_s
    steps = [(f"lander commit: {step}", best.commit_steps.get(step, 0.0),
              COMMIT_STEP_NOTES[step]) for step in COMMIT_STEPS]
    filtering = stats.commit_s - sum(seconds for _, seconds, _ in steps)
    for figure, seconds, note in (
        ("lander time: Kafka poll", stats.poll_s, "LanderStats.poll_s"),
        ("lander time: validate + buffer", stats.validate_s, "LanderStats.validate_s"),
        ("lander time: commit", stats.commit_s,
         "LanderStats.commit_s: the steps below"),
        *steps,
        ("lander commit: replay and duplicate filtering", filtering,
         "commit_s minus the steps above: commit_batch's per-record checks and "
         "LandedIds.add_many"),
        ("lander time: the rest", other,
         "wall minus poll, validate and commit: group join, table creation, consumer close"),
    ):
        rows.append(Row(figure, f"{seconds:.2f} s", f"lander wall {wall:.2f} s",
                        f"{seconds / wall:.0%}", "—", f"{note} (best lander run)"))
    return rows


# -- the report ----------------------------------------------------------------


def versions(training: bool = False, views: bool = False) -> str:
    parts = []
    dists = ["kafka-python", "confluent-kafka", "deltalake", "pyarrow", "orjson"]
    if training or views:
        dists += ["pyspark", "delta-spark"]
    if views:
        dists += ["duckdb", "datasketches"]
    if training:
        dists += ["tensorflow", "tf-keras"]
    for dist in dists:
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    try:
        import confluent_kafka

        parts.append(f"librdkafka {confluent_kafka.libversion()[0]}")
    except ImportError:
        pass
    parts.append(consume.kcat_version() or "kcat (not installed)")
    parts.append(f"kafka-python CRC32C: {kafka_python_crc()}")
    jars = sorted((REPO / ".lamina" / "kafka" / "libs").glob("kafka_2.13-*.jar"))
    if jars:
        parts.append("Kafka " + jars[0].stem.removeprefix("kafka_2.13-"))
    return ", ".join(parts)


@dataclass(frozen=True)
class RunContext:
    """What the report says about the run besides its figures."""

    command: str
    commit: str
    started: datetime
    load_before: str
    events: int
    cpu_before: tuple[int, ...] = field(default_factory=cpu_times)
    cores: frozenset[int] = field(default_factory=lambda: frozenset(os.sched_getaffinity(0)))
    began: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class KafkaFigures:
    """What the Kafka suites measured together on one broker: the loaded
    topic, every run, the pin note, which of them were asked for and the
    generator's transactions (`--events`)."""

    loaded: LoadedTopic
    results: Results
    pin_note: str
    suites: frozenset[str]
    events: int


#: What a run measured: a suite's name -> its results, in measuring order.
Measured = dict[str, Any]

R = TypeVar("R")


def _no_size(results: object) -> str | None:
    return None


def _no_facts(results: object) -> list[tuple[str, str]]:
    return []


@dataclass(frozen=True)
class Suite(Generic[R]):
    """One benchmark suite: everything `run.py` knows about it.

    `measure(args, ctx)` runs it and returns its results; `rows` and `notes`
    render them into the table and the notes; `size` is its phrase in the
    section title (None: none); `facts` adds lines after "Versions".
    `selected_by` are the `--only` names that run it (default: its name).
    Rows and notes appear in SUITE_TABLE's order; `measure_rank` and
    `title_rank` give the order it runs in and its phrase's place in the
    title. `version_groups` name the library groups of `versions()` the
    report lists for it ("views", "training").
    """

    name: str
    measure: Callable[[argparse.Namespace, RunContext], R]
    rows: Callable[[R], list[Row]]
    notes: Callable[[R], list[str]]
    measure_rank: int
    title_rank: int
    size: Callable[[R], str | None] = _no_size
    facts: Callable[[R], list[tuple[str, str]]] = _no_facts
    selected_by: tuple[str, ...] = ()
    version_groups: tuple[str, ...] = ()

    @property
    def only_names(self) -> tuple[str, ...]:
        """The `--only` names that select this suite."""
        return self.selected_by or (self.name,)


def run_all(args: argparse.Namespace, ctx: RunContext) -> Measured:
    """Every suite asked for, in `measure_rank` order: the Kafka figures
    first (broker up and down), training last, with this process's affinity
    back to every core it had at start."""
    measured: Measured = {}
    for suite in sorted(SUITE_TABLE, key=lambda s: s.measure_rank):
        if args.suites & set(suite.only_names):
            measured[suite.name] = suite.measure(args, ctx)
    return measured


def run_benchmarks(args: argparse.Namespace) -> tuple[LoadedTopic, Results, str]:
    """Broker up, cores pinned, topic loaded, figures measured; the broker is
    always stopped. The work directory is removed on success and kept (and
    named) on failure. Returns the loaded topic, the results, the pin note."""
    workdir = Path(tempfile.mkdtemp(prefix="lamina-bench-"))
    cluster: KafkaCluster | None = None
    finished = False
    try:
        cluster = start_broker(workdir)
        pinned, pin_note = pin_cores(cluster)
        bootstrap = cluster.bootstrap_servers
        create_bench_topics(bootstrap)
        warm_up_group_coordinator(bootstrap)
        say(f"loading {args.events:,} records into {RAW_TOPIC}")
        loaded = load_topic(bootstrap, RAW_TOPIC, args.events)
        say(f"loaded {loaded.describe()} in {loaded.seconds:.1f} s")
        results = measure(bootstrap, loaded, args.suites, workdir, pinned, args.rounds)
        finished = True
    finally:
        if cluster is not None:
            cluster.stop()
        if finished:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"kept {workdir} for inspection (broker log: kafka/node-0/server.log)")
    return loaded, results, pin_note


def report_notes(measured: Measured) -> list[str]:
    """The notes of every suite that ran, in SUITE_TABLE's order."""
    return [note for suite in SUITE_TABLE if suite.name in measured
            for note in suite.notes(measured[suite.name])]


def kafka_notes(results: Results, pin_note: str) -> list[str]:
    notes = [
        pin_note,
        f"Each figure ran {results.rounds} times, interleaved round by round with the reference; "
        "the better run of each is reported and ratios are best over best.",
        "CPU % of wall: this process's CPU time (all its threads; for kcat, kcat's plus "
        "reading its pipe) over the wall time. With the client pinned to one core, well "
        "under 100 % means it waited for the broker or for other processes on that core.",
        "Before any figure, one group offset is committed so the broker's group coordinator "
        "(`__consumer_offsets`) exists: the first lander run does not pay for creating it.",
    ]
    if results.lander_stalls:
        notes.append(
            f"{len(results.lander_stalls)} lander start(s) consumed nothing for {STALL_S:.0f} s "
            "and were stopped with `Lander.stop()`, then retried with a fresh dataset and "
            "group; they are not figures: " + "; ".join(results.lander_stalls) + ". A known "
            "cause with kafka-python 3.0.12: the first assignment comes before the topic's "
            "metadata (kafka-python warns `No partition metadata`), the rejoin that follows "
            "completes after `poll(timeout_ms=200)` gave up, and it is never applied.")
    return notes


def render_report(ctx: RunContext, measured: Measured) -> str:
    ran = [suite for suite in SUITE_TABLE if suite.name in measured]
    groups = {group for suite in ran for group in suite.version_groups}
    facts = [
        ("Date", ctx.started.strftime("%Y-%m-%d %H:%M UTC")),
        ("Commit", f"`{ctx.commit}`"),
        ("Command", f"`{ctx.command}`"),
        ("Machine", describe_machine().describe()),
        ("Load average (1/5/15 min)", f"{ctx.load_before} at start, {load_average()} at end"),
        ("CPU time", cpu_steal(ctx.cpu_before)),
        ("Versions", versions("training" in groups, "views" in groups)),
    ]
    for suite in ran:
        facts += suite.facts(measured[suite.name])
    facts.append(("Duration", f"{time.monotonic() - ctx.began:.0f} s"))
    sizes = [phrase for suite in sorted(ran, key=lambda s: s.title_rank)
             if (phrase := suite.size(measured[suite.name])) is not None]
    size = " + ".join(sizes) or "training only"
    title = f"{ctx.started:%Y-%m-%d %H:%M} UTC · {size} · `{ctx.commit}`"
    rows = [row for suite in ran for row in suite.rows(measured[suite.name])]
    return render_section(title, facts, rows, report_notes(measured))


def kafka_python_crc() -> str:
    """kafka-python checks record CRCs with the `crc32c` C module if it is
    installed, else in pure Python, which dominates its consume cost."""
    try:
        from kafka.record import util
    except ImportError:
        return "unknown"
    pure_python = getattr(util._crc32c, "__module__", "") == "kafka.record._crc32c"
    return "pure Python (no `crc32c` module)" if pure_python else "C (`crc32c` module)"


# -- the suites ----------------------------------------------------------------


def _measure_kafka(args: argparse.Namespace, ctx: RunContext) -> KafkaFigures:
    loaded, results, pin_note = run_benchmarks(args)
    return KafkaFigures(loaded, results, pin_note, frozenset(args.suites & KAFKA_SUITES),
                        args.events)


def _kafka_facts(kafka: KafkaFigures) -> list[tuple[str, str]]:
    return [("Data", f"`{RAW_TOPIC}`, {RAW_PARTITIONS} partitions, "
                     f"{kafka.loaded.describe()} (generator seed 42, defaults but "
                     f"transactions={kafka.events:,}); loaded in {kafka.loaded.seconds:.1f} s, "
                     "not a figure")]


def _measure_views(args: argparse.Namespace, ctx: RunContext) -> ViewsResults:
    views_dir = Path(tempfile.mkdtemp(prefix="lamina-bench-views-"))
    try:
        return measure_views(args.views_transactions, set(ctx.cores), args.rounds, say,
                             views_dir, naive=args.views_naive,
                             driver_memory=args.views_driver_memory)
    finally:
        shutil.rmtree(views_dir, ignore_errors=True)


def _measure_stores(args: argparse.Namespace, ctx: RunContext) -> TileStoreResults:
    restore_affinity(set(ctx.cores))
    return measure_tile_stores(STORE_QUICK_TRANSACTIONS if args.quick else STORE_TRANSACTIONS,
                               QUICK_LOOKUPS if args.quick else LOOKUPS)


def _measure_training_set(args: argparse.Namespace, ctx: RunContext) -> TrainingSetResults:
    workdir = Path(tempfile.mkdtemp(prefix="lamina-bench-training-set-"))
    try:
        return measure_training_set(TRAINING_SET_TRANSACTIONS, set(ctx.cores), args.rounds,
                                    say, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _measure_speed(args: argparse.Namespace, ctx: RunContext) -> SpeedResults:
    results = measure_speed(args.speed_events or (SPEED_QUICK_STREAM if args.quick
                                                  else SPEED_STREAM),
                            args.rounds, say, stores=args.speed_stores)
    restore_affinity(set(ctx.cores))
    return results


def _measure_latency(args: argparse.Namespace, ctx: RunContext) -> LatencyResults:
    results = measure_latency(args.rounds, say, quick=args.quick, stores=args.speed_stores)
    restore_affinity(set(ctx.cores))
    return results


def _measure_recovery(args: argparse.Namespace, ctx: RunContext) -> RecoveryResults:
    results = measure_recovery(say, quick=args.quick, stores=args.speed_stores)
    restore_affinity(set(ctx.cores))
    return results


def _measure_serving(args: argparse.Namespace, ctx: RunContext) -> ServingResults:
    results = measure_serving(args.quick, args.rounds)
    restore_affinity(set(ctx.cores))
    return results


#: Every suite, in the order its rows and notes appear in the report; a new
#: suite is one entry here (the `--only` names, help and run follow from it).
SUITE_TABLE: tuple[Suite[Any], ...] = (
    Suite[KafkaFigures](
        "kafka", _measure_kafka,
        rows=lambda k: kafka_rows(k.results, k.loaded, k.suites),
        notes=lambda k: kafka_notes(k.results, k.pin_note),
        measure_rank=0, title_rank=0,
        size=lambda k: f"{k.events:,} records", facts=_kafka_facts,
        selected_by=KAFKA_SUITE_NAMES),
    Suite[ViewsResults](
        "views", _measure_views, views_rows, views_notes, measure_rank=1, title_rank=1,
        size=lambda v: None if v.data is None else f"views over {v.data.rows:,} transactions",
        version_groups=("views",)),
    Suite[TrainingSetResults](
        "training-set", _measure_training_set, training_set_rows, training_set_notes,
        measure_rank=3, title_rank=3,
        size=lambda t: f"training set of {t.lamina[0].rows:,} rows" if t.lamina else None,
        version_groups=("views",)),
    Suite[TrainingResults](
        "training", lambda args, ctx: measure_training(set(ctx.cores), args.rounds, say),
        training_rows, training_notes, measure_rank=11, title_rank=11,
        version_groups=("training",)),
    Suite[TileStoreResults](
        "stores", _measure_stores, tile_store_rows, tile_store_notes,
        measure_rank=2, title_rank=2,
        size=lambda s: f"tile stores over {s.data.transactions:,} transactions"),
    Suite[OnlineStateResults](
        "online-state",
        lambda args, ctx: measure_online_state(
            ONLINE_QUICK_TRANSACTIONS if args.quick else ONLINE_TRANSACTIONS, args.rounds, say),
        online_state_rows, online_state_notes, measure_rank=4, title_rank=4,
        size=lambda o: f"online state over {o.data.transactions:,} transactions"),
    Suite[SpeedResults](
        "speed", _measure_speed, speed_rows, speed_notes, measure_rank=5, title_rank=5,
        size=lambda s: f"speed layer over {len(s.data.stream):,} records"),
    Suite[DagParseResults](
        "dag-parse", lambda args, ctx: measure_dag_parse(max(args.rounds, 3), say),
        dag_parse_rows, dag_parse_notes, measure_rank=8, title_rank=6,
        size=lambda d: f"parse time of {len(d.best_s) - 1} DAG files"),
    Suite[ServingResults](
        "serving", _measure_serving, serving_rows, serving_notes, measure_rank=9, title_rank=7,
        size=lambda s: f"serving over {s.data.transactions:,} transactions"),
    Suite[DagRunResults](
        "dag-run", lambda args, ctx: measure_dag_run(args.rounds, say),
        dag_run_rows, dag_run_notes, measure_rank=10, title_rank=8,
        size=lambda d: f"retraining DAG vs CLI on {d.transactions:,} transactions"),
    Suite[LatencyResults](
        "speed-latency", _measure_latency, latency_rows, latency_notes,
        measure_rank=6, title_rank=9, size=lambda _: "speed latency at 50 % load"),
    Suite[RecoveryResults](
        "speed-recovery", _measure_recovery, recovery_rows, recovery_notes,
        measure_rank=7, title_rank=10, size=lambda _: "speed recovery after kill -9"),
)
#: The `--only` names, in the table's order.
SUITES = tuple(name for suite in SUITE_TABLE for name in suite.only_names)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("WARNING")
    # Before anything runs: the commit as checked out, the load as found.
    ctx = RunContext(command=command_line(argv), commit=git_commit(REPO),
                     started=datetime.now(UTC), load_before=load_average(),
                     events=args.events)
    try:
        measured = run_all(args, ctx)
    except (BenchmarkError, LaminaError) as exc:
        say(f"benchmark failed: {exc}")
        return 1
    section = render_report(ctx, measured)
    print(section)
    if not args.no_append:
        append_section(REPORT, section)
        say(f"appended to {REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
