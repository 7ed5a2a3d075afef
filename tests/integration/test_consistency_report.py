"""The consistency report end to end on the real broker, the real lander,
the real speed layer and the shared Spark session: a small stream with a
late arrival and an event beyond the allowed lateness; the report finds
mismatches only on the transactions they changed, each attributed, none
unexplained. A score record whose features were altered is unexplained
and ``lamina consistency report`` exits 1.

The champion is a fixed scorer (every score 0.5): what is checked is the
features the speed layer logged, not the model, and loading a SavedModel
through MLflow would cost most of the test's time."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from lamina import kafkaio
from lamina.batch.consistency import BEYOND_LATENESS, LATE_ARRIVAL
from lamina.cli import main
from lamina.master.dataset import MasterDataset
from lamina.master.deadletters import KafkaDeadLetters
from lamina.master.lander import Lander
from lamina.models.champion import Champion
from lamina.schemas.card_views import CARD_FRAUD, CARD_VIEWS
from lamina.schemas.topics import TopicSpec
from lamina.schemas.validation import EventValidator
from lamina.speed.realtime import RealtimeTiles, SpeedLayer, StreamScoring
from lamina.speed.sink import KafkaScoreSink
from lamina.stores.sqlite import SqliteTileStore
from lamina.topics import create_topics
from tests.unit.test_speed_realtime import publish

pytestmark = pytest.mark.integration  # Kafka, Spark

DAY_MS = 86_400_000
MINUTE_MS = 60_000
LATENESS_MS = 30 * MINUTE_MS
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
CUTOFF = T0 + DAY_MS
SINCE, UNTIL = "2026-01-02T00:00:00", "2026-01-02T02:00:00"


class FixedChampion:
    """A champion source with one verified 'model' scoring 0.5."""

    def __init__(self) -> None:
        self.champion = Champion(
            version=1, model=None, scorer=lambda m: np.full(len(m), 0.5, np.float32),
            scorer_kind="numpy", card={}, features=CARD_FRAUD.features,
            contract_fingerprint=CARD_FRAUD.fingerprint(), path=Path("."))

    def check(self) -> Champion:
        return self.champion


def tx(name: str, card: str, at_ms: int, amount: float, channel: str = "pos") -> dict[str, Any]:
    return {"event_id": name, "event_type": "transaction", "schema_version": 1,
            "event_time": at_ms, "card_id": card, "merchant_id": f"m-{len(name) % 3}",
            "merchant_category": "grocery", "amount": amount, "currency": "EUR",
            "country": "FR", "channel": channel}


def after_cutoff(minutes: int) -> int:
    return CUTOFF + minutes * MINUTE_MS


HISTORY = [tx(f"h{i}", card, T0 + (2 + 3 * i) * 3_600_000, 20.0 + i)
           for i, card in enumerate(["card-a", "card-b", "card-a", "card-b", "card-a"])]
# Arrival order. a-late (minute 15) reaches the stream after a2 (minute 20);
# a-too-late (minute 25) after a4 (minute 60): 35 minutes older than the
# newest, beyond the allowed 30, so the speed layer never applies it.
STREAM = [
    tx("b1", "card-b", after_cutoff(5), 12.0),
    tx("a1", "card-a", after_cutoff(10), 30.0),
    tx("a2", "card-a", after_cutoff(20), 15.0, "online"),
    tx("a-late", "card-a", after_cutoff(15), 7.0),
    tx("a3", "card-a", after_cutoff(30), 44.0),
    tx("b2", "card-b", after_cutoff(40), 9.0, "online"),
    tx("a4", "card-a", after_cutoff(60), 18.0),
    tx("a-too-late", "card-a", after_cutoff(25), 250.0, "online"),
    tx("a5", "card-a", after_cutoff(70), 11.0),
]
#: What the report must say, derived by hand from the arrival order above.
EXPECTED_CAUSES = {"a2": {LATE_ARRIVAL}, "a3": {LATE_ARRIVAL}, "a4": {LATE_ARRIVAL},
                   "a5": {BEYOND_LATENESS}}
SCORED = {"b1", "a1", "a2", "a-late", "a3", "b2", "a4", "a5"}


@dataclass(frozen=True)
class Stream:
    bootstrap: str
    home: Path
    scores_topic: str


def produce(bootstrap: str, topic: str, values: list[tuple[bytes | None, bytes]]) -> None:
    producer = kafkaio.make_producer(bootstrap)
    try:
        futures = [producer.send(topic, key=key, value=value) for key, value in values]
        producer.flush()
        for future in futures:  # a send that failed must fail here, not as a missing score
            future.get(timeout=60)
    finally:
        producer.close()


def land(bootstrap: str, raw: str, master: str, count: int) -> None:
    producer = kafkaio.make_producer(bootstrap)
    try:
        Lander(dataset=MasterDataset(master), topic=raw,
               consumer=kafkaio.make_consumer(bootstrap, group_id=f"lander-{raw}"),
               dead_letters=KafkaDeadLetters(producer, f"{raw}.dlq"),
               validator=EventValidator(), commit_max_seconds=0.2).run(max_events=count)
    finally:
        producer.close()


@pytest.fixture(scope="module")
def stream(kafka: Any, tmp_path_factory: pytest.TempPathFactory) -> Stream:
    """History landed and published as the batch view (its master version
    is the view's batch version), the stream scored by the speed layer,
    then landed too."""
    bootstrap = kafka.bootstrap_servers
    home = tmp_path_factory.mktemp("consistency-home")
    suffix = uuid.uuid4().hex[:8]
    raw, scores_topic = f"raw-{suffix}", f"scores-{suffix}"
    create_topics(bootstrap, [TopicSpec(raw, 1, DAY_MS), TopicSpec(scores_topic, 1, DAY_MS)])
    master = str(home / "master")
    produce(bootstrap, raw, [(e["card_id"].encode(), orjson.dumps(e)) for e in HISTORY])
    land(bootstrap, raw, master, len(HISTORY))
    store = SqliteTileStore(home / "tiles.db")
    publish(store, HISTORY, CUTOFF, MasterDataset(master).table().version())
    produce(bootstrap, raw, [(e["card_id"].encode(), orjson.dumps(e)) for e in STREAM])
    producer = kafkaio.make_producer(bootstrap)
    try:
        tiles = RealtimeTiles(store, CARD_VIEWS, consumer="speed", validator=EventValidator(),
                              allowed_lateness_ms=LATENESS_MS,
                              scoring=StreamScoring(CARD_FRAUD, FixedChampion(),
                                                    KafkaScoreSink(producer, scores_topic)))
        # Small batches: a late event must reach the speed layer after the
        # transactions it should have counted in.
        layer = SpeedLayer(consumer=kafkaio.make_consumer(bootstrap, group_id=f"speed-{raw}"),
                           topic=raw, tiles=tiles, batch_max_events=1, batch_max_wait_s=0.05)
        stats = layer.run(idle_exit_s=1.5)
    finally:
        producer.close()
        store.close()
    # On failure, the counters first (pytest's summary line cuts a long
    # message): which bucket an unscored event ended in, and whether the
    # layer was re-seeded.
    counters = {k: v for k, v in vars(stats).items() if isinstance(v, int) and v}
    assert (stats.scored, stats.late) == (len(SCORED), 1), counters
    land(bootstrap, raw, master, len(STREAM))
    return Stream(bootstrap, home, scores_topic)


def report_cli(stream: Stream, monkeypatch: pytest.MonkeyPatch, scores_topic: str
               ) -> tuple[int, dict[str, Any]]:
    monkeypatch.setenv("LAMINA_HOME", str(stream.home))
    monkeypatch.setenv("LAMINA_KAFKA_BOOTSTRAP_SERVERS", stream.bootstrap)
    monkeypatch.setenv("LAMINA_KAFKA_SCORES_TOPIC", scores_topic)
    monkeypatch.setenv("LAMINA_SPEED_ALLOWED_LATENESS_MS", str(LATENESS_MS))
    monkeypatch.delenv("LAMINA_CONFIG", raising=False)
    code = main(["consistency", "report", "--since", SINCE, "--until", UNTIL])
    return code, json.loads((stream.home / "reports" / "consistency.json").read_text())


def causes_by_event(report: dict[str, Any]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for example in report["examples"]:
        out[example["event_id"]] = {f["cause"] for f in example["features"].values()}
    return out


def test_mismatches_are_only_on_the_transactions_late_events_changed_and_all_attributed(
        stream: Stream, monkeypatch: pytest.MonkeyPatch, spark: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, report = report_cli(stream, monkeypatch, stream.scores_topic)
    assert code == 0, capsys.readouterr().err
    assert report["events"] == len(SCORED) and report["not_landed"] == 0
    assert report["unexplained"] == 0
    assert causes_by_event(report) == EXPECTED_CAUSES
    assert report["mismatched_events"] == len(EXPECTED_CAUSES)
    assert set(report["causes"]) == {LATE_ARRIVAL, BEYOND_LATENESS}
    for values in report["features"].values():
        assert values["mismatches"] == sum(values["attributed"].values())
        assert values["mismatch_rate"] == values["mismatches"] / len(SCORED)
    assert "0 unexplained" in capsys.readouterr().out


def test_a_score_whose_features_were_altered_is_unexplained_and_the_cli_exits_1(
        stream: Stream, monkeypatch: pytest.MonkeyPatch, spark: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    # The stream's score records, copied to a topic of this test's, plus b2's
    # record claiming another model version with an altered amount.
    copy = f"scores-tampered-{uuid.uuid4().hex[:8]}"
    create_topics(stream.bootstrap, [TopicSpec(copy, 1, DAY_MS)])
    consumer = kafkaio.make_consumer(stream.bootstrap, group_id=None, consumer_timeout_ms=2000)
    consumer.subscribe([stream.scores_topic])
    records = [(m.key, m.value) for m in consumer]
    consumer.close()
    assert len(records) >= len(SCORED)
    b2 = next(orjson.loads(v) for _, v in records if orjson.loads(v)["event_id"] == "b2")
    b2.update(model_version=2, features={**b2["features"], "amount": 9.5})
    produce(stream.bootstrap, copy, [*records, (b"card-b", orjson.dumps(b2))])

    code, report = report_cli(stream, monkeypatch, copy)
    assert code == 1
    assert "1 feature mismatches are unexplained" in capsys.readouterr().err
    assert report["unexplained"] == 1 and report["events"] == len(SCORED) + 1
    assert report["features"]["amount"]["attributed"] == {"unexplained": 1}
    assert report["examples"][0]["event_id"] == "b2"
    assert report["examples"][0]["features"]["amount"]["cause"] == "unexplained"
    assert causes_by_event(report) == {**EXPECTED_CAUSES, "b2": {"unexplained"}}
