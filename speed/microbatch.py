"""The speed layer's micro-batch: records polled but not yet applied.

A micro-batch is closed by a size-or-time rule (``due``): ``max_events``
records, or ``max_wait_s`` since its first record, so a quiet stream still
reaches the store within the wait and a busy one writes few, large
transactions. ``poll_timeout_ms`` is how long the loop may wait in its next
poll without keeping an open batch past its wait: a batch is written
``max_wait_s`` after its first record, not one poll timeout later.
``positions()`` is what the store keeps with the batch's tiles: per
partition, the offset *after* the last record seen (valid or not), so a
restart resumes right behind the batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class MicroBatch:
    """Records in arrival order per partition, as ``(topic, partition,
    offset, value)``; ``started_at`` is the monotonic time of the first."""

    max_events: int
    max_wait_s: float
    started_at: float = 0.0
    records: list[tuple[str, int, int, bytes]] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    _last: dict[tuple[str, int], int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def add(self, topic: str, partition: int, records: Sequence[Any], now: float) -> None:
        """Append one partition's polled records (kafka-python records with
        ``offset``, ``value`` and ``timestamp``; offsets ascending)."""
        if not records:
            return
        if not self.records:
            self.started_at = now
        out, times = self.records, self.timestamps
        for record in records:
            value = record.value
            out.append((topic, partition, record.offset, b"" if value is None else value))
            times.append(int(getattr(record, "timestamp", None) or 0))
        self._last[(topic, partition)] = records[-1].offset

    def due(self, now: float) -> bool:
        """True when the batch is to be applied and written now."""
        return bool(self.records) and (len(self.records) >= self.max_events
                                       or now - self.started_at >= self.max_wait_s)

    def poll_timeout_ms(self, now: float, longest_ms: int) -> int:
        """The next poll's timeout: ``longest_ms`` with no record waiting,
        else the time left until the batch is due (rounded up to a whole
        ms, 0 once it is due), at most ``longest_ms``."""
        if not self.records:
            return longest_ms
        # Rounded to the µs first: 10.0 + 0.05 - 10.0 is 50.0000000000007 ms.
        left_ms = math.ceil(round((self.started_at + self.max_wait_s - now) * 1000, 3))
        return max(0, min(longest_ms, left_ms))

    def positions(self) -> dict[tuple[str, int], int]:
        """``(topic, partition) -> next offset to read`` after this batch."""
        return {tp: last + 1 for tp, last in self._last.items()}

    def drop_partitions(self, partitions: Iterable[tuple[str, int]]) -> int:
        """Forget the records of partitions no longer owned (their new owner
        reads them again from the store's offsets); returns how many."""
        gone = set(partitions)
        if not gone & set(self._last):
            return 0
        kept = [i for i, r in enumerate(self.records) if (r[0], r[1]) not in gone]
        dropped = len(self.records) - len(kept)
        self.records = [self.records[i] for i in kept]
        self.timestamps = [self.timestamps[i] for i in kept]
        for tp in gone:
            self._last.pop(tp, None)
        return dropped

    def take(self) -> tuple[list[tuple[str, int, int, bytes]], dict[tuple[str, int], int]]:
        """The records and positions, leaving the batch empty."""
        records, _, positions = self.take_timed()
        return records, positions

    def take_timed(self) -> tuple[list[tuple[str, int, int, bytes]], list[int],
                                  dict[tuple[str, int], int]]:
        """The records, their Kafka timestamps and the positions, leaving the
        batch empty."""
        records, times, positions = self.records, self.timestamps, self.positions()
        self.records, self.timestamps, self._last, self.started_at = [], [], {}, 0.0
        return records, times, positions
