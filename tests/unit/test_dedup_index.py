"""The generic dedup index (lamina.dedup): its answers follow the rule
"same event_id in the same event-time bucket" whatever the cache size, the
arrival order or how far other events got."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.dedup import EventIdIndex

BUCKET = 1_000


class DictSource:
    """Ids that are durable, by time: what a table or a store would hold."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int]] = []

    def ids_between(self, start_ms: int, end_ms: int) -> list[str]:
        return [i for i, t in self.rows if start_ms <= t < end_ms]

    def seen_among(self, start_ms: int, end_ms: int, event_ids: Sequence[str]) -> set[str]:
        wanted = set(event_ids)
        return {i for i, t in self.rows if start_ms <= t < end_ms and i in wanted}


def decide(index: EventIdIndex, source: DictSource,
           batch: list[tuple[str, int]]) -> list[bool]:
    """One batch as commit_batch does it: look up, decide, persist, add."""
    ids = [i for i, _ in batch]
    times = [t for _, t in batch]
    lookup = index.lookup(ids, times)
    kept = []
    duplicate = []
    for n, event_id in enumerate(ids):
        if lookup.seen(n, event_id):
            duplicate.append(True)
            continue
        lookup.accept(n, event_id)
        duplicate.append(False)
        kept.append((event_id, times[n]))
    source.rows.extend(kept)
    index.add_many([i for i, _ in kept], [t for _, t in kept])
    return duplicate


events = st.tuples(st.sampled_from([f"e{n}" for n in range(12)]),
                   st.integers(min_value=0, max_value=8 * BUCKET - 1))


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(st.lists(events, max_size=8), max_size=12),
       cached=st.integers(min_value=1, max_value=4),
       restart_at=st.integers(min_value=0, max_value=12))
def test_duplicate_iff_the_same_id_was_kept_in_the_same_bucket(batches, cached, restart_at):
    source = DictSource()
    index = EventIdIndex(source, bucket_ms=BUCKET, cached_buckets=cached)
    kept: set[tuple[str, int]] = set()
    for number, batch in enumerate(batches):
        if number == restart_at:  # a restart: only the source survives
            index = EventIdIndex(source, bucket_ms=BUCKET, cached_buckets=cached)
        answers = decide(index, source, batch)
        for (event_id, t), duplicate in zip(batch, answers, strict=True):
            key = (event_id, t // BUCKET)
            assert duplicate == (key in kept)
            kept.add(key)


def test_old_buckets_are_probed_not_cached_and_memory_stays_bounded():
    source = DictSource()
    index = EventIdIndex(source, bucket_ms=BUCKET, cached_buckets=2)
    decide(index, source, [("a", 100), ("b", 5 * BUCKET)])
    decide(index, source, [("c", 6 * BUCKET)])
    assert index.cached() == [5 * BUCKET, 6 * BUCKET]
    # "a" of bucket 0 is far behind the cache: probed in the source, still caught.
    assert decide(index, source, [("a", 100), ("d", 100)]) == [True, False]
    # (the first batch probed bucket 0 too: it was already behind bucket 5)
    assert index.probes == 2 and index.cached() == [5 * BUCKET, 6 * BUCKET]


def test_a_lookup_does_not_change_the_index_until_ids_are_added():
    source = DictSource()
    index = EventIdIndex(source, bucket_ms=BUCKET)
    first = index.lookup(["x"], [10])
    first.accept(0, "x")  # decided, but the commit failed: nothing added
    assert not index.lookup(["x"], [10]).seen(0, "x")
