"""Point-in-time features of one entity at many query times, in one sweep.

``FeatureSweep(group, events, entity)`` answers ``features_before(t)`` for
non-decreasing query times ``t`` with exactly what the reference
``lamina.schemas.view_definitions.features_from_events(group, events, entity, t)``
returns when given the events sorted by ``(event_time, event_id)`` -- the
same keys in the same order, the same values bit for bit (sums, means, HLL
estimates included) -- but without rescanning the entity's
history at every query. The offline training set visits an entity's
transactions this way; a consumer that keeps per-entity state online can
too.

How (and why the values are identical)
--------------------------------------
The events are sorted by ``(event_time, event_id)`` once (each event_id
once: the first in that order, as the reference keeps). A window's events
at ``t`` (``window_range``: strict "before", sawtooth start) are then an
index range ``[lo, hi)`` of that list, and both ends only move forward as
``t`` grows. Each (aggregate, window) keeps its partial for the current
range and updates it by the events entering and leaving, per op:

* ``count``, ``histogram``, ``sum``, ``mean``: integers -- counts, and
  sums as fixed-point units at the aggregate's scale
  (``lamina.schemas.aggregations``, "Exact sums") -- added when an event
  enters the window and subtracted when it leaves: exact, so the running
  partial is the reference's partial whatever the order of additions, and
  each event is added and subtracted once per window.
* ``min``, ``max``, ``last``: a monotone deque of candidates (the classic
  sliding-window extremum); ties keep the earlier event, as the reference's
  left fold does, so even ``0.0`` against ``-0.0`` comes out the same.
* ``approx_distinct``: a canonical HLL partial is a function of the *set*
  of values (``lamina.schemas.aggregations``), so the sweep keeps a count
  per lifted value, merges a value in when it first enters, rebuilds the
  partial from the remaining values only when one leaves, and presents it
  only when the set has changed.
* the lifetime window never moves its start: nothing ever leaves it.

Any other aggregation is recomputed with its own ``merge_all`` over the
range at each query (correct, not fast). Each event is lifted once per
aggregate, and only when it first enters a window (the reference lifts only
events inside a window, so a value it would refuse is refused in the same
cases). ``tests/unit/test_pit.py`` checks the equality against the
reference on random histories, ties and window edges included.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from lamina.schemas.aggregations import (
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
)
from lamina.schemas.view_definitions import Aggregate, GroupBy, Window, field_value, window_range

_UNLIFTED: Final = object()


class _Lifted:
    """One aggregate's partial of each event (``values[i]``), lifted when a
    window first needs it: ``ensure(lo, hi)`` before reading ``[lo, hi)``.

    The same partial as ``lift_event(group, event, (aggregate,))``, with the
    monoid built once (building a histogram checks its bounds). Events a
    window has passed and never held are never lifted, as in the reference."""

    __slots__ = ("_aggregate", "_done", "_events", "_monoid", "values")

    def __init__(self, aggregate: Aggregate, monoid: Aggregation[Any],
                 events: Sequence[Mapping[str, Any]]) -> None:
        self._aggregate = aggregate
        self._monoid = monoid
        self._events = events
        self._done = 0  # values[lo:_done] are lifted for every lo a window may still have
        self.values: list[Any] = [_UNLIFTED] * len(events)

    def ensure(self, lo: int, hi: int) -> None:
        if hi <= self._done:
            return
        aggregate, monoid, events, values = self._aggregate, self._monoid, self._events, self.values
        for index in range(max(lo, self._done), hi):
            payload = events[index]
            if aggregate.accepts(payload):
                value = None if aggregate.field is None else field_value(payload, aggregate.field)
                values[index] = monoid.lift(value, int(payload["event_time"]),
                                            str(payload["event_id"]))
            else:
                values[index] = monoid.zero()
        self._done = hi


class _WindowState:
    """One (aggregate, window)'s partial over the events ``[lo, hi)``.

    ``move(lo, hi)`` takes the new range (neither end moves back; the
    partials of ``[lo, hi)`` are lifted); ``present()`` is the feature
    value of the current range."""

    def __init__(self, monoid: Aggregation[Any], partials: _Lifted) -> None:
        self.monoid = monoid
        self.partials = partials.values
        self.lo = 0
        self.hi = 0

    def move(self, lo: int, hi: int) -> None:
        entering = range(max(self.hi, lo), hi)
        leaving = range(self.lo, min(self.hi, lo))
        self.lo, self.hi = lo, hi
        self._update(entering, leaving)

    def _update(self, entering: range, leaving: range) -> None:
        raise NotImplementedError

    def present(self) -> FeatureValue:
        raise NotImplementedError


class _CountState(_WindowState):
    """``count``, and ``sum`` (integer units at its scale): integers add
    and subtract exactly."""

    total = 0

    def _update(self, entering: range, leaving: range) -> None:
        partials = self.partials
        for index in entering:
            self.total += partials[index]
        for index in leaving:
            self.total -= partials[index]

    def present(self) -> FeatureValue:
        return self.monoid.present(self.total)


class _HistogramState(_WindowState):
    """``histogram``: per-bucket integer counts, added and subtracted."""

    def __init__(self, monoid: Aggregation[Any], partials: _Lifted) -> None:
        super().__init__(monoid, partials)
        self.counts = list(monoid.zero())

    def _update(self, entering: range, leaving: range) -> None:
        counts, partials = self.counts, self.partials
        for index in entering:
            for bucket, n in enumerate(partials[index]):
                counts[bucket] += n
        for index in leaving:
            for bucket, n in enumerate(partials[index]):
                counts[bucket] -= n

    def present(self) -> FeatureValue:
        return self.monoid.present(tuple(self.counts))


class _ExtremumState(_WindowState):
    """``min``, ``max``, ``last``: a sliding-window extremum.

    The deque holds, in event order, the events no later event beats; its
    head is the range's extremum. Beating is strict, so among equals the
    earliest stays -- what ``merge(a, b)`` (``max(a, b)`` keeps ``a`` unless
    ``b > a``) gives in the reference's left fold."""

    def __init__(self, monoid: Aggregation[Any], partials: _Lifted) -> None:
        super().__init__(monoid, partials)
        self.candidates: deque[int] = deque()
        self.smallest_wins = isinstance(monoid, Min)

    def _update(self, entering: range, leaving: range) -> None:
        candidates, partials = self.candidates, self.partials
        for index in entering:
            partial = partials[index]
            if partial is None:  # zero: no value
                continue
            if self.smallest_wins:
                while candidates and partial < partials[candidates[-1]]:
                    candidates.pop()
            else:
                while candidates and partial > partials[candidates[-1]]:
                    candidates.pop()
            candidates.append(index)
        while candidates and candidates[0] < self.lo:
            candidates.popleft()

    def present(self) -> FeatureValue:
        if not self.candidates:
            return self.monoid.present(self.monoid.zero())
        return self.monoid.present(self.partials[self.candidates[0]])


