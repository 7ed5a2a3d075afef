"""The Kafka topics Lamina uses: name, partitions, retention. Created
explicitly (the broker runs with auto.create.topics.enable=false)."""

from __future__ import annotations

from dataclasses import dataclass

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int  # -1 keeps forever
    # Extra topic configs (e.g. cleanup.policy).
    configs: tuple[tuple[str, str], ...] = ()


def default_topics(raw_topic: str = "events.raw", dlq_topic: str = "events.dlq",
                   raw_partitions: int = 3,
                   scores_topic: str = "scores.v1") -> list[TopicSpec]:
    """events.raw holds 7 days: the master dataset keeps them forever, so the
    log only needs to cover a lander outage. Dead letters are kept 30 days so
    someone can look at them and replay them after a fix. The speed layer's
    scores (keyed by entity, as many partitions as the raw topic) are kept 7
    days: long enough for the daily online/offline consistency job to read
    a day again after an outage."""
    return [
        TopicSpec(raw_topic, raw_partitions, 7 * DAY_MS),
        TopicSpec(dlq_topic, 1, 30 * DAY_MS),
        TopicSpec(scores_topic, raw_partitions, 7 * DAY_MS),
    ]
