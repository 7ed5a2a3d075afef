"""Both score sinks on a real broker: every record of a micro-batch is on
``scores.v1`` (keyed by entity, in order per entity) when ``send`` returns,
and a batch the broker refuses raises ``ScoreSinkError`` instead of being
reported as written (the realtime step then does not store the batch)."""

from __future__ import annotations

import uuid

import pytest

from lamina import kafkaio
from lamina.schemas.card_views import FEATURES
from lamina.schemas.scores import ScoreRecord
from lamina.schemas.topics import TopicSpec
from lamina.speed.sink import ConfluentScoreSink, KafkaScoreSink, ScoreSinkError, make_score_sink
from lamina.topics import create_topics
from tests.integration.test_speed_scoring_stream import read_scores

pytestmark = pytest.mark.integration  # Kafka


def score_records(n: int) -> list[ScoreRecord]:
    return [ScoreRecord(event_id=f"e{i}", entity_key="card_id", entity=f"c{i % 7}",
                        event_time=1_700_000_000_000 + i, score=(i % 100) / 100,
                        model_version=3, batch_version=1, batch_cutoff=1_699_999_200_000,
                        scored_at=1_700_000_100_000, produce_to_score_ms=5,
                        features={name: float(i) for name in FEATURES})
            for i in range(n)]


@pytest.mark.parametrize("kind", ["confluent", "kafka-python"])
def test_a_sent_batch_is_on_the_topic_in_order_per_entity(kafka, kind: str) -> None:
    bootstrap = kafka.bootstrap_servers
    topic = f"scores-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [TopicSpec(topic, 3, 86_400_000)])
    records = score_records(2500)
    if kind == "confluent":
        producer = kafkaio.make_fast_producer(bootstrap)
        sink: ConfluentScoreSink | KafkaScoreSink = ConfluentScoreSink(producer, topic)
        close = lambda: producer.flush(10)  # noqa: E731
    else:
        slow = kafkaio.make_producer(bootstrap)
        sink, close = KafkaScoreSink(slow, topic), slow.close
    try:
        sink.send(records[:1000])
        sink.send(records[1000:])
    finally:
        close()
    assert sink.produced == len(records)
    got = read_scores(bootstrap, topic, len(records))
    assert sorted(r.event_id for _, r in got) == sorted(r.event_id for r in records)
    for key, record in got:
        assert key == record.entity.encode()
    by_entity: dict[str, list[int]] = {}
    for _, record in got:
        by_entity.setdefault(record.entity, []).append(record.event_time)
    assert all(times == sorted(times) for times in by_entity.values())


def test_make_score_sink_picks_confluent_kafka_when_installed(kafka) -> None:
    sink, close = make_score_sink(kafka.bootstrap_servers, "unused")
    try:
        assert isinstance(sink, ConfluentScoreSink)
    finally:
        close()


def test_make_score_sink_falls_back_to_kafka_python_without_confluent_kafka(
        kafka, monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(*_: object, **__: object) -> None:
        raise ImportError("No module named 'confluent_kafka'")

    monkeypatch.setattr(kafkaio, "make_fast_producer", not_installed)
    topic = f"scores-{uuid.uuid4().hex[:8]}"
    create_topics(kafka.bootstrap_servers, [TopicSpec(topic, 1, 86_400_000)])
    sink, close = make_score_sink(kafka.bootstrap_servers, topic)
    try:
        assert isinstance(sink, KafkaScoreSink)
        sink.send(score_records(5))
    finally:
        close()
    assert len(read_scores(kafka.bootstrap_servers, topic, 5)) == 5


def test_a_batch_the_broker_refuses_raises_instead_of_passing_as_written(kafka) -> None:
    # The broker creates no topics by itself (auto.create.topics.enable=false):
    # every delivery to a missing topic fails within the delivery timeout.
    producer = kafkaio.make_fast_producer(kafka.bootstrap_servers,
                                          **{"delivery.timeout.ms": 3000,
                                             "request.timeout.ms": 2000})
    sink = ConfluentScoreSink(producer, f"missing-{uuid.uuid4().hex[:8]}", timeout_s=20)
    with pytest.raises(ScoreSinkError, match="score records"):
        sink.send(score_records(10))
    assert sink.produced == 0
