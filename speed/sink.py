"""Where the speed layer's score records go: ``scores.v1``, keyed by entity.

A sink's ``send(records)`` produces one micro-batch's records and returns
only when the broker acknowledged every one of them, raising
``ScoreSinkError`` otherwise. The realtime step calls it *before* the store
transaction that holds the batch's tiles and offsets, so a batch whose
offsets are stored has its scores on the topic: scores are at-least-once. A
crash after ``send`` and before the store write replays the batch from the
stored offsets and scores it again; each record carries its ``event_id``
for a reader to keep one (see docs/decisions.md, "Speed layer: streaming
scoring").

Two implementations with that one contract:

* ``ConfluentScoreSink`` -- confluent-kafka (librdkafka, the ``fast``
  extra): ~1 µs per ``produce`` here, so a micro-batch of scores costs
  little next to the state work; acks=all and idempotence as
  ``lamina.kafkaio.make_producer``.
* ``KafkaScoreSink`` -- kafka-python, the fallback when confluent-kafka is
  not installed (~15 µs per ``send``, the client's own cost).

``make_score_sink(bootstrap, topic)`` picks the first that is installed and
returns it with the function that closes its producer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from lamina.errors import LaminaError
from lamina.logs import get_logger
from lamina.schemas.scores import ScoreRecord, encode_scores

log = get_logger(__name__)


class ScoreSinkError(LaminaError):
    """Score records could not be written; the batch is not stored and is
    read again (from the store's offsets) if the process goes on."""


class ScoreSink(Protocol):
    def send(self, records: Sequence[ScoreRecord],
             encoded: Sequence[bytes] | None = None) -> None:
        """Write ``records`` durably before returning, or raise.
        ``encoded[i]``, when given, is ``encode_score(records[i])``, made
        once for the sink and the store alike."""


def _failed(count: int, topic: str, reason: object) -> ScoreSinkError:
    return ScoreSinkError(
        f"could not write {count} score records to {topic}: {reason}; "
        "the micro-batch is not stored and is scored again after a restart")


class KafkaScoreSink:
    """Produces score records to ``topic`` with the entity as the key (so
    one entity's scores stay in order on one partition). ``producer`` is a
    kafka-python producer (``lamina.kafkaio.make_producer``: acks=all,
    idempotent); the sink does not close it."""

    def __init__(self, producer: Any, topic: str, *, timeout_s: float = 60.0) -> None:
        self.producer = producer
        self.topic = topic
        self.timeout_s = timeout_s
        self.produced = 0

    def send(self, records: Sequence[ScoreRecord],
             encoded: Sequence[bytes] | None = None) -> None:
        if not records:
            return
        from kafka.errors import KafkaError

        values = encode_scores(records) if encoded is None else encoded
        if len(values) != len(records):
            raise ValueError(f"{len(records)} score records but {len(values)} encodings")
        try:
            futures = [self.producer.send(self.topic, key=r.entity.encode(), value=v)
                       for r, v in zip(records, values, strict=True)]
            self.producer.flush(timeout=self.timeout_s)
            for future in futures:
                future.get(timeout=self.timeout_s)
        except KafkaError as exc:
            raise _failed(len(records), self.topic, exc) from exc
        self.produced += len(records)


class ConfluentScoreSink:
    """``KafkaScoreSink``'s contract with a confluent-kafka ``Producer``
    (``lamina.kafkaio.make_fast_producer``: acks=all, idempotent). ``send``
    produces every record (waiting for queue space when librdkafka's queue
    is full), flushes, and raises unless every delivery report was a
    success. The sink does not close the producer."""

    def __init__(self, producer: Any, topic: str, *, timeout_s: float = 60.0) -> None:
        self.producer = producer
        self.topic = topic
        self.timeout_s = timeout_s
        self.produced = 0
        self._errors: list[Any] = []

    def _delivered(self, error: Any, _message: Any) -> None:
        if error is not None:
            self._errors.append(error)

    def send(self, records: Sequence[ScoreRecord],
             encoded: Sequence[bytes] | None = None) -> None:
        if not records:
            return
        from confluent_kafka import KafkaException

        values = encode_scores(records) if encoded is None else encoded
        if len(values) != len(records):
            raise ValueError(f"{len(records)} score records but {len(values)} encodings")
        produce, topic, on_delivery = self.producer.produce, self.topic, self._delivered
        self._errors = []
        try:
            for record, value in zip(records, values, strict=True):
                key = record.entity.encode()
                while True:
                    try:
                        produce(topic, value=value, key=key, on_delivery=on_delivery)
                        break
                    except BufferError:  # the local queue is full: let it drain
                        self.producer.poll(0.05)
            left = self.producer.flush(self.timeout_s)
        except KafkaException as exc:
            raise _failed(len(records), topic, exc) from exc
        if left:
            raise _failed(len(records), topic,
                          f"{left} not acknowledged within {self.timeout_s:g} s")
        if self._errors:
            raise _failed(len(records), topic,
                          f"{len(self._errors)} delivery errors, the first {self._errors[0]}")
        self.produced += len(records)


def make_score_sink(bootstrap_servers: str, topic: str
                    ) -> tuple[ConfluentScoreSink | KafkaScoreSink, Callable[[], None]]:
    """The fastest installed sink for ``topic`` and the function that closes
    its producer: ``ConfluentScoreSink`` with confluent-kafka, else
    ``KafkaScoreSink`` (kafka-python)."""
    from lamina import kafkaio

    try:
        producer = kafkaio.make_fast_producer(bootstrap_servers)
    except ImportError:
        log.info("confluent-kafka not installed, producing scores with kafka-python",
                 topic=topic)
        slow = kafkaio.make_producer(bootstrap_servers)
        return KafkaScoreSink(slow, topic), slow.close

    def close() -> None:
        producer.flush(30)

    return ConfluentScoreSink(producer, topic), close
