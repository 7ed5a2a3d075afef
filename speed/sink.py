"""Where the speed layer's score records go: ``scores.v1``, keyed by entity.

``KafkaScoreSink.send(records)`` produces one micro-batch's records and
returns only when the broker acknowledged every one of them (flush, then
each send's result), raising ``ScoreSinkError`` otherwise. The realtime
step calls it *before* the store transaction that holds the batch's tiles
and offsets, so a batch whose offsets are stored has its scores on the
topic: scores are at-least-once. A crash after ``send`` and before the
store write replays the batch from the stored offsets and scores it again;
each record carries its ``event_id`` for a reader to keep one (see
docs/decisions.md, "Speed layer: streaming scoring").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from lamina.errors import LaminaError
from lamina.schemas.scores import ScoreRecord, encode_scores


class ScoreSinkError(LaminaError):
    """Score records could not be written; the batch is not stored and is
    read again (from the store's offsets) if the process goes on."""


class ScoreSink(Protocol):
    def send(self, records: Sequence[ScoreRecord]) -> None:
        """Write ``records`` durably before returning, or raise."""


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

    def send(self, records: Sequence[ScoreRecord]) -> None:
        if not records:
            return
        from kafka.errors import KafkaError

        values = encode_scores(records)
        try:
            futures = [self.producer.send(self.topic, key=r.entity.encode(), value=v)
                       for r, v in zip(records, values, strict=True)]
            self.producer.flush(timeout=self.timeout_s)
            for future in futures:
                future.get(timeout=self.timeout_s)
        except KafkaError as exc:
            raise ScoreSinkError(
                f"could not write {len(records)} score records to {self.topic}: {exc}; "
                "the micro-batch is not stored and is scored again after a restart") from exc
        self.produced += len(records)
