"""The speed layer's latency at a steady load, and its recovery after kill -9.

    .venv/bin/python -m benchmarks.run --only speed-latency
    .venv/bin/python -m benchmarks.run --only speed-recovery
    .venv/bin/python -m benchmarks.run --only speed-latency,speed-recovery --quick

Both reuse ``benchmarks.speed``'s data (``build_data``: the generated stream
after a published batch view), its champion (``train_champion``) and its
scored run (``run_speed``), on their own single-node broker and
redis-server. The broker's JVM and redis-server are pinned to core 1, this
process (the speed layer, the reference consumers) to core 0.

speed-latency
-------------
1. The sustained maximum: ``run_speed`` over a backlog of
   ``SATURATION_RECORDS`` (best of the rounds), per store.
2. A paced producer -- a child process, ``python -m benchmarks.speed_latency
   pace``, **not pinned** (pinned to the broker's core it sent nothing until
   its final flush, see ``_environment``; at ~1 us per record it takes
   little from either core) -- sends the stream at 50 % of that maximum
   with ``kafkaio.make_fast_producer`` (the project's confluent-kafka
   producer: acks=all, idempotent, linger 5 ms) for ``WARMUP_S`` + the
   measured seconds. Each record's Kafka timestamp is its produce time
   (CreateTime, set by ``produce()``).
3. The reference: a plain kafka-python consumer (``make_consumer``'s
   settings, partitions assigned, ``poll(timeout_ms=100)``; a poll returns
   as soon as a fetch brings records) times the same paced stream: wall clock at poll return
   minus the record's timestamp. Same rate, same run, right before the
   speed layer's paced run.
4. The speed layer: ``SpeedLayer`` + ``RealtimeTiles`` scoring into a fresh
   store (batch view published first); the stream's first ``WARM_RECORDS``
   are produced as a backlog and consumed first (every card's state seeded
   from the store, as in a long-running layer; not timed), then the paced
   producer sends the records after them. Afterwards its score records are read back from
   its scores topic. Two latencies per scored event:
   * **to the score record produced** (the figure): the score record's own
     Kafka timestamp (set when the sink calls ``produce``) minus the
     event's produce time (``scored_at - produce_to_score_ms``);
   * ``produce_to_score_ms`` as the record carries it: from the event's
     Kafka timestamp to ``scored_at``, taken in ``score_batch`` right after
     the scorer call (before the records are encoded and produced).
   Events produced during the first ``WARMUP_S`` are left out (group join,
   first seeds). Target: p99 < 100 ms.
5. Where the latency comes from: the same paced run on SQLite with other
   micro-batch settings (``batch_max_events``, ``batch_max_wait_s``) and
   the loop's longest poll (``SpeedLayer(poll_max_ms=...)``, 10 ms by
   default since 2026-12-04, 100 ms before; a poll never waits past an open
   batch's wait), each with its
   mean batch size and per-batch apply / score / write times from
   ``SpeedStats``.

speed-recovery
--------------
Per store: the first third of the stream is produced to a fresh topic;
``lamina speed run`` (the CLI, a real subprocess; a champion registered and
promoted in an embedded registry, the batch view published in the store,
static membership as in the kill tests) consumes it and is killed with
SIGKILL once about half of that is stored. The other two thirds are
produced while it is down: the backlog is the end offsets minus the
offsets the store holds. Restart: the time from ``Popen`` until the store's
offsets equal the end offsets, split at the first stored batch (start-up:
interpreter, imports, registry, champion load, group join). Next to it, in
the same run: backlog / raw kafka-python consume rate of the same topic,
and backlog / the speed layer's own sustained rate (``run_speed`` on the
same topic, in this process). Then the check of the kill tests
(``tests.speed_helpers.expected_tiles``): the store's realtime tiles equal
the batch layer's tiles of the valid stream events, and the stored offsets
equal the end offsets; the score records replayed by the kill (the
at-least-once batch) are counted.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import BenchmarkError, Timed, fmt_rate, fmt_ratio
from benchmarks.report import Row
from benchmarks.speed import (
    LATENESS_MS,
    PARTITIONS,
    FixedChampion,
    SpeedData,
    StallWatch,
    build_data,
    open_store,
    publish_view,
    run_speed,
    train_champion,
)

LATENCY_TARGET_MS = 100.0
LOAD_FRACTION = 0.5
WARMUP_S = 3.0
PACED_SECONDS = 15.0
QUICK_PACED_SECONDS = 6.0
SATURATION_RECORDS = 15_000
QUICK_SATURATION_RECORDS = 5_000
#: Records consumed as a backlog before a paced run starts (every card
#: touched a few times, so its state is seeded before latency is measured).
WARM_RECORDS = 4_000
QUICK_WARM_RECORDS = 2_000
RECOVERY_RECORDS = 30_000
QUICK_RECOVERY_RECORDS = 9_000
DEFAULT_POLL_MS = 100  # the reference consumer's poll timeout
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass(frozen=True)
class BatchSettings:
    """One micro-batch setting of the sweep."""

    max_events: int
    max_wait_s: float
    poll_ms: int = DEFAULT_POLL_MS

    def describe(self) -> str:
        return (f"batch_max_events={self.max_events:,}, batch_max_wait_s={self.max_wait_s:g}, "
                f"poll at most {self.poll_ms} ms")


DEFAULTS = BatchSettings(5_000, 0.005, 10)  # the [speed] defaults
SWEEP = (BatchSettings(5_000, 0.2), BatchSettings(5_000, 0.02, 20),
         BatchSettings(500, 0.02, 20), BatchSettings(100, 0.005, 10),
         BatchSettings(5_000, 0.05, 100))  # the defaults until 2026-12-04


def percentiles(samples_ms: Sequence[float]) -> dict[float, float]:
    import numpy as np

    if not samples_ms:
        return {p: float("nan") for p in PERCENTILES}
    values = np.asarray(samples_ms, dtype=np.float64)
    return {p: float(np.percentile(values, p)) for p in PERCENTILES}


def fmt_pcts(pcts: dict[float, float]) -> str:
    return " / ".join(f"{pcts[p]:,.0f}" for p in PERCENTILES) + " ms"


# -- the paced producer (a child process) -----------------------------------------


def pace_main(argv: Sequence[str]) -> int:
    """``pace BOOTSTRAP TOPIC RATE COUNT STREAM_FILE FIRST``: wait for a
    line on stdin, then produce COUNT records of the pickled stream from
    index FIRST at RATE records/s; print one JSON line (start wall ms,
    seconds, the worst lag behind the schedule)."""
    from lamina import kafkaio

    bootstrap, topic, rate_s, count_s, stream_file, first_s = argv
    rate, count, first = float(rate_s), int(count_s), int(first_s)
    stream: list[tuple[bytes | None, bytes]] = pickle.loads(
        Path(stream_file).read_bytes())[first:]
    if len(stream) < count:
        raise SystemExit(f"the stream holds {len(stream)} records, {count} asked for")
    producer = kafkaio.make_fast_producer(bootstrap)
    print("ready", flush=True)
    sys.stdin.readline()
    started_ms = time.time_ns() // 1_000_000
    began = time.perf_counter()
    behind = 0.0
    for i in range(count):
        key, value = stream[i]
        delay = began + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            behind = max(behind, -delay)
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    seconds = time.perf_counter() - began
    left = producer.flush(60)
    print(orjson.dumps({"started_ms": started_ms, "seconds": seconds,
                        "behind_max_ms": behind * 1000, "unflushed": left}).decode(),
          flush=True)
    return 0 if left == 0 else 1


class PacedProducer:
    """The child process of ``pace_main``: started, ``go()``, ``finish()``."""

    def __init__(self, bootstrap: str, topic: str, rate: float, count: int,
                 stream_file: Path, core: int | None, first: int = 0) -> None:
        cmd = [sys.executable, "-m", "benchmarks.speed_latency", "pace", bootstrap, topic,
               f"{rate:.3f}", str(count), str(stream_file), str(first)]
        if core is not None:
            cmd = ["taskset", "-c", str(core), *cmd]
        self.count = count
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise BenchmarkError(f"the paced producer did not start (said {line!r})")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self, timeout_s: float) -> dict[str, Any]:
        try:
            out, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise BenchmarkError("the paced producer did not finish in time") from None
        if self.proc.returncode != 0:
            raise BenchmarkError(f"the paced producer failed (exit {self.proc.returncode})")
        return dict(orjson.loads(out.strip().splitlines()[-1]))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- latency runs -----------------------------------------------------------------


@dataclass
class PacedRun:
    """One paced run: what consumed it, the rate, latency samples (ms,
    after the warm-up) and what the producer said."""

    label: str
    rate: float
    samples_ms: list[float]
    producer: dict[str, Any]
    field_samples_ms: list[float] = field(default_factory=list)
    settings: BatchSettings | None = None
    stats: Any = None

    def pcts(self) -> dict[float, float]:
        return percentiles(self.samples_ms)

    @property
    def p99(self) -> float:
        return self.pcts()[99.0]


def _new_topic(bootstrap: str, prefix: str) -> str:
    from lamina.schemas.topics import TopicSpec
    from lamina.topics import create_topics

    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [TopicSpec(topic, PARTITIONS, -1)])
    return topic


def paced_reference(bootstrap: str, stream_file: Path, rate: float, count: int,
                    core: int | None) -> PacedRun:
    """The broker's own produce -> consume latency at ``rate``."""
    from kafka import TopicPartition

    from lamina import kafkaio

    topic = _new_topic(bootstrap, "lat.ref")
    consumer = kafkaio.make_consumer(bootstrap)
    producer = None
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        consumer.poll(timeout_ms=100)  # connect and fetch metadata before the stream starts
        producer = PacedProducer(bootstrap, topic, rate, count, stream_file, core)
        producer.go()
        stamps: list[tuple[int, int]] = []  # (produced, consumed) wall ms
        deadline = time.monotonic() + count / rate + 120
        while len(stamps) < count:
            polled = consumer.poll(timeout_ms=DEFAULT_POLL_MS)
            now_ms = time.time_ns() // 1_000_000
            for records in polled.values():
                stamps.extend((r.timestamp, now_ms) for r in records)
            if time.monotonic() > deadline:
                raise BenchmarkError(f"the reference consumer read {len(stamps)} of {count}")
        said = producer.finish(60)
    finally:
        if producer is not None:
            producer.kill()
        consumer.close()
    skip_before = said["started_ms"] + WARMUP_S * 1000
    samples = [float(c - p) for p, c in stamps if p >= skip_before]
    return PacedRun("broker produce -> consume", rate, samples, said)


