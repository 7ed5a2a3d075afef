"""The speed layer's realtime tiles against a real Kafka broker and a SQLite
tile store on disk (the kill -9 right after the store write on Redis too):
the stored tiles equal the batch layer's ``build_tiles`` of the valid,
deduplicated events, after resends, bad input, restarts and kill -9."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from lamina import kafkaio
from lamina.generator import GeneratorConfig, generate
from lamina.schemas.card_views import CARD_VIEWS
from lamina.schemas.topics import TopicSpec
from lamina.schemas.validation import EventValidator
from lamina.speed.realtime import RealtimeTiles, SpeedLayer, SpeedStats
from lamina.stores.sqlite import SqliteTileStore
from lamina.topics import create_topics
from tests.speed_helpers import expected_tiles, stored_tiles

pytestmark = pytest.mark.integration

MINUTE_MS = 60_000
LATENESS = 30 * MINUTE_MS
GROUP = "lamina-speed"


def new_topic(bootstrap: str, partitions: int = 3) -> str:
    raw = f"raw-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [TopicSpec(raw, partitions, 86_400_000)])
    return raw


def produce_all(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = kafkaio.make_producer(bootstrap)
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close()


def records_of(**changes: Any) -> list[Any]:
    """Generated records whose valid events are never later than the
    allowed lateness (so the oracle is every valid event), with resends and
    malformed ones."""
    config: dict[str, Any] = dict(seed=17, cards=200, merchants=40, transactions=12_000,
                                  days=1.5, max_lateness_ms=20 * MINUTE_MS,
                                  late_fraction=0.02, duplicate_fraction=0.01,
                                  malformed_fraction=0.005)
    config.update(changes)
    return list(generate(GeneratorConfig(**config)))


def valid_events(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records if r.kind == "valid"]


def run_in_process(bootstrap: str, topic: str, db: Path, *, idle_exit_s: float = 3.0
                   ) -> SpeedStats:
    store = SqliteTileStore(db)
    try:
        tiles = RealtimeTiles(store, CARD_VIEWS, consumer=GROUP, validator=EventValidator(),
                              allowed_lateness_ms=LATENESS)
        consumer = kafkaio.make_consumer(bootstrap, group_id=f"{GROUP}-{topic}",
                                         session_timeout_ms=6000)
        layer = SpeedLayer(consumer=consumer, topic=topic, tiles=tiles,
                           batch_max_events=1000, batch_max_wait_s=0.2)
        return layer.run(idle_exit_s=idle_exit_s)
    finally:
        store.close()


def end_offsets(bootstrap: str, topic: str) -> dict[tuple[str, int], int]:
    from kafka import TopicPartition

    consumer = kafkaio.make_consumer(bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return {(tp.topic, tp.partition): n for tp, n in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def test_streamed_events_make_the_batch_layers_tiles_and_a_resend_counts_once_across_a_restart(
        kafka, tmp_path):
    bootstrap = kafka.bootstrap_servers
    topic = new_topic(bootstrap)
    records = records_of()
    malformed = sum(r.kind == "malformed" for r in records)
    assert malformed > 0 and any(r.kind == "duplicate" for r in records)
    produce_all(bootstrap, topic, [(r.key, r.value) for r in records])
    db = tmp_path / "tiles.db"

    stats = run_in_process(bootstrap, topic, db)
    want = expected_tiles(CARD_VIEWS, valid_events(records))
    assert stored_tiles(db, CARD_VIEWS) == want
    assert stats.invalid == malformed  # counted, never dead-lettered, never stalling
    assert stats.consumed == len(records)
    with SqliteTileStore(db) as store:
        assert store.read_offsets(GROUP) == end_offsets(bootstrap, topic)

    # The producer resends the last 300 valid records (same key, same bytes);
    # a new process, seeded from the store alone, counts none of them again.
    resent = [r for r in records if r.kind == "valid"][-300:]
    produce_all(bootstrap, topic, [(r.key, r.value) for r in resent])
    again = run_in_process(bootstrap, topic, db)
    transactions = sum(orjson.loads(r.value)["event_type"] == "transaction" for r in resent)
    assert again.consumed == len(resent) and again.applied == 0
    assert again.duplicates > 0 and again.duplicates + again.late == transactions
    assert stored_tiles(db, CARD_VIEWS) == want


def speed_env(bootstrap: str, topic: str, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "LAMINA_HOME": str(home),
        "LAMINA_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "LAMINA_KAFKA_RAW_TOPIC": topic,
        "LAMINA_SPEED_GROUP": f"{GROUP}-{topic}",
        # A restarted process takes its partitions back at once (static membership).
        "LAMINA_SPEED_INSTANCE_ID": "speed-under-test",
        "LAMINA_SPEED_ALLOWED_LATENESS_MS": str(LATENESS),
        # Small, frequent micro-batches so kills land between and during writes.
        "LAMINA_SPEED_BATCH_MAX_EVENTS": "500",
        "LAMINA_SPEED_BATCH_MAX_WAIT_S": "0.1",
    })
    return env


def stored_position(db: Path, consumer: str) -> int:
    if not db.exists():
        return 0
    with SqliteTileStore(db) as store:
        return sum(store.read_offsets(consumer).values())


@pytest.mark.slow
def test_the_speed_layer_survives_kill_9_without_counting_an_event_twice_or_losing_one(
        kafka, tmp_path):
    bootstrap = kafka.bootstrap_servers
    topic = new_topic(bootstrap)
    records = records_of(transactions=30_000, cards=500, days=2.0)
    # Production runs while the speed layer is being killed.
    producer = threading.Thread(target=produce_all,
                                args=(bootstrap, topic, [(r.key, r.value) for r in records]))
    producer.start()
    home = tmp_path / "home"
    db = home / "tiles.db"
    env = speed_env(bootstrap, topic, home)
    consumer = env["LAMINA_SPEED_GROUP"]
    rng = random.Random(20261201)
    log = (tmp_path / "speed.log").open("ab")
    command = [sys.executable, "-m", "lamina.cli", "speed", "run", "--quiet"]
    for _ in range(5):
        before = stored_position(db, consumer)
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        # Let this incarnation write a few micro-batches, then kill it at a
        # random moment: mid-poll, mid-apply, mid-write, right after a write.
        target = before + rng.randint(500, 3000)
        deadline = time.monotonic() + 60
        try:
            while stored_position(db, consumer) < target and time.monotonic() < deadline:
                assert proc.poll() is None, f"speed layer exited early, see {tmp_path}/speed.log"
                time.sleep(0.02)
            assert stored_position(db, consumer) > before, "speed layer made no progress"
            time.sleep(rng.uniform(0.0, 0.3))
        finally:  # never leave a process running past the test
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    producer.join()

    final = subprocess.run([*command, "--idle-exit", "4"], env=env, stdout=subprocess.PIPE,
                           stderr=log, timeout=300)
    assert final.returncode == 0, f"see {tmp_path / 'speed.log'}"
    stats = orjson.loads(final.stdout)
    assert stats["commits"] > 0
    assert stored_tiles(db, CARD_VIEWS) == expected_tiles(CARD_VIEWS, valid_events(records))
    with SqliteTileStore(db) as store:
        assert store.read_offsets(consumer) == end_offsets(bootstrap, topic)


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
def test_a_kill_9_right_after_the_store_write_neither_loses_nor_repeats_a_batch(
        kafka, tmp_path, store_kind, request):
    from tests.integration.test_speed_ops import StoreUnderTest

    bootstrap = kafka.bootstrap_servers
    topic = new_topic(bootstrap)
    records = records_of(seed=23, transactions=8000)
    produce_all(bootstrap, topic, [(r.key, r.value) for r in records])
    if store_kind == "sqlite":
        store = StoreUnderTest("sqlite", {"path": str(tmp_path / "tiles.db")})
        location = store.options["path"]
    else:
        store = StoreUnderTest("redis", {"url": request.getfixturevalue("redis_url")})
        location = store.options["url"]
    rng = random.Random(7)
    command = [sys.executable, "-m", "tests.integration.speed_worker", bootstrap, topic, location]
    log = (tmp_path / "worker.log").open("ab")
    kills = 0
    for _ in range(6):  # each run writes 1-3 micro-batches, then kills itself
        run = subprocess.run([*command, str(rng.randint(1, 3))], stdout=log, stderr=log,
                             timeout=120)
        assert run.returncode == -signal.SIGKILL, f"see {tmp_path / 'worker.log'}"
        kills += 1
    final = subprocess.run([*command, "0"], stdout=subprocess.PIPE, stderr=log, timeout=300)
    assert final.returncode == 0, f"see {tmp_path / 'worker.log'}"
    applied, _duplicates, _invalid = map(int, final.stdout.split())
    assert kills == 6 and applied > 0  # the final run had work left: the kills interrupted it
    assert store.tiles() == expected_tiles(CARD_VIEWS, valid_events(records))
    assert store.offsets(f"speed-{topic}") == end_offsets(bootstrap, topic)
