"""``TileStore.read_entities`` over the SQLite store: the same snapshots as
one ``read_entity`` per entity, and one view for all of them even when a
publish commits while the store is reading them (a per-entity loop is split
by the same publish). The Redis store is held to the same checks in
tests/integration/test_tile_store_contract.py, which reuses these."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lamina.stores import AsOfOutOfRange, BatchRecord, BatchView, NoPublishedView, TileRow
from lamina.stores.base import TileStore
from lamina.stores.sqlite import SqliteTileStore

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
C0 = 1_767_225_600_000  # 2026-01-01T00:00Z
GROUP = "g"
SPANS = {HOUR_MS: 6 * HOUR_MS, DAY_MS: None}
NAMES = [f"e{i}" for i in range(6)]


def publish(store: TileStore, version: int) -> None:
    """Version ``version``: cutoff C0 + version days, a record per name but the last."""
    store.publish_batch(
        BatchView(group=GROUP, cutoff_ms=C0 + version * DAY_MS,
                  horizon_ms=C0 + (version + 10) * DAY_MS, batch_version=version),
        [BatchRecord(name, f"v{version}:{name}".encode()) for name in NAMES[:-1]])


class PublishingMidway:
    """The names, and a publish of ``version`` committed from another thread
    (its own connection) when the reader has taken half of them."""

    def __init__(self, store: TileStore, version: int) -> None:
        self.store, self.version = store, version

    def __iter__(self) -> Iterator[str]:
        for i, name in enumerate(NAMES):
            if i == len(NAMES) // 2:
                publisher = threading.Thread(target=publish, args=(self.store, self.version))
                publisher.start()
                publisher.join()
            yield name


def check_same_as_per_entity_reads(store: TileStore) -> None:
    with pytest.raises(NoPublishedView):
        store.read_entities(GROUP, ["e0"], C0 + DAY_MS, SPANS)
    publish(store, 1)
    at = C0 + DAY_MS + 5 * HOUR_MS
    store.write_tiles([TileRow(GROUP, name, hop, start, f"{name}@{start}".encode())
                       for name in ("e1", "e5", "rt-only")
                       for hop in SPANS for start in (C0 + DAY_MS, C0 + DAY_MS + 2 * HOUR_MS)
                       if start % hop == 0])
    asked = ["e5", "nobody", "e0", "rt-only", "e1", "e0"]
    batch = store.read_entities(GROUP, asked, at, SPANS)
    assert batch == [store.read_entity(GROUP, name, at, SPANS) for name in asked]
    assert [s.entity for s in batch] == asked
    assert batch[0].tiles and batch[0].batch_record is None  # e5: no record, tiles
    assert batch[2].batch_record == b"v1:e0" and not batch[2].tiles
    assert store.read_entities(GROUP, [], at, SPANS) == []
    with pytest.raises(AsOfOutOfRange):
        store.read_entities(GROUP, ["e0"], C0, SPANS)


def check_a_publish_cannot_split_a_batch(store: TileStore,
                                         read: Callable[[TileStore, int], None]) -> None:
    publish(store, 1)
    at = C0 + 2 * DAY_MS  # inside both views
    batch = store.read_entities(GROUP, PublishingMidway(store, 2), at, SPANS)
    current = store.current_view(GROUP)
    assert current is not None and current.batch_version == 2  # the publish did commit
    assert len({s.view.generation for s in batch}) == 1
    version = batch[0].view.batch_version
    assert [s.batch_record for s in batch] == [
        f"v{version}:{name}".encode() for name in NAMES[:-1]] + [None]
    read(store, 3)


def per_entity_loop_is_split(store: TileStore, version: int) -> None:
    """The check is not vacuous: one read_entity per name, with the same
    publish midway, sees two views."""
    at = C0 + 3 * DAY_MS
    split = [store.read_entity(GROUP, name, at, SPANS) for name in PublishingMidway(store, version)]
    assert len({s.view.generation for s in split}) == 2


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TileStore]:
    with SqliteTileStore(tmp_path / "tiles.db") as opened:
        yield opened


def test_read_entities_gives_the_snapshots_of_one_read_entity_each(store: TileStore) -> None:
    check_same_as_per_entity_reads(store)


def test_a_publish_while_reading_a_batch_cannot_split_it(store: TileStore) -> None:
    check_a_publish_cannot_split_a_batch(store, per_entity_loop_is_split)
