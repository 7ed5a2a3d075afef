"""The point-in-time sweep (lamina.schemas.pit) against the reference.

``FeatureSweep.features_before(t)`` must return exactly what
``features_from_events`` returns on the events sorted by (event_time,
event_id): same keys, same order, same values to the last bit (compared by
``repr``, so ``-0.0`` is not ``0.0`` and ``1`` is not ``1.0``) -- on random
histories with ties at equal event times, events at tile and window edges,
query times equal to event times, resent event ids, events of other cards
and types, and sums of arbitrary values at the scale (and finer): sums and
means are fixed-point integers, so the sweep adds and subtracts them.
"""

from __future__ import annotations

from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.schemas import pit
from lamina.schemas.card_views import CARD_VIEWS
from lamina.schemas.pit import FeatureSweep
from lamina.schemas.view_definitions import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    WINDOWS,
    Aggregate,
    GroupBy,
    features_from_events,
)
from tests.unit.test_views import ALL_OPS, T0, txn

W = WINDOWS
# Sums and means at other scales than cents, of a payload and a derived field.
SCALES = GroupBy("scales", "transaction", "card_id", (
    Aggregate("amount_sum_4", "sum", "amount", (W["10m"], W["24h"], W["lifetime"]), scale=4),
    Aggregate("amount_sum_0", "sum", "amount", (W["1h"], W["7d"]), scale=0),
    Aggregate("amount_mean_3", "mean", "amount", (W["10m"], W["30d"]), scale=3),
    Aggregate("hour_mean", "mean", "hour_of_day", (W["1h"], W["24h"]), scale=0),
))


