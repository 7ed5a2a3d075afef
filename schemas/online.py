"""Online point-in-time state: one entity's features strictly before ``t``,
kept up to date event by event (the speed layer runs one per entity).

``OnlineState(group, entity, allowed_lateness_ms=L, seed=...)`` holds what
the windows of one ``GroupBy`` need for one entity:

* the **batch part** (``OnlineSeed.batch``): per feature, the batch tiles
  before the cutoff ``T`` collapsed into suffix merges -- exactly what the
  store's batch record holds (``lamina.stores.lookup``); a window starting
  at ``s`` takes the first entry at or after ``s``;
* **tiles** per hop from ``T`` on: the realtime tiles the store gave at
  start-up (``OnlineSeed.realtime``, read-only here) and the partials of
  the events added since (``add``), kept per hop for every aggregate that
  has a window at that hop *or a coarser one*;
* the **raw events** of the finest tiles still inside the lateness.

Reading (``features_before(t)``) follows the sawtooth of ARCHITECTURE.md:
for a window of hop ``h`` the full tiles ``[start, floor(t/h)*h)`` plus the
head ``[floor(t/h)*h, t)``. The head is composed down the hops -- the full
tiles of the next finer hop inside it, then that hop's head, and so on to
the finest hop, whose head is the raw events before ``t`` -- so it never
includes an event at or after ``t``. Merges are exact (integers,
fixed-point sums, min/max, ``last``'s total order, canonical HLL images:
invariant 3), so regrouping changes no bit.

What is exact, and when
-----------------------
``features_before(t)`` equals ``features_from_events(group, E, entity, t)``
(same keys, same values bit for bit; ``min``/``max`` of ``0.0`` against
``-0.0`` may keep either sign, as the reference does for another order),
where ``E`` is the batch's events plus the seeded tiles' events plus every
event ``add`` accepted, for every ``t`` with

* ``t >= earliest_query_ms()``: the newest event time seen minus the
  allowed lateness, and at or after the cutoff, and after
  ``seeded_through_ms`` (the newest event the seeded tiles hold: they are
  partials without events, so only a ``t`` after all of them can take them
  whole), and at or after the time the seeded tiles were read for;
* ``t < horizon_ms`` when the batch part came from a record published for
  ``[T, H)``.

Anything else raises ``QueryOutOfRange`` rather than answer wrongly.

What is refused
---------------
``add`` applies an event only if its event time is at or after the cutoff
and at most ``allowed_lateness_ms`` older than the newest event time seen
(seeded or added); otherwise it changes nothing and returns False, so the
caller counts it (the next batch run has it: invariant 5). ``add`` does not
de-duplicate ``event_id``s: the caller's dedup index does (each event_id
counts once). An event of another entity or type is a ValueError.

Memory
------
Tiles no window can read any more at a valid ``t`` are evicted as the
newest event time moves on; a lifetime window's evicted tiles are collapsed
into one partial. Raw events are kept only from the finest tile holding
``earliest_query_ms()``. So the state holds at most ``W / h + ceil(L / h) +
c / h + 2`` tiles per hop ``h`` (``W`` the longest window at that hop, ``c``
the next coarser hop, whose head is built from these tiles) and the raw
events of ``L`` plus one finest tile. Tiles changed and then evicted before
a drain wait for it (``held()`` counts them): drain once per micro-batch.
A far-future event time moves "newest" on and makes every event before it
minus ``L`` late: the caller refuses implausible event times before ``add``.

Reading cost: each window's *settled* part (batch entry, collapsed
lifetime, full tiles, seeded head) is cached until its start or head tile
moves or a late event lands inside it; a query then merges that one
partial with the head.

Storing
-------
``drain_changed_tiles()`` returns the tiles ``add`` changed since the last
drain (each once, however many events it took), with the aggregates stored
at their hop, seeded and added parts merged: the storable form
(``lamina.stores.codec.TileCodec.encode`` takes it). HLL partials are
mutable DataSketches unions inside the state and canonical images only
here and in ``features_before``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import datasketches

from lamina.errors import LaminaError
from lamina.schemas.aggregations import HLL_LG_K, Aggregation, ApproxDistinct, FeatureValue
from lamina.schemas.view_definitions import (
    Aggregate,
    GroupBy,
    Partials,
    Window,
    lift_event,
    tile_start,
    window_range,
)

_HLL_8: Final = datasketches.tgt_hll_type.HLL_8
_NONE: Final = object()

#: Per feature, the batch part as ``(window start, partial)`` entries in
#: ascending start order (``(None, partial)`` alone for a lifetime window).
BatchEntries = Mapping[str, Sequence[tuple[int | None, Any]]]
#: ``{hop_ms: {tile_start_ms: {aggregate name: partial}}}`` of one entity.
EntityTiles = Mapping[int, Mapping[int, Mapping[str, Any]]]


class QueryOutOfRange(LaminaError):
    """``features_before`` was asked for a time the state cannot answer
    exactly; the message says which bound and what to do."""


class ChangedTile(NamedTuple):
    """A tile ``add`` changed, as it should be stored: the partials of the
    aggregates stored at ``hop_ms`` (canonical HLL images)."""

    hop_ms: int
    tile_start_ms: int
    partials: dict[str, Any]


@dataclass(frozen=True)
class OnlineSeed:
    """What the store holds for one entity at start-up, as plain data.

    ``cutoff_ms``: the published batch cutoff ``T`` (a multiple of the
    group's largest hop). ``batch``: the batch part per feature
    (:func:`batch_entries` makes it from batch tiles; the store adapter
    ``lamina.stores.online`` from a batch record). ``horizon_ms``: the
    record's horizon ``H``, None when the entries hold every tail tile.
    ``realtime``: the stored realtime tiles at or after ``T``.
    ``seeded_through_ms``: the newest event time those tiles hold; None
    with realtime tiles means "unknown" and is taken as the end of the
    newest tile (queries inside it are refused). ``answers_from_ms``: the
    earliest query time the realtime tiles are complete for (a store
    reads only the tiles the windows at its ``as_of`` need); None: all
    tiles from the cutoff are there.
    """

    cutoff_ms: int
    batch: BatchEntries = field(default_factory=dict)
    horizon_ms: int | None = None
    realtime: EntityTiles = field(default_factory=dict)
    seeded_through_ms: int | None = None
    answers_from_ms: int | None = None


def batch_entries(group: GroupBy, tiles: EntityTiles, cutoff_ms: int
                  ) -> dict[str, list[tuple[int | None, Any]]]:
    """The batch part of one entity for queries at any ``t >= cutoff_ms``:
    per feature, for every non-empty batch tile ``s`` a window can still
    reach (``s >= cutoff - W``), the merge of the tiles in ``[s, cutoff)``;
    a lifetime window gets one entry, every tile merged. ``tiles`` maps
    each hop to the entity's batch tiles (``build_tiles`` per hop, keyed by
    start); ValueError for a tile at or after the cutoff."""
    _check_cutoff(group, cutoff_ms)
    for hop, by_start in tiles.items():
        late = [s for s in by_start if s >= cutoff_ms]
        if late:
            raise ValueError(f"view {group.name!r}: batch tile {min(late)} of hop {hop} ms is "
                             f"not before the cutoff {cutoff_ms}")
    out: dict[str, list[tuple[int | None, Any]]] = {}
    for aggregate in group.aggregates:
        monoid = aggregate.aggregation
        for window in aggregate.windows:
            by_start = tiles.get(window.hop_ms, {})
            starts = sorted(by_start)
            if window.length_ms is not None:
                starts = [s for s in starts if s >= cutoff_ms - window.length_ms]
            entries: list[tuple[int | None, Any]] = []
            acc = monoid.zero()
            for s in reversed(starts):
                acc = monoid.merge(by_start[s].get(aggregate.name, monoid.zero()), acc)
                entries.append((s, acc))
            entries.reverse()
            if window.length_ms is None:
                entries = [(None, acc)] if starts else []
            if entries:
                out[aggregate.feature_name(window)] = entries
    return out


def _check_cutoff(group: GroupBy, cutoff_ms: int) -> None:
    alignment = group.cutoff_alignment_ms()
    if isinstance(cutoff_ms, bool) or not isinstance(cutoff_ms, int) or cutoff_ms % alignment:
        raise ValueError(f"view {group.name!r}: cutoff {cutoff_ms!r} is not a multiple of "
                         f"{alignment} ms (its largest hop)")


# --- merging, with HLL sketches kept mutable inside the state ---------------


def _is_hll(monoid: Aggregation[Any]) -> bool:
    return isinstance(monoid, ApproxDistinct)


def _accumulate(monoid: Aggregation[Any], acc: Any, partial: Any) -> Any:
    """``acc`` with ``partial`` merged in. For approx_distinct ``acc`` is a
    mutable DataSketches union (None while empty), updated in place."""
    if not _is_hll(monoid):
        return monoid.merge(acc, partial)
    if partial is None:
        return acc
    if acc is None:
        acc = datasketches.hll_union(HLL_LG_K)
    acc.update(datasketches.hll_sketch.deserialize(partial))
    return acc


def _merge(monoid: Aggregation[Any], items: Iterable[Any]) -> Any:
    """The canonical partial of ``items`` (partials, or HLL unions)."""
    if not _is_hll(monoid):
        return monoid.merge_all(items)
    union = None
    for item in items:
        if item is None:
            continue
        if union is None:
            union = datasketches.hll_union(HLL_LG_K)
        if isinstance(item, bytes):
            union.update(datasketches.hll_sketch.deserialize(item))
        else:
            union.update(item.get_result(_HLL_8))
    if union is None:
        return None
    # from_storage canonicalises any image: a function of the value set only.
    return monoid.from_storage(bytes(union.get_result(_HLL_8).serialize_compact()))


# --- the state ---------------------------------------------------------------


class OnlineState:
    """One entity's online point-in-time state for one ``GroupBy`` (see the
    module docstring for what is exact, when, and what is refused).

    ``allowed_lateness_ms``: how much older than the newest event time seen
    an event may be and still be applied (>= 0). ``seed``: what the store
    gave at start-up; None starts empty with no batch cutoff (every event
    counts from the first one on)."""

    def __init__(self, group: GroupBy, entity: str, *, allowed_lateness_ms: int,
                 seed: OnlineSeed | None = None) -> None:
        if isinstance(allowed_lateness_ms, bool) or not isinstance(allowed_lateness_ms, int) \
                or allowed_lateness_ms < 0:
            raise ValueError(f"allowed_lateness_ms must be an integer >= 0, got "
                             f"{allowed_lateness_ms!r}")
        self.group = group
        self.entity = entity
        self.allowed_lateness_ms = allowed_lateness_ms
        self._hops: tuple[int, ...] = group.hops()
        self._monoids: dict[str, Aggregation[Any]] = {
            a.name: a.aggregation for a in group.aggregates}
        # Hop -> aggregates whose tiles are kept there: those with a window at
        # that hop or a coarser one (a coarser head is built from finer tiles).
        self._kept_at: dict[int, tuple[str, ...]] = {
            h: tuple(a.name for a in group.aggregates if max(a.hops()) >= h)
            for h in self._hops}
        self._stored_at: dict[int, tuple[str, ...]] = {
            h: tuple(a.name for a in group.aggregates_for_hop(h)) for h in self._hops}
        self._longest: dict[int, int] = {}
        self._lifetime: dict[str, int] = {}  # aggregate -> hop of its lifetime window
        for aggregate in group.aggregates:
            for window in aggregate.windows:
                if window.length_ms is None:
                    self._lifetime[aggregate.name] = window.hop_ms
                else:
                    self._longest[window.hop_ms] = max(self._longest.get(window.hop_ms, 0),
                                                       window.length_ms)
        self._windows: list[tuple[Aggregate, Window, str]] = [
            (a, w, a.feature_name(w)) for a in group.aggregates for w in a.windows]
        self._added: dict[int, dict[int, dict[str, Any]]] = {h: {} for h in self._hops}
        self._seeded: dict[int, dict[int, dict[str, Any]]] = {h: {} for h in self._hops}
        # Per hop, the starts of the tiles held (added or seeded), ascending.
        self._starts: dict[int, list[int]] = {h: [] for h in self._hops}
        # Per feature, the part of its window no event can change any more
        # except a late one: (start, head start, partial) -- the batch entry,
        # the collapsed lifetime, the full tiles and the seeded head tile.
        self._settled: dict[str, tuple[int | None, int, Any]] = {}
        self._features_at: dict[int, tuple[str, ...]] = {
            h: tuple(f for _, w, f in self._windows if w.hop_ms == h) for h in self._hops}
        self._collapsed: dict[str, Any] = {
            name: self._monoids[name].zero() for name in self._lifetime}
        self._raw: list[tuple[int, Partials]] = []  # (event time, lifted), arrival order
        self._dirty: set[tuple[int, int]] = set()
        self._evicted_dirty: dict[tuple[int, int], dict[str, Any]] = {}
        self._newest: int | None = None
        self.cutoff_ms: int | None = None
        self.horizon_ms: int | None = None
        self.seeded_through_ms: int | None = None
        self._answers_from: int | None = None
        self._batch: dict[str, list[tuple[int | None, Any]]] = {}
        if seed is not None:
            self._load(seed)

    def _load(self, seed: OnlineSeed) -> None:
        group = self.group
        _check_cutoff(group, seed.cutoff_ms)
        if seed.horizon_ms is not None and seed.horizon_ms <= seed.cutoff_ms:
            raise ValueError(f"view {group.name!r}: horizon {seed.horizon_ms} must be after "
                             f"the cutoff {seed.cutoff_ms}")
        self.cutoff_ms, self.horizon_ms = seed.cutoff_ms, seed.horizon_ms
        features = {name for _, _, name in self._windows}
        unknown = sorted(set(seed.batch) - features)
        if unknown:
            raise ValueError(f"view {group.name!r}: the batch part has unknown features "
                             f"{unknown}")
        self._batch = {name: list(entries) for name, entries in seed.batch.items()}
        for hop, by_start in seed.realtime.items():
            if hop not in self._stored_at:
                raise ValueError(f"view {group.name!r} has no hop {hop} ms; its hops: "
                                 f"{list(self._hops)}")
            for start, partials in by_start.items():
                if start % hop or start < seed.cutoff_ms:
                    raise ValueError(f"view {group.name!r}: realtime tile {start} of hop {hop} "
                                     f"ms is not a tile start at or after the cutoff "
                                     f"{seed.cutoff_ms}")
                extra = sorted(set(partials) - set(self._stored_at[hop]))
                if extra:
                    raise ValueError(f"view {group.name!r}: hop {hop} ms stores no {extra}")
                self._seeded[hop][start] = {
                    name: partials.get(name, self._monoids[name].zero())
                    for name in self._stored_at[hop]}
                bisect.insort(self._starts[hop], start)
        through = seed.seeded_through_ms
        ends = [max(tiles) + hop - 1 for hop, tiles in self._seeded.items() if tiles]
        if through is None and ends:
            # Unknown: an event makes a tile at every hop, so the newest one is
            # at or before the end of the newest tile of each hop.
            through = min(ends)
        self.seeded_through_ms = through
        self._answers_from = seed.answers_from_ms
        self._newest = through
        self._evict()

    # --- time bounds ---------------------------------------------------

    @property
    def newest_event_ms(self) -> int | None:
        """The newest event time seen (seeded or added), None before any."""
        return self._newest

    def earliest_query_ms(self) -> int | None:
        """The earliest ``t`` that ``features_before`` answers exactly (None:
        any): the newest event time minus the allowed lateness, the cutoff,
        one millisecond after ``seeded_through_ms`` and the seed's
        ``answers_from_ms``, whichever is latest."""
        bounds = [] if self._answers_from is None else [self._answers_from]
        if self._newest is not None:
            bounds.append(self._newest - self.allowed_lateness_ms)
        if self.cutoff_ms is not None:
            bounds.append(self.cutoff_ms)
        if self.seeded_through_ms is not None:
            bounds.append(self.seeded_through_ms + 1)
        return max(bounds) if bounds else None

    def _lowest_accepted(self) -> int | None:
        """The earliest event time ``add`` still applies (None: any)."""
        bounds = []
        if self._newest is not None:
            bounds.append(self._newest - self.allowed_lateness_ms)
        if self.cutoff_ms is not None:
            bounds.append(self.cutoff_ms)
        return max(bounds) if bounds else None

    # --- writing ---------------------------------------------------------

    def add(self, event: Mapping[str, Any]) -> bool:
        """Apply one event of this entity in its event-time tile at every
        hop; True if applied, False (nothing changed) if it is before the
        cutoff or later than the allowed lateness. ValueError for an event
        of another entity or type; a value the aggregation refuses raises
        before anything changes."""
        group = self.group
        if event.get("event_type", group.event_type) != group.event_type:
            raise ValueError(f"view {group.name!r} aggregates {group.event_type!r} events, "
                             f"got {event.get('event_type')!r}")
        if str(event.get(group.entity_key)) != self.entity:
            raise ValueError(f"this state is {group.entity_key}={self.entity!r}, the event "
                             f"has {event.get(group.entity_key)!r}")
        event_time = int(event["event_time"])
        lowest = self._lowest_accepted()
        if lowest is not None and event_time < lowest:
            return False
        lifted = lift_event(group, event)
        for hop in self._hops:
            start = tile_start(event_time, hop)
            names = self._kept_at[hop]
            tile = self._added[hop].get(start)
            if tile is None:
                tile = self._added[hop][start] = {n: self._monoids[n].zero() for n in names}
                if start not in self._seeded[hop]:
                    bisect.insort(self._starts[hop], start)
            for feature in self._features_at[hop]:
                settled = self._settled.get(feature)
                if settled is not None and settled[1] > start:  # a late event inside it
                    del self._settled[feature]
            for name in names:
                tile[name] = _accumulate(self._monoids[name], tile[name], lifted[name])
            self._dirty.add((hop, start))
        earliest = self.earliest_query_ms()
        if earliest is None or event_time >= tile_start(earliest, self._hops[0]):
            self._raw.append((event_time, lifted))
        if self._newest is None or event_time > self._newest:
            self._newest = event_time
            self._evict()
        return True

    def drain_changed_tiles(self) -> list[ChangedTile]:
        """The tiles changed since the last drain, each once, sorted by
        (hop, start), in storable form (see the module docstring); the
        state forgets that they changed."""
        out = dict(self._evicted_dirty)
        for hop, start in self._dirty:
            if start in self._added[hop]:
                out[(hop, start)] = self._storable(hop, start, self._added[hop][start],
                                                   self._seeded[hop].get(start))
        self._dirty.clear()
        self._evicted_dirty.clear()
        return [ChangedTile(h, s, out[(h, s)]) for h, s in sorted(out)]

    def _storable(self, hop: int, start: int, added: Mapping[str, Any],
                  seeded: Mapping[str, Any] | None) -> dict[str, Any]:
        out = {}
        for name in self._stored_at[hop]:
            monoid = self._monoids[name]
            parts = [added[name]] if seeded is None else [seeded[name], added[name]]
            out[name] = _merge(monoid, parts)
        return out

    # --- eviction --------------------------------------------------------

    def _keep_from(self, hop: int, earliest: int, lowest: int | None) -> int:
        """The first tile start of ``hop`` a query at or after ``earliest``
        or an event at or after ``lowest`` can touch."""
        keep = tile_start(earliest, hop)
        if lowest is not None:
            keep = min(keep, tile_start(lowest, hop))
        if hop in self._longest:
            keep = min(keep, tile_start(earliest - self._longest[hop], hop))
        coarser = [h for h in self._hops if h > hop]
        if coarser:
            keep = min(keep, tile_start(earliest, coarser[0]))
        return keep

    def _evict(self) -> None:
        earliest = self.earliest_query_ms()
        if earliest is None:
            return
        lowest = self._lowest_accepted()
        for hop in self._hops:
            keep = self._keep_from(hop, earliest, lowest)
            added, seeded, starts = self._added[hop], self._seeded[hop], self._starts[hop]
            evicted = starts[:bisect.bisect_left(starts, keep)]
            del starts[:len(evicted)]
            for start in evicted:
                tile, stored = added.pop(start, None), seeded.pop(start, None)
                if tile is not None and (hop, start) in self._dirty:
                    self._dirty.discard((hop, start))
                    self._evicted_dirty[(hop, start)] = self._storable(hop, start, tile, stored)
                for name, lifetime_hop in self._lifetime.items():
                    if lifetime_hop != hop:
                        continue
                    parts = [self._collapsed[name]]
                    parts += [p[name] for p in (stored, tile) if p is not None]
                    self._collapsed[name] = _merge(self._monoids[name], parts)
        raw_from = tile_start(earliest, self._hops[0])
        if self._raw and min(t for t, _ in self._raw) < raw_from:
            self._raw = [item for item in self._raw if item[0] >= raw_from]

    def held(self) -> dict[str, int]:
        """How much the state holds: tiles (added and seeded, all hops), raw
        events, and evicted tiles waiting for the next drain -- the first two
        bounded as the module docstring says, the last by draining."""
        return {"tiles": sum(len(t) for t in self._added.values())
                + sum(len(t) for t in self._seeded.values()),
                "raw_events": len(self._raw),
                "undrained_evicted": len(self._evicted_dirty)}

    # --- reading ---------------------------------------------------------

    def _check_query(self, t_ms: int) -> None:
        earliest = self.earliest_query_ms()
        if earliest is not None and t_ms < earliest:
            reasons = []
            if self.cutoff_ms is not None and t_ms < self.cutoff_ms:
                reasons.append(f"before the batch cutoff {self.cutoff_ms}")
            if self._newest is not None and t_ms < self._newest - self.allowed_lateness_ms:
                reasons.append(f"more than the allowed lateness {self.allowed_lateness_ms} ms "
                               f"before the newest event time {self._newest}")
            if self.seeded_through_ms is not None and t_ms <= self.seeded_through_ms:
                reasons.append(f"not after the newest seeded event time "
                               f"{self.seeded_through_ms}")
            if self._answers_from is not None and t_ms < self._answers_from:
                reasons.append(f"before {self._answers_from}, the time the seeded tiles "
                               "were read for")
            raise QueryOutOfRange(
                f"view {self.group.name!r}, {self.entity!r}: features before {t_ms} cannot be "
                f"answered exactly online ({'; '.join(reasons)}); the earliest time this state "
                f"answers is {earliest} -- features further back come from the offline "
                "point-in-time builder")
        if self.horizon_ms is not None and t_ms >= self.horizon_ms:
            raise QueryOutOfRange(
                f"view {self.group.name!r}, {self.entity!r}: features before {t_ms} are at or "
                f"after the horizon {self.horizon_ms} of the batch part (cutoff "
                f"{self.cutoff_ms}); seed a new state from the newer published batch view")

    def _heads(self, t_ms: int) -> dict[int, dict[str, list[Any]]]:
        """Per hop and aggregate, the added partials of the head ``[floor(t
        /h)*h, t)``: the next finer hop's full tiles inside it, then that
        hop's head; the finest head is the raw events before ``t``."""
        finest = self._hops[0]
        head_start = tile_start(t_ms, finest)
        raw = [lifted for event_time, lifted in self._raw if head_start <= event_time < t_ms]
        heads: dict[int, dict[str, list[Any]]] = {
            finest: {name: [p[name] for p in raw] for name in self._kept_at[finest]}}
        for finer, hop in zip(self._hops, self._hops[1:], strict=False):
            tiles = self._added[finer]
            inside = [tiles[s] for s in range(tile_start(t_ms, hop), tile_start(t_ms, finer),
                                              finer) if s in tiles]
            heads[hop] = {name: [tile[name] for tile in inside] + heads[finer][name]
                          for name in self._kept_at[hop]}
        return heads

    def features_before(self, t_ms: int) -> dict[str, FeatureValue]:
        """Every feature of the entity just before ``t_ms`` (keys in
        ``group.feature_names()`` order): exact as the module docstring
        says; ``QueryOutOfRange`` for a ``t_ms`` it cannot answer exactly."""
        self._check_query(t_ms)
        heads = self._heads(t_ms)
        out: dict[str, FeatureValue] = {}
        for aggregate, window, feature in self._windows:
            name, hop, monoid = aggregate.name, window.hop_ms, self._monoids[aggregate.name]
            head = tile_start(t_ms, hop)
            start, _ = window_range(t_ms, window)
            settled = self._settled.get(feature)
            if settled is None or settled[0] != start or settled[1] != head:
                settled = self._settled[feature] = (
                    start, head, self._settled_part(feature, name, hop, start, head))
            parts = [settled[2], *heads[hop][name]]
            out[feature] = monoid.present(_merge(monoid, parts))
        return out

    def _settled_part(self, feature: str, name: str, hop: int, start: int | None,
                      head: int) -> Any:
        """The merge of everything in a window at ``[start, head)`` but the
        added events of its head tile: the batch entry, the collapsed
        lifetime, the full tiles, and the seeded part of the head tile (all
        seeded events are before any ``t`` answered)."""
        monoid = self._monoids[name]
        parts: list[Any] = []
        entries = self._batch.get(feature)
        if entries:
            # The first entry at or after the window's start holds the batch
            # tiles in [start, cutoff); none: the window holds no batch tile.
            chosen = entries[0][1] if start is None else next(
                (p for s, p in entries if s is not None and s >= start), _NONE)
            if chosen is not _NONE:
                parts.append(chosen)
        if start is None:
            parts.append(self._collapsed[name])
        added, seeded, starts = self._added[hop], self._seeded[hop], self._starts[hop]
        first = 0 if start is None else bisect.bisect_left(starts, start)
        for s in starts[first:bisect.bisect_left(starts, head)]:
            if s in seeded:
                parts.append(seeded[s][name])
            if s in added:
                parts.append(added[s][name])
        if head in seeded:
            parts.append(seeded[head][name])
        return _merge(monoid, parts)
