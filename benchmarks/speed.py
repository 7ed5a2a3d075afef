"""The speed layer end to end: generated events through a real broker into a
tile store, every transaction scored by a real champion, next to the raw
kafka-python consume of the same topic in the same run.

    .venv/bin/python -m benchmarks.run --only speed               # 100k stream events
    .venv/bin/python -m benchmarks.run --only speed --quick       # 20k: a smoke run
    .venv/bin/python -m benchmarks.speed --profile                # cProfile one run, print

The data (built once per run, not a figure)
-------------------------------------------
`GeneratorConfig(seed=42, transactions=N * 3 / 2, cards=N / 50, days=3,
max_lateness_ms=20 min)` (the generator's defaults otherwise: 1 % late,
0.1 % resent, 0.2 % malformed). The valid events before the cutoff (day 1)
are the batch view, published to the store (batch tiles and records, as
the batch layer publishes them); every record at or after the cutoff --
about N, with its resends and malformed records -- is the stream, produced
once to a 3-partition topic, keyed by card. A champion is trained
(`train_local`, 2 epochs, hidden 16/8) on contract vectors, saved as a
SavedModel and built with `lamina.speed.models.build_champion`: the NumPy
scorer the speed layer uses.

Figures
-------
* raw consume -- THE REFERENCE: kafka-python with `make_consumer`'s settings,
  the 3 partitions assigned, from the beginning, only counting
  (`benchmarks.consume.kafka_python_raw`).
* speed layer, scored -- `SpeedLayer` + `RealtimeTiles` with scoring on
  (`StreamScoring`, scores produced to a topic by `make_score_sink`'s sink:
  confluent-kafka when installed, else kafka-python), a fresh
  store seeded with the published batch view each round, its own group,
  `run(max_events=stream)`; from creating the consumer until `run` returns
  with everything written. Records per second of wall time, and per CPU
  second of this process (target >= 0.3x raw). Then `SpeedStats`' split:
  poll, apply (validate + seed + state + features + drain/encode), score
  (vectorise + scorer + produce), store write.
* both stores -- the same stream into SQLite and into Redis
  (`redis-server` started here), each a ratio to the raw consume.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import BenchmarkError, Timed, fmt_rate, fmt_ratio
from benchmarks.report import Row

DEFAULT_STREAM = 100_000
QUICK_STREAM = 20_000
SEED = 42
DAYS = 3.0
DAY_MS = 86_400_000
MINUTE_MS = 60_000
LATENESS_MS = 30 * MINUTE_MS  # the [speed] default
PARTITIONS = 3
SPEED_TARGET = 0.3
BATCH_MAX_EVENTS = 5_000  # the [speed] defaults
BATCH_MAX_WAIT_S = 0.05


def say_nothing(_: str) -> None:
    pass


@dataclass
class SpeedData:
    """The stream and the batch view before it."""

    cutoff_ms: int
    horizon_ms: int
    batch_events: list[dict[str, Any]]
    stream: list[tuple[bytes | None, bytes]]
    stream_transactions: int
    seconds: float

    def describe(self) -> str:
        return (f"{len(self.stream):,} stream records ({self.stream_transactions:,} valid "
                f"transactions at or after the cutoff, with their resends and malformed "
                f"records) after a batch view of {len(self.batch_events):,} events (generator "
                f"seed {SEED}, {DAYS:g} days, cutoff after day 1); built in "
                f"{self.seconds:.0f} s (not a figure)")


def build_data(stream_records: int) -> SpeedData:
    from lamina.generator import GeneratorConfig, generate

    began = time.perf_counter()
    config = GeneratorConfig(seed=SEED, transactions=stream_records * 3 // 2,
                             cards=max(20, stream_records // 50), days=DAYS,
                             max_lateness_ms=20 * MINUTE_MS)
    cutoff = config.start + DAY_MS
    batch: list[dict[str, Any]] = []
    stream: list[tuple[bytes | None, bytes]] = []
    transactions = 0
    for record in generate(config):
        event = None if record.kind == "malformed" else orjson.loads(record.value)
        if event is not None and event["event_time"] < cutoff:
            if record.kind == "valid":
                batch.append(event)
            continue
        stream.append((record.key, record.value))
        if record.kind == "valid" and event is not None \
                and event["event_type"] == "transaction":
            transactions += 1
    return SpeedData(cutoff, cutoff + 3 * DAY_MS, batch, stream, transactions,
                     time.perf_counter() - began)


def publish_view(store: Any, data: SpeedData, version: int = 1) -> None:
    """The batch layer's publish of the tiles before the cutoff (what
    ``lamina batch views`` + publish leave in the store)."""
    from lamina.schemas.card_views import CARD_VIEWS
    from lamina.schemas.view_definitions import build_tiles
    from lamina.stores.base import BatchView
    from lamina.stores.lookup import batch_records, definition_fingerprint

    by_hop = {hop: build_tiles(CARD_VIEWS, data.batch_events, hop) for hop in CARD_VIEWS.hops()}
    store.publish_batch(
        BatchView(group=CARD_VIEWS.name, cutoff_ms=data.cutoff_ms, horizon_ms=data.horizon_ms,
                  batch_version=version, definition=definition_fingerprint(CARD_VIEWS)),
        batch_records(CARD_VIEWS, by_hop, data.cutoff_ms, data.horizon_ms))


def train_champion(workdir: Path) -> Any:
    """A real SavedModel of the card contract, loaded as the speed layer
    loads a champion (NumPy scorer, verified against its own graph)."""
    import numpy as np
    import pandas as pd

    from lamina.batch.model import train_local
    from lamina.models.saved_model import save_model
    from lamina.schemas.card_views import CARD_FRAUD, FEATURES
    from lamina.speed.models import build_champion

    rng = np.random.default_rng(SEED)
    n = 4000
    frame = pd.DataFrame({name: rng.gamma(2.0, 3.0, n) for name in FEATURES})
    logit = -3.0 + 0.3 * frame[FEATURES[0]] - 0.1 * frame[FEATURES[-1]]
    frame["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    params = {"epochs": 2, "batch_size": 256, "hidden": [16, 8], "learning_rate": 0.01}
    model, _ = train_local(frame, list(FEATURES), params, seed=1)
    path = save_model(model, workdir / "champion", features=FEATURES)
    return build_champion(1, path, CARD_FRAUD, lineage_fingerprint=None)


@dataclass
class FixedChampion:
    """A champion source that never moves (the hot swap is not measured)."""

    champion: Any

    def check(self) -> Any:
        return self.champion


def produce_stream(bootstrap: str, topic: str, data: SpeedData) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "linger.ms": 20, "queue.buffering.max.messages": 500_000})
    for key, value in data.stream:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(120):
        raise BenchmarkError(f"could not produce the stream to {topic} within 120 s")


@dataclass
class SpeedRun:
    """One speed-layer run: wall and CPU, and its stats."""

    store: str
    timed: Timed
    stats: Any

    def split(self) -> dict[str, float]:
        """Seconds per step of the loop; the ``apply:`` ones are parts of apply."""
        s = self.stats
        state = s.apply_s - s.validate_s - s.seed_s - s.drain_s
        return {"poll": s.poll_s, "apply": s.apply_s, "apply: validate": s.validate_s,
                "apply: seed": s.seed_s, "apply: online state": state,
                "apply: drain": s.drain_s, "score": s.score_s, "write": s.write_s}


def open_store(kind: str, workdir: Path, redis_url: str | None) -> Any:
    if kind == "sqlite":
        from lamina.stores.sqlite import SqliteTileStore

        return SqliteTileStore(workdir / f"tiles-{uuid.uuid4().hex[:8]}.db")
    from lamina.stores.redis import RedisTileStore

    if redis_url is None:
        raise BenchmarkError("the Redis store needs a redis-server")
    return RedisTileStore(redis_url, prefix=f"bench-{uuid.uuid4().hex[:8]}")


#: A run that consumes nothing new for this long is stopped (StallWatch).
STALL_S = 120.0


class StallWatch:
    """Stops ``layer`` (``SpeedLayer.stop``, safe from another thread) when
    its ``stats.consumed`` has not moved for ``stall_s``, so a run that
    stops making progress ends with an error instead of hanging the
    benchmark; ``stalled`` says whether it did."""

    def __init__(self, layer: Any, stall_s: float, *, tick_s: float = 1.0) -> None:
        self.layer = layer
        self.stall_s = stall_s
        self.tick_s = tick_s
        self.stalled = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="speed-stall-watch",
                                        daemon=True)

    def _watch(self) -> None:
        seen, since = -1, time.monotonic()
        while not self._done.wait(self.tick_s):
            consumed = self.layer.stats.consumed
            if consumed != seen:
                seen, since = consumed, time.monotonic()
            elif time.monotonic() - since >= self.stall_s:
                self.stalled = True
                self.layer.stop()
                return

    def __enter__(self) -> StallWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join()


def run_speed(bootstrap: str, topic: str, data: SpeedData, champion: Any, workdir: Path, *,
              store_kind: str = "sqlite", redis_url: str | None = None,
              profile: cProfile.Profile | None = None, stall_s: float = STALL_S) -> SpeedRun:
    """One scored run of the whole stream into a fresh store (the batch
    view published first, not timed). A run that reads nothing new for
    ``stall_s`` is stopped and raises BenchmarkError with its counts."""
    from lamina import kafkaio
    from lamina.schemas.card_views import CARD_FRAUD, CARD_VIEWS
    from lamina.schemas.topics import TopicSpec
    from lamina.schemas.validation import EventValidator
    from lamina.speed.realtime import RealtimeTiles, SpeedLayer, StreamScoring
    from lamina.speed.sink import make_score_sink
    from lamina.topics import create_topics

    store = open_store(store_kind, workdir, redis_url)
    scores_topic = f"bench.scores-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [TopicSpec(scores_topic, PARTITIONS, -1)])
    sink, close_sink = make_score_sink(bootstrap, scores_topic)
    try:
        publish_view(store, data)
        tiles = RealtimeTiles(store, CARD_VIEWS, consumer="bench-speed",
                              validator=EventValidator(), allowed_lateness_ms=LATENESS_MS,
                              scoring=StreamScoring(CARD_FRAUD, FixedChampion(champion), sink))
        began, began_cpu = time.perf_counter(), time.process_time()
        consumer = kafkaio.make_consumer(bootstrap, group_id=f"bench-speed-{uuid.uuid4().hex}",
                                         session_timeout_ms=6000)
        layer = SpeedLayer(consumer=consumer, topic=topic, tiles=tiles,
                           batch_max_events=BATCH_MAX_EVENTS, batch_max_wait_s=BATCH_MAX_WAIT_S)
        if profile is not None:
            profile.enable()
        watch = StallWatch(layer, stall_s)
        try:
            with watch:
                stats = layer.run(max_events=len(data.stream))
        finally:
            if profile is not None:
                profile.disable()
        timed = Timed(stats.consumed, time.perf_counter() - began,
                      time.process_time() - began_cpu)
    finally:
        close_sink()
        store.close()
    if watch.stalled:
        raise BenchmarkError(
            f"the speed layer ({store_kind}) read nothing new for {stall_s:.0f} s and was "
            f"stopped: {stats.consumed:,} of {len(data.stream):,} records consumed, "
            f"{stats.commits} batches written, {stats.resets} resets, {stats.rejoins} group "
            "rejoins; run it again with LAMINA_LOG_LEVEL=INFO to see its partitions")
    if stats.consumed != len(data.stream) or stats.scored == 0:
        raise BenchmarkError(f"the speed layer consumed {stats.consumed:,} of "
                             f"{len(data.stream):,} records and scored {stats.scored:,}")
    return SpeedRun(store_kind, timed, stats)


# -- batched scoring ---------------------------------------------------------


SCORING_BATCHES = (1, 64, 1000)
SCORING_TARGET = 0.5  # at batch 1000


def scoring_items(data: SpeedData, n: int = 1000) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``n`` (transaction, view features) pairs: the stream's first valid
    transactions with their features from one unseeded online state per
    card (real values; exactness is not what is measured here)."""
    from lamina.schemas.card_views import CARD_VIEWS
    from lamina.schemas.online import OnlineState

    states: dict[str, OnlineState] = {}
    items: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for _, value in data.stream:
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict) or event.get("event_type") != "transaction" \
                or "card_id" not in event:
            continue
        card = str(event["card_id"])
        state = states.setdefault(card, OnlineState(CARD_VIEWS, card,
                                                    allowed_lateness_ms=LATENESS_MS))
        try:
            features = state.features_before(int(event["event_time"]))
            state.add(event)
        except Exception:  # noqa: BLE001 - a late or odd event is simply not used here
            continue
        items.append((event, features))
        if len(items) >= n:
            break
    return items


