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