def _score_latencies(bootstrap: str, topic: str, expected: int
                     ) -> list[tuple[int, float, float]]:
    """(event produce ms, to record produced ms, produce_to_score_ms) per
    score record on ``topic`` (read from the beginning)."""
    from kafka import TopicPartition

    from lamina import kafkaio

    consumer = kafkaio.make_consumer(bootstrap)
    out: list[tuple[int, float, float]] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + 60
        while len(out) < expected:
            for records in consumer.poll(timeout_ms=200).values():
                for r in records:
                    score = orjson.loads(r.value)
                    produced = int(score["scored_at"]) - int(score["produce_to_score_ms"])
                    out.append((produced, float(r.timestamp - produced),
                                float(score["produce_to_score_ms"])))
            if time.monotonic() > deadline:
                raise BenchmarkError(f"read {len(out)} of {expected} score records of {topic}")
    finally:
        consumer.close()
    return out


def paced_speed(bootstrap: str, data: SpeedData, champion: Any, workdir: Path,
                stream_file: Path, rate: float, count: int, core: int | None, *,
                store_kind: str, redis_url: str | None,
                settings: BatchSettings = DEFAULTS, warm: int = 0) -> PacedRun:
    """The speed layer scoring the paced stream; latency to each score
    record's produce time (module docstring). The first ``warm`` records
    of the stream are produced as a backlog and consumed before the paced
    records (from index ``warm``) start, so the entity states are seeded."""
    from benchmarks.speed import produce_stream
    from lamina import kafkaio
    from lamina.schemas.card_views import CARD_FRAUD, CARD_VIEWS
    from lamina.schemas.validation import EventValidator
    from lamina.speed.realtime import RealtimeTiles, SpeedLayer, StreamScoring
    from lamina.speed.sink import make_score_sink

    topic = _new_topic(bootstrap, f"lat.{store_kind}")
    scores_topic = _new_topic(bootstrap, "lat.scores")
    store = open_store(store_kind, workdir, redis_url)
    sink, close_sink = make_score_sink(bootstrap, scores_topic)
    producer: PacedProducer | None = None
    outcome: dict[str, Any] = {}
    try:
        publish_view(store, data)
        tiles = RealtimeTiles(store, CARD_VIEWS, consumer="bench-latency",
                              validator=EventValidator(), allowed_lateness_ms=LATENESS_MS,
                              scoring=StreamScoring(CARD_FRAUD, FixedChampion(champion), sink))
        consumer = kafkaio.make_consumer(bootstrap, group_id=f"bench-lat-{uuid.uuid4().hex}",
                                         session_timeout_ms=6000)
        layer = SpeedLayer(consumer=consumer, topic=topic, tiles=tiles,
                           batch_max_events=settings.max_events,
                           batch_max_wait_s=settings.max_wait_s, poll_max_ms=settings.poll_ms)

        def consume() -> None:
            try:
                with StallWatch(layer, 60.0) as watch:
                    outcome["stats"] = layer.run(max_events=warm + count)
                outcome["stalled"] = watch.stalled
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                outcome["error"] = exc

        if warm:
            produce_stream(bootstrap, topic, replace(data, stream=data.stream[:warm]))
        producer = PacedProducer(bootstrap, topic, rate, count, stream_file, core, warm)
        thread = threading.Thread(target=consume, name="bench-speed-layer", daemon=True)
        thread.start()
        deadline = time.monotonic() + 60 + warm / 50
        while (len(consumer.assignment()) < PARTITIONS or layer.stats.consumed < warm
               or layer.stats.commits == 0) and thread.is_alive():
            if time.monotonic() > deadline:
                layer.stop()
                raise BenchmarkError("the speed layer did not own its partitions and read "
                                     "the warm-up backlog in time")
            time.sleep(0.05)
        producer.go()
        said = producer.finish(count / rate + 120)
        thread.join(count / rate + 180)
        if "error" in outcome:
            raise BenchmarkError(f"the speed layer failed: {outcome['error']!r}")
        if thread.is_alive() or outcome.get("stalled") or "stats" not in outcome:
            layer.stop()
            raise BenchmarkError(f"the paced speed layer ({store_kind}) did not consume all "
                                 f"{count} records")
        stats = outcome["stats"]
        expected = sink.produced
    finally:
        if producer is not None:
            producer.kill()
        close_sink()
        store.close()
    scored = _score_latencies(bootstrap, scores_topic, expected)
    skip_before = said["started_ms"] + WARMUP_S * 1000
    kept = [s for s in scored if s[0] >= skip_before]
    return PacedRun(f"speed layer ({store_kind})", rate, [s[1] for s in kept], said,
                    field_samples_ms=[s[2] for s in kept], settings=settings, stats=stats)


