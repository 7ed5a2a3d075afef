"""Streaming scoring end to end on a real broker, a SQLite tile store, a real
MLflow registry and a real SavedModel: batch views published for a cutoff,
a champion registered and promoted, generated events streamed through the
``SpeedLayer``; ``scores.v1`` holds one score per applied transaction, each
naming the model version, and each logged feature vector equals the
offline reference for that event bit for bit (invariant 6)."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from lamina import kafkaio
from lamina.batch.model import train_local
from lamina.generator import GeneratorConfig
from lamina.models.registry import ModelRegistry
from lamina.models.saved_model import save_model
from lamina.schemas.card_views import CARD_FRAUD, CARD_VIEWS, FEATURES
from lamina.schemas.scores import ScoreRecord, decode_score
from lamina.schemas.topics import TopicSpec
from lamina.schemas.validation import EventValidator
from lamina.schemas.view_definitions import features_from_events
from lamina.speed.realtime import RealtimeTiles, SpeedLayer, SpeedStats, StreamScoring
from lamina.speed.sink import KafkaScoreSink
from lamina.stores.sqlite import SqliteTileStore
from lamina.topics import create_topics
from tests.integration.test_speed_champion import (
    PARAMS,
    contract_examples,
    holder_for,
    register,
)
from tests.integration.test_speed_realtime import (
    GROUP,
    LATENESS,
    end_offsets,
    new_topic,
    produce_all,
    records_of,
)
from tests.speed_helpers import expected_tiles
from tests.unit.test_speed_realtime import DAY_MS, publish

pytestmark = pytest.mark.integration  # Kafka, TensorFlow and MLflow


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, frame = contract_examples(2000, seed=11)
    model, _ = train_local(frame, list(FEATURES), PARAMS, seed=1)
    return save_model(model, tmp_path_factory.mktemp("stream-model") / "m", features=FEATURES)


def read_scores(bootstrap: str, topic: str, at_least: int, *, deadline_s: float = 120.0
                ) -> list[tuple[bytes, ScoreRecord]]:
    consumer = kafkaio.make_consumer(bootstrap, group_id=None, consumer_timeout_ms=3000)
    try:
        consumer.subscribe([topic])
        out: list[tuple[bytes, ScoreRecord]] = []
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            for message in consumer:
                out.append((message.key, decode_score(message.value, features=FEATURES)))
            if len(out) >= at_least:
                break
        return out
    finally:
        consumer.close()


def test_every_applied_transaction_gets_one_score_with_the_offline_features_bit_for_bit(
        kafka, tmp_path: Path, model_path: Path) -> None:
    bootstrap = kafka.bootstrap_servers
    records = records_of(seed=31, cards=60, transactions=3000, days=2.0)
    start = GeneratorConfig().start
    cutoff = start + DAY_MS
    events = {r: orjson.loads(r.value) for r in records if r.kind != "malformed"}
    batch_events = [e for r, e in events.items() if r.kind == "valid" and e["event_time"] < cutoff]
    # The stream: everything at or after the cutoff (valid, resends, malformed)
    # plus a few resends of events the batch view already holds.
    stream = [r for r in records if r not in events or events[r]["event_time"] >= cutoff]
    stream += [r for r in records if r.kind == "valid" and events[r]["event_time"] < cutoff
               and events[r]["event_type"] == "transaction"][:20]

    db = tmp_path / "tiles.db"
    store = SqliteTileStore(db)
    publish(store, batch_events, cutoff, 7)
    registry = ModelRegistry.local(tmp_path / "home", name=f"fraud-{uuid.uuid4().hex[:8]}")
    version = register(registry, model_path)
    registry.promote(version, "first champion")

    raw = new_topic(bootstrap)
    scores_topic = f"scores-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [TopicSpec(scores_topic, 3, 86_400_000)])
    produce_all(bootstrap, raw, [(r.key, r.value) for r in stream])

    holder = holder_for(registry)
    producer = kafkaio.make_producer(bootstrap)
    try:
        assert holder.load_now() is not None
        tiles = RealtimeTiles(store, CARD_VIEWS, consumer=GROUP, validator=EventValidator(),
                              allowed_lateness_ms=LATENESS,
                              scoring=StreamScoring(CARD_FRAUD, holder,
                                                    KafkaScoreSink(producer, scores_topic)))
        consumer = kafkaio.make_consumer(bootstrap, group_id=f"{GROUP}-{raw}",
                                         session_timeout_ms=6000)
        layer = SpeedLayer(consumer=consumer, topic=raw, tiles=tiles,
                           batch_max_events=400, batch_max_wait_s=0.2)
        stats = layer.run(idle_exit_s=3.0)
    finally:
        holder.close()
        producer.close()
        store.close()

    # Expected: every valid transaction at or after the cutoff (the
    # generator's lateness is within the allowed one), once.
    applied = [events[r] for r in stream if r.kind == "valid" and events[r]["event_time"] >= cutoff]
    expected_ids = {e["event_id"] for e in applied if e["event_type"] == "transaction"}
    assert stats.late == 0 and stats.before_cutoff == 20 and stats.duplicates > 0
    assert stats.scored == len(expected_ids) > 0 and stats.model_version == version
    assert stats.unscored_no_champion == stats.unscored_no_batch_view == 0

    scored = read_scores(bootstrap, scores_topic, len(expected_ids))
    ids = [s.event_id for _, s in scored]
    assert len(ids) == len(set(ids)) and set(ids) == expected_ids  # no crash: no duplicate
    assert {s.model_version for _, s in scored} == {version}
    assert {(s.batch_version, s.batch_cutoff) for _, s in scored} == {(7, cutoff)}
    assert all(key == s.entity.encode() for key, s in scored)

    # The offline reference: each event's features from the raw events
    # before it (the batch view's, then the stream's applied ones in order).
    before: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in batch_events:
        before[e["card_id"]].append(e)
    reference: dict[str, dict[str, float]] = {}
    for e in applied:
        card = e["card_id"]
        if e["event_type"] == "transaction":
            view = features_from_events(CARD_VIEWS, before[card], card, e["event_time"])
            reference[e["event_id"]] = CARD_FRAUD.vector(e, view)
        before[card].append(e)
    mismatched = [s.event_id for _, s in scored if s.features != reference[s.event_id]]
    assert mismatched == []
    # Bit for bit: the same doubles, not merely equal ones (0.0 vs -0.0).
    assert all(orjson.dumps(s.features) == orjson.dumps(reference[s.event_id])
               for _, s in scored)


def offline_reference(batch_events: list[dict[str, Any]], applied: list[dict[str, Any]]
                      ) -> dict[str, dict[str, float]]:
    """event_id -> the contract's vector from the raw events before it."""
    before: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in batch_events:
        before[e["card_id"]].append(e)
    out: dict[str, dict[str, float]] = {}
    for e in applied:
        card = e["card_id"]
        if e["event_type"] == "transaction":
            out[e["event_id"]] = CARD_FRAUD.vector(
                e, features_from_events(CARD_VIEWS, before[card], card, e["event_time"]))
        before[card].append(e)
    return out


