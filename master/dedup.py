"""The lander's dedup index: event_ids already in the master dataset.

Redelivery of a Kafka offset is handled by the transaction versions; this
handles the other kind of duplicate: a producer that resends the same
event_id at a new offset. The rule is the generic one of
:mod:`lamina.dedup`: an event is dropped when an event with the same
event_id has landed on the same UTC event date (a resend carries the same
event time, so it falls on the same date). The date is the table's
partition, so the ids of a date are read from that partition alone.

There is no horizon: a resend of an event a year old is caught too. The
newest ``cached_days`` dates the lander touched are held in memory; an
event of an older date costs one read of that date's partition, filtered
to the batch's ids. See ``docs/decisions.md`` ("Duplicates").
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pyarrow.dataset as ds

from lamina.dedup import DAY_MS, EventIdIndex
from lamina.master.dataset import MasterDataset

#: Dates of event ids a lander keeps in memory by default.
DEFAULT_CACHED_DAYS = 3


def _date(start_ms: int) -> str:
    return datetime.fromtimestamp(start_ms / 1000, UTC).strftime("%Y-%m-%d")


class MasterDatasetIds:
    """The master dataset as a :class:`lamina.dedup.SeenIdsSource`: ids of
    one event-time day (= one `event_date` partition) at the latest
    snapshot."""

    def __init__(self, dataset: MasterDataset) -> None:
        self.dataset = dataset

    def _day_filter(self, start_ms: int, end_ms: int) -> ds.Expression:
        if start_ms % DAY_MS or end_ms - start_ms != DAY_MS:
            raise ValueError("the master dataset's dedup buckets are whole UTC days")
        return ds.field("event_date") == _date(start_ms)

    def ids_between(self, start_ms: int, end_ms: int) -> list[str]:
        if not self.dataset.exists():
            return []
        rows = self.dataset.read(columns=["event_id"], filters=self._day_filter(start_ms, end_ms))
        return rows.column("event_id").to_pylist()

    def seen_among(self, start_ms: int, end_ms: int, event_ids: Sequence[str]) -> set[str]:
        if not self.dataset.exists() or not event_ids:
            return set()
        condition = self._day_filter(start_ms, end_ms) & ds.field("event_id").isin(
            list(event_ids))
        rows = self.dataset.read(columns=["event_id"], filters=condition)
        return set(rows.column("event_id").to_pylist())


class LandedIds(EventIdIndex):
    """Event ids landed in the master dataset, by UTC event date."""

    def __init__(self, dataset: MasterDataset, *,
                 cached_days: int = DEFAULT_CACHED_DAYS) -> None:
        super().__init__(MasterDatasetIds(dataset), bucket_ms=DAY_MS,
                         cached_buckets=cached_days)