@dataclass
class LatencyResults:
    data: SpeedData
    saturation: dict[str, list[Timed]] = field(default_factory=dict)
    references: dict[str, PacedRun] = field(default_factory=dict)  # by store (its rate)
    runs: dict[str, PacedRun] = field(default_factory=dict)
    sweep: list[PacedRun] = field(default_factory=list)
    seconds: float = PACED_SECONDS
    warm: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Setup:
    """The broker, redis-server and the pinning shared by both suites."""

    bootstrap: str
    redis_url: str | None
    producer_core: int | None


def _environment(workdir: Path, stores: Sequence[str], stack: Any, notes: list[str],
                 repo: Path) -> Setup:
    from benchmarks.machine import BENCH_CORE, BROKER_CORE, can_pin, pin_pid_threads, pin_self
    from benchmarks.tile_store import redis_server
    from lamina.broker import KafkaCluster, kafka_libs

    cluster = KafkaCluster(workdir / "kafka", kafka_libs(repo / ".lamina"), nodes=1)
    cluster.start()
    stack.callback(cluster.stop)
    redis_url, redis_pid = None, None
    if "redis" in stores:
        redis_url, redis_pid = stack.enter_context(redis_server(workdir))
    core = None
    if can_pin():
        for pid in [p for p in cluster.pids if p is not None] + (
                [] if redis_pid is None else [redis_pid]):
            pin_pid_threads(pid, BROKER_CORE)
        pin_self(BENCH_CORE)
        # The paced producer is not pinned. Pinned to the broker's core (the
        # runs before 2026-12-03) with a consumer reading, librdkafka sent
        # nothing until its final flush: every record of a 6 s run reached
        # the broker at its end (delivery reports all at 6.5 s; produce ->
        # consume 6,000 ms for the first record, 900 ms for the last), so
        # the reference p99 was the run's length, not the broker's latency.
        # Unpinned, the same run delivers from the first second (p99 ~60 ms
        # after the producer's id is acquired).
        core = None
        notes.append(f"The broker's JVM and redis-server are pinned to core {BROKER_CORE}, this "
                     f"process (speed layer, reference consumers, `lamina speed run` children) "
                     f"to core {BENCH_CORE}; the paced producer is not pinned (pinned to the "
                     "broker's core, it sent nothing until its final flush).")
    else:
        notes.append("Nothing pinned: producer, speed layer, broker and Redis share the cores.")
    return Setup(cluster.bootstrap_servers, redis_url, core)


