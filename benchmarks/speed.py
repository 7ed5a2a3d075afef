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
  (`StreamScoring`, scores produced to a topic, `KafkaScoreSink`), a fresh
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
import resource
import shutil
import sys
import tempfile
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
BATCH_MAX_WAIT_S = 0.2


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
        s = self.stats
        return {"poll": s.poll_s, "apply": s.apply_s, "score": s.score_s, "write": s.write_s}


def open_store(kind: str, workdir: Path, redis_url: str | None) -> Any:
    if kind == "sqlite":
        from lamina.stores.sqlite import SqliteTileStore

        return SqliteTileStore(workdir / f"tiles-{uuid.uuid4().hex[:8]}.db")
    from lamina.stores.redis import RedisTileStore

    if redis_url is None:
        raise BenchmarkError("the Redis store needs a redis-server")
    return RedisTileStore(redis_url, prefix=f"bench-{uuid.uuid4().hex[:8]}")


def run_speed(bootstrap: str, topic: str, data: SpeedData, champion: Any, workdir: Path, *,
              store_kind: str = "sqlite", redis_url: str | None = None,
              profile: cProfile.Profile | None = None) -> SpeedRun:
    """One scored run of the whole stream into a fresh store (the batch
    view published first, not timed)."""
    from lamina import kafkaio
    from lamina.schemas.card_views import CARD_FRAUD, CARD_VIEWS
    from lamina.schemas.topics import TopicSpec
    from lamina.schemas.validation import EventValidator
    from lamina.speed.realtime import RealtimeTiles, SpeedLayer, StreamScoring
    from lamina.speed.sink import KafkaScoreSink
    from lamina.topics import create_topics

    store = open_store(store_kind, workdir, redis_url)
    scores_topic = f"bench.scores-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [TopicSpec(scores_topic, PARTITIONS, -1)])
    producer = kafkaio.make_producer(bootstrap)
    try:
        publish_view(store, data)
        tiles = RealtimeTiles(store, CARD_VIEWS, consumer="bench-speed",
                              validator=EventValidator(), allowed_lateness_ms=LATENESS_MS,
                              scoring=StreamScoring(CARD_FRAUD, FixedChampion(champion),
                                                    KafkaScoreSink(producer, scores_topic)))
        began, began_cpu = time.perf_counter(), time.process_time()
        consumer = kafkaio.make_consumer(bootstrap, group_id=f"bench-speed-{uuid.uuid4().hex}",
                                         session_timeout_ms=6000)
        layer = SpeedLayer(consumer=consumer, topic=topic, tiles=tiles,
                           batch_max_events=BATCH_MAX_EVENTS, batch_max_wait_s=BATCH_MAX_WAIT_S)
        if profile is not None:
            profile.enable()
        try:
            stats = layer.run(max_events=len(data.stream))
        finally:
            if profile is not None:
                profile.disable()
        timed = Timed(stats.consumed, time.perf_counter() - began,
                      time.process_time() - began_cpu)
    finally:
        producer.close()
        store.close()
    if stats.consumed != len(data.stream) or stats.scored == 0:
        raise BenchmarkError(f"the speed layer consumed {stats.consumed:,} of "
                             f"{len(data.stream):,} records and scored {stats.scored:,}")
    return SpeedRun(store_kind, timed, stats)


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
