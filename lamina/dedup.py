"""Which event_ids have already been seen: the generic dedup index.

A producer that resends an event sends the same event_id *with the same
event time*. So the question "was this event already landed (or counted)?"
is asked of the event's own slice of event time, never of how far other
events or partitions got: event time is cut into buckets (a UTC day by
default), and an event is a duplicate exactly when an event with the same
event_id was seen in the same bucket. That rule does not depend on arrival
order, on lag, or on what is cached; it is the same after a restart.

Where the ids come from is a :class:`SeenIdsSource` (the master dataset for
the lander, the tile store for the speed layer). The index keeps the newest
``cached_buckets`` buckets it has touched in memory, complete (loaded once
from the source, then kept up to date with :meth:`EventIdIndex.add_many`);
a batch that touches an older bucket asks the source about just that
batch's ids in that bucket (:meth:`SeenIdsSource.seen_among`), so memory is
bounded and a resend is caught however old it is.

Scope: one index sees the ids its process added plus what the source held
when a bucket was loaded. Producers key events by entity, so a resend
reaches the same partition, the same consumer and so the same index; after
a partition assignment call :meth:`EventIdIndex.clear` so buckets are
reloaded with what other processes added meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from lamina.logs import get_logger

log = get_logger(__name__)

DAY_MS = 86_400_000


class SeenIdsSource(Protocol):
    """Durable record of the event_ids seen, by event time."""

    def ids_between(self, start_ms: int, end_ms: int) -> Iterable[str]:
        """Every event_id seen with ``start_ms <= event_time < end_ms``."""
        ...

    def seen_among(self, start_ms: int, end_ms: int, event_ids: Sequence[str]) -> set[str]:
        """Those of ``event_ids`` seen with ``start_ms <= event_time < end_ms``."""
        ...


class EventIdIndex:
    """Duplicate detection by (event_id, event-time bucket).

    Use: ``lookup = index.lookup(ids, times)`` before deciding, then
    ``lookup.seen(i, event_id)`` per event, and after the decision is durable
    ``index.add_many(kept_ids, kept_times)``. Deciding never mutates the
    index, so a commit that fails and is retried sees the same answers.
    """

    def __init__(self, source: SeenIdsSource, *, bucket_ms: int = DAY_MS,
                 cached_buckets: int = 3) -> None:
        if bucket_ms <= 0 or cached_buckets < 1:
            raise ValueError("bucket_ms must be positive and cached_buckets at least 1")
        self.source = source
        self.bucket_ms = bucket_ms
        self.cached_buckets = cached_buckets
        self._buckets: dict[int, set[str]] = {}  # bucket number -> complete id set
        self.loads = 0  # buckets read whole from the source
        self.probes = 0  # older buckets asked about a batch's ids

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._buckets.values())

    def cached(self) -> list[int]:
        """Bucket start times (ms) held in memory, oldest first."""
        return [b * self.bucket_ms for b in sorted(self._buckets)]

    def clear(self) -> None:
        """Forget every cached bucket (they are reloaded when next needed)."""
        self._buckets.clear()

    def _bucket_range(self, bucket: int) -> tuple[int, int]:
        return bucket * self.bucket_ms, (bucket + 1) * self.bucket_ms

    def lookup(self, event_ids: Sequence[str], event_times_ms: Sequence[int]) -> BatchLookup:
        """Prepare the answers for one batch (ids and times aligned): the
        newest ``cached_buckets`` buckets touched so far are held whole
        (older ones are evicted), and for a bucket older than those the
        source is asked about this batch's ids in it."""
        size = self.bucket_ms
        buckets = [t // size for t in event_times_ms]
        touched = sorted(set(buckets))
        newest = max([*touched, *self._buckets]) if (touched or self._buckets) else 0
        keep_from = newest - self.cached_buckets + 1
        for old in [b for b in self._buckets if b < keep_from]:
            del self._buckets[old]
        sets: dict[int, set[str]] = {}
        for bucket in touched:
            if bucket >= keep_from:
                if bucket not in self._buckets:
                    start, end = self._bucket_range(bucket)
                    self._buckets[bucket] = set(self.source.ids_between(start, end))
                    self.loads += 1
                    log.debug("dedup bucket loaded", bucket_start=start,
                              ids=len(self._buckets[bucket]))
                sets[bucket] = self._buckets[bucket]
            else:
                start, end = self._bucket_range(bucket)
                candidates = sorted({event_ids[i] for i, b in enumerate(buckets) if b == bucket})
                sets[bucket] = self.source.seen_among(start, end, candidates)
                self.probes += 1
                log.debug("dedup bucket probed", bucket_start=start, candidates=len(candidates),
                          seen=len(sets[bucket]))
        return BatchLookup(buckets, sets)

    def add_many(self, event_ids: Iterable[str], event_times_ms: Iterable[int]) -> None:
        """Record ids that are now durable. Ids of buckets not cached are
        not kept (the source has them)."""
        size, cache = self.bucket_ms, self._buckets
        for event_id, t in zip(event_ids, event_times_ms, strict=True):
            ids = cache.get(t // size)
            if ids is not None:
                ids.add(event_id)


class BucketIds:
    """One bucket's ids for a batch: ``seen`` before it (read-only here),
    ``accepted`` earlier in the same batch."""

    __slots__ = ("seen", "accepted")

    def __init__(self, seen: set[str]) -> None:
        self.seen = seen
        self.accepted: set[str] = set()


class BatchLookup:
    """Answers for one batch, aligned with the times given to
    :meth:`EventIdIndex.lookup`: ``per_event[i]`` is event i's bucket.
    ``seen`` also counts ids accepted earlier in the same batch
    (:meth:`accept`), so an in-batch resend is caught. A hot loop may use
    ``per_event`` directly: ``b = per_event[i]; dup = id in b.seen or id in
    b.accepted``."""

    __slots__ = ("per_event",)

    def __init__(self, buckets: list[int], sets: dict[int, set[str]]) -> None:
        by_bucket = {bucket: BucketIds(ids) for bucket, ids in sets.items()}
        self.per_event = [by_bucket[b] for b in buckets]

    def seen(self, i: int, event_id: str) -> bool:
        bucket = self.per_event[i]
        return event_id in bucket.seen or event_id in bucket.accepted

    def accept(self, i: int, event_id: str) -> None:
        self.per_event[i].accepted.add(event_id)