def measure_latency(rounds: int, say: Callable[[str], None], *, quick: bool = False,
                    stores: Sequence[str] = ("sqlite", "redis"), sweep: bool = True,
                    repo: Path | None = None) -> LatencyResults:
    """The speed-latency suite (module docstring)."""
    import shutil
    from contextlib import ExitStack

    from benchmarks.speed import produce_stream

    repo = repo or Path(__file__).resolve().parents[1]
    seconds = QUICK_PACED_SECONDS if quick else PACED_SECONDS
    workdir = Path(tempfile.mkdtemp(prefix="lamina-bench-latency-"))
    try:
        saturation_n = QUICK_SATURATION_RECORDS if quick else SATURATION_RECORDS
        warm = QUICK_WARM_RECORDS if quick else WARM_RECORDS
        # Enough records for the paced runs at up to ~4k ev/s (checked below).
        data = build_data(max(saturation_n, warm + int(4_000 * (seconds + WARMUP_S))))
        say(data.describe())
        results = LatencyResults(data, seconds=seconds, warm=warm)
        champion = train_champion(workdir)
        stream_file = workdir / "stream.pickle"
        stream_file.write_bytes(pickle.dumps(data.stream))
        with ExitStack() as stack:
            env = _environment(workdir, stores, stack, results.notes, repo)
            sat_data = replace(data, stream=data.stream[:saturation_n])
            sat_topic = _new_topic(env.bootstrap, "lat.saturation")
            produce_stream(env.bootstrap, sat_topic, sat_data)
            for round_no in range(1, rounds + 1):
                for kind in stores:
                    sat = run_speed(env.bootstrap, sat_topic, sat_data, champion, workdir,
                                    store_kind=kind, redis_url=env.redis_url).timed
                    results.saturation.setdefault(kind, []).append(sat)
                    say(f"round {round_no}: sustained ({kind}) {sat.rate:,.0f} ev/s")
            for kind in stores:
                best = max(results.saturation[kind], key=lambda t: t.rate)
                rate = LOAD_FRACTION * best.rate
                count = int(rate * (seconds + WARMUP_S))
                if warm + count > len(data.stream):
                    raise BenchmarkError(f"{count} records needed at {rate:,.0f} ev/s, the "
                                         f"stream holds {len(data.stream)}")
                ref = paced_reference(env.bootstrap, stream_file, rate, count,
                                      env.producer_core)
                results.references[kind] = ref
                say(f"{kind}: broker p99 {ref.p99:,.0f} ms at {rate:,.0f} ev/s")
                paced = paced_speed(env.bootstrap, data, champion, workdir, stream_file, rate,
                                    count, env.producer_core, store_kind=kind,
                                    redis_url=env.redis_url, warm=warm)
                results.runs[kind] = paced
                say(f"{kind}: speed p99 {paced.p99:,.0f} ms at {rate:,.0f} ev/s")
                if sweep and kind == "sqlite":
                    for settings in SWEEP:
                        swept = paced_speed(env.bootstrap, data, champion, workdir,
                                            stream_file, rate, count, env.producer_core,
                                            store_kind=kind, redis_url=env.redis_url,
                                            settings=settings, warm=warm)
                        results.sweep.append(swept)
                        say(f"sweep {settings.describe()}: p99 {swept.p99:,.0f} ms")
        return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _per_batch(stats: Any) -> str:
    commits = max(1, stats.commits)
    return (f"{stats.consumed / commits:,.0f} records/batch over {stats.commits} batches; per "
            f"batch apply {1000 * stats.apply_s / commits:,.0f} ms, score+produce "
            f"{1000 * stats.score_s / commits:,.0f} ms, store write "
            f"{1000 * stats.write_s / commits:,.0f} ms")