def _by_time(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(events, key=lambda e: (int(e["event_time"]), str(e["event_id"])))


def _assert_sweep_equals_reference(group: GroupBy, events: list[dict[str, Any]], entity: str,
                                   query_times: list[int]) -> None:
    ordered = _by_time(events)
    sweep = FeatureSweep(group, events, entity)
    for t in sorted(query_times):
        got = sweep.features_before(t)
        expected = features_from_events(group, ordered, entity, t)
        assert repr(got) == repr(expected), (t, {
            name: (got[name], expected[name]) for name in expected
            if repr(got.get(name)) != repr(expected[name])})


# Times near tile edges of every hop (5 min, 1 h, 1 d divide one another) and
# spread over the 30-day window; -1/0/+1 ms around an edge.
edge_times = st.builds(lambda k, d: T0 + k * 5 * MINUTE_MS + d,
                       st.integers(-12 * 24 * 2, 12 * 24), st.sampled_from([-1, 0, 0, 1]))
spread_times = st.integers(T0 - 35 * DAY_MS, T0 + 2 * DAY_MS)
times = st.one_of(edge_times, spread_times)
amounts = st.one_of(
    # Arbitrary values at the scale, up to the schema's maximum: cents do not
    # add exactly in binary floats, so a float sum would depend on the order.
    st.integers(-10**8, 10**8).map(lambda cents: cents / 100),
    st.decimals(0, 10**6, places=2).map(float),
    st.decimals(-10**3, 10**3, places=4).map(float),  # finer than cents: rounded
    st.sampled_from([0.0, -0.0, 0.1, 0.2, 0.3, 0.005, 0.015, 2.675, 4.99, 5.0, 50.0, 1e6]),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.none(),
)


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    events = []
    for _ in range(draw(st.integers(0, 45))):
        event = txn(
            f"tx-{draw(st.integers(0, 50))}",  # repeats: resends, even with other values
            draw(times),
            card=draw(st.sampled_from(["c1", "c1", "c2"])),
            amount=draw(amounts),
            channel=draw(st.sampled_from(["pos", "online", "atm"])),
            merchant=draw(st.sampled_from(["m1", "m2", "m3", "m4", "m5", ""])),
            country=draw(st.sampled_from(["GB", "US", "FR"])),
        )
        if draw(st.integers(0, 19)) == 0:
            event["event_type"] = "label"  # another type: ignored
        events.append(event)
    return events


@pytest.mark.parametrize("group", [ALL_OPS, CARD_VIEWS, SCALES], ids=lambda g: g.name)
@settings(max_examples=150, deadline=None)
@given(events=histories(), data=st.data())
def test_sweep_equals_the_reference_at_every_query_time(
        group: GroupBy, events: list[dict[str, Any]], data: st.DataObject) -> None:
    own_times = [e["event_time"] for e in events]
    at_events = st.sampled_from(own_times) if own_times else times
    queries = data.draw(st.lists(st.one_of(times, at_events), max_size=25))
    _assert_sweep_equals_reference(group, events, "c1", queries)


def test_ties_and_window_edges_are_counted_as_the_reference_counts_them() -> None:
    # Equal times (ordered by event id), events exactly at a 1 h window's
    # start and at the query time, and a lifetime max over everything.
    t = T0 + 3 * HOUR_MS
    start_1h = t - HOUR_MS
    events = [
        txn("b", start_1h, amount=0.1), txn("a", start_1h, amount=0.2),
        txn("c", start_1h - 1, amount=0.3), txn("d", t - 1, amount=-0.0),
        txn("e", t - 1, amount=0.0), txn("f", t, amount=7.0), txn("g", t, amount=0.7),
        txn("h", t + 1, amount=1.0),
    ]
    _assert_sweep_equals_reference(ALL_OPS, events, "c1",
                                   [start_1h - 1, start_1h, start_1h + 1, t - 1, t, t, t + 1,
                                    t + 2, t + 30 * DAY_MS])


def test_min_and_max_keep_the_earlier_of_equal_values_as_the_reference_does() -> None:
    # -0.0 == 0.0: the reference's left fold keeps the first one it met.
    t = T0 + HOUR_MS
    for first, second in ((-0.0, 0.0), (0.0, -0.0)):
        events = [txn("a", T0 + MINUTE_MS, amount=-3.0), txn("b", T0 + 2 * MINUTE_MS, amount=first),
                  txn("c", T0 + 3 * MINUTE_MS, amount=second),
                  txn("d", T0 + 4 * MINUTE_MS, amount=-5.0)]
        _assert_sweep_equals_reference(ALL_OPS, events, "c1", [T0 + 5 * MINUTE_MS, t])
        mirrored = [{**e, "amount": -e["amount"]} for e in events]
        _assert_sweep_equals_reference(ALL_OPS, mirrored, "c1", [T0 + 5 * MINUTE_MS, t])


def test_dense_hll_estimates_equal_the_reference() -> None:
    # 500 distinct merchants in a day (HLL dense mode from 385 on), some
    # repeated: the 24 h and 7 d windows hold a dense sketch, the 1 h one a
    # sparse one, and values leave the 1 h window as it slides.
    events = [txn(f"tx-{i:04d}", T0 + i * 2 * MINUTE_MS + i % 3,
                  merchant=f"m{i if i % 7 else i // 7}") for i in range(560)]
    queries = [events[i]["event_time"] for i in range(0, 560, 37)] + [T0 + 2 * DAY_MS]
    _assert_sweep_equals_reference(CARD_VIEWS, events, "c1", queries)


def test_query_times_must_not_go_back() -> None:
    sweep = FeatureSweep(CARD_VIEWS, [txn("a", T0)], "c1")
    sweep.features_before(T0 + HOUR_MS)
    sweep.features_before(T0 + HOUR_MS)  # equal is fine
    with pytest.raises(ValueError, match="must not decrease"):
        sweep.features_before(T0)


def test_the_sweep_keeps_the_first_copy_of_each_event_id_in_time_order() -> None:
    events = [txn("x", T0 + 2 * MINUTE_MS, amount=2.0), txn("x", T0, amount=1.0),
              txn("y", T0, card="c2"), txn("y", T0 + MINUTE_MS)]
    sweep = FeatureSweep(CARD_VIEWS, events, "c1")
    assert [(e["event_id"], e["amount"]) for e in sweep.events] == [("x", 1.0)]
    _assert_sweep_equals_reference(CARD_VIEWS, events, "c1", [T0 + 3 * MINUTE_MS])


@settings(max_examples=30, deadline=None)
@given(events=histories(), queries=st.lists(times, max_size=10))
def test_an_aggregation_without_a_fast_path_is_recomputed_exactly(
        events: list[dict[str, Any]], queries: list[int]) -> None:
    # A future op that pit does not know yet: its own merge_all per query.
    with patch.object(pit, "_STATES", {}):
        _assert_sweep_equals_reference(ALL_OPS, events, "c1", queries)


def test_sums_subtract_leaving_values_exactly() -> None:
    # 0.1 enters and leaves the 10-minute window 400 times (a float running
    # sum would drift); once everything has left, the sum is exactly zero,
    # and at every step it equals the reference's fold of the window.
    events = [txn(f"tx-{i:03d}", T0 + i * 3 * MINUTE_MS + i % 2, amount=(0.1, 0.2, 0.7)[i % 3])
              for i in range(400)]
    queries = [T0 + k * 4 * MINUTE_MS + d for k in range(310) for d in (0, 1)]
    _assert_sweep_equals_reference(CARD_VIEWS, events, "c1", queries)
    _assert_sweep_equals_reference(SCALES, events, "c1", queries)
    sweep = FeatureSweep(CARD_VIEWS, events, "c1")
    late = sweep.features_before(T0 + 1_300 * MINUTE_MS + 8 * DAY_MS)
    assert repr(late["amount_sum_1h"]) == repr(late["amount_sum_7d"]) == "0.0"
    assert late["amount_mean_7d"] is None


@settings(max_examples=60, deadline=None)
@given(cents=st.lists(st.integers(1, 10**8), min_size=1, max_size=30),
       tick=st.sampled_from([0, 1, 299_999, 300_000]), data=st.data())
def test_ties_at_one_millisecond_and_window_edges_with_arbitrary_cents(
        cents: list[int], tick: int, data: st.DataObject) -> None:
    # Several events at the same millisecond (ids decide the order), on and
    # one ms either side of 5-minute and 1-hour edges, queried at each edge.
    base = T0 + 2 * HOUR_MS
    offsets = data.draw(st.lists(st.sampled_from([-tick, 0, tick, HOUR_MS - 1, HOUR_MS]),
                                 min_size=len(cents), max_size=len(cents)))
    events = [txn(f"e{i:02d}", base + offset, amount=c / 100)
              for i, (c, offset) in enumerate(zip(cents, offsets, strict=True))]
    edges = {base + o + d for o in (-tick, 0, tick, HOUR_MS, 2 * HOUR_MS) for d in (-1, 0, 1)}
    queries = sorted(edges | {base + 10 * MINUTE_MS + 1, base + DAY_MS, base + 8 * DAY_MS})
    for group in (CARD_VIEWS, SCALES, ALL_OPS):
        _assert_sweep_equals_reference(group, events, "c1", queries)