@pytest.mark.slow
def test_lamina_speed_run_killed_9_times_scores_every_transaction_at_least_once(
        kafka, tmp_path: Path, model_path: Path) -> None:
    import random
    import signal
    import subprocess
    import sys

    from tests.integration.test_speed_realtime import speed_env, stored_position

    bootstrap = kafka.bootstrap_servers
    # In event-time order per card: an allowed-late event older than what a
    # restarted state was seeded through cannot be answered exactly and is
    # counted (unscored_out_of_range), which would make the expected set
    # depend on where the kills land.
    records = records_of(seed=41, cards=80, transactions=6000, days=2.0, late_fraction=0.0)
    start = GeneratorConfig().start
    cutoff = start + DAY_MS
    events = {r: orjson.loads(r.value) for r in records if r.kind != "malformed"}
    batch_events = [e for r, e in events.items() if r.kind == "valid" and e["event_time"] < cutoff]
    stream = [r for r in records if r not in events or events[r]["event_time"] >= cutoff]
    home = tmp_path / "home"
    home.mkdir()
    with SqliteTileStore(home / "tiles.db") as store:  # the settings' default store
        publish(store, batch_events, cutoff, 3)
    registry = ModelRegistry.local(home)  # the settings' default registry
    version = register(registry, model_path)
    registry.promote(version, "first champion")

    raw = new_topic(bootstrap)
    scores_topic = f"scores-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [TopicSpec(scores_topic, 3, 86_400_000)])
    produce_all(bootstrap, raw, [(r.key, r.value) for r in stream])
    env = {**speed_env(bootstrap, raw, home), "LAMINA_KAFKA_SCORES_TOPIC": scores_topic}
    consumer = env["LAMINA_SPEED_GROUP"]
    command = [sys.executable, "-m", "lamina.cli", "speed", "run", "--quiet"]
    log = (tmp_path / "speed.log").open("ab")
    rng = random.Random(20261202)
    for _ in range(3):
        before = stored_position(home / "tiles.db", consumer)
        if before >= len(stream):
            break  # the killed runs read everything
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        target = before + rng.randint(300, 1500)
        deadline = time.monotonic() + 180  # TensorFlow and MLflow load first
        try:
            while stored_position(home / "tiles.db", consumer) < target \
                    and time.monotonic() < deadline:
                assert proc.poll() is None, f"speed layer exited early, see {tmp_path}/speed.log"
                time.sleep(0.02)
            assert stored_position(home / "tiles.db", consumer) > before, \
                f"no progress, see {tmp_path}/speed.log"
            time.sleep(rng.uniform(0.0, 0.2))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    final = subprocess.run([*command, "--idle-exit", "4"], env=env, stdout=subprocess.PIPE,
                           stderr=log, timeout=600)
    assert final.returncode == 0, f"see {tmp_path / 'speed.log'}"
    # The summary names the model of the last batch it scored; the killed
    # runs may have scored everything already (then there is none).
    summary = orjson.loads(final.stdout)
    assert summary["model_version"] == (version if summary["scored"] else None)

    applied = [events[r] for r in stream if r.kind == "valid"]
    reference = offline_reference(batch_events, applied)
    scored = read_scores(bootstrap, scores_topic, len(reference))
    # At-least-once: every applied transaction is there; a replayed batch
    # may repeat some, and a reader keeps one per event_id.
    assert {s.event_id for _, s in scored} == set(reference)
    assert {s.model_version for _, s in scored} == {version}
    kept = {s.event_id: s for _, s in scored}
    assert [i for i, s in kept.items() if s.features != reference[i]] == []
    # A repeat is the same score from the same features (same model, same state).
    for _, s in scored:
        assert (s.score, s.features) == (kept[s.event_id].score, kept[s.event_id].features)