@dataclass
class ScoringFigure:
    batch: int
    lamina: Timed  # the whole score_batch: vectors, the matrix, one scorer call, records
    reference: Timed  # the bare forward pass of the same weights on the same matrix
    # The model as the speed layer calls it: the batch's float32 matrix made
    # from its rows, then the one scorer call (None: not measured).
    model: Timed | None = None
    # Of that, the float32 matrix from the rows' Python floats alone.
    matrix: Timed | None = None


def _repeat(call: Callable[[], Any], rows: int, min_s: float) -> Timed:
    began, began_cpu, count = time.perf_counter(), time.process_time(), 0
    while True:
        call()
        count += rows
        if time.perf_counter() - began >= min_s:
            break
    return Timed(count, time.perf_counter() - began, time.process_time() - began_cpu)


def measure_scoring(champion: Any, items: Sequence[tuple[dict[str, Any], dict[str, Any]]],
                    rounds: int, *, min_s: float = 1.0) -> list[ScoringFigure]:
    """Per batch size, the better of ``rounds`` interleaved rounds of
    ``score_batch`` (the speed layer's call) and of the bare NumPy forward
    pass over the same rows' float32 matrix."""
    import numpy as np

    from lamina.schemas.card_views import CARD_FRAUD
    from lamina.speed.scoring import rows_matrix, score_batch

    out = []
    for batch in SCORING_BATCHES:
        chosen = [items[i % len(items)] for i in range(batch)]
        produced = [0] * batch
        matrix = score_batch(chosen, contract=CARD_FRAUD, champion=champion,
                             produced_at_ms=produced).matrix
        best_l: Timed | None = None
        best_r: Timed | None = None

        def lamina(c: list[Any] = chosen, p: list[int] = produced) -> Any:
            return score_batch(c, contract=CARD_FRAUD, champion=champion, produced_at_ms=p)

        def reference(m: Any = matrix) -> Any:
            return champion.scorer(m)

        rows = [CARD_FRAUD.row(event, features) for event, features in chosen]
        width = len(CARD_FRAUD.features)

        def to_matrix(r: list[tuple[float, ...]] = rows, width: int = width) -> Any:
            return rows_matrix(r, width)  # score_batch's matrix from its rows

        def model_call(to_matrix: Callable[[], Any] = to_matrix) -> Any:
            # score_batch's steps after the rows: the matrix, the one-sum
            # finite check, the scorer.
            m = to_matrix()
            np.isfinite(m.sum())
            return champion.scorer(m)

        best_m: Timed | None = None
        best_x: Timed | None = None
        with np.errstate(over="ignore"):
            for _ in range(rounds):
                lam = _repeat(lamina, batch, min_s)
                mod = _repeat(model_call, batch, min_s)
                mat = _repeat(to_matrix, batch, min_s)
                ref = _repeat(reference, batch, min_s)
                best_l = lam if best_l is None or lam.rate > best_l.rate else best_l
                best_m = mod if best_m is None or mod.rate > best_m.rate else best_m
                best_x = mat if best_x is None or mat.rate > best_x.rate else best_x
                best_r = ref if best_r is None or ref.rate > best_r.rate else best_r
        assert best_l is not None and best_r is not None
        out.append(ScoringFigure(batch, best_l, best_r, best_m, best_x))
    return out


