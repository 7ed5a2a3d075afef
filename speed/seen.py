"""Which event_ids an entity's realtime tiles already hold: the speed
layer's dedup rule, and how it is stored with the tiles.

The rule. A producer that resends an event sends the same event_id with the
same event time and the same entity (``lamina.dedup``), so the question is
asked per entity. ``SeenIds`` keeps the ids the entity's tiles took whose
event time is at or after ``newest - allowed_lateness`` (``newest``: the
newest event time applied to the entity). An older event cannot be applied
any more (``OnlineState.add`` refuses it as late), so forgetting its id
cannot let a resend be counted twice: the dedup horizon *is* the allowed
lateness, per entity, and beyond it a resend is counted as late and left
to the batch layer (which drops it by event_id as the lander does).

Storage. The ids travel with the tiles: one extra ``TileRow`` per entity in
a companion group (``seen_group``), written in the same ``write_tiles``
transaction as the entity's tiles and the consumer offsets. So after a
crash the ids, the tiles and the offsets are of the same micro-batch, and a
replay from the stored offsets meets exactly the ids its tiles hold. The row
also gives back ``newest`` (the largest time kept), which a restarted state
needs to take the same late/not-late decisions as the run before the crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import orjson

from lamina.schemas.view_definitions import GroupBy
from lamina.stores.base import TileRow, TileSlot

#: The one slot per entity the ids row is stored at (hop 1 ms, start 0).
SEEN_SLOT: Final[TileSlot] = (1, 0)
_FORMAT: Final = 1


def seen_group(group: GroupBy) -> str:
    """The companion group the ids rows of ``group`` are stored under (view
    names ending in ``__seen`` are reserved for it)."""
    return f"{group.name}__seen"


class SeenIds:
    """One entity's event_ids within the allowed lateness of its newest
    event time (see the module docstring for the rule and its horizon)."""

    __slots__ = ("allowed_lateness_ms", "_ids", "newest_ms", "changed")

    def __init__(self, allowed_lateness_ms: int, ids: Mapping[str, int] | None = None) -> None:
        self.allowed_lateness_ms = allowed_lateness_ms
        self._ids: dict[str, int] = dict(ids or {})
        self.newest_ms: int | None = max(self._ids.values()) if self._ids else None
        self.changed = False

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, event_id: str, event_time_ms: int) -> None:
        """Record an applied event; forgets ids older than the lateness."""
        self._ids[event_id] = event_time_ms
        self.changed = True
        if self.newest_ms is None or event_time_ms > self.newest_ms:
            self.newest_ms = event_time_ms
            floor = event_time_ms - self.allowed_lateness_ms
            if min(self._ids.values()) < floor:
                self._ids = {i: t for i, t in self._ids.items() if t >= floor}

    def encode(self) -> bytes:
        """The stored form: ``{"f": 1, "ids": [[event_id, event_time], ...]}``
        sorted by id (the same set gives the same bytes)."""
        return orjson.dumps({"f": _FORMAT, "ids": sorted(self._ids.items())})

    @classmethod
    def decode(cls, data: bytes | None, allowed_lateness_ms: int) -> SeenIds:
        """``encode``'s inverse; None (no row stored yet) is an empty set."""
        if data is None:
            return cls(allowed_lateness_ms)
        doc = orjson.loads(data)
        if doc.get("f") != _FORMAT:
            raise ValueError(f"seen-ids row of format {doc.get('f')!r}; this version reads "
                             f"{_FORMAT}")
        return cls(allowed_lateness_ms, {str(i): int(t) for i, t in doc["ids"]})

    def row(self, group: GroupBy, entity: str) -> TileRow:
        """The ids as the entity's row in ``seen_group(group)``."""
        hop, start = SEEN_SLOT
        return TileRow(seen_group(group), entity, hop, start, self.encode())