def latency_rows(results: LatencyResults) -> list[Row]:
    rows: list[Row] = []
    for kind, timed in results.saturation.items():
        best = max(timed, key=lambda t: t.rate)
        rows.append(Row(
            f"speed-latency: sustained max ({kind})", fmt_rate(best.rate), "—", "—", "—",
            f"run_speed over a backlog of {best.events:,} records, best of {len(timed)}: "
            + ", ".join(f"{t.rate:,.0f}" for t in timed)
            + f"; the paced runs below produce at {LOAD_FRACTION:.0%} of it"))
    for kind, run in results.runs.items():
        ref = results.references[kind]
        pcts, ref_pcts = run.pcts(), ref.pcts()
        p99, ref99 = pcts[99.0], ref_pcts[99.0]
        met = p99 < LATENCY_TARGET_MS
        rows.append(Row(
            f"speed-latency: broker produce→consume at {ref.rate:,.0f} ev/s (reference, {kind})",
            f"p99 {ref99:,.0f} ms", "—", "1.00×", "—",
            f"plain kafka-python consumer, poll 100 ms; p50/p90/p99/p99.9 {fmt_pcts(ref_pcts)}; "
            f"{len(ref.samples_ms):,} records after a {WARMUP_S:g} s warm-up; producer at most "
            f"{ref.producer['behind_max_ms']:,.0f} ms behind its schedule"))
        rows.append(Row(
            f"speed-latency: produce→score record at {run.rate:,.0f} ev/s ({kind})",
            f"p99 {p99:,.0f} ms", f"broker p99 {ref99:,.0f} ms", fmt_ratio(p99 / max(ref99, 1)),
            f"p99 < {LATENCY_TARGET_MS:.0f} ms",
            ("target met; " if met else "target NOT met; ")
            + f"p50/p90/p99/p99.9 {fmt_pcts(pcts)} to the score record's produce time; "
            f"produce_to_score_ms (to scored_at) {fmt_pcts(percentiles(run.field_samples_ms))}; "
            f"{len(run.samples_ms):,} scores after the warm-up; defaults "
            f"({DEFAULTS.describe()}); {_per_batch(run.stats)}"))
    base = results.runs.get("sqlite")
    sqlite_ref = results.references.get("sqlite")
    swept = ([base] if base is not None and results.sweep else []) + results.sweep
    for run in swept:
        assert run.settings is not None and sqlite_ref is not None
        pcts = run.pcts()
        rows.append(Row(
            f"speed-latency sweep (sqlite): {run.settings.describe()}", f"p99 {pcts[99.0]:,.0f} ms",
            f"broker p99 {sqlite_ref.p99:,.0f} ms",
            fmt_ratio(pcts[99.0] / max(sqlite_ref.p99, 1)),
            f"p99 < {LATENCY_TARGET_MS:.0f} ms",
            f"at {run.rate:,.0f} ev/s; p50/p90/p99/p99.9 {fmt_pcts(pcts)}; "
            + _per_batch(run.stats)))
    return rows