# -- the whole suite -----------------------------------------------------------


@dataclass
class SpeedResults:
    data: SpeedData
    raw: list[Timed] = field(default_factory=list)
    runs: dict[str, list[SpeedRun]] = field(default_factory=dict)
    scoring: list[ScoringFigure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def measure_speed(stream_records: int, rounds: int, say: Callable[[str], None], *,
                  stores: Sequence[str] = ("sqlite", "redis"), pin: bool = True,
                  repo: Path | None = None) -> SpeedResults:
    """The speed suite (module docstring): its own broker and redis-server,
    the rounds interleaved (raw consume, then each store's scored run)."""
    from benchmarks.consume import kafka_python_raw
    from benchmarks.machine import BENCH_CORE, BROKER_CORE, can_pin, pin_pid_threads, pin_self
    from benchmarks.tile_store import redis_server
    from lamina.broker import KafkaCluster, kafka_libs
    from lamina.schemas.topics import TopicSpec
    from lamina.topics import create_topics

    repo = repo or Path(__file__).resolve().parents[1]
    workdir = Path(tempfile.mkdtemp(prefix="lamina-bench-speed-"))
    try:
        data = build_data(stream_records)
        say(data.describe())
        results = SpeedResults(data)
        say("training the champion")
        champion = train_champion(workdir)
        results.scoring = measure_scoring(champion, scoring_items(data), rounds)
        cluster = KafkaCluster(workdir / "kafka", kafka_libs(repo / ".lamina"), nodes=1)
        cluster.start()
        try:
            with ExitStackish() as stack:
                redis_url = None
                redis_pid = None
                if "redis" in stores:
                    redis_url, redis_pid = stack.enter(redis_server(workdir))
                if pin and can_pin():
                    for pid in [p for p in cluster.pids if p is not None] + (
                            [] if redis_pid is None else [redis_pid]):
                        pin_pid_threads(pid, BROKER_CORE)
                    pin_self(BENCH_CORE)
                    results.notes.append(
                        f"The broker's JVM and redis-server are pinned to core {BROKER_CORE}, "
                        f"this process (speed layer, its client threads, the raw consume) to "
                        f"core {BENCH_CORE}.")
                else:
                    results.notes.append("Nothing pinned: client, broker and Redis share the "
                                         "cores.")
                bootstrap = cluster.bootstrap_servers
                topic = "bench.speed"
                create_topics(bootstrap, [TopicSpec(topic, PARTITIONS, -1)])
                produce_stream(bootstrap, topic, data)
                for round_no in range(1, rounds + 1):
                    raw = kafka_python_raw(bootstrap, topic, PARTITIONS, len(data.stream))
                    results.raw.append(raw)
                    say(f"round {round_no}: raw consume {raw.rate:,.0f} ev/s")
                    for kind in stores:
                        run = run_speed(bootstrap, topic, data, champion, workdir,
                                        store_kind=kind, redis_url=redis_url)
                        results.runs.setdefault(kind, []).append(run)
                        say(f"round {round_no}: speed layer ({kind}) {run.timed.rate:,.0f} ev/s")
        finally:
            cluster.stop()
        return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class ExitStackish:
    """``contextlib.ExitStack`` with a typed ``enter``."""

    def __init__(self) -> None:
        from contextlib import ExitStack

        self._stack = ExitStack()

    def __enter__(self) -> ExitStackish:
        self._stack.__enter__()
        return self

    def enter(self, manager: Any) -> Any:
        return self._stack.enter_context(manager)

    def __exit__(self, *exc: Any) -> Any:
        return self._stack.__exit__(*exc)


# -- the table (pure: tests/unit/test_bench_speed.py) ------------------------------


def _best(runs: Sequence[Timed]) -> Timed:
    return max(runs, key=lambda t: t.rate)


def _cpu_rate(timed: Timed) -> str:
    rate = timed.cpu_rate
    return "n/a" if rate is None else f"{rate:,.0f}"


def speed_rows(results: SpeedResults) -> list[Row]:
    """The rows of the speed suite: each figure next to its same-run
    reference, best over best, with per-CPU-second rates in the note."""
    rows: list[Row] = []
    if results.raw:
        raw = _best(results.raw)
        rows.append(Row(
            "speed: kafka-python raw consume (reference)", fmt_rate(raw.rate), "—",
            fmt_ratio(1.0), "—",
            f"make_consumer settings, {PARTITIONS} partitions assigned, from the beginning; "
            f"{raw.events:,} records in {raw.seconds:.2f} s; per CPU second "
            f"{_cpu_rate(raw)} ev/s; best of {len(results.raw)}: "
            + ", ".join(f"{t.rate:,.0f}" for t in results.raw)))
        for kind, runs in results.runs.items():
            best = max(runs, key=lambda r: r.timed.rate)
            t = best.timed
            ratio = t.rate / raw.rate
            met = ratio >= SPEED_TARGET
            cpu_ratio = (t.cpu_rate / raw.cpu_rate
                         if t.cpu_rate is not None and raw.cpu_rate else None)
            rows.append(Row(
                f"speed layer, scored events ({kind})", fmt_rate(t.rate),
                f"kafka-python raw {fmt_rate(raw.rate)}", fmt_ratio(ratio),
                f"≥ {SPEED_TARGET}×",
                ("target met; " if met else "target NOT met; ")
                + f"{t.events:,} records in {t.seconds:.2f} s, {best.stats.scored:,} scored; "
                f"per CPU second {_cpu_rate(t)} ev/s vs raw {_cpu_rate(raw)} "
                f"({'n/a' if cpu_ratio is None else fmt_ratio(cpu_ratio)}); "
                f"{1e6 / t.rate:,.0f} µs/record vs raw {1e6 / raw.rate:,.0f}; best of "
                f"{len(runs)}: " + ", ".join(f"{r.timed.rate:,.0f}" for r in runs)))
            for step, seconds in best.split().items():
                rows.append(Row(
                    f"speed layer time ({kind}): {step}", f"{seconds:.2f} s",
                    f"speed wall {t.seconds:.2f} s", f"{seconds / t.seconds:.0%}", "—",
                    SPLIT_NOTES[step]))
    for figure in results.scoring:
        lam, ref, model = figure.lamina, figure.reference, figure.model
        last = figure.batch == SCORING_BATCHES[-1]
        target = f"≥ {SCORING_TARGET}×" if last else "—"
        if model is not None:
            # The target row: the model as the speed layer scores it.
            ratio = model.rate / ref.rate
            verdict = "" if not last else (
                "target met; " if ratio >= SCORING_TARGET else "target NOT met; ")
            rows.append(Row(
                f"scoring, model call at batch {figure.batch:,}", f"{model.rate:,.0f} rows/s",
                f"NumPy forward pass {ref.rate:,.0f} rows/s", fmt_ratio(ratio), target,
                verdict + "the model as the speed layer calls it (score_batch's float32 "
                "matrix from the batch's rows, the finite check, one scorer call) vs the "
                f"champion's NumPy forward pass of the same matrix alone; per CPU second "
                f"{_cpu_rate(model)} vs {_cpu_rate(ref)} rows/s; "
                f"{1e6 / model.rate:,.2f} vs {1e6 / ref.rate:,.2f} µs/row"
                + ("" if figure.matrix is None else
                   f"; of which the float32 matrix from the rows' Python floats alone "
                   f"{1e6 / figure.matrix.rate:,.2f} µs/row")))
        ratio = lam.rate / ref.rate
        whole_target = target if model is None else "—"
        verdict = "" if whole_target == "—" else (
            "target met; " if ratio >= SCORING_TARGET else "target NOT met; ")
        rows.append(Row(
            f"scoring, score_batch at batch {figure.batch:,}", f"{lam.rate:,.0f} rows/s",
            f"NumPy forward pass {ref.rate:,.0f} rows/s", fmt_ratio(ratio), whole_target,
            verdict + "for the record: the whole speed/scoring.py call (vectors from the "
            "contract, the matrix, one scorer call, one ScoreRecord per row) vs the champion's "
            f"NumPy forward pass of the same float32 matrix; per CPU second {_cpu_rate(lam)} "
            f"vs {_cpu_rate(ref)} rows/s; {1e6 / lam.rate:,.1f} vs {1e6 / ref.rate:,.1f} "
            "µs/row"))
    return rows


SPLIT_NOTES = {
    "poll": "SpeedStats.poll_s: Kafka poll (best run)",
    "apply": "SpeedStats.apply_s: validation, seeding, the online state (features_before, "
             "add), draining and encoding the changed tiles (best run)",
    "apply: validate": "part of apply: SpeedStats.validate_s, the compiled validator over "
                       "every record of a batch (best run)",
    "apply: seed": "part of apply: SpeedStats.seed_s, entity states seeded from the store "
                   "(batch record and realtime tiles) on an entity's first event (best run)",
    "apply: online state": "part of apply: the rest, per event features_before, add and the "
                           "dedup index (apply_s minus the other parts; best run)",
    "apply: drain": "part of apply: SpeedStats.drain_s, the changed tiles drained and encoded "
                    "into rows, with the dedup index rows (best run)",
    "score": "SpeedStats.score_s: score_batch (vectors, NumPy scorer, records) and "
             "producing the score records (confluent-kafka when installed), flushed (best run)",
    "write": "SpeedStats.write_s: the store transaction (tiles, ids rows, offsets) (best run)",
}


def speed_notes(results: SpeedResults) -> list[str]:
    return [f"Speed data: {results.data.describe()}.",
            f"Speed layer: `SpeedLayer` batches of at most {BATCH_MAX_EVENTS:,} records or "
            f"{BATCH_MAX_WAIT_S} s, allowed lateness {LATENESS_MS // MINUTE_MS} min, "
            "one fresh store per run with the batch view published first (not timed), "
            "the champion fixed (no swap); rounds interleaved: raw consume, then each "
            "store.", *results.notes]


def _main(argv: list[str] | None = None) -> int:
    from benchmarks.consume import kafka_python_raw
    from lamina.broker import KafkaCluster, kafka_libs
    from lamina.logs import configure as configure_logging
    from lamina.schemas.topics import TopicSpec
    from lamina.topics import create_topics

    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed")
    parser.add_argument("--events", type=int, default=DEFAULT_STREAM)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=45)
    args = parser.parse_args(argv)
    configure_logging(level="WARNING")
    repo = Path(__file__).resolve().parents[1]
    workdir = Path(tempfile.mkdtemp(prefix="lamina-bench-speed-"))
    try:
        data = build_data(args.events)
        print(data.describe(), flush=True)
        champion = train_champion(workdir)
        cluster = KafkaCluster(workdir / "kafka", kafka_libs(repo / ".lamina"), nodes=1)
        cluster.start()
        try:
            bootstrap = cluster.bootstrap_servers
            topic = "bench.speed"
            create_topics(bootstrap, [TopicSpec(topic, PARTITIONS, -1)])
            produce_stream(bootstrap, topic, data)
            raw = kafka_python_raw(bootstrap, topic, PARTITIONS, len(data.stream))
            print(f"raw consume {raw.rate:,.0f} ev/s ({raw.seconds:.2f} s, cpu "
                  f"{raw.cpu_seconds:.2f} s)", flush=True)
            profile = cProfile.Profile() if args.profile else None
            run = run_speed(bootstrap, topic, data, champion, workdir, profile=profile)
            print(f"speed {run.timed.rate:,.0f} ev/s ({run.timed.seconds:.2f} s, cpu "
                  f"{run.timed.cpu_seconds:.2f} s) = {run.timed.rate / raw.rate:.2f}x raw; "
                  f"split {run.split()}; scored {run.stats.scored:,}", flush=True)
            if profile is not None:
                out = io.StringIO()
                pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(args.top)
                out.write("\n--- by own time ---\n")
                pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.top)
                print(out.getvalue())
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
