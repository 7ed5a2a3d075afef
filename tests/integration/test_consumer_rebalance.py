"""The consumer loop finishes a rebalance however short its owner's polls are.

kafka-python 3.0.12 runs a group join (JoinGroup, then SyncGroup) as a task
that a poll waits for at most its own timeout. A join that completes after
that wait ran out, before the next poll, is thrown away by the next poll,
which starts another join: a member that polls with very short timeouts (the
speed layer with a few-ms micro-batch wait; a due batch polls with 0) can go
on joining without ever applying an assignment, until the watchdog rejoins
(seen as 14-15 s stalls in the speed-latency benchmark at 5 ms / 10 ms).
``ConsumerLoop.poll`` therefore waits at least ``JOIN_POLL_MS`` while the
member owns no partition or the client says a rejoin is pending.

Here the watchdog is off (``rejoin_after_s`` of an hour): the member polls
with timeout 0 and must get its partitions through the first join, lose some
to a second member, and get them all back when that one leaves.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from lamina import kafkaio
from lamina.broker import KafkaCluster
from lamina.consumer import ConsumerLoop
from tests.kafka_fixtures import FreshTopics

pytestmark = pytest.mark.integration

PARTITIONS = 3


def _loop(bootstrap: str, topic: str, group: str, name: str) -> ConsumerLoop:
    consumer = kafkaio.make_consumer(bootstrap, group_id=group, session_timeout_ms=10_000,
                                     heartbeat_interval_ms=1_000)
    return ConsumerLoop(consumer, topic, on_assigned=lambda _: None,
                        on_revoked=lambda _: None, name=name, rejoin_after_s=3600.0)


def _poll_until(loops: list[tuple[ConsumerLoop, int]], done: Callable[[], bool],
                what: str, limit_s: float = 60.0) -> None:
    """Poll each loop with its timeout (ms) in turn until ``done()``; fail
    with ``what`` after ``limit_s`` (a bound on a hang, not a speed)."""
    deadline = time.monotonic() + limit_s
    while not done():
        if time.monotonic() > deadline:
            owned = [sorted(tp.partition for tp in loop.owned) for loop, _ in loops]
            pytest.fail(f"{what}: not within {limit_s:.0f} s (owned: {owned})")
        for loop, timeout_ms in loops:
            loop.poll(timeout_ms=timeout_ms, max_records=100)


def test_a_member_polling_with_timeout_zero_completes_every_rebalance(
        kafka: KafkaCluster, fresh_topics: FreshTopics) -> None:
    bootstrap, topic = kafka.bootstrap_servers, fresh_topics.raw
    group = f"rebalance-{uuid.uuid4().hex[:8]}"
    first = _loop(bootstrap, topic, group, "first")
    second: ConsumerLoop | None = None
    try:
        first.subscribe()
        _poll_until([(first, 0)], lambda: len(first.owned) == PARTITIONS,
                    "the first member owns every partition after its first join")
        second = _loop(bootstrap, topic, group, "second")
        second.subscribe()
        both = [(first, 0), (second, 100)]
        _poll_until(both, lambda: bool(first.owned) and bool(second.owned)
                    and len(first.owned | second.owned) == PARTITIONS,
                    "the two members share the partitions after the second joined")
        second.close()
        second = None
        _poll_until([(first, 0)], lambda: len(first.owned) == PARTITIONS,
                    "the first member owns every partition again after the second left")
        assert first.rejoins == 0  # the watchdog did not do it
    finally:
        first.close()
        if second is not None:
            second.close()
