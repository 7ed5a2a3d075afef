"""lamina.consumer.read_to_end's loop, on a small fake of the kafka-python
consumer calls it makes (the real broker behaviour is covered by the
integration tests of the consistency report and the demo): every record
below the end offsets taken at the start, nothing produced later, empty
partitions not waited for, and a stall or a deadline is an InfraError that
names the topic and each unfinished partition's position and end."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from lamina.consumer import read_to_end
from lamina.errors import InfraError

TOPIC = "scores.v1"


class FakeConsumer:
    """Partition logs in memory. ``end_offsets`` reports the logs as they are
    then; ``later`` records are appended right after (produced during the
    read). A poll returns up to ``per_poll`` records of each partition and
    moves the clock by ``poll_s``; partitions in ``stuck`` return nothing
    from ``stuck_at`` on (a lost leader). ``markers`` partitions end with one
    offset that holds no record (a transaction marker)."""

    def __init__(self, logs: dict[int, list[bytes]], *, later: dict[int, list[bytes]] | None = None,
                 per_poll: int = 2, poll_s: float = 1.0, stuck: dict[int, int] | None = None,
                 markers: frozenset[int] = frozenset()) -> None:
        self.logs = {p: list(values) for p, values in logs.items()}
        self.later = later or {}
        self.per_poll, self.poll_s = per_poll, poll_s
        self.stuck = stuck or {}
        self.markers = markers
        self.positions: dict[Any, int] = {}
        self.now = 0.0
        self.polls: list[dict[str, Any]] = []

    def clock(self) -> float:
        return self.now

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(self.logs) if topic == TOPIC else None

    def assign(self, tps: list[Any]) -> None:
        self.positions = dict.fromkeys(tps, -1)

    def seek_to_beginning(self, *tps: Any) -> None:
        for tp in tps:
            self.positions[tp] = 0

    def _end(self, tp: Any) -> int:
        return len(self.logs[tp.partition]) + (tp.partition in self.markers)

    def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        ends = {tp: self._end(tp) for tp in tps}
        for partition, values in self.later.items():
            self.logs[partition] += values
        return ends

    def position(self, tp: Any) -> int:
        return self.positions[tp]

    def poll(self, *, timeout_ms: int, max_records: int | None) -> dict[Any, list[Any]]:
        self.polls.append({"timeout_ms": timeout_ms, "max_records": max_records})
        self.now += self.poll_s
        out = {}
        for tp, at in self.positions.items():
            stop = self.stuck.get(tp.partition, len(self.logs[tp.partition]))
            records = [SimpleNamespace(partition=tp.partition, offset=offset,
                                       value=self.logs[tp.partition][offset])
                       for offset in range(at, min(at + self.per_poll, stop))]
            if records:
                out[tp] = records
                self.positions[tp] = records[-1].offset + 1
            if self.positions[tp] == len(self.logs[tp.partition]) \
                    and tp.partition in self.markers:
                self.positions[tp] += 1  # the fetch steps over the marker
        return out


def _read(consumer: FakeConsumer, **kwargs: Any) -> list[tuple[int, int, bytes]]:
    return [(r.partition, r.offset, r.value)
            for r in read_to_end(consumer, TOPIC, clock=consumer.clock, **kwargs)]


def test_every_record_below_the_start_end_offsets_and_nothing_produced_later():
    consumer = FakeConsumer({0: [b"a", b"b", b"c"], 1: [], 2: [b"x", b"y"]},
                            later={2: [b"late-1", b"late-2"]})
    got = _read(consumer, stall_s=5, poll_timeout_ms=700, max_records=10)
    assert sorted(got) == [(0, 0, b"a"), (0, 1, b"b"), (0, 2, b"c"), (2, 0, b"x"), (2, 1, b"y")]
    # Two polls read everything: the empty partition is not waited for.
    assert consumer.polls == [{"timeout_ms": 700, "max_records": 10}] * 2


def test_an_empty_topic_and_a_partition_ending_in_a_marker_end_without_a_stall():
    assert _read(FakeConsumer({0: [], 1: []}), stall_s=1) == []
    consumer = FakeConsumer({0: [b"a"]}, markers=frozenset({0}), per_poll=1)
    assert _read(consumer, stall_s=1.5) == [(0, 0, b"a")]


def test_a_stall_names_the_topic_and_each_unfinished_partition():
    consumer = FakeConsumer({0: [b"a"], 1: [b"p", b"q", b"r"]}, stuck={1: 1})
    with pytest.raises(InfraError) as error:
        _read(consumer, stall_s=3)
    message = str(error.value)
    assert "reading scores.v1 stalled short of its end offsets (nothing read for 3 s" in message
    assert "partition 1 at 1 of end 3" in message and "partition 0" not in message
    assert "is the broker reachable" in message


def test_a_read_still_progressing_at_its_deadline_is_refused():
    consumer = FakeConsumer({0: [b"r"] * 10}, per_poll=1)
    with pytest.raises(InfraError, match=r"not done in 3 s; partition 0 at 3 of end 10"):
        _read(consumer, deadline_s=3)


def test_a_topic_without_partitions_is_refused():
    with pytest.raises(InfraError, match="'other' does not exist"):
        list(read_to_end(FakeConsumer({0: []}), "other"))