def latency_notes(results: LatencyResults) -> list[str]:
    return [f"Speed latency data: {results.data.describe()}.",
            f"Speed latency: each paced run produces for {WARMUP_S:g} s of warm-up (not counted) "
            f"plus {results.seconds:g} s with `kafkaio.make_fast_producer` (linger 5 ms) from a "
            "child process, after the speed layer consumed a backlog of the stream's first "
            f"{results.warm:,} records (entity states seeded, not timed); the reference "
            "consumer and the speed layer each get their own "
            "topic and the same records at the same rate; one run per setting (latency "
            "percentiles, not a best of).", *results.notes]


# -- recovery -------------------------------------------------------------------


@dataclass
class RecoveryRun:
    store: str
    total: int
    backlog: int
    restart_s: float  # Popen -> stored offsets == end offsets
    first_write_s: float  # Popen -> the first batch stored
    assigned_s: float  # Popen -> partitions resumed (the process's own log line)
    raw: Timed
    sustained: Timed
    tiles_exact: bool
    tiles: int
    offsets_exact: bool
    scores: int
    distinct_scored: int


def _valid_stream_events(data: SpeedData, stream_records: int) -> list[dict[str, Any]]:
    """The valid events of the stream (``build_data``'s generator run again)."""
    from benchmarks.speed import DAYS, MINUTE_MS, SEED
    from lamina.generator import GeneratorConfig, generate

    config = GeneratorConfig(seed=SEED, transactions=stream_records * 3 // 2,
                             cards=max(20, stream_records // 50), days=DAYS,
                             max_lateness_ms=20 * MINUTE_MS)
    out = []
    for record in generate(config):
        if record.kind == "valid":
            event = orjson.loads(record.value)
            if event["event_time"] >= data.cutoff_ms:
                out.append(event)
    return out


def _stored_tiles(kind: str, location: str, prefix: str, cutoff_ms: int) -> dict[Any, bytes]:
    from lamina.schemas.card_views import CARD_VIEWS
    from tests.speed_helpers import stored_tiles

    if kind == "sqlite":
        return stored_tiles(Path(location), CARD_VIEWS, cutoff_ms)
    import redis

    client = redis.Redis.from_url(location)
    try:
        fields: dict[bytes, bytes] = client.hgetall(  # type: ignore[assignment]
        f"{prefix}:rt:{CARD_VIEWS.name}")
    finally:
        client.close()
    out: dict[Any, bytes] = {}
    for name, value in fields.items():
        hop, start, entity = name.decode().split(":", 2)
        if int(start) >= cutoff_ms:
            out[(entity, int(hop), int(start))] = bytes(value)
    return out


def _end_offsets(bootstrap: str, topic: str) -> dict[tuple[str, int], int]:
    from kafka import TopicPartition

    from lamina import kafkaio

    consumer = kafkaio.make_consumer(bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {(tp.topic, tp.partition): n for tp, n in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def _count_scores(bootstrap: str, topic: str) -> tuple[int, int]:
    """(score records, distinct event ids) on ``topic``."""
    from kafka import TopicPartition

    from lamina import kafkaio

    ends = _end_offsets(bootstrap, topic)
    total = sum(ends.values())
    consumer = kafkaio.make_consumer(bootstrap)
    ids: set[str] = set()
    seen = 0
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + 60
        while seen < total and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                seen += len(records)
                ids.update(orjson.loads(r.value)["event_id"] for r in records)
    finally:
        consumer.close()
    return seen, len(ids)


def _produce(bootstrap: str, topic: str, data: SpeedData,
             records: list[tuple[bytes | None, bytes]]) -> None:
    from benchmarks.speed import produce_stream

    produce_stream(bootstrap, topic, replace(data, stream=records))


def recover_once(setup: Setup, data: SpeedData, champion: Any, workdir: Path, home: Path,
                 kind: str, valid_events: list[dict[str, Any]]) -> RecoveryRun:
    """One store's kill -9 and catch-up (module docstring)."""
    from benchmarks.consume import kafka_python_raw
    from lamina.schemas.card_views import CARD_VIEWS
    from tests.speed_helpers import expected_tiles

    topic = _new_topic(setup.bootstrap, f"rec.{kind}")
    scores_topic = _new_topic(setup.bootstrap, f"rec.scores.{kind}")
    group = f"bench-recovery-{kind}-{uuid.uuid4().hex[:6]}"
    prefix = f"rec{uuid.uuid4().hex[:8]}"
    location = str(workdir / f"recovery-{prefix}.db") if kind == "sqlite" else str(
        setup.redis_url)
    options = {"path": location} if kind == "sqlite" else {"url": location, "prefix": prefix}
    store = open_store_at(kind, options)
    try:
        publish_view(store, data)
    finally:
        store.close()
    env = dict(os.environ)
    env.update({
        "LAMINA_HOME": str(home),
        "LAMINA_KAFKA_BOOTSTRAP_SERVERS": setup.bootstrap,
        "LAMINA_KAFKA_RAW_TOPIC": topic,
        "LAMINA_KAFKA_SCORES_TOPIC": scores_topic,
        "LAMINA_SPEED_GROUP": group,
        "LAMINA_SPEED_INSTANCE_ID": f"{group}-0",
        "LAMINA_SPEED_ALLOWED_LATENESS_MS": str(LATENESS_MS),
        "LAMINA_SPEED_METRICS_PATH": str(workdir / f"{prefix}.prom"),
        "LAMINA_TILE_STORE_KIND": kind,
        "LAMINA_TILE_STORE_OPTIONS": orjson.dumps(options).decode(),
    })
    command = [sys.executable, "-m", "lamina.cli", "speed", "run", "--quiet"]
    log = (workdir / f"speed-{kind}.log").open("ab")
    first = len(data.stream) // 3

    def position() -> int:
        with open_store_at(kind, options) as s:
            return sum(s.read_offsets(group).values())

    _produce(setup.bootstrap, topic, data, data.stream[:first])
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    try:
        # Generous: under a load average of 25-30 the start alone took ~95 s.
        deadline = time.monotonic() + 600
        while position() < first // 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkError(f"`lamina speed run` ({kind}) made no progress; see "
                                     f"{workdir}/speed-{kind}.log")
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _produce(setup.bootstrap, topic, data, data.stream[first:])
    ends = _end_offsets(setup.bootstrap, topic)
    total = sum(ends.values())
    stored_at_kill = position()
    backlog = total - stored_at_kill
    log.flush()
    log_start = (workdir / f"speed-{kind}.log").stat().st_size
    began, began_wall = time.perf_counter(), time.time()
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    first_write_s = float("nan")
    try:
        deadline = time.monotonic() + 600
        while True:
            now_pos = position()
            if now_pos > stored_at_kill and first_write_s != first_write_s:
                first_write_s = time.perf_counter() - began
            if now_pos >= total:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkError(f"`lamina speed run` ({kind}) did not catch up; see "
                                     f"{workdir}/speed-{kind}.log")
            time.sleep(0.02)
        restart_s = time.perf_counter() - began
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assigned_s = _resumed_at(workdir / f"speed-{kind}.log", log_start) - began_wall
    with open_store_at(kind, options) as s:
        offsets_exact = s.read_offsets(group) == ends
    want = expected_tiles(CARD_VIEWS, valid_events, data.cutoff_ms)
    got = _stored_tiles(kind, location, prefix, data.cutoff_ms)
    scores, distinct = _count_scores(setup.bootstrap, scores_topic)
    # The references, same topic, same run.
    raw = kafka_python_raw(setup.bootstrap, topic, PARTITIONS, total)
    sustained = run_speed(setup.bootstrap, topic, replace(data, stream=data.stream[:total]),
                          champion, workdir, store_kind=kind, redis_url=setup.redis_url).timed
    return RecoveryRun(kind, total, backlog, restart_s, first_write_s, assigned_s, raw,
                       sustained,
                       got == want, len(want), offsets_exact, scores, distinct)


def _resumed_at(log_path: Path, offset: int) -> float:
    """The wall time of the first "partition resumed from the store" line
    written after ``offset`` (structured log lines start with the local
    time, e.g. ``2026-12-01 19:59:18,603``); NaN if there is none."""
    with log_path.open("rb") as log:
        log.seek(offset)
        for raw_line in log:
            line = raw_line.decode(errors="replace")
            if "partition resumed from the store" in line:
                try:
                    stamp = time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")
                    return time.mktime(stamp) + int(line[20:23]) / 1000
                except ValueError:  # not a log line's start
                    continue
    return float("nan")


def open_store_at(kind: str, options: dict[str, Any]) -> Any:
    from lamina.stores import open_store as open_configured

    return open_configured(kind, **options)


def register_champion(home: Path, champion_dir: Path, cutoff_ms: int) -> int:
    """Register and promote the benchmark's champion in the embedded
    registry under ``home`` (what `lamina speed run` loads)."""
    from lamina.models.registry import Lineage, ModelRegistry
    from lamina.schemas.card_views import FEATURES

    registry = ModelRegistry.local(home)
    version = registry.register(champion_dir, Lineage(
        snapshot_id=0, code_version="benchmark", params={}, metrics={},
        training_window=(0, cutoff_ms), features=list(FEATURES)))
    registry.promote(version, "the speed-recovery benchmark's champion")
    return version


@dataclass
class RecoveryResults:
    data: SpeedData
    runs: list[RecoveryRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def measure_recovery(say: Callable[[str], None], *, quick: bool = False,
                     stores: Sequence[str] = ("sqlite", "redis"),
                     repo: Path | None = None) -> RecoveryResults:
    import shutil
    from contextlib import ExitStack

    repo = repo or Path(__file__).resolve().parents[1]
    n = QUICK_RECOVERY_RECORDS if quick else RECOVERY_RECORDS
    workdir = Path(tempfile.mkdtemp(prefix="lamina-bench-recovery-"))
    finished = False
    try:
        data = build_data(n)
        say(data.describe())
        results = RecoveryResults(data)
        champion = train_champion(workdir)
        home = workdir / "home"
        home.mkdir()
        version = register_champion(home, workdir / "champion", data.cutoff_ms)
        say(f"champion version {version} registered")
        valid = _valid_stream_events(data, n)
        with ExitStack() as stack:
            setup = _environment(workdir, stores, stack, results.notes, repo)
            for kind in stores:
                run = recover_once(setup, data, champion, workdir, home, kind, valid)
                results.runs.append(run)
                say(f"{kind}: backlog {run.backlog:,} caught up in {run.restart_s:.1f} s "
                    f"(partitions after {run.assigned_s:.1f} s, first batch stored after "
                    f"{run.first_write_s:.1f} s; sustained "
                    f"{run.sustained.rate:,.0f} ev/s, raw {run.raw.rate:,.0f} ev/s; tiles "
                    f"exact {run.tiles_exact}, offsets exact {run.offsets_exact})")
        finished = True
        return results
    finally:
        if finished:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"kept {workdir} for inspection (speed-<store>.log)")


def recovery_rows(results: RecoveryResults) -> list[Row]:
    rows: list[Row] = []
    for run in results.runs:
        raw_s = run.backlog / run.raw.rate
        sus_s = run.backlog / run.sustained.rate
        catch_up_rate = run.backlog / max(run.restart_s - run.assigned_s, 1e-9)
        rows.append(Row(
            f"speed-recovery: kill -9, restart → caught up ({run.store})",
            f"{run.restart_s:.1f} s", f"backlog / sustained {sus_s:.1f} s",
            fmt_ratio(run.restart_s / sus_s), "—",
            f"backlog {run.backlog:,} of {run.total:,} records; start-up (Popen → partitions "
            f"resumed, from its log: interpreter, imports, registry, TensorFlow, champion, "
            f"group join) {run.assigned_s:.1f} s, first batch stored at {run.first_write_s:.1f} "
            f"s; from the assignment to caught up {catch_up_rate:,.0f} ev/s "
            f"({fmt_ratio(catch_up_rate / run.sustained.rate)} sustained); speed layer sustained "
            f"{fmt_rate(run.sustained.rate)} (run_speed, same topic, in-process)"))
        rows.append(Row(
            f"speed-recovery: the same backlog at the raw consume rate ({run.store})",
            f"{raw_s:.2f} s", f"restart → caught up {run.restart_s:.1f} s",
            fmt_ratio(run.restart_s / raw_s), "—",
            f"kafka-python raw {fmt_rate(run.raw.rate)} over the same {run.total:,} records"))
        replayed = run.scores - run.distinct_scored
        rows.append(Row(
            f"speed-recovery: tiles after recovery ({run.store})",
            "exact" if run.tiles_exact and run.offsets_exact else "NOT exact",
            "build_tiles of the valid stream events", "—", "exact",
            f"{run.tiles:,} realtime tiles compared with tests.speed_helpers.expected_tiles "
            f"(no double count, none lost); stored offsets "
            f"{'==' if run.offsets_exact else '!='} end offsets; score records "
            f"{run.scores:,} for {run.distinct_scored:,} events ({replayed:,} scored again "
            "after the kill: at-least-once, as documented)"))
    return rows


def recovery_notes(results: RecoveryResults) -> list[str]:
    from lamina.config import SpeedSettings

    return [f"Speed recovery data: {results.data.describe()}.",
            "Speed recovery: `lamina speed run --quiet` with the [speed] defaults ("
            f"{SpeedSettings().batch_max_events:,} records or "
            f"{SpeedSettings().batch_max_wait_s:g} s), static membership "
            "(`LAMINA_SPEED_INSTANCE_ID`) as the kill tests use; a third of the stream "
            "produced, the process killed with SIGKILL once half of that is stored, the rest "
            "produced while it is down; the store's offsets polled every 20 ms.",
            *results.notes]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "pace":
        sys.exit(pace_main(sys.argv[2:]))
    sys.exit("usage: python -m benchmarks.speed_latency pace BOOTSTRAP TOPIC RATE COUNT FILE "
             "(the paced producer; run the suites with python -m benchmarks.run)")