def test_scores_across_a_rebalance_with_a_champion_are_one_per_event_and_version_after_the_reader_rule(  # noqa: E501
        kafka, tmp_path: Path, model_path: Path, redis_url: str) -> None:
    """Two members score mid-stream, a third joins and one leaves (two
    rebalances). The documented reader rule -- keep one record per
    (event_id, model_version) -- gives exactly one score per valid
    transaction and model version, whichever copy a reader keeps (copies
    are the same score from the same features), and the store's latest
    scores are those records. On Redis: the SQLite store has the plain
    rebalance test (test_speed_ops)."""
    import threading

    from tests.integration.test_speed_ops import (
        DEADLINE_S,
        StoreUnderTest,
        produce_paced,
        wait_for,
    )

    bootstrap = kafka.bootstrap_servers
    # No late events: a re-seeded state cannot answer an allowed-late event
    # older than what it was seeded through (unscored_out_of_range), and a
    # rebalance re-seeds.
    records = records_of(seed=43, cards=40, transactions=1500, days=2.0, late_fraction=0.0)
    cutoff = GeneratorConfig().start + DAY_MS
    events = {r: orjson.loads(r.value) for r in records if r.kind != "malformed"}
    batch_events = [e for r, e in events.items() if r.kind == "valid" and e["event_time"] < cutoff]
    stream = [r for r in records if r not in events or events[r]["event_time"] >= cutoff]
    applied = [events[r] for r in stream if r.kind == "valid"]
    expected_ids = {e["event_id"] for e in applied if e["event_type"] == "transaction"}

    store = StoreUnderTest("redis", {"url": redis_url})
    with store.open() as publisher:
        publish(publisher, batch_events, cutoff, 5)
    registry = ModelRegistry.local(tmp_path / "home", name=f"fraud-{uuid.uuid4().hex[:8]}")
    version = register(registry, model_path)
    registry.promote(version, "first champion")
    raw = new_topic(bootstrap, partitions=6)
    scores_topic = f"scores-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [TopicSpec(scores_topic, 3, 86_400_000)])
    holder = holder_for(registry)  # one loaded champion, shared by the members
    assert holder.load_now() is not None

    outcomes: dict[str, Any] = {}
    layers: dict[str, SpeedLayer] = {}
    threads: dict[str, threading.Thread] = {}
    producers: list[Any] = []
    stores: list[Any] = []

    def member(name: str) -> None:
        tile_store = store.open()
        producer = kafkaio.make_producer(bootstrap)
        stores.append(tile_store)
        producers.append(producer)
        tiles = RealtimeTiles(tile_store, CARD_VIEWS, consumer=GROUP, validator=EventValidator(),
                              allowed_lateness_ms=LATENESS,
                              scoring=StreamScoring(CARD_FRAUD, holder,
                                                    KafkaScoreSink(producer, scores_topic)))
        layer = SpeedLayer(consumer=kafkaio.make_consumer(bootstrap, group_id=f"{GROUP}-{raw}",
                                                          session_timeout_ms=6000),
                           topic=raw, tiles=tiles, batch_max_events=60, batch_max_wait_s=0.05)
        layers[name] = layer

        def run() -> None:
            try:
                outcomes[name] = layer.run(idle_exit_s=4.0)
            except BaseException as exc:  # noqa: BLE001 - reported by the test below
                outcomes[name] = exc

        threads[name] = threading.Thread(target=run, name=f"member-{name}")
        threads[name].start()

    third = len(stream) // 3
    try:
        produce_all(bootstrap, raw, [(r.key, r.value) for r in stream[:third]])
        member("a")
        member("b")
        wait_for(lambda: store.position(GROUP) > third // 3, "two members at work")
        done = threading.Event()
        feeder = threading.Thread(target=produce_paced, args=(
            bootstrap, raw, [(r.key, r.value) for r in stream[third:]], done))
        feeder.start()
        member("c")  # joins mid-stream: a rebalance
        wait_for(lambda: store.position(GROUP) > 2 * third or done.is_set(),
                 "the stream to go on")
        layers["a"].stop()  # leaves mid-stream (finishes its batch): another rebalance
        feeder.join(DEADLINE_S)
        for thread in threads.values():
            thread.join(DEADLINE_S)
    finally:
        for layer in layers.values():
            layer.stop()
        for thread in threads.values():
            thread.join(DEADLINE_S)
        holder.close()
        for producer in producers:
            producer.close()
    stats = [outcomes[name] for name in ("a", "b", "c")]
    assert all(isinstance(s, SpeedStats) for s in stats), stats
    # Counted when stored: over the members every transaction was scored once.
    assert sum(s.scored for s in stats) == len(expected_ids)
    assert sum(s.applied for s in stats) == len(expected_ids)  # the view takes transactions

    scored = read_scores(bootstrap, scores_topic, len(expected_ids))
    by_key: dict[tuple[str, int], list[ScoreRecord]] = defaultdict(list)
    for _, s in scored:
        by_key[(s.event_id, s.model_version)].append(s)
    # The reader rule: one record per (event_id, model_version) ...
    assert set(by_key) == {(event_id, version) for event_id in expected_ids}
    # ... and it does not matter which copy it keeps.
    for copies in by_key.values():
        assert {(c.score, orjson.dumps(c.features)) for c in copies} == \
            {(copies[0].score, orjson.dumps(copies[0].features))}
    kept = {event_id: copies[0] for (event_id, _), copies in by_key.items()}

    # The store's latest scores per card are the kept records of its newest
    # transactions.
    with store.open() as reader:
        for card in {s.entity for s in kept.values()}:
            newest = sorted((s for s in kept.values() if s.entity == card),
                            key=lambda s: (s.event_time, s.event_id),
                            reverse=True)[:reader.scores_per_entity]
            latest = reader.latest_scores(card)
            assert {(s.event_id, s.model_version, s.score) for s in latest} == \
                {(s.event_id, s.model_version, s.score) for s in newest}
    for tile_store in stores:
        tile_store.close()
    assert store.tiles() == expected_tiles(CARD_VIEWS, applied)
    assert store.offsets(GROUP) == end_offsets(bootstrap, raw)