class _MeanState(_WindowState):
    """``mean``: its (units, count) added and subtracted."""

    total = 0
    count = 0

    def _update(self, entering: range, leaving: range) -> None:
        partials = self.partials
        for index in entering:
            partial = partials[index]
            self.total += partial.sum
            self.count += partial.count
        for index in leaving:
            partial = partials[index]
            self.total -= partial.sum
            self.count -= partial.count

    def present(self) -> FeatureValue:
        return self.monoid.present(MeanPartial(self.total, self.count))


class _DistinctState(_WindowState):
    """``approx_distinct``: the canonical partial depends on the set of
    lifted values only, so keep a count per value, merge a value in when it
    first enters, rebuild from the set when one leaves, and present again
    only after the set changed."""

    def __init__(self, monoid: Aggregation[Any], partials: _Lifted) -> None:
        super().__init__(monoid, partials)
        self.counts: dict[bytes, int] = {}
        self.partial: bytes | None = None
        self.stale = False  # the partial lacks a removal: rebuild before use
        self.value: FeatureValue = monoid.present(None)
        self.changed = False

    def _update(self, entering: range, leaving: range) -> None:
        counts, partials, monoid = self.counts, self.partials, self.monoid
        # Leaving first: if the window empties, entering values merge afresh.
        for index in leaving:
            image = partials[index]
            if image is None:  # zero: null or ""
                continue
            left = counts[image] - 1
            if left:
                counts[image] = left
            else:
                del counts[image]
                self.changed = True
                self.stale = True
        if not counts:  # nothing left: no rebuild needed
            self.partial, self.stale = None, False
        for index in entering:
            image = partials[index]
            if image is None:
                continue
            seen = counts.get(image, 0)
            counts[image] = seen + 1
            if not seen:
                self.changed = True
                if not self.stale:
                    self.partial = monoid.merge(self.partial, image)

    def present(self) -> FeatureValue:
        if self.changed:
            if self.stale:
                self.partial = self.monoid.merge_all(self.counts)
                self.stale = False
            self.value = self.monoid.present(self.partial)
            self.changed = False
        return self.value


