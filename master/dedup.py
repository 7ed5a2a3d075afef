"""Which event_ids have already landed, within a horizon of event time.

Redelivery of a Kafka offset is handled by the transaction versions; this
handles the other kind of duplicate: a producer that resends the same
event_id at a new offset. The index keeps every event_id whose event time is
no older than `watermark - horizon`, where the watermark is the newest event
time landed. A resend of an event older than that lands again; batch and
speed views count each event_id once, so they are still right, and
`lamina dataset info` users can find such rows by event_id.

Producers key events by entity, so a resend goes to the same partition and
thus to the same lander; the index is per lander process and is reloaded from
the table on every partition assignment.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from lamina.master.dataset import MasterDataset


class LandedIds:
    def __init__(self, horizon_ms: int) -> None:
        self.horizon_ms = horizon_ms
        self.watermark_ms = 0
        self._ids: dict[str, int] = {}
        self._pruned_at_ms = 0

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def add_many(self, event_ids: Iterable[str], event_times_ms: Iterable[int]) -> None:
        ids = self._ids
        newest = self.watermark_ms
        for event_id, t in zip(event_ids, event_times_ms, strict=True):
            ids[event_id] = t
            if t > newest:
                newest = t
        self.watermark_ms = newest
        # Prune lazily: only when the watermark moved by a tenth of the horizon.
        if newest - self._pruned_at_ms > self.horizon_ms // 10:
            self.prune()

    def prune(self) -> None:
        floor = self.watermark_ms - self.horizon_ms
        self._ids = {k: t for k, t in self._ids.items() if t >= floor}
        self._pruned_at_ms = self.watermark_ms

    @classmethod
    def load(cls, dataset: MasterDataset, horizon_ms: int) -> LandedIds:
        """Rebuild the index from the latest snapshot of the table."""
        index = cls(horizon_ms)
        if not dataset.exists():
            return index
        stats = dataset.file_stats()
        if stats.num_rows == 0 or "max.event_time" not in stats.column_names:
            return index
        # Stats may come back in another time unit: normalise to epoch ms.
        newest = pc.max(_epoch_ms(stats.column("max.event_time"))).as_py()
        if newest is None:
            return index
        floor = newest - horizon_ms
        floor_ts = pa.scalar(floor, type=pa.timestamp("ms", tz="UTC"))
        rows = dataset.read(
            columns=["event_id", "event_time"],
            filters=ds.field("event_time") >= floor_ts,
        )
        times = _epoch_ms(rows.column("event_time")).to_pylist()
        index.add_many(rows.column("event_id").to_pylist(), times)
        index.watermark_ms = max(index.watermark_ms, newest)
        return index


def _epoch_ms(times: pa.ChunkedArray) -> pa.ChunkedArray:
    """Timestamps of any unit (delta-rs may hand back microseconds) as int64
    epoch milliseconds."""
    return times.cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())
