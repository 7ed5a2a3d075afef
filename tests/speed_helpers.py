"""What the speed-layer tests share: the oracle (tiles of the events the
speed layer should have applied, by the batch layer's ``build_tiles``) and
a full listing of the realtime tiles a SQLite store holds."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lamina.schemas.view_definitions import GroupBy, build_tiles
from lamina.stores.codec import TileCodec

#: (entity, hop_ms, tile_start_ms) -> encoded partials
StoredTiles = dict[tuple[str, int, int], bytes]


def expected_tiles(group: GroupBy, events: Iterable[Mapping[str, Any]],
                   cutoff_ms: int | None = None) -> StoredTiles:
    """Every hop's tiles of ``events`` at or after ``cutoff_ms``, encoded as
    the store keeps them (``build_tiles`` counts each event_id once)."""
    codec = TileCodec(group)
    kept = [e for e in events if cutoff_ms is None or e["event_time"] >= cutoff_ms]
    return {(entity, hop, start): codec.encode(hop, partials)
            for hop in group.hops()
            for (entity, start), partials in build_tiles(group, kept, hop).items()}


def stored_tiles(path: Path, group: GroupBy, cutoff_ms: int | None = None) -> StoredTiles:
    """Every realtime tile of ``group`` in the SQLite store at ``path``
    (at or after ``cutoff_ms``: the ones a reader counts)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT entity, hop_ms, tile_start, partials FROM realtime_tiles "
                          "WHERE grp = ? AND tile_start >= ?",
                          (group.name, -1 if cutoff_ms is None else cutoff_ms)).fetchall()
    return {(entity, hop, start): bytes(data) for entity, hop, start, data in rows}
