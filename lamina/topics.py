"""Topic administration: creating Lamina's topics and listing what exists.

Used by `lamina infra up`, the test fixtures and the benchmarks against any
Kafka (Lamina's own broker or a cluster); nothing here starts a JVM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lamina.errors import InfraError
from lamina.kafkaio import make_admin
from lamina.logs import get_logger
from lamina.schemas.topics import TopicSpec

log = get_logger(__name__)

# Kafka's error code for "topic already exists" (CreateTopics response).
_TOPIC_ALREADY_EXISTS = 36


def create_topics(
    bootstrap_servers: str,
    specs: Sequence[TopicSpec],
    replication_factor: int = 1,
    min_insync: int | None = None,
    *,
    timeout_s: float = 30.0,
) -> dict[str, int]:
    """Create the topics that do not exist yet and wait until every
    partition of every spec has a leader. Idempotent: an existing topic is
    kept as it is (a warning is logged if its partition count differs from
    the spec). Returns {topic: partition count as it exists on the cluster}.
    Raises InfraError if the broker refuses a topic or leaders do not appear
    within timeout_s."""
    from kafka.errors import KafkaError

    if not specs:
        return {}
    new_topics: dict[str, dict[str, Any]] = {}
    for spec in specs:
        configs = {"retention.ms": str(spec.retention_ms), **dict(spec.configs)}
        if min_insync is not None:
            configs["min.insync.replicas"] = str(min_insync)
        new_topics[spec.name] = {
            "num_partitions": spec.partitions,
            "replication_factor": replication_factor,
            "configs": configs,
        }
    names = list(new_topics)
    admin = make_admin(bootstrap_servers, request_timeout_ms=int(timeout_s * 1000))
    try:
        response = admin.create_topics(
            new_topics, timeout_ms=int(timeout_s * 1000), raise_errors=False
        )
        for result in response["topics"]:
            code, name = result["error_code"], result["name"]
            if code == 0:
                log.info("topic created", topic=name, partitions=new_topics[name]["num_partitions"],
                         replication_factor=replication_factor)
            elif code != _TOPIC_ALREADY_EXISTS:
                raise InfraError(
                    f"Kafka refused to create topic {name}: "
                    f"{result.get('error_message') or f'error code {code}'}"
                )
        try:
            admin.wait_for_topics(names, timeout_ms=int(timeout_s * 1000))
        except KafkaError as exc:
            raise InfraError(
                f"topics {', '.join(names)} have no leader after {timeout_s:.0f}s ({exc}); "
                f"is every broker of {bootstrap_servers} up?"
            ) from None
        partitions = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names)}
    finally:
        admin.close()
    for spec in specs:
        if partitions.get(spec.name) != spec.partitions:
            log.warning("topic exists with another partition count", topic=spec.name,
                        partitions=partitions.get(spec.name), wanted=spec.partitions)
    return partitions


def topic_partitions(bootstrap_servers: str) -> dict[str, int]:
    """{topic: partition count} of every non-internal topic."""
    admin = make_admin(bootstrap_servers, request_timeout_ms=5000)
    try:
        topics = admin.describe_topics()
    finally:
        admin.close()
    return {
        t["name"]: len(t["partitions"])
        for t in sorted(topics, key=lambda t: t["name"])
        if not t.get("is_internal") and not t["name"].startswith("__")
    }
