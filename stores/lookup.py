"""The bounded lookup: one batch record plus a few realtime tiles per entity.

A naive lookup of "the last 7 days as of t" reads every hourly tile of the
window (168, and 720 daily ones for a lifetime... per entity, per query).
Here a lookup reads **one batch record** and the **realtime tiles since the
cutoff** that its windows need, and merges at most one batch partial per
window with them.

The batch record (built at publish time, pure: ``build_batch_record``)
---------------------------------------------------------------------
A batch view with cutoff ``T`` is published for the queries at ``T <= t <
H`` (``H``, the horizon, is ``T`` plus the expected interval until the next
publish, with some slack). For a window of length ``W`` and hop ``h`` the
batch part at ``t`` is the merge of the batch tiles with ``start(t) <=
tile_start < T``, where ``start(t) = floor((t - W) / h) * h`` (the sawtooth
start, ``lamina.schemas.view_definitions.window_range``). Over ``[T, H)`` the start
moves from ``T - W`` to ``S = floor((H - 1 - W) / h) * h``, so:

* the tiles in ``[S, T)`` are needed whole by every query: they are
  collapsed into one partial (Chronon's "collapsed" part);
* the tiles in ``[T - W, S)`` leave the window during the interval
  (Chronon's "tail hops"). Instead of storing them one by one and merging
  the ones still inside at read time, the record stores, for each such tile
  ``s``, the *suffix* ``merge(tiles in [s, T))`` -- collapsed part included.
  A lookup then takes the first entry at or after ``start(t)``: exactly one
  stored partial per window, never a merge over the tail. Entries equal to
  the next one (an empty tile, or a filter that let nothing through) are
  left out, so the record holds at most one entry per non-empty tail tile.
* a lifetime window has one entry: all batch tiles merged.

Per window that is at most ``min(non-empty tiles, (S - T + W) / h) + 1``
partials, written once per publish; e.g. a daily publish of the card views
(``H = T + 1 d``) keeps at most 24 hourly suffixes for the 24 h and 7 d
windows and one partial for the 30 d and lifetime windows.

The read (``FeatureReader.features``)
------------------------------------
For each window: the batch record's entry for ``start(t)`` (none if
``start(t) >= T``: the window is all realtime), then the realtime tiles
with ``max(T, start(t)) <= tile_start < t`` in time order, presented as
one merge (the aggregation's ``present_all``: sums added as integers, sparse
HLL images by their distinct coupons, no sketch built). A window's start
moves only at its hop's edge, so a parsed record keeps its batch entries
(decoded and presented) per set of window starts, for the last few. The realtime tiles a store reads
per hop are bounded by the longest window at that hop and by ``H - T``
(``realtime_spans``, ``lamina.stores.base.realtime_ranges``).

Equality with the reference (tested with hypothesis on random events and
query times): for every ``t`` in ``[T, H)``, with batch tiles from the
events before ``T`` and realtime tiles from the events in ``[T, t)``, the
features equal ``lamina.schemas.view_definitions.features_at`` over all tiles (and
``features_from_events``). Two conditions, both part of the design:

* merges are exact (invariant 3): the suffixes merge in a different grouping
  than a left fold over the tiles, which is invisible only for exact merges
  (integers, fixed-point sums, min/max, canonical HLL images). Float sums
  that do not add exactly could differ in the last bit.
* the head tile (the one holding ``t``) is read whole: exact when no event
  at or after ``t`` has been written to it -- a lookup "now", or at a tile
  boundary. The store keeps partials per tile, not events, so a lookup as of
  a past ``t`` inside a realtime tile that has since received later events
  includes them; such queries belong to the offline path.

Outside ``[T, H)`` a lookup is **refused** (``AsOfOutOfRange``): before
``T`` the batch part would include events after ``t``, and from ``H`` on
the collapsed part would include tiles that have left the window. A late
batch publish therefore makes lookups fail loudly rather than answer
wrongly; pick ``H`` with slack (``horizon_ms``).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, Final

import orjson

from lamina.lineage import fingerprint
from lamina.schemas.aggregations import FeatureValue
from lamina.schemas.view_definitions import GroupBy, Partials, Tiles, Window
from lamina.stores.base import (
    BatchRecord,
    EntitySnapshot,
    RealtimeSpans,
    StoreError,
    TileStore,
    check_as_of,
)
from lamina.stores.codec import PartialCodec, TileCodec

RECORD_FORMAT: Final = 1
_MISSING: Final = object()


def definition_fingerprint(group: GroupBy) -> str:
    """The fingerprint of a view definition: ``lamina.lineage.fingerprint``,
    the one the batch layer records with every published view."""
    return fingerprint(group)


def horizon_ms(cutoff_ms: int, publish_interval_ms: int, slack: float = 1.0) -> int:
    """The horizon of a view published with cutoff ``cutoff_ms`` when the
    next publish is expected ``publish_interval_ms`` later: ``cutoff +
    interval * (1 + slack)`` (default: twice the interval, so one late or
    failed publish does not stop lookups)."""
    if publish_interval_ms <= 0 or slack < 0:
        raise ValueError(f"publish interval must be > 0 ms and slack >= 0, got "
                         f"{publish_interval_ms} and {slack}")
    return cutoff_ms + int(publish_interval_ms * (1.0 + slack))


def realtime_spans(group: GroupBy) -> dict[int, int | None]:
    """Per hop, the longest window at that hop (ms), or None when a lifetime
    window needs every realtime tile since the cutoff."""
    longest: dict[int, int] = {}
    lifetime: set[int] = set()
    for aggregate in group.aggregates:
        for window in aggregate.windows:
            if window.length_ms is None:
                lifetime.add(window.hop_ms)
            else:
                longest[window.hop_ms] = max(longest.get(window.hop_ms, 0), window.length_ms)
    return {hop: None if hop in lifetime else longest[hop] for hop in group.hops()}


def _check_publish(group: GroupBy, cutoff_ms: int, horizon: int) -> None:
    alignment = group.cutoff_alignment_ms()
    if cutoff_ms % alignment:
        raise ValueError(f"view {group.name!r}: cutoff {cutoff_ms} is not a multiple of "
                         f"{alignment} ms (its largest hop)")
    if horizon <= cutoff_ms:
        raise ValueError(f"view {group.name!r}: horizon {horizon} must be after the cutoff "
                         f"{cutoff_ms}")


def _window_entries(window: Window, codec: PartialCodec, tiles: Mapping[int, Partials],
                    name: str, cutoff_ms: int, horizon: int) -> list[list[Any]]:
    """The record's entries for one (aggregate, window): ``[start, stored
    partial]`` ascending by start (``[[None, partial]]`` for lifetime)."""
    monoid = codec.aggregation
    zero = monoid.zero()
    starts = sorted(tiles)
    if window.length_ms is None:
        merged = monoid.merge_all(tiles[s][name] for s in starts)
        return [] if merged == zero else [[None, codec.dump(merged)]]
    hop = window.hop_ms
    first = cutoff_ms - window.length_ms
    last_start = (horizon - 1 - window.length_ms) // hop * hop  # S: the latest start(t)
    inside = [s for s in starts if first <= s]
    collapsed = [s for s in inside if s >= last_start]
    tail = [s for s in inside if s < last_start]
    entries: list[tuple[int, Any]] = []  # descending by start while built
    acc = monoid.merge_all(tiles[s][name] for s in collapsed)
    if collapsed and acc != zero:
        entries.append((last_start, acc))
    for s in reversed(tail):
        acc = monoid.merge(tiles[s][name], acc)
        # Equal to the entry after it: a query that would pick this one gets
        # the same partial from the next, so it is not stored.
        if acc != (entries[-1][1] if entries else zero):
            entries.append((s, acc))
    return [[s, codec.dump(p)] for s, p in reversed(entries)]


def build_batch_record(group: GroupBy, tiles: Mapping[int, Mapping[int, Partials]],
                       cutoff_ms: int, horizon: int, *,
                       codec: TileCodec | None = None) -> bytes | None:
    """One entity's batch record for lookups at ``cutoff_ms <= t < horizon``
    (see the module docstring), or None if no window of the view needs any
    of its batch tiles in that interval.

    ``tiles`` maps each hop to the entity's batch tiles ``{tile_start:
    {aggregate: partial}}`` (every tile before the cutoff, as the batch
    layer computed them; absent tiles are zero). ValueError for a tile at
    or after the cutoff, a misaligned cutoff or a horizon not after it.
    """
    _check_publish(group, cutoff_ms, horizon)
    codec = codec or TileCodec(group)
    for hop, by_start in tiles.items():
        late = [s for s in by_start if s >= cutoff_ms]
        if late:
            raise ValueError(f"view {group.name!r}: batch tile {min(late)} of hop {hop} ms is "
                             f"not before the cutoff {cutoff_ms}")
    features: dict[str, list[list[Any]]] = {}
    for aggregate in group.aggregates:
        partial_codec = codec.partials[aggregate.name]
        for window in aggregate.windows:
            entries = _window_entries(window, partial_codec, tiles.get(window.hop_ms, {}),
                                      aggregate.name, cutoff_ms, horizon)
            if entries:
                features[aggregate.feature_name(window)] = entries
    if not features:
        return None
    return orjson.dumps({"f": RECORD_FORMAT, "c": cutoff_ms, "h": horizon, "w": features})


def batch_records(group: GroupBy, tiles_by_hop: Mapping[int, Tiles], cutoff_ms: int,
                  horizon: int) -> Iterator[BatchRecord]:
    """``build_batch_record`` for every entity of ``tiles_by_hop`` (the
    reference layout, ``{hop: {(entity, tile_start): partials}}``, as
    ``lamina.schemas.view_definitions.build_tiles`` returns per hop), entities in
    sorted order; entities that need no record are skipped."""
    per_entity: dict[str, dict[int, dict[int, Partials]]] = {}
    for hop, tiles in tiles_by_hop.items():
        for (entity, start), partials in tiles.items():
            per_entity.setdefault(entity, {}).setdefault(hop, {})[start] = partials
    codec = TileCodec(group)
    for entity in sorted(per_entity):
        payload = build_batch_record(group, per_entity[entity], cutoff_ms, horizon, codec=codec)
        if payload is not None:
            yield BatchRecord(entity, payload)


#: Decoded batch records a ``FeatureReader`` keeps by default (LRU).
DEFAULT_RECORD_CACHE: Final = 4096
#: Parsed realtime tiles kept per cached record (an entity has a few).
TILES_PER_RECORD: Final = 4


class _Entries:
    """One feature's entries of a decoded batch record: the starts
    ascending (``[None]`` for a lifetime window), the stored partials, and
    each partial decoded and presented when first needed. Partials are
    immutable values (ints, tuples, frozen dataclasses, bytes), so a decoded
    one is shared between lookups."""

    __slots__ = ("starts", "stored", "decoded", "presented")

    def __init__(self, entries: list[list[Any]]) -> None:
        self.starts = [start for start, _ in entries]
        self.stored = [stored for _, stored in entries]
        self.decoded: list[Any] = [_MISSING] * len(entries)
        self.presented: list[Any] = [_MISSING] * len(entries)

    def pick(self, start: int | None) -> int:
        """The index of the first entry at or after ``start`` (-1: none)."""
        if start is None:
            return 0
        i = bisect.bisect_left(self.starts, start)
        return i if i < len(self.starts) else -1

    def partial(self, i: int, codec: PartialCodec) -> Any:
        value = self.decoded[i]
        if value is _MISSING:
            value = self.decoded[i] = codec.load(self.stored[i])
        return value

    def present(self, i: int, codec: PartialCodec) -> Any:
        value = self.presented[i]
        if value is _MISSING:
            value = self.presented[i] = codec.aggregation.present(self.partial(i, codec))
        return value


class _Lru:
    """A bounded map, least recently used out (``size`` 0: keeps nothing);
    safe to share between threads."""

    __slots__ = ("size", "_items", "_lock")

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[bytes, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes, make: Any) -> Any:
        """The value of ``key``, made with ``make(key)`` on a miss."""
        if not self.size:
            return make(key)
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        value = make(key)
        with self._lock:
            self._items[key] = value
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)


class _Tile:
    """A realtime tile parsed once; each aggregate's partial decoded when
    first needed (a tile's bytes are its content: the cache key)."""

    __slots__ = ("stored", "decoded")

    def __init__(self, data: bytes) -> None:
        self.stored: dict[str, Any] = orjson.loads(data)
        self.decoded: dict[str, Any] = {}

    def partial(self, name: str, codec: PartialCodec) -> Any:
        value = self.decoded.get(name, _MISSING)
        if value is _MISSING:
            value = self.decoded[name] = codec.load(self.stored.get(name))
        return value


class _Record:
    """A batch record parsed once: its cutoff, horizon and entries."""

    __slots__ = ("fmt", "cutoff", "horizon", "entries", "_at")

    def __init__(self, payload: bytes) -> None:
        record = orjson.loads(payload)
        self.fmt = record.get("f")
        self.cutoff = record.get("c")
        self.horizon = record.get("h")
        stored = record.get("w") or {}
        self.entries = {feature: _Entries(entries) for feature, entries in stored.items()
                        if entries}
        self._at: dict[tuple[int | None, ...], tuple[list[Any], list[Any]]] = {}

    def batch_parts(self, starts: tuple[int | None, ...], reader: FeatureReader
                    ) -> tuple[list[Any], list[Any]]:
        """Per window of ``reader`` (its index), the batch partial for the
        window starts ``starts`` (one per ``reader._plan`` entry) or
        ``_MISSING``, and that partial presented (the empty feature where
        it is missing). A pure function of the record and the starts,
        which move only at a hop edge: kept for the last few."""
        found = self._at.get(starts)
        if found is not None:
            return found
        partials: list[Any] = [_MISSING] * len(reader._empty)
        presented = list(reader._empty)
        entries = self.entries
        for (_, _, windows), start in zip(reader._plan, starts, strict=True):
            for index, _, feature, codec in windows:
                stored = entries.get(feature)
                pick = -1 if stored is None else stored.pick(start)
                if stored is not None and pick >= 0:
                    partials[index] = stored.partial(pick, codec)
                    presented[index] = stored.present(pick, codec)
        if len(self._at) >= 4:
            self._at.clear()
        found = self._at[starts] = (partials, presented)
        return found


class FeatureReader:
    """Features of one view from an ``EntitySnapshot``; build once per view.

    It keeps up to ``record_cache`` parsed batch records (least recently
    used out; 0: none), keyed by the record's bytes: a lookup that reads
    the same record again (a batch record does not change within a
    published generation) skips parsing and decoding it. Keyed by content,
    not by (generation, entity), a hit can never serve another record:
    not after a store is recreated and its generations start again, nor
    across two stores. Safe to share between threads.
    """

    def __init__(self, group: GroupBy, *, record_cache: int = DEFAULT_RECORD_CACHE) -> None:
        if isinstance(record_cache, bool) or not isinstance(record_cache, int) \
                or record_cache < 0:
            raise ValueError(f"record_cache must be an integer >= 0, got {record_cache!r}")
        self.group = group
        self.codec = TileCodec(group)
        self.spans: RealtimeSpans = realtime_spans(group)
        self.fingerprint = definition_fingerprint(group)
        self._windows = [(a.name, a.feature_name(w), w.length_ms, w.hop_ms,
                          self.codec.partials[a.name])
                         for a in group.aggregates for w in a.windows]
        # Per window: the feature with no part at all (the monoid's zero presented).
        self._empty = [codec.aggregation.present(codec.aggregation.merge_all([]))
                       for _, _, _, _, codec in self._windows]
        self._features = [feature for _, feature, _, _, _ in self._windows]
        # The windows by (length, hop): a window's start and its realtime
        # tiles are found once per such pair, not once per feature.
        plan: dict[tuple[int | None, int], list[tuple[int, str, str, PartialCodec]]] = {}
        for index, (name, feature, length, hop, codec) in enumerate(self._windows):
            plan.setdefault((length, hop), []).append((index, name, feature, codec))
        self._plan = [(length, hop, windows) for (length, hop), windows in plan.items()]
        self.record_cache = record_cache
        self._records = _Lru(record_cache)
        self._tiles = _Lru(TILES_PER_RECORD * record_cache)

    def features(self, snapshot: EntitySnapshot) -> dict[str, FeatureValue]:
        """Every feature of the snapshot's entity just before
        ``snapshot.as_of_ms`` (keys in ``group.feature_names()`` order).

        Raises ``AsOfOutOfRange`` outside the view's ``[cutoff, horizon)``
        and ``StoreError`` if the view was published for another definition
        of the group or the record belongs to another publish.
        """
        view = snapshot.view
        t = snapshot.as_of_ms
        check_as_of(view, t)
        if view.definition and view.definition != self.fingerprint:
            raise StoreError(
                f"view {self.group.name!r}: the published batch view was built for definition "
                f"{view.definition}, this reader has {self.fingerprint}; publish the view "
                "again with this definition")
        cutoff = view.cutoff_ms
        # window_range: each window starts at floor((t - W) / h) * h (None:
        # lifetime), computed once per (length, hop).
        starts = tuple(None if length is None else (t - length) // hop * hop
                       for length, hop, _ in self._plan)
        partials: list[Any] | None = None
        if snapshot.batch_record is not None:
            record = self._records.get(snapshot.batch_record, _Record)
            if record.fmt != RECORD_FORMAT or record.cutoff != cutoff \
                    or record.horizon != view.horizon_ms:
                raise StoreError(
                    f"view {self.group.name!r}: the batch record of {snapshot.entity!r} was "
                    f"built for cutoff {record.cutoff} and horizon {record.horizon}, the "
                    f"view has {cutoff} and {view.horizon_ms}; publish the view again")
            partials, presented = record.batch_parts(starts, self)
            values = list(presented)
        else:
            values = list(self._empty)
        if not snapshot.tiles:
            return dict(zip(self._features, values, strict=True))
        # Realtime tiles per hop, in time order, each parsed once (kept in
        # the tile cache: older tiles do not change between lookups); a
        # realtime store holds tiles from the cutoff.
        by_hop: dict[int, list[tuple[int, _Tile]]] = {}
        tile_of = self._tiles.get
        for (hop, tile_start), data in snapshot.tiles.items():
            if cutoff <= tile_start < t:
                by_hop.setdefault(hop, []).append((tile_start, tile_of(data, _Tile)))
        for tiles in by_hop.values():
            tiles.sort(key=lambda item: item[0])
        for (_, hop, windows), start in zip(self._plan, starts, strict=True):
            held = by_hop.get(hop)
            if not held:
                continue  # the batch part alone (presented once per record), or nothing
            first = cutoff if start is None else max(cutoff, start)
            tail = [tile for tile_start, tile in held if tile_start >= first]
            if not tail:
                continue
            for index, name, _, codec in windows:
                batch = _MISSING if partials is None else partials[index]
                parts = [] if batch is _MISSING else [batch]
                for tile in tail:
                    value = tile.decoded.get(name, _MISSING)
                    if value is _MISSING:
                        value = tile.partial(name, codec)
                    parts.append(value)
                values[index] = codec.aggregation.present_all(parts)
        return dict(zip(self._features, values, strict=True))


class FeatureLookup:
    """Serving's read path: ``features(entity)`` of one view from a store
    (one ``read_entity`` snapshot, then ``FeatureReader.features``)."""

    def __init__(self, store: TileStore, group: GroupBy) -> None:
        self.store = store
        self.reader = FeatureReader(group)

    def snapshot(self, entity: str, as_of_ms: int | None = None) -> EntitySnapshot:
        """The store records a lookup of ``entity`` at ``as_of_ms`` (default:
        now) reads."""
        t = int(time.time() * 1000) if as_of_ms is None else as_of_ms
        return self.store.read_entity(self.reader.group.name, entity, t, self.reader.spans)

    def features(self, entity: str, as_of_ms: int | None = None) -> dict[str, FeatureValue]:
        """Every feature of ``entity`` just before ``as_of_ms`` (default:
        now). Raises ``NoPublishedView`` / ``AsOfOutOfRange`` (see
        ``TileStore.read_entity``)."""
        return self.reader.features(self.snapshot(entity, as_of_ms))
