"""The store side of the online state: seed a ``lamina.schemas.online.
OnlineState`` from what a tile store holds, and store what it changed.

``online_seed(group, snapshot)`` decodes an ``EntitySnapshot`` (the batch
record of the entity and its realtime tiles, as ``TileStore.read_entity``
returns them) into the plain ``OnlineSeed`` the state takes: the record's
per-window entries are exactly the state's batch part, valid for the
record's ``[cutoff, horizon)``. ``changed_tile_rows`` encodes the state's
drained tiles as ``TileRow``s for ``TileStore.write_tiles``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from lamina.schemas.online import ChangedTile, OnlineSeed
from lamina.schemas.view_definitions import GroupBy
from lamina.stores.base import EntitySnapshot, StoreError, TileRow
from lamina.stores.codec import TileCodec
from lamina.stores.lookup import RECORD_FORMAT


def online_seed(group: GroupBy, snapshot: EntitySnapshot, *,
                seeded_through_ms: int | None = None,
                codec: TileCodec | None = None) -> OnlineSeed:
    """The ``OnlineSeed`` of ``snapshot.entity``: the published view's
    cutoff and horizon, its batch record decoded per feature, and the
    snapshot's realtime tiles decoded per hop. ``seeded_through_ms``: the
    newest event time those tiles hold, if the caller knows it (see
    ``OnlineSeed``).

    A store reads the tiles before ``snapshot.as_of_ms`` that the windows
    at that time need, so the state answers from ``as_of_ms`` on
    (``OnlineSeed.answers_from_ms``): read the snapshot as of
    ``seeded_through_ms + 1`` (a restart replays from there). ValueError if
    ``as_of_ms`` is not after ``seeded_through_ms`` (tiles at or after it
    would be missing); StoreError for a record of another publish or
    definition."""
    if seeded_through_ms is not None and snapshot.as_of_ms <= seeded_through_ms:
        raise ValueError(
            f"view {group.name!r}: the snapshot of {snapshot.entity!r} was read as of "
            f"{snapshot.as_of_ms}, not after the newest stored event {seeded_through_ms}, so "
            f"it lacks tiles; read it as of {seeded_through_ms + 1}")
    codec = codec or TileCodec(group)
    view = snapshot.view
    batch: dict[str, list[tuple[int | None, Any]]] = {}
    if snapshot.batch_record is not None:
        record = orjson.loads(snapshot.batch_record)
        if record.get("f") != RECORD_FORMAT or record.get("c") != view.cutoff_ms \
                or record.get("h") != view.horizon_ms:
            raise StoreError(
                f"view {group.name!r}: the batch record of {snapshot.entity!r} was built for "
                f"cutoff {record.get('c')} and horizon {record.get('h')}, the view has "
                f"{view.cutoff_ms} and {view.horizon_ms}; publish the view again")
        aggregate_of = {a.feature_name(w): a.name for a in group.aggregates for w in a.windows}
        for feature, entries in record["w"].items():
            if feature not in aggregate_of:
                raise StoreError(
                    f"view {group.name!r}: the batch record of {snapshot.entity!r} has feature "
                    f"{feature!r}, which this definition lacks; publish the view again with "
                    "this definition")
            partial_codec = codec.partials[aggregate_of[feature]]
            batch[feature] = [(start, partial_codec.load(value)) for start, value in entries]
    realtime: dict[int, dict[int, dict[str, Any]]] = {}
    for (hop, start), data in snapshot.tiles.items():
        realtime.setdefault(hop, {})[start] = codec.decode(hop, data)
    return OnlineSeed(cutoff_ms=view.cutoff_ms, batch=batch, horizon_ms=view.horizon_ms,
                      realtime=realtime, seeded_through_ms=seeded_through_ms,
                      answers_from_ms=snapshot.as_of_ms)


def changed_tile_rows(group: GroupBy, entity: str, tiles: Iterable[ChangedTile], *,
                      codec: TileCodec | None = None) -> list[TileRow]:
    """``OnlineState.drain_changed_tiles()`` as rows for ``write_tiles``."""
    codec = codec or TileCodec(group)
    return [TileRow(group.name, entity, tile.hop_ms, tile.tile_start_ms,
                    codec.encode(tile.hop_ms, tile.partials)) for tile in tiles]
