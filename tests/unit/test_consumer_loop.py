"""The consumer loop's assignment watchdog (lamina/consumer.py).

The consumer here is a stand-in that behaves as kafka-python 3.0.12 does
around an eager rebalance (its ``_on_join_prepare``): the listener hears
the revoke, but ``assignment()`` keeps listing the old partitions until the
next assignment completes. The loop must count what the listener says it
owns, or a join that never completes is never retried.
"""

from __future__ import annotations

from typing import Any

from kafka import TopicPartition

from lamina.consumer import ConsumerLoop

TOPIC = "raw"
TP0, TP1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


class EagerConsumer:
    def __init__(self) -> None:
        self.listener: Any = None
        self.assigned: set[Any] = set()
        self.subscribes = 0
        self.unsubscribes = 0

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1}

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.subscribes += 1
        self.listener = listener

    def unsubscribe(self) -> None:
        self.unsubscribes += 1
        self.assigned = set()

    def assignment(self) -> set[Any]:
        return set(self.assigned)

    def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: 10 for tp in tps}

    def position(self, tp: Any) -> int:
        return 10

    # What a rebalance does to it.
    def assign(self, tps: set[Any]) -> None:
        self.listener.on_partitions_assigned(tps)
        self.assigned = set(tps)

    def revoke_and_hang(self) -> None:
        """The revoke of a join that is then never completed."""
        self.listener.on_partitions_revoked(set(self.assigned))


def loop_on(consumer: EagerConsumer, events: list[tuple[str, list[Any]]]) -> ConsumerLoop:
    loop = ConsumerLoop(consumer, TOPIC, name="test", rejoin_after_s=15.0,
                        on_assigned=lambda tps: events.append(("assigned", tps)),
                        on_revoked=lambda tps: events.append(("revoked", tps)))
    loop.subscribe()
    return loop


def test_a_revoke_whose_join_never_completes_makes_the_watchdog_rejoin() -> None:
    consumer, events = EagerConsumer(), []
    loop = loop_on(consumer, events)
    consumer.assign({TP0, TP1})
    loop.watch_assignment(100.0)
    assert loop.owned == {TP0, TP1} and loop.caught_up()

    consumer.revoke_and_hang()
    assert consumer.assignment() == {TP0, TP1}  # kafka-python still lists them
    assert loop.owned == set() and not loop.caught_up()
    loop.watch_assignment(101.0)
    loop.watch_assignment(115.0)
    assert (loop.rejoins, consumer.unsubscribes) == (0, 0)  # not yet 15 s
    loop.watch_assignment(116.5)
    assert (loop.rejoins, consumer.unsubscribes, consumer.subscribes) == (1, 1, 2)
    assert [kind for kind, _ in events] == ["assigned", "revoked"]

    # The fresh join completes: owned again, and the backoff starts over.
    consumer.assign({TP1})
    loop.watch_assignment(500.0)
    assert loop.owned == {TP1} and loop.rejoins == 1


def test_a_member_that_keeps_its_partitions_never_rejoins() -> None:
    consumer, events = EagerConsumer(), []
    loop = loop_on(consumer, events)
    consumer.assign({TP0})
    for t in range(0, 1000, 5):
        loop.watch_assignment(float(t))
    assert (loop.rejoins, consumer.unsubscribes) == (0, 0)


def test_a_partial_revoke_keeps_the_rest_owned() -> None:
    consumer, events = EagerConsumer(), []
    loop = loop_on(consumer, events)
    consumer.assign({TP0, TP1})
    consumer.listener.on_partitions_revoked({TP0})
    assert loop.owned == {TP1}
    loop.watch_assignment(0.0)
    loop.watch_assignment(100.0)
    assert loop.rejoins == 0


class _JoinTask:
    def __init__(self, done: bool) -> None:
        self.is_done = done


class _Coordinator:
    """The kafka-python 3.0.12 coordinator state around a join: ``rejoining``
    from the join's prepare until its completion is applied."""

    def __init__(self) -> None:
        self.rejoining = False
        self.rejoin_needed = False
        self._join_task: _JoinTask | None = None
        self.rejoin_requests = 0

    def need_rejoin(self) -> bool:
        return self.rejoin_needed

    def request_rejoin(self) -> None:
        self.rejoin_requests += 1
        self.rejoin_needed = True


class PollingConsumer(EagerConsumer):
    """An EagerConsumer with a coordinator, whose ``poll`` returns nothing
    and records the timeouts it was given."""

    def __init__(self) -> None:
        super().__init__()
        self._coordinator = _Coordinator()
        self.timeouts: list[int] = []

    def poll(self, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        self.timeouts.append(timeout_ms)
        return {}


def test_a_join_whose_assignment_the_client_dropped_is_started_again() -> None:
    consumer, events = PollingConsumer(), []
    loop = loop_on(consumer, events)
    consumer.assign({TP0, TP1})
    coordinator = consumer._coordinator

    # A rebalance: revoked, a join task in flight -- left alone.
    consumer.revoke_and_hang()
    coordinator.rejoining, coordinator._join_task = True, _JoinTask(done=False)
    loop.poll(timeout_ms=0, max_records=10)
    assert coordinator.rejoin_requests == 0
    # The client stopped needing a rejoin and the task ended, but no
    # assignment came: the join's outcome was dropped. A new join is asked.
    coordinator._join_task = _JoinTask(done=True)
    loop.poll(timeout_ms=0, max_records=10)
    assert (coordinator.rejoin_requests, loop.lost_joins) == (1, 1)
    # The client now needs the rejoin: nothing more is asked until it joins.
    loop.poll(timeout_ms=0, max_records=10)
    assert coordinator.rejoin_requests == 1
    # The assignment arrives: a finished join is no longer a lost one.
    consumer.assign({TP1})
    coordinator.rejoin_needed, coordinator.rejoining = False, False
    loop.poll(timeout_ms=0, max_records=10)
    assert (coordinator.rejoin_requests, loop.owned) == (1, {TP1})


def test_polls_wait_at_least_the_join_poll_while_a_rebalance_is_under_way() -> None:
    from lamina.consumer import JOIN_POLL_MS

    consumer, events = PollingConsumer(), []
    loop = loop_on(consumer, events)
    loop.poll(timeout_ms=0, max_records=10)  # nothing owned yet: joining
    consumer.assign({TP0})
    loop.poll(timeout_ms=0, max_records=10)  # owned, no rejoin pending
    consumer._coordinator.rejoin_needed = True
    loop.poll(timeout_ms=5, max_records=10)  # the client will rejoin
    consumer._coordinator.rejoin_needed = False
    loop.poll(timeout_ms=500, max_records=10)  # longer ones as they are
    assert consumer.timeouts == [JOIN_POLL_MS, 0, JOIN_POLL_MS, 500]