class _RecomputeState(_WindowState):
    """Any other aggregation: its own ``merge_all`` over the range, every
    query (exact by definition; no shortcut is assumed)."""

    def _update(self, entering: range, leaving: range) -> None:
        pass

    def present(self) -> FeatureValue:
        partials = self.partials
        return self.monoid.present(
            self.monoid.merge_all(partials[i] for i in range(self.lo, self.hi)))


_STATES: Final[Mapping[type, type[_WindowState]]] = {
    Count: _CountState,
    Histogram: _HistogramState,
    Min: _ExtremumState,
    Max: _ExtremumState,
    Last: _ExtremumState,
    Sum: _CountState,
    Mean: _MeanState,
    ApproxDistinct: _DistinctState,
}


def _sorted_events(group: GroupBy, events: Iterable[Mapping[str, Any]],
                   entity: str) -> list[Mapping[str, Any]]:
    """The entity's events of the group's type in ``(event_time, event_id)``
    order, each event_id once: the first in that order, which is what the
    reference keeps when handed the events in that order (ids are counted
    across entities, as there)."""
    ordered = sorted(
        (p for p in events if p.get("event_type", group.event_type) == group.event_type
         and p.get(group.entity_key) is not None),
        key=lambda p: (int(p["event_time"]), str(p["event_id"])))
    seen: set[Any] = set()
    mine = []
    for payload in ordered:
        event_id = payload["event_id"]
        if event_id in seen:
            continue
        seen.add(event_id)
        if str(payload[group.entity_key]) == entity:
            mine.append(payload)
    return mine


class FeatureSweep:
    """Every feature of one entity just before each of a sequence of query
    times, from raw events, in one pass (see the module docstring).

    ``events``: any events (any order; other types, other entities and
    repeated event_ids are ignored as the reference ignores them).
    ``features_before(t)`` must be called with non-decreasing ``t``; each
    call returns what ``features_from_events(group, events sorted by
    (event_time, event_id), entity, t)`` returns, events at or after ``t``
    excluded (strict "before").
    """

    def __init__(self, group: GroupBy, events: Iterable[Mapping[str, Any]],
                 entity: str) -> None:
        self.group = group
        self.entity = entity
        self._events = _sorted_events(group, events, entity)
        self._times = [int(p["event_time"]) for p in self._events]
        self._windows: list[Window] = []
        # Per aggregate: its lifted partials, the index of its earliest-starting
        # window, and (feature, window index, state) per window.
        self._aggregates: list[tuple[_Lifted, int, list[tuple[str, int, _WindowState]]]] = []
        for aggregate in group.aggregates:
            monoid = aggregate.aggregation
            partials = _Lifted(aggregate, monoid, self._events)
            state_type = _STATES.get(type(monoid), _RecomputeState)
            states = []
            for window in aggregate.windows:
                if window not in self._windows:
                    self._windows.append(window)
                states.append((aggregate.feature_name(window), self._windows.index(window),
                               state_type(monoid, partials)))
            # The longest window starts first: lengths are multiples of their hops
            # and a shorter window's hop divides a longer one's (GroupBy checks it).
            widest = max(aggregate.windows, key=lambda w: (w.length_ms is None, w.length_ms or 0))
            self._aggregates.append((partials, self._windows.index(widest), states))
        self._last_query: int | None = None

    @property
    def events(self) -> Sequence[Mapping[str, Any]]:
        """The entity's events the sweep counts, in (event_time, event_id) order."""
        return self._events

    def features_before(self, t_ms: int) -> dict[str, FeatureValue]:
        """The entity's features just before ``t_ms`` (events with
        ``event_time < t_ms`` in each window); ValueError if ``t_ms`` is
        earlier than the previous query."""
        if self._last_query is not None and t_ms < self._last_query:
            raise ValueError(
                f"query times must not decrease: {t_ms} after {self._last_query} "
                f"(start a new FeatureSweep to go back in time)")
        self._last_query = t_ms
        times = self._times
        hi = bisect.bisect_left(times, t_ms)
        starts = []
        for window in self._windows:
            start, _ = window_range(t_ms, window)
            starts.append(0 if start is None else bisect.bisect_left(times, start, 0, hi))
        features: dict[str, FeatureValue] = {}
        for partials, widest, states in self._aggregates:
            partials.ensure(starts[widest], hi)
            for name, index, state in states:
                state.move(starts[index], hi)
                features[name] = state.present()
        return features
