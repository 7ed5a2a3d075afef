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
An approx_distinct part (of a tile or of a window's running partial) is
its distinct lifted images with counts: at most one per distinct value in
it. One-value images are shared through a module cache of at most 65,536
values (cleared when full).

Reading cost
------------
Each window keeps a running partial of the added events in ``[start, t)``
for the last query time ``t``, beside its static part (the batch entry for
its start, the seeded tiles from its start on, a lifetime window's
collapsed tiles). A query at ``t' >= t`` moves it on, as the offline sweep
(``lamina.schemas.pit``) does: the raw events in ``[t, t')`` enter, and
when the start moves the tiles before the new start leave -- counts, sums,
means and histograms are integers, subtracted exactly; min/max/last keep
the sliding-window candidates no later event beats; approx_distinct keeps
a count per lifted image (each tile keeps its images' counts to take them
out) and is canonicalised and presented again only when the set changed.
An event ``add`` applies before ``t`` enters the windows holding it at
once. A query before ``t``, or after eviction took a tile or raw event a
running partial still needed (no query for longer than the windows and
the lateness allow), rebuilds the partials from the tiles and raw events
-- exact either way, only slower.

Storing
-------
``drain_changed_tiles()`` returns the tiles ``add`` changed since the last
drain (each once, however many events it took), with the aggregates stored
at their hop, seeded and added parts merged: the storable form
(``lamina.stores.codec.TileCodec.encode`` takes it). An added tile's
approx_distinct part is its lifted images (with counts) inside the state,
merged into a canonical image only here and when a window presents it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import datasketches

from lamina.errors import LaminaError
from lamina.schemas.aggregations import (
    HLL_LG_K,
    Aggregation,
    ApproxDistinct,
    Count,
    FeatureValue,
    Histogram,
    Last,
    Max,
    Mean,
    MeanPartial,
    Min,
    Sum,
    hll_coupons,
    sparse_present,
)
from lamina.schemas.view_definitions import (
    Aggregate,
    GroupBy,
    Partials,
    Window,
    field_value,
    tile_start,
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


# --- merging ------------------------------------------------------------------


#: Per aggregation class, whether it is approx_distinct (an ABC isinstance
#: check costs ~1 µs, and merges ask it for every partial).
_HLL_KINDS: dict[type, bool] = {}


def _is_hll(monoid: Aggregation[Any]) -> bool:
    kind = type(monoid)
    known = _HLL_KINDS.get(kind)
    if known is None:
        known = _HLL_KINDS[kind] = isinstance(monoid, ApproxDistinct)
    return known


def _merge(monoid: Aggregation[Any], items: Iterable[Any]) -> Any:
    """The canonical partial of ``items`` (partials; HLL images)."""
    if not _is_hll(monoid):
        return monoid.merge_all(items)
    union = None
    for item in items:
        if item is None:
            continue
        if union is None:
            union = datasketches.hll_union(HLL_LG_K)
        union.update(datasketches.hll_sketch.deserialize(item))
    if union is None:
        return None
    # from_storage canonicalises any image: a function of the value set only.
    return monoid.from_storage(bytes(union.get_result(_HLL_8).serialize_compact()))


# --- per-window running partials ------------------------------------------


class _WindowAcc:
    """One window's running partial of the *added* events in ``[start, t)``
    for the last query time ``t`` (the state's ``_t_acc``), plus ``static``:
    the merge of what the window holds that ``add`` never changes (the batch
    entry, the seeded tiles, a lifetime window's collapsed tiles).

    Events enter one by one (``enter``, also tiles' partials when rebuilt);
    when the start moves, the tiles before it leave (``leave_tile``, then
    ``moved``). Every event that enters is in a tile the window still holds,
    so each tile that leaves takes out exactly what entered with its events.
    """

    __slots__ = ("batch_parts", "batch_starts", "feature", "hop", "length", "monoid", "name",
                 "start", "static", "zero")

    def __init__(self, feature: str, name: str, window: Window,
                 monoid: Aggregation[Any]) -> None:
        self.feature, self.name, self.monoid = feature, name, monoid
        self.hop, self.length = window.hop_ms, window.length_ms
        self.start: int | None = None
        self.static: Any = monoid.zero()
        self.zero: Any = monoid.zero()
        # The batch entries of the feature as parallel lists (starts, parts),
        # when a windowed feature's static part is its batch entry alone for
        # every start (no seeded tiles at its hop); None otherwise. Set by
        # the state once seeded, read by OnlineState._advance.
        self.batch_starts: list[int] | None = None
        self.batch_parts: list[Any] = []

    def clear(self, start: int | None, static: Any) -> None:
        self.start, self.static = start, static

    def enter(self, time: int, partial: Any) -> None:
        raise NotImplementedError

    def enter_tile(self, time: int, tile: Mapping[str, Any],
                   images: Mapping[str, dict[bytes, int]] | None) -> None:
        self.enter(time, tile[self.name])

    def leave_tile(self, tile: Mapping[str, Any],
                   images: Mapping[str, dict[bytes, int]] | None) -> None:
        raise NotImplementedError

    def moved(self, start: int, static: Any) -> None:
        self.start, self.static = start, static

    def present(self) -> FeatureValue:
        raise NotImplementedError


class _SumAcc(_WindowAcc):
    """``count`` and ``sum``: integers, added and subtracted exactly."""

    __slots__ = ("divisor", "total")

    def clear(self, start: int | None, static: Any) -> None:
        self.start, self.static, self.total = start, static, 0
        self.divisor = 10**self.monoid.scale if isinstance(self.monoid, Sum) else None

    def enter(self, time: int, partial: int) -> None:
        self.total += partial

    def leave_tile(self, tile: Mapping[str, Any],
                   images: Mapping[str, dict[bytes, int]] | None) -> None:
        self.total -= tile[self.name]

    def present(self) -> FeatureValue:
        units = self.static + self.total
        # Sum.present (units / 10**scale, correctly rounded); a count as is.
        return units if self.divisor is None else units / self.divisor


class _MeanAcc(_WindowAcc):
    """``mean``: its integer (units, count), added and subtracted."""

    __slots__ = ("count", "power", "total")

    def clear(self, start: int | None, static: Any) -> None:
        self.start, self.static, self.total, self.count = start, static, 0, 0
        self.power = 10**self.monoid.scale  # type: ignore[attr-defined]  # a Mean's

    def enter(self, time: int, partial: MeanPartial) -> None:
        self.total += partial.sum
        self.count += partial.count

    def leave_tile(self, tile: Mapping[str, Any],
                   images: Mapping[str, dict[bytes, int]] | None) -> None:
        partial = tile[self.name]
        self.total -= partial.sum
        self.count -= partial.count

    def present(self) -> FeatureValue:
        # Mean.present: the float nearest sum / (count * 10**scale), or None.
        count = self.static.count + self.count
        if not count:
            return None
        return (self.static.sum + self.total) / (count * self.power)


class _HistogramAcc(_WindowAcc):
    """``histogram``: integer counts per bucket, added and subtracted."""

    __slots__ = ("counts",)

    def clear(self, start: int | None, static: Any) -> None:
        self.start, self.static, self.counts = start, static, list(static)

    def enter(self, time: int, partial: tuple[int, ...]) -> None:
        counts = self.counts
        for bucket, n in enumerate(partial):
            if n:
                counts[bucket] += n

    def leave_tile(self, tile: Mapping[str, Any],
                   images: Mapping[str, dict[bytes, int]] | None) -> None:
        counts = self.counts
        for bucket, n in enumerate(tile[self.name]):
            if n:
                counts[bucket] -= n

    def moved(self, start: int, static: Any) -> None:
        # The counts hold the static part too: swap the old one for the new.
        if static != self.static:
            counts = self.counts
            for bucket, (old, new) in enumerate(zip(self.static, static, strict=True)):
                counts[bucket] += new - old
        self.start, self.static = start, static

    def present(self) -> FeatureValue:
        return tuple(self.counts)


class _ExtremumAcc(_WindowAcc):
    """``min``, ``max``, ``last``: the sliding-window extremum. ``times`` and
    ``values`` are the candidates in time order that no later candidate
    beats (strictly), so the first is the window's extremum; a candidate
    leaves when the start passes its time. A late event is inserted at its
    time: dropped if a later candidate beats it, else it drops the earlier
    ones it beats (contiguous just before it)."""

    __slots__ = ("smallest_wins", "times", "values")

    def clear(self, start: int | None, static: Any) -> None:
        self.start, self.static = start, static
        self.times: list[int] = []
        self.values: list[Any] = []
        self.smallest_wins = isinstance(self.monoid, Min)

    def enter(self, time: int, partial: Any) -> None:
        if partial is None:  # zero: no value
            return
        times, values = self.times, self.values
        at = len(times) if not times or time >= times[-1] else bisect.bisect_right(times, time)
        if self.smallest_wins:
            if at < len(values) and values[at] < partial:
                return
            first = at
            while first and partial < values[first - 1]:
                first -= 1
        else:
            if at < len(values) and values[at] > partial:
                return
            first = at
            while first and partial > values[first - 1]:
                first -= 1
        times[first:at] = (time,)
        values[first:at] = (partial,)

    def leave_tile(self, tile: Mapping[str, Any],
                   images: Mapping[str, dict[bytes, int]] | None) -> None:
        pass

    def moved(self, start: int, static: Any) -> None:
        times = self.times
        gone = bisect.bisect_left(times, start)
        if gone:
            del times[:gone], self.values[:gone]
        self.start, self.static = start, static

    def present(self) -> FeatureValue:
        monoid = self.monoid
        best = self.values[0] if self.values else None
        return monoid.present(monoid.merge(self.static, best))


class _DistinctAcc(_WindowAcc):
    """``approx_distinct``: the canonical partial is a function of the set
    of values, so keep a count per lifted image (a tile keeps its images'
    counts too, to take them out when it leaves) and a mutable union: new
    images are merged in; one leaving marks it stale (rebuilt from the set
    when presented). Presented again only after the set changed.

    While the window is sparse -- its static part sparse (or none) and the
    distinct coupons of the static part and the images few enough for a
    sparse sketch -- the presented value is ``sparse_present`` of their
    number, with no sketch built: every image that enters is a one-value
    lift (one coupon, and two images are equal exactly when their coupons
    are), so the union's coupons are the static part's plus the images'."""

    __slots__ = ("changed", "counts", "fresh", "stale", "static_coupons", "union", "value")

    def clear(self, start: int | None, static: Any) -> None:
        self.start, self.static = start, static
        self.counts: dict[bytes, int] = {}
        self.fresh: list[bytes] = []
        self.union: Any = None
        self.stale = self.changed = True
        self.value: FeatureValue = 0
        self.static_coupons = _static_coupons(static)

    def enter(self, time: int, partial: bytes | None) -> None:
        if partial is None:
            return
        counts = self.counts
        seen = counts.get(partial, 0)
        counts[partial] = seen + 1
        if not seen:
            self.changed = True
            if not self.stale:
                self.fresh.append(partial)

    def enter_tile(self, time: int, tile: Mapping[str, Any],
                   images: Mapping[str, dict[bytes, int]] | None) -> None:
        assert images is not None
        counts = self.counts
        for image, n in images[self.name].items():
            counts[image] = counts.get(image, 0) + n
        self.stale = self.changed = True

    def leave_tile(self, tile: Mapping[str, Any],
                   images: Mapping[str, dict[bytes, int]] | None) -> None:
        assert images is not None
        counts = self.counts
        for image, n in images[self.name].items():
            left = counts[image] - n
            if left:
                counts[image] = left
            else:
                del counts[image]
                self.stale = self.changed = True

    def moved(self, start: int, static: Any) -> None:
        if static != self.static:
            self.stale = self.changed = True
            self.static_coupons = _static_coupons(static)
        self.start, self.static = start, static

    def present(self) -> FeatureValue:
        if not self.changed:
            return self.value
        static = self.static_coupons
        if static is not None:
            if static:
                coupons = len(static) + sum(1 for image in self.counts
                                            if _coupon(image) not in static)
            else:
                coupons = len(self.counts)
            value = sparse_present(coupons)
            if value is not None:
                # The union (rebuilt from the set if a dense window needs it).
                self.union, self.stale = None, True
                self.value, self.changed = value, False
                return value
        if self.stale:
            self.union = None
            self.fresh = list(self.counts)
            if self.static is not None:
                self.fresh.append(self.static)
            self.stale = False
        if self.fresh:
            if self.union is None:
                self.union = datasketches.hll_union(HLL_LG_K)
            for image in self.fresh:
                self.union.update(datasketches.hll_sketch.deserialize(image))
            self.fresh = []
        partial = None if self.union is None else self.monoid.from_storage(
            bytes(self.union.get_result(_HLL_8).serialize_compact()))
        self.value = self.monoid.present(partial)
        self.changed = False
        return self.value


def _static_at(acc: _WindowAcc, start: int, static: Any) -> Any:
    """``OnlineState._static`` for ``acc`` at ``start``: with only batch
    entries at its hop, the first entry at or after ``start`` (zero past
    them all), found by bisection; else ``static`` (the state's method)."""
    starts = acc.batch_starts
    if starts is None:
        return static(acc.feature, acc.name, acc.hop, start)
    at = bisect.bisect_left(starts, start)
    return acc.batch_parts[at] if at < len(starts) else acc.zero


#: The coupon of a one-value image (bounded like _IMAGES).
_COUPONS: dict[bytes, int] = {}


def _coupon(image: bytes) -> int:
    coupon = _COUPONS.get(image)
    if coupon is None:
        held = hll_coupons(image)
        if held is None or len(held) != 1:
            raise ValueError("approx_distinct: a lifted image holds one coupon")
        if len(_COUPONS) >= _IMAGES_MAX:
            _COUPONS.clear()
        coupon = _COUPONS[image] = held[0]
    return coupon


def _static_coupons(static: bytes | None) -> frozenset[int] | None:
    """The coupons of a window's static part (empty for none), None when it
    is dense."""
    if static is None:
        return frozenset()
    held = hll_coupons(static)
    return None if held is None else frozenset(held)


_ACCS: Final[Mapping[type, type[_WindowAcc]]] = {
    Count: _SumAcc, Sum: _SumAcc, Mean: _MeanAcc, Histogram: _HistogramAcc,
    Min: _ExtremumAcc, Max: _ExtremumAcc, Last: _ExtremumAcc, ApproxDistinct: _DistinctAcc,
}


# --- lifting one event, fast -----------------------------------------------

#: Lifted approx_distinct images by (type, value): a one-value image depends
#: on the value only. Bounded: cleared when full.
_IMAGES: dict[tuple[type, Any], bytes | None] = {}
_IMAGES_MAX: Final = 1 << 16


def _lifter(monoid: Aggregation[Any]) -> Any:
    """``monoid.lift``, or a function giving the same partial faster: a
    histogram's one-hot tuple by bisection over its bounds (the first
    bound above the value, as ``Histogram.bucket``), an HLL image from
    ``_IMAGES``."""
    if isinstance(monoid, Histogram):
        bounds = monoid.bounds
        one_hot = [tuple(int(i == b) for i in range(len(bounds) + 1))
                   for b in range(len(bounds) + 1)]
        zero = monoid.zero()

        def lift_histogram(value: Any, event_time_ms: int, event_id: str) -> tuple[int, ...]:
            if value is None:
                return zero
            return one_hot[bisect.bisect_right(bounds, float(value))]

        return lift_histogram
    if isinstance(monoid, ApproxDistinct):
        lift = monoid.lift

        def lift_distinct(value: Any, event_time_ms: int, event_id: str) -> bytes | None:
            key = (type(value), value)
            image = _IMAGES.get(key, _NONE)
            if image is _NONE:
                image = lift(value, event_time_ms, event_id)  # raises for a bad value
                if len(_IMAGES) >= _IMAGES_MAX:
                    _IMAGES.clear()
                _IMAGES[key] = image
            return image  # type: ignore[return-value]

        return lift_distinct
    if isinstance(monoid, Count):
        return None  # always 1 (the value is ignored)
    return monoid.lift


# --- the state ---------------------------------------------------------------


class _Shape:
    """What every state of one ``GroupBy`` derives from the group alone
    (hops, monoids, what each hop keeps and stores, the lifting and adding
    plans): built once per group and shared, read-only, by its states --
    a state per entity is made often (seeding), and this part is the same
    for all of them."""

    def __init__(self, group: GroupBy) -> None:
        self.group = group
        self.hops: tuple[int, ...] = group.hops()
        self.monoids: dict[str, Aggregation[Any]] = {
            a.name: a.aggregation for a in group.aggregates}
        # Hop -> aggregates whose tiles are kept there: those with a window at
        # that hop or a coarser one (a coarser head is built from finer tiles).
        self.kept_at: dict[int, tuple[str, ...]] = {
            h: tuple(a.name for a in group.aggregates if max(a.hops()) >= h)
            for h in self.hops}
        self.stored_at: dict[int, tuple[str, ...]] = {
            h: tuple(a.name for a in group.aggregates_for_hop(h)) for h in self.hops}
        self.longest: dict[int, int] = {}
        self.lifetime: dict[str, int] = {}  # aggregate -> hop of its lifetime window
        for aggregate in group.aggregates:
            for window in aggregate.windows:
                if window.length_ms is None:
                    self.lifetime[aggregate.name] = window.hop_ms
                else:
                    self.longest[window.hop_ms] = max(self.longest.get(window.hop_ms, 0),
                                                       window.length_ms)
        self.windows: list[tuple[Aggregate, Window, str]] = [
            (a, w, a.feature_name(w)) for a in group.aggregates for w in a.windows]
        # Per added tile, for each approx_distinct aggregate kept at its hop,
        # the count of each lifted image (a window takes them out when the
        # tile leaves it).
        self.distinct_at: dict[int, tuple[str, ...]] = {
            h: tuple(n for n in names if _is_hll(self.monoids[n]))
            for h, names in self.kept_at.items()}
        self.finer: dict[int, tuple[int, ...]] = {
            h: tuple(f for f in self.hops if f < h) for h in self.hops}
        self.coarser: dict[int, int | None] = {
            h: next((c for c in self.hops if c > h), None) for h in self.hops}
        self.empty_tiles: dict[int, tuple[dict[str, Any], tuple[tuple[str, int], ...]]] = {
            h: ({n: self.monoids[n].zero() for n in names},
                tuple((n, len(self.monoids[n].zero())) for n in names
                      if isinstance(self.monoids[n], Histogram)))
            for h, names in self.kept_at.items()}
        # Per hop, what add does to its tile: (hop, count and sum names (added
        # as integers), (name, merge) of the other plain merges, approx_distinct
        # names, histogram names).
        self.plan = [
            (h,
             tuple(n for n in names if type(self.monoids[n]) in (Count, Sum)),
             tuple((n, self.monoids[n].merge) for n in names
                   if not _is_hll(self.monoids[n]) and type(self.monoids[n]) not in (Count, Sum)
                   and not isinstance(self.monoids[n], Histogram)),
             self.distinct_at[h],
             tuple(n for n in names if isinstance(self.monoids[n], Histogram)))
            for h, names in self.kept_at.items()]
        # Per aggregate: (name, its filters as indices into _filters, field,
        # lifter, zero). An event's filter results and field values are
        # computed once per event, however many aggregates share them.
        self.filters: tuple[Any, ...] = tuple(dict.fromkeys(
            f for a in group.aggregates for f in a.filters))
        index_of = {f: i for i, f in enumerate(self.filters)}
        self.lifts = [(a.name, tuple(index_of[f] for f in a.filters), a.field,
                        _lifter(self.monoids[a.name]), self.monoids[a.name].zero())
                       for a in group.aggregates]
        self.histograms = tuple(n for n, m in self.monoids.items() if isinstance(m, Histogram))
        # Whether every hop and window length is a multiple of the finest hop
        # (then _evict has nothing to do until a bound crosses a finest tile).
        finest = self.hops[0]
        self.aligned = all(w.hop_ms % finest == 0 and (w.length_ms or 0) % finest == 0
                            for _, w, _ in self.windows)


#: Shapes by group identity (bounded: a process keeps a handful of views).
_SHAPES: dict[int, _Shape] = {}


def _shape_of(group: GroupBy) -> _Shape:
    shape = _SHAPES.get(id(group))
    if shape is None or shape.group is not group:
        if len(_SHAPES) >= 64:
            _SHAPES.clear()
        shape = _SHAPES[id(group)] = _Shape(group)
    return shape



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
        shape = _shape_of(group)
        self._hops = shape.hops
        self._monoids = shape.monoids
        self._kept_at = shape.kept_at
        self._stored_at = shape.stored_at
        self._longest = shape.longest
        self._lifetime = shape.lifetime
        self._windows = shape.windows
        self._distinct_at = shape.distinct_at
        self._finer = shape.finer
        self._coarser = shape.coarser
        self._empty_tiles = shape.empty_tiles
        self._plan = shape.plan
        self._filters = shape.filters
        self._lifts = shape.lifts
        self._histograms = shape.histograms
        self._aligned = shape.aligned
        self._added: dict[int, dict[int, dict[str, Any]]] = {h: {} for h in self._hops}
        self._seeded: dict[int, dict[int, dict[str, Any]]] = {h: {} for h in self._hops}
        # Per hop, the starts of the tiles held (added or seeded), ascending.
        self._starts: dict[int, list[int]] = {h: [] for h in self._hops}
        self._images: dict[int, dict[int, dict[str, dict[bytes, int]]]] = {
            h: {} for h in self._hops}
        # The evicted added tiles of each lifetime window, merged (the seeded
        # ones are in _lifetime_static).
        self._collapsed: dict[str, Any] = {
            name: self._monoids[name].zero() for name in self._lifetime}
        self._lifetime_static: dict[str, Any] = {}
        # The raw events kept (see _evict), sorted by event time.
        self._raw_times: list[int] = []
        self._raw: list[Partials] = []
        # The running partial of every window as of the query time _t_acc
        # (None: rebuild at the next query).
        self._accs: list[_WindowAcc] = [
            _ACCS[type(a.aggregation)](feature, a.name, w, self._monoids[a.name])
            for a, w, feature in self._windows]
        self._t_acc: int | None = None
        # The running partials by window (one start each), for _advance.
        groups: dict[tuple[int, int | None], list[_WindowAcc]] = {}
        for acc in self._accs:
            groups.setdefault((acc.hop, acc.length), []).append(acc)
        self._groups = [
            (hop, length, accs, [a for a in accs if isinstance(a, _SumAcc)],
             [a for a in accs if type(a) is not _SumAcc])
            for (hop, length), accs in groups.items()]
        self._earliest: int | None = None
        self._lowest: int | None = None
        self._dirty: set[tuple[int, int]] = set()
        # Evicted before a drain: (added tile, seeded tile, image counts), made
        # storable there.
        self._evicted_dirty: dict[tuple[int, int], tuple[
            dict[str, Any], dict[str, Any] | None, dict[str, dict[bytes, int]] | None]] = {}
        self._newest: int | None = None
        self.cutoff_ms: int | None = None
        self.horizon_ms: int | None = None
        self.seeded_through_ms: int | None = None
        self._answers_from: int | None = None
        self._batch: dict[str, list[tuple[int | None, Any]]] = {}
        self._batch_starts: dict[str, list[int]] = {}
        self._evicted_for: tuple[int, int | None] | None = None
        if seed is not None:
            self._load(seed)
        self._bounds()
        for acc in self._accs:
            if acc.length is None or self._seeded[acc.hop]:
                continue
            entries = self._batch.get(acc.feature, [])
            if all(start is not None for start, _ in entries):
                acc.batch_starts = [start for start, _ in entries]  # type: ignore[misc]
                acc.batch_parts = [part for _, part in entries]

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
        aggregate_of = {feature: a.name for a, _, feature in self._windows}
        self._batch = {feature: [(s, self._canonical(aggregate_of[feature], p))
                                 for s, p in entries]
                       for feature, entries in seed.batch.items()}
        # Per feature, the entries' starts (for bisection in _static), when
        # they are all window starts (a lifetime window's entry has None).
        self._batch_starts = {feature: [s for s, _ in entries if s is not None]
                              for feature, entries in self._batch.items()
                              if all(s is not None for s, _ in entries)}
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
                    name: self._canonical(name, partials.get(name, self._monoids[name].zero()))
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
        for aggregate, window, feature in self._windows:
            if window.length_ms is None:
                self._lifetime_static[feature] = self._static(feature, aggregate.name,
                                                              window.hop_ms, None)
        self._evict()

    def _canonical(self, name: str, partial: Any) -> Any:
        """``partial`` as the merge of it alone gives it (an HLL image made
        canonical; any other partial as it is)."""
        monoid = self._monoids[name]
        return _merge(monoid, [partial]) if _is_hll(monoid) else partial

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
        return self._earliest

    def _bounds(self) -> None:
        """Recompute the cached time bounds (after the newest time moved)."""
        self._earliest = self._earliest_query()
        self._lowest = self._lowest_accepted()

    def _earliest_query(self) -> int | None:
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
        lowest = self._lowest
        if lowest is not None and event_time < lowest:
            return False
        lifted = self._lift(event, event_time)
        bumps = {name: [(b, n) for b, n in enumerate(lifted[name]) if n]
                 for name in self._histograms}
        dirty = self._dirty
        for hop, summed, merged, distinct, histograms in self._plan:
            start = event_time // hop * hop
            added = self._added[hop]
            tile = added.get(start)
            if tile is None:
                tile = added[start] = self._new_tile(hop, start)
            for name in summed:  # Count.merge / Sum.merge: integer addition
                tile[name] += lifted[name]
            for name, merge in merged:
                tile[name] = merge(tile[name], lifted[name])
            for name in histograms:
                counts = tile[name]
                for bucket, n in bumps[name]:
                    counts[bucket] += n
            if distinct:
                images = self._images[hop][start]
                for name in distinct:
                    image = lifted[name]
                    if image is not None:
                        by_image = images[name]
                        by_image[image] = by_image.get(image, 0) + 1
            dirty.add((hop, start))
        if self._t_acc is not None and event_time < self._t_acc:
            # Late for the running partials: it enters every window holding it
            # now (the others get it when their query time passes it).
            for acc in self._accs:
                if acc.start is None or event_time >= acc.start:
                    acc.enter(event_time, lifted[acc.name])
        earliest = self._earliest
        if earliest is None or event_time >= tile_start(earliest, self._hops[0]):
            at = bisect.bisect_right(self._raw_times, event_time)
            self._raw_times.insert(at, event_time)
            self._raw.insert(at, lifted)
        if self._newest is None or event_time > self._newest:
            self._newest = event_time
            self._evict()
        return True

    def _lift(self, event: Mapping[str, Any], event_time: int) -> Partials:
        """``lift_event(group, event)``, with the monoids built once."""
        event_id = str(event["event_id"])
        lifted: Partials = {}
        # Filter.matches and field_value are pure functions of the event:
        # each filter and each field is evaluated once per event (as
        # Aggregate.accepts, a failing filter stops the aggregate's check).
        passed: list[bool | None] = [None] * len(self._filters)
        values: dict[str, Any] = {}
        for name, filters, field_name, lift, zero in self._lifts:
            accepted = True
            for i in filters:
                result = passed[i]
                if result is None:
                    result = passed[i] = self._filters[i].matches(event)
                if not result:
                    accepted = False
                    break
            if not accepted:
                lifted[name] = zero
                continue
            if lift is None:  # a count
                lifted[name] = 1
                continue
            if field_name is None:
                value = None
            else:
                value = values.get(field_name, _NONE)
                if value is _NONE:
                    value = values[field_name] = field_value(event, field_name)
            lifted[name] = lift(value, event_time, event_id)
        return lifted

    def _new_tile(self, hop: int, start: int) -> dict[str, Any]:
        """An empty added tile (histograms as mutable lists of counts; an
        approx_distinct part is its image counts, kept beside it)."""
        empty, histograms = self._empty_tiles[hop]
        tile = dict(empty)
        for name, buckets in histograms:
            tile[name] = [0] * buckets
        if self._distinct_at[hop]:
            self._images[hop][start] = {n: {} for n in self._distinct_at[hop]}
        if start not in self._seeded[hop]:
            bisect.insort(self._starts[hop], start)
        return tile

    def drain_changed_tiles(self) -> list[ChangedTile]:
        """The tiles changed since the last drain, each once, sorted by
        (hop, start), in storable form (see the module docstring); the
        state forgets that they changed."""
        out = {key: self._storable(key[0], tile, stored, images)
               for key, (tile, stored, images) in self._evicted_dirty.items()}
        for hop, start in self._dirty:
            if start in self._added[hop]:
                out[(hop, start)] = self._storable(hop, self._added[hop][start],
                                                   self._seeded[hop].get(start),
                                                   self._images[hop].get(start))
        self._dirty.clear()
        self._evicted_dirty.clear()
        return [ChangedTile(h, s, out[(h, s)]) for h, s in sorted(out)]

    def _storable(self, hop: int, added: Mapping[str, Any], seeded: Mapping[str, Any] | None,
                  images: Mapping[str, Mapping[bytes, int]] | None) -> dict[str, Any]:
        """One tile's stored aggregates, the seeded and added parts merged
        (an added approx_distinct part is its tile's set of images)."""
        out = {}
        for name in self._stored_at[hop]:
            monoid = self._monoids[name]
            if seeded is None and (images is None or name not in images):
                # The merge of one part is that part (a histogram as a tuple).
                value = added[name]
                out[name] = tuple(value) if type(value) is list else value
                continue
            parts = [] if seeded is None else [seeded[name]]
            if images is not None and name in images:
                parts += images[name]
            else:
                parts.append(added[name])
            out[name] = _merge(monoid, parts)
        return out

    # --- eviction --------------------------------------------------------

    def _keep_from(self, hop: int, earliest: int, lowest: int | None) -> int:
        """The first tile start of ``hop`` a query at or after ``earliest``
        or an event at or after ``lowest`` can touch."""
        keep = earliest // hop * hop
        if lowest is not None and lowest < earliest:
            keep = min(keep, lowest // hop * hop)
        longest = self._longest.get(hop)
        if longest is not None:
            keep = min(keep, (earliest - longest) // hop * hop)
        coarser = self._coarser[hop]
        if coarser is not None:
            keep = min(keep, earliest // coarser * coarser)
        return keep

    def _evict(self) -> None:
        self._bounds()
        earliest = self._earliest
        if earliest is None:
            return
        lowest = self._lowest
        if self._aligned:
            # Every bound below is a multiple of the finest hop taken from
            # these two: unchanged, nothing new can be evicted (an event added
            # since starts at or after the lowest accepted time).
            finest = self._hops[0]
            key = (earliest // finest, None if lowest is None else lowest // finest)
            if key == self._evicted_for:
                return
            self._evicted_for = key
        for hop in self._hops:
            starts = self._starts[hop]
            if not starts:
                continue
            keep = self._keep_from(hop, earliest, lowest)
            if starts[0] >= keep:
                continue
            added, seeded = self._added[hop], self._seeded[hop]
            cut = bisect.bisect_left(starts, keep)
            evicted = starts[:cut]
            del starts[:cut]
            if self._t_acc is not None and any(
                    accs[0].start is not None and accs[0].start <= evicted[-1]
                    for group_hop, _, accs, _, _ in self._groups if group_hop == hop):
                self._t_acc = None  # a running partial holds a tile it could not take out
            images = self._images[hop]
            for start in evicted:
                tile, stored = added.pop(start, None), seeded.pop(start, None)
                tile_images = images.pop(start, None)
                if tile is not None and (hop, start) in self._dirty:
                    self._dirty.discard((hop, start))
                    self._evicted_dirty[(hop, start)] = (tile, stored, tile_images)
                if tile is None:
                    continue
                for name, lifetime_hop in self._lifetime.items():
                    if lifetime_hop == hop:
                        parts = [self._collapsed[name]]
                        if tile_images is not None and name in tile_images:
                            parts += tile_images[name]
                        else:
                            parts.append(tile[name])
                        self._collapsed[name] = _merge(self._monoids[name], parts)
        raw_from = tile_start(earliest, self._hops[0])
        if self._t_acc is not None and self._t_acc < raw_from:
            self._t_acc = None  # events not yet entered would go
        times = self._raw_times
        if times and times[0] < raw_from:
            cut = bisect.bisect_left(times, raw_from)
            del times[:cut], self._raw[:cut]

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

    def features_before(self, t_ms: int) -> dict[str, FeatureValue]:
        """Every feature of the entity just before ``t_ms`` (keys in
        ``group.feature_names()`` order): exact as the module docstring
        says; ``QueryOutOfRange`` for a ``t_ms`` it cannot answer exactly."""
        earliest = self._earliest
        if (earliest is not None and t_ms < earliest) or (
                self.horizon_ms is not None and t_ms >= self.horizon_ms):
            self._check_query(t_ms)
        if self._t_acc is not None and t_ms >= self._t_acc:
            self._advance(t_ms)
        else:
            self._rebuild(t_ms)
        out: dict[str, FeatureValue] = {}
        for acc in self._accs:
            if type(acc) is _SumAcc:  # _SumAcc.present, inlined: the most common kind
                units = acc.static + acc.total
                divisor = acc.divisor
                out[acc.feature] = units if divisor is None else units / divisor
            else:
                out[acc.feature] = acc.present()
        return out

    def _advance(self, t_ms: int) -> None:
        """Move every running partial from ``_t_acc`` on to ``t_ms``: the raw
        events in ``[_t_acc, t)`` enter, then the tiles before each window's
        new start leave (an event entering and leaving at once is in one of
        those tiles, which holds every event that entered with it)."""
        times, raw, since = self._raw_times, self._raw, self._t_acc
        assert since is not None
        lo = bisect.bisect_left(times, since)
        hi = bisect.bisect_left(times, t_ms, lo)
        for hop, length, accs, sums, others in self._groups:
            old = accs[0].start
            if lo < hi:
                entering = [(times[i], raw[i]) for i in range(lo, hi)
                            if old is None or times[i] >= old]
                for summed in sums:  # _SumAcc.enter, inlined: the most common kind
                    name = summed.name
                    for _, lifted in entering:
                        summed.total += lifted[name]
                for acc in others:
                    name, enter = acc.name, acc.enter
                    for time, lifted in entering:
                        enter(time, lifted[name])
            if old is None or length is None:  # lifetime: nothing leaves
                continue
            start = (t_ms - length) // hop * hop
            if start == old:
                continue
            starts, added, images = self._starts[hop], self._added[hop], self._images[hop]
            leaving = [(added[s], images.get(s))
                       for s in starts[bisect.bisect_left(starts, old):
                                       bisect.bisect_left(starts, start)] if s in added]
            static = self._static if self._batch or self._seeded[hop] else None
            for summed in sums:  # _SumAcc.leave_tile and moved, inlined
                name = summed.name
                for tile, _ in leaving:
                    summed.total -= tile[name]
                summed.start = start
                if static is not None:
                    summed.static = _static_at(summed, start, static)
            for acc in others:
                for tile, tile_images in leaving:
                    acc.leave_tile(tile, tile_images)
                acc.moved(start, acc.static if static is None
                          else _static_at(acc, start, static))
        self._t_acc = t_ms

    def _rebuild(self, t_ms: int) -> None:
        """Every running partial afresh at ``t_ms``: the window's added tiles
        before its head, then the head composed down the hops -- the next
        finer hop's tiles inside it, that hop's head, and so on, to the raw
        events of the open finest tile before ``t`` (never one at or after
        ``t``)."""
        times, raw = self._raw_times, self._raw
        for acc in self._accs:
            name, hop = acc.name, acc.hop
            if acc.length is None:
                start = None
                static = _merge(acc.monoid, [
                    self._lifetime_static.get(acc.feature, acc.monoid.zero()),
                    self._collapsed[name]])
            else:
                start = (t_ms - acc.length) // hop * hop
                static = self._static(acc.feature, name, hop, start)
            acc.clear(start, static)
            # (hop, from, to): the window's own tiles before its head, then
            # each finer hop's tiles inside the head left by the coarser one.
            upto = t_ms // hop * hop
            spans = [(hop, start, upto)]
            for finer in reversed(self._finer[hop]):
                spans.append((finer, upto, t_ms // finer * finer))
                upto = spans[-1][2]
            for tile_hop, first, end in spans:
                starts, added = self._starts[tile_hop], self._added[tile_hop]
                images = self._images[tile_hop]
                lo = 0 if first is None else bisect.bisect_left(starts, first)
                for s in starts[lo:bisect.bisect_left(starts, end)]:
                    tile = added.get(s)
                    if tile is not None:
                        acc.enter_tile(s, tile, images.get(s))
            for i in range(bisect.bisect_left(times, upto), bisect.bisect_left(times, t_ms)):
                acc.enter(times[i], raw[i][name])
        self._t_acc = t_ms

    def _static(self, feature: str, name: str, hop: int, start: int | None) -> Any:
        """What a window at ``[start, ...)`` holds that ``add`` never changes:
        the batch entry for its start and the seeded tiles of its hop from
        ``start`` on (all seeded events are before any ``t`` answered). A
        lifetime window also holds its collapsed tiles (see _rebuild).

        One part alone is returned as it is: every part is canonical
        (``_load`` canonicalises seeded and batch HLL images once), and the
        merge of one canonical part is that part."""
        entries = self._batch.get(feature)
        seeded = self._seeded[hop]
        if not entries and not seeded:
            return self._monoids[name].zero()
        parts: list[Any] = []
        if entries:
            # The first entry at or after the window's start holds the batch
            # tiles in [start, cutoff); none: the window holds no batch tile.
            if start is None:
                parts.append(entries[0][1])
            else:
                starts = self._batch_starts.get(feature)
                if starts is None:
                    chosen = next((p for s, p in entries if s is not None and s >= start), _NONE)
                    if chosen is not _NONE:
                        parts.append(chosen)
                else:
                    at = bisect.bisect_left(starts, start)
                    if at < len(starts):
                        parts.append(entries[at][1])
        if seeded:
            parts += [tile[name] for s, tile in seeded.items() if start is None or s >= start]
        if len(parts) == 1:
            return parts[0]
        return _merge(self._monoids[name], parts)
