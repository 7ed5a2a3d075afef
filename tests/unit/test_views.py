"""View definitions: validation, one definition of time for every layer
(hops, tiles, windows, strict "before"), tiles-plus-head agreeing with raw
events, and the card views and model features built on them."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.errors import ConfigError
from lamina.lineage import fingerprint
from lamina.schemas.aggregations import APPROX_DISTINCT
from lamina.schemas.card_views import (
    CARD_VIEWS,
    CURRENCY_COUNTRIES,
    FEATURES,
    NO_HISTORY,
    model_features,
)
from lamina.schemas.event_schemas import default_registry
from lamina.schemas.pit import FeatureSweep
from lamina.schemas.view_definitions import (
    DAY_MS,
    DERIVED_FIELDS,
    HOUR_MS,
    MINUTE_MS,
    WINDOWS,
    Aggregate,
    Filter,
    GroupBy,
    Window,
    build_tiles,
    check_against_schema,
    features_at,
    features_from_events,
    lift_event,
    tile_schema,
    tile_start,
    window_range,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z, a day boundary
W = WINDOWS

# Every op, every hop, filters and a derived field: the definition the
# tiles-versus-raw-events oracle runs on, next to CARD_VIEWS.
ALL_OPS = GroupBy(
    name="all_ops",
    event_type="transaction",
    entity_key="card_id",
    aggregates=(
        Aggregate("n", "count", None, (W["10m"], W["1h"], W["24h"], W["30d"], W["lifetime"])),
        Aggregate("small_pos", "count", None, (W["1h"], W["7d"]),
                  filters=(Filter("amount", "<=", 5), Filter("channel", "in", ("pos", "atm")))),
        Aggregate("amount_sum", "sum", "amount", (W["10m"], W["7d"], W["lifetime"]), scale=2),
        Aggregate("amount_min", "min", "amount", (W["1h"], W["30d"])),
        Aggregate("amount_max", "max", "amount", (W["24h"],)),
        Aggregate("amount_mean", "mean", "amount", (W["1h"], W["30d"]), scale=2),
        Aggregate("amount_last", "last", "amount", (W["10m"], W["lifetime"])),
        Aggregate("merchants", "approx_distinct", "merchant_id", (W["1h"], W["7d"])),
        Aggregate("amount_hist", "histogram", "amount", (W["24h"],), buckets=(1.0, 5.0, 50.0)),
        Aggregate("hours", "histogram", "hour_of_day", (W["30d"],),
                  buckets=tuple(float(h) for h in range(1, 24)),
                  filters=(Filter("country", "!=", "US"),)),
    ),
)


def txn(event_id: str, event_time: int, *, card: str = "c1", amount: float = 10.0,
        channel: str = "pos", merchant: str = "m1", country: str = "GB",
        currency: str = "GBP", category: str = "grocery") -> dict[str, Any]:
    return {
        "event_id": event_id, "event_type": "transaction", "schema_version": 1,
        "event_time": event_time, "card_id": card, "merchant_id": merchant,
        "merchant_category": category, "amount": amount, "currency": currency,
        "country": country, "channel": channel,
    }


# --- definitions are validated ------------------------------------------------


@pytest.mark.parametrize(("length", "hop"), [
    (5 * MINUTE_MS, 5 * MINUTE_MS), (10 * MINUTE_MS, 5 * MINUTE_MS), (HOUR_MS, 5 * MINUTE_MS),
    (2 * HOUR_MS, HOUR_MS), (24 * HOUR_MS, HOUR_MS), (7 * DAY_MS, HOUR_MS),
    (8 * DAY_MS, DAY_MS), (30 * DAY_MS, DAY_MS), (None, DAY_MS),
])
def test_hop_is_5_min_up_to_1_h_then_1_h_up_to_7_d_then_1_d(length: int | None,
                                                          hop: int) -> None:
    assert Window("w", length).hop_ms == hop


def test_ready_made_windows() -> None:
    assert set(WINDOWS) == {"10m", "1h", "24h", "7d", "30d", "lifetime"}
    assert WINDOWS["24h"] == Window("24h", 86_400_000)
    assert WINDOWS["lifetime"].length_ms is None and WINDOWS["lifetime"].is_lifetime


@pytest.mark.parametrize(("name", "length", "problem"), [
    ("", HOUR_MS, "window name"), ("1 h", HOUR_MS, "window name"), (3, HOUR_MS, "window name"),
    ("w", 0, "> 0"), ("w", -HOUR_MS, "> 0"), ("w", True, "integer"), ("w", 1.5, "integer"),
    ("w", 90 * MINUTE_MS, "not a multiple of its hop 3600000"),
    ("w", 7 * MINUTE_MS, "not a multiple of its hop 300000"),
])
def test_a_bad_window_is_refused_naming_the_problem(name: Any, length: Any, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        Window(name, length)


@pytest.mark.parametrize(("args", "problem"), [
    (("", "==", 1), "field"), (("amount", "~", 1), "unknown op '~'"),
    (("channel", "in", "online"), "tuple of values"), (("channel", "in", ()), "empty"),
    (("amount", "<", True), "numbers or strings"), (("amount", "<", float("nan")), "not finite"),
    (("amount", "==", [1]), "not a string, number or bool"),
    (("channel", "in", ("a", None)), "not a string, number or bool"),
])
def test_a_bad_filter_is_refused_naming_the_problem(args: tuple[Any, ...], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        Filter(*args)


def test_filters_compare_like_sql_and_never_raise() -> None:
    event = txn("e", T0 + 3 * HOUR_MS + 1, amount=4.5, channel="online")
    assert Filter("amount", "<", 5).matches(event)
    assert Filter("amount", "<=", 4.5).matches(event)
    assert not Filter("amount", ">", 4.5).matches(event)
    assert Filter("amount", ">=", 4.5).matches(event)
    assert Filter("channel", "==", "online").matches(event)
    assert not Filter("channel", "!=", "online").matches(event)
    assert Filter("channel", "in", ["pos", "online"]).matches(event)
    assert Filter("channel", "in", ["pos", "online"]).value == ("pos", "online")
    # A missing or null field matches nothing, "!=" included (SQL null).
    assert not Filter("tip", "!=", 1).matches(event)
    assert not Filter("amount", "!=", 1).matches({**event, "amount": None})
    # Values of another kind never match and never raise.
    assert not Filter("channel", "<", 5).matches(event)
    assert not Filter("amount", "==", "4.5").matches(event)
    assert not Filter("flag", "==", 1).matches({**event, "flag": True})
    assert Filter("flag", "==", True).matches({**event, "flag": True})
    # Derived fields filter like payload fields.
    assert Filter("hour_of_day", "==", 3).matches(event)


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"name": "Amount"}, "aggregate name"), ({"op": "median"}, "unknown aggregation op"),
    ({"op": "sum", "field": None}, "needs a field"), ({"windows": ()}, "at least one window"),
    ({"windows": (W["1h"], W["1h"])}, "window '1h' twice"), ({"windows": ("1h",)}, "not a Window"),
    ({"filters": ("amount<5",)}, "not a Filter"), ({"buckets": (1.0,)}, "takes no buckets"),
    ({"op": "histogram", "field": "amount"}, "at least one bucket"),
    ({"op": "histogram", "field": "amount", "buckets": (5.0, 1.0)}, "increase strictly"),
    ({"windows": W["1h"]}, "windows must be a tuple"),
])
def test_a_bad_aggregate_is_refused_naming_the_problem(kwargs: dict[str, Any],
                                                        problem: str) -> None:
    arguments: dict[str, Any] = {"name": "amount_x", "op": "count", "field": None,
                                 "windows": (W["1h"],)}
    with pytest.raises(ConfigError, match=problem):
        Aggregate(**{**arguments, **kwargs})


def test_aggregate_stores_tuples_and_names_features_after_windows() -> None:
    aggregate = Aggregate("amount_sum", "sum", "amount", [W["1h"], W["24h"]], scale=2)
    assert aggregate.windows == (W["1h"], W["24h"])
    assert aggregate.feature_names() == ("amount_sum_1h", "amount_sum_24h")
    assert hash(aggregate)  # frozen and hashable


def test_a_bad_group_by_is_refused_naming_the_problem() -> None:
    count = Aggregate("n", "count", None, (W["1h"],))
    with pytest.raises(ConfigError, match="at least one aggregate"):
        GroupBy("g", "transaction", "card_id", ())
    with pytest.raises(ConfigError, match="aggregate 'n' twice"):
        GroupBy("g", "transaction", "card_id", (count, count))
    with pytest.raises(ConfigError, match="collides with a tile key"):
        GroupBy("g", "transaction", "card_id",
                (Aggregate("tile_start", "count", None, (W["1h"],)),))
    with pytest.raises(ConfigError, match="entity_key"):
        GroupBy("g", "transaction", "", (count,))
    with pytest.raises(ConfigError, match="not an Aggregate"):
        GroupBy("g", "transaction", "card_id", ("n",))
    # Feature names collide although aggregate names do not.
    with pytest.raises(ConfigError, match=r"feature names collide: \['a_b_1h'\]"):
        GroupBy("g", "transaction", "card_id", (
            Aggregate("a", "count", None, (Window("b_1h", HOUR_MS),)),
            Aggregate("a_b", "count", None, (W["1h"],)),
        ))


def test_group_by_hops_feature_names_and_cutoff_alignment() -> None:
    assert ALL_OPS.hops() == (5 * MINUTE_MS, HOUR_MS, DAY_MS)
    assert ALL_OPS.cutoff_alignment_ms() == DAY_MS
    assert ALL_OPS.feature_names()[:6] == ("n_10m", "n_1h", "n_24h", "n_30d", "n_lifetime",
                                           "small_pos_1h")
    assert [a.name for a in ALL_OPS.aggregates_for_hop(5 * MINUTE_MS)] == [
        "n", "small_pos", "amount_sum", "amount_min", "amount_mean", "amount_last", "merchants"]
    only_short = GroupBy("g", "transaction", "card_id",
                         (Aggregate("n", "count", None, (W["10m"], W["1h"])),))
    assert only_short.hops() == (5 * MINUTE_MS,)
    assert only_short.cutoff_alignment_ms() == 5 * MINUTE_MS


# --- a window's hop is declared, validated and fingerprinted ------------------


def test_a_declared_hop_replaces_the_default_and_the_default_is_the_rule() -> None:
    assert Window("1h", HOUR_MS, hop_ms=10 * MINUTE_MS).hop_ms == 10 * MINUTE_MS
    assert Window("lifetime", None, hop_ms=HOUR_MS).hop_ms == HOUR_MS
    # Declaring the default hop is the same definition as leaving it out.
    assert Window("1h", HOUR_MS, hop_ms=5 * MINUTE_MS) == Window("1h", HOUR_MS)
    assert repr(Window("1h", HOUR_MS, hop_ms=5 * MINUTE_MS)) == repr(Window("1h", HOUR_MS))
    assert "hop_ms=600000" in repr(Window("1h", HOUR_MS, hop_ms=10 * MINUTE_MS))


@pytest.mark.parametrize(("length", "hop", "problem"), [
    (HOUR_MS, 0, "hop_ms must be a positive whole number"),
    (HOUR_MS, -5 * MINUTE_MS, "hop_ms must be a positive whole number"),
    (HOUR_MS, True, "hop_ms must be a positive whole number"),
    (HOUR_MS, 1.5, "hop_ms must be a positive whole number"),
    (HOUR_MS, "5m", "hop_ms must be a positive whole number"),
    (HOUR_MS, 7 * MINUTE_MS, "length 3600000 ms is not a multiple of its hop 420000 ms"),
    (None, 0, "hop_ms must be a positive whole number"),
])
def test_a_bad_hop_is_refused_naming_the_window(length: int | None, hop: Any,
                                                problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as refused:
        Window("w1", length, hop_ms=hop)
    assert "window 'w1'" in str(refused.value)


def test_a_group_whose_hops_do_not_divide_one_another_is_refused_naming_the_window() -> None:
    with pytest.raises(ConfigError, match=r"window m_12m has hop 720000 ms, not a multiple of "
                                          r"the finer hop 300000 ms"):
        GroupBy("g", "transaction", "card_id", (
            Aggregate("n", "count", None, (Window("1h", HOUR_MS),)),
            Aggregate("m", "count", None, (Window("12m", 12 * MINUTE_MS, hop_ms=12 * MINUTE_MS),)),
        ))
    # Both divide the largest hop (1 h) but not each other: tiles would not nest.
    with pytest.raises(ConfigError, match=r"window m_24h has hop 1200000 ms"):
        GroupBy("g", "transaction", "card_id", (
            Aggregate("n", "count", None, (Window("15m", 15 * MINUTE_MS, hop_ms=15 * MINUTE_MS),
                                           Window("1h", HOUR_MS, hop_ms=HOUR_MS))),
            Aggregate("m", "count", None, (Window("24h", DAY_MS, hop_ms=20 * MINUTE_MS),)),
        ))


def test_a_longer_window_with_a_finer_hop_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"aggregate 'n': window '2h' \(hop 300000 ms\)"):
        Aggregate("n", "count", None, (Window("1h", HOUR_MS, hop_ms=HOUR_MS),
                                       Window("2h", 2 * HOUR_MS, hop_ms=5 * MINUTE_MS)))
    with pytest.raises(ConfigError, match="finer hop"):
        Aggregate("n", "count", None, (Window("a", HOUR_MS, hop_ms=HOUR_MS),
                                       Window("b", HOUR_MS, hop_ms=5 * MINUTE_MS)))


def card_views_with_hop(hop_ms: int) -> GroupBy:
    """CARD_VIEWS with its 1 h windows tiled at ``hop_ms`` (all else equal)."""
    def rehop(window: Window) -> Window:
        return Window(window.name, window.length_ms, hop_ms) if window.name == "1h" else window

    return GroupBy(CARD_VIEWS.name, CARD_VIEWS.event_type, CARD_VIEWS.entity_key, tuple(
        dataclasses.replace(a, windows=tuple(rehop(w) for w in a.windows))
        for a in CARD_VIEWS.aggregates))


def test_two_definitions_differing_only_in_a_hop_have_different_fingerprints() -> None:
    same = card_views_with_hop(5 * MINUTE_MS)
    coarser = card_views_with_hop(10 * MINUTE_MS)
    assert fingerprint(same) == fingerprint(CARD_VIEWS)
    assert fingerprint(coarser) != fingerprint(CARD_VIEWS)
    assert fingerprint(coarser) != fingerprint(card_views_with_hop(15 * MINUTE_MS))
    assert coarser.hops() == (5 * MINUTE_MS, 10 * MINUTE_MS, HOUR_MS, DAY_MS)


def test_card_views_declare_every_hop() -> None:
    hops = {w.name: w.hop_ms for a in CARD_VIEWS.aggregates for w in a.windows}
    assert hops == {"10m": 5 * MINUTE_MS, "1h": 5 * MINUTE_MS, "24h": HOUR_MS,
                    "7d": HOUR_MS, "30d": DAY_MS, "lifetime": DAY_MS}


#: Hops other than the defaults: 2 min, 10 min and 2 h tiles.
REHOPPED = GroupBy(
    name="rehopped",
    event_type="transaction",
    entity_key="card_id",
    aggregates=(
        Aggregate("n", "count", None, (
            Window("10m", 10 * MINUTE_MS, hop_ms=2 * MINUTE_MS),
            Window("1h", HOUR_MS, hop_ms=10 * MINUTE_MS),
            Window("6h", 6 * HOUR_MS, hop_ms=2 * HOUR_MS),
            Window("lifetime", None, hop_ms=2 * HOUR_MS))),
        Aggregate("amount_sum", "sum", "amount", (
            Window("1h", HOUR_MS, hop_ms=10 * MINUTE_MS),
            Window("2d", 2 * DAY_MS, hop_ms=2 * HOUR_MS)), scale=2),
        Aggregate("amount_mean", "mean", "amount", (
            Window("10m", 10 * MINUTE_MS, hop_ms=2 * MINUTE_MS),), scale=2),
        Aggregate("amount_max", "max", "amount", (
            Window("6h", 6 * HOUR_MS, hop_ms=2 * HOUR_MS),)),
        Aggregate("merchants", "approx_distinct", "merchant_id", (
            Window("10m", 10 * MINUTE_MS, hop_ms=2 * MINUTE_MS),
            Window("2d", 2 * DAY_MS, hop_ms=2 * HOUR_MS))),
    ),
)


# --- time: tiles, windows, strict "before" ----------------------------------


def test_tile_start_is_the_floor() -> None:
    assert tile_start(T0, HOUR_MS) == T0
    assert tile_start(T0 + HOUR_MS - 1, HOUR_MS) == T0
    assert tile_start(T0 + HOUR_MS, HOUR_MS) == T0 + HOUR_MS
    assert tile_start(T0 + 7 * MINUTE_MS, 5 * MINUTE_MS) == T0 + 5 * MINUTE_MS


def test_window_range_hops_at_the_tail_and_is_exact_at_the_head() -> None:
    # 24 h (hop 1 h) at 10:30: from 10:00 the day before -- 24.5 h.
    t = T0 + 10 * HOUR_MS + 30 * MINUTE_MS
    assert window_range(t, W["24h"]) == (T0 - DAY_MS + 10 * HOUR_MS, t)
    # On a tile boundary the window is exactly W long.
    assert window_range(T0 + 10 * HOUR_MS, W["24h"]) == (T0 - 14 * HOUR_MS, T0 + 10 * HOUR_MS)
    # 10 min (hop 5 min) at 12:07: from 11:55 -- 12 min.
    t = T0 + 12 * HOUR_MS + 7 * MINUTE_MS
    assert window_range(t, W["10m"]) == (T0 + 11 * HOUR_MS + 55 * MINUTE_MS, t)
    # 30 d (hop 1 d) a millisecond before midnight: almost 31 days.
    t = T0 + DAY_MS - 1
    assert window_range(t, W["30d"]) == (T0 - 30 * DAY_MS, t)
    assert window_range(t, W["lifetime"]) == (None, t)


@given(st.integers(T0 - 400 * DAY_MS, T0 + 400 * DAY_MS),
       st.sampled_from([w for w in WINDOWS.values() if not w.is_lifetime]))
def test_a_window_spans_at_least_w_and_less_than_w_plus_h(t: int, window: Window) -> None:
    start, end = window_range(t, window)
    assert start is not None and end == t
    assert window.length_ms is not None
    assert window.length_ms <= end - start < window.length_ms + window.hop_ms
    assert start % window.hop_ms == 0


def test_an_event_at_exactly_t_is_excluded_and_one_just_before_is_included() -> None:
    t = T0 + 5 * HOUR_MS + 17 * MINUTE_MS
    events = [txn("before", t - 1, amount=2.0), txn("at", t, amount=3.0),
              txn("after", t + 1, amount=4.0)]
    tiles = {h: build_tiles(ALL_OPS, events, h) for h in ALL_OPS.hops()}
    for features in (features_from_events(ALL_OPS, events, "c1", t),
                     features_at(ALL_OPS, tiles, events, "c1", t)):
        assert features["n_10m"] == features["n_lifetime"] == 1
        assert features["amount_sum_lifetime"] == 2.0
        assert features["amount_last_lifetime"] == 2.0


def test_the_window_start_is_inclusive() -> None:
    t = T0 + 5 * HOUR_MS + 17 * MINUTE_MS
    start, _ = window_range(t, W["1h"])
    assert start == T0 + 4 * HOUR_MS + 15 * MINUTE_MS
    assert start is not None
    events = [txn("edge", start), txn("outside", start - 1)]
    tiles = {h: build_tiles(ALL_OPS, events, h) for h in ALL_OPS.hops()}
    assert features_from_events(ALL_OPS, events, "c1", t)["n_1h"] == 1
    assert features_at(ALL_OPS, tiles, events, "c1", t)["n_1h"] == 1


def test_each_event_id_counts_once_and_other_event_types_are_ignored() -> None:
    event = txn("e1", T0 + 1000, amount=7.0)
    label = {"event_id": "l1", "event_type": "label", "event_time": T0 + 2000, "card_id": "c1"}
    events = [event, dict(event), label]
    tiles = build_tiles(ALL_OPS, events, HOUR_MS)
    assert tiles[("c1", T0)]["n"] == 1
    assert features_from_events(ALL_OPS, events, "c1", T0 + HOUR_MS)["amount_sum_7d"] == 7.0


def test_lift_event_applies_the_filters() -> None:
    cheap_pos = lift_event(ALL_OPS, txn("e", T0, amount=5.0, channel="pos"))
    cheap_online = lift_event(ALL_OPS, txn("e", T0, amount=5.0, channel="online"))
    dear_pos = lift_event(ALL_OPS, txn("e", T0, amount=5.01, channel="pos"))
    assert (cheap_pos["small_pos"], cheap_online["small_pos"], dear_pos["small_pos"]) == (1, 0, 0)
    assert cheap_online["n"] == 1
    us = lift_event(ALL_OPS, txn("e", T0 + 13 * HOUR_MS, country="US"))
    gb = lift_event(ALL_OPS, txn("e", T0 + 13 * HOUR_MS, country="GB"))
    assert sum(us["hours"]) == 0
    assert gb["hours"][13] == 1  # derived hour_of_day, UTC


# --- tiles plus head == raw events (the oracle every layer is held to) ------

# Cents (which do not add exactly in binary floats), values finer than the
# scale and arbitrary floats: sums are fixed-point, exact for all of them.
amounts = st.one_of(st.integers(1, 10**8).map(lambda k: k / 100),
                    st.integers(1, 40_000).map(lambda k: k / 4),
                    st.floats(0.0, 1e6, exclude_min=True, allow_nan=False))
event_strategy = st.builds(
    txn,
    event_id=st.integers(0, 60).map(lambda n: f"tx-{n}"),
    event_time=st.one_of(
        st.integers(T0 - 35 * DAY_MS, T0 + 2 * DAY_MS),
        # Bunch events near the query window's edges and tile boundaries.
        st.integers(-3, 3).map(lambda d: T0 + d * 5 * MINUTE_MS),
    ),
    card=st.sampled_from(["c1", "c2"]),
    amount=st.one_of(amounts, st.sampled_from([0.5, 4.75, 5.0, 50.0])),
    channel=st.sampled_from(["pos", "online", "atm"]),
    merchant=st.sampled_from(["m1", "m2", "m3", "m4"]),
    country=st.sampled_from(["GB", "US", "FR"]),
)


def _resends(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Repeated event ids become resends of the first event (same bytes)."""
    first: dict[str, dict[str, Any]] = {}
    return [first.setdefault(e["event_id"], e) for e in events]


def _unique(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({e["event_id"]: e for e in events}.values())


@pytest.mark.parametrize("group", [ALL_OPS, CARD_VIEWS], ids=lambda g: g.name)
@settings(max_examples=70, deadline=None)
@given(events=st.lists(event_strategy, max_size=40).map(_resends),
       t=st.one_of(st.integers(T0 - 2 * DAY_MS, T0 + 3 * DAY_MS),
                   st.integers(-3, 3).map(lambda d: T0 + d * 5 * MINUTE_MS)),
       entity=st.sampled_from(["c1", "c2"]))
def test_features_from_tiles_plus_head_equal_features_from_raw_events(
    group: GroupBy, events: list[dict[str, Any]], t: int, entity: str
) -> None:
    # Tiles are built from *all* events, later ones included: features_at
    # must use only the tiles before the head and take the head from raw events.
    tiles = {hop: build_tiles(group, events, hop) for hop in group.hops()}
    assert features_at(group, tiles, events, entity, t) == features_from_events(
        group, events, entity, t)


@settings(max_examples=60, deadline=None)
@given(events=st.lists(event_strategy, max_size=40).map(_resends),
       t=st.one_of(st.integers(T0 - 3 * DAY_MS, T0 + 3 * DAY_MS),
                   st.integers(-7, 7).map(lambda d: T0 + d * 2 * MINUTE_MS)),
       entity=st.sampled_from(["c1", "c2"]))
def test_tiles_and_sweep_with_declared_hops_equal_features_from_raw_events(
    events: list[dict[str, Any]], t: int, entity: str
) -> None:
    assert REHOPPED.hops() == (2 * MINUTE_MS, 10 * MINUTE_MS, 2 * HOUR_MS)
    expected = features_from_events(REHOPPED, events, entity, t)
    tiles = {hop: build_tiles(REHOPPED, events, hop) for hop in REHOPPED.hops()}
    assert features_at(REHOPPED, tiles, events, entity, t) == expected
    assert FeatureSweep(REHOPPED, events, entity).features_before(t) == expected


@settings(max_examples=40, deadline=None)
@given(events=st.lists(event_strategy, max_size=40).map(_unique), data=st.data())
def test_tiles_of_a_split_merge_into_the_tiles_of_the_whole(
    events: list[dict[str, Any]], data: st.DataObject
) -> None:
    # Batch tiles before a cutoff and realtime tiles after it, or tiles of two
    # partitions: merged per key, they are the tiles of all the events. (Ids
    # are unique here: dropping a resend is the stream's job before tiling --
    # a merge cannot know that two partials share an event.)
    cut = data.draw(st.integers(0, len(events)))
    for hop in ALL_OPS.hops():
        monoids = {a.name: a.aggregation for a in ALL_OPS.aggregates_for_hop(hop)}
        merged = build_tiles(ALL_OPS, events[:cut], hop)
        for key, tile in build_tiles(ALL_OPS, events[cut:], hop).items():
            if key in merged:
                merged[key] = {n: monoids[n].merge(merged[key][n], p) for n, p in tile.items()}
            else:
                merged[key] = tile
        assert merged == build_tiles(ALL_OPS, events, hop)


def test_features_of_a_card_without_events_are_zeros_and_nones() -> None:
    features = features_from_events(ALL_OPS, [txn("e", T0, card="c2")], "c1", T0 + HOUR_MS)
    assert features["n_lifetime"] == 0 and features["merchants_7d"] == 0
    assert features["amount_min_1h"] is None and features["amount_mean_30d"] is None
    assert features["amount_last_lifetime"] is None
    assert features["amount_hist_24h"] == (0, 0, 0, 0)


def test_tile_schema_holds_the_stored_partials() -> None:
    events = [txn(f"e{i}", T0 + i * 7 * MINUTE_MS, amount=i + 0.5, merchant=f"m{i % 3}",
                  card=f"c{i % 2}") for i in range(30)]
    for hop in ALL_OPS.hops():
        schema = tile_schema(ALL_OPS, hop)
        names = [a.name for a in ALL_OPS.aggregates_for_hop(hop)]
        assert schema.names == ["card_id", "tile_start", *names]
        tiles = build_tiles(ALL_OPS, events, hop)
        monoids = {a.name: a.aggregation for a in ALL_OPS.aggregates_for_hop(hop)}
        rows = [{"card_id": e, "tile_start": s,
                 **{n: monoids[n].to_storage(p) for n, p in partials.items()}}
                for (e, s), partials in tiles.items()]
        table = pa.Table.from_pylist(rows, schema=schema)
        back = {(r["card_id"], r["tile_start"]): {n: monoids[n].from_storage(r[n]) for n in names}
                for r in table.to_pylist()}
        assert back == tiles
    with pytest.raises(ConfigError, match="no window with hop"):
        tile_schema(ALL_OPS, 2 * HOUR_MS)


# --- definitions against the event schema -----------------------------------


def _transaction_schema() -> dict[str, Any]:
    registry = default_registry()
    return registry.get("transaction", registry.latest("transaction"))


def test_card_views_read_only_fields_the_transaction_schema_has() -> None:
    check_against_schema(CARD_VIEWS, _transaction_schema())
    check_against_schema(ALL_OPS, _transaction_schema())


@pytest.mark.parametrize(("aggregate", "entity_key", "problem"), [
    (Aggregate("x", "sum", "tip", (W["1h"],), scale=2), "card_id", "'tip' is not a property"),
    (Aggregate("x", "sum", "merchant_id", (W["1h"],), scale=2), "card_id", "needs a numeric field"),
    (Aggregate("x", "approx_distinct", "amount", (W["1h"],)), "card_id", "strings or integers"),
    (Aggregate("x", "count", None, (W["1h"],), filters=(Filter("tip", ">", 1),)), "card_id",
     "'tip' is not a property"),
    (Aggregate("x", "count", None, (W["1h"],)), "amount", "not a string"),
    (Aggregate("x", "count", None, (W["1h"],)), "user_id", "not a required property"),
])
def test_a_definition_reading_a_field_the_schema_lacks_is_refused(
    aggregate: Aggregate, entity_key: str, problem: str
) -> None:
    group = GroupBy("g", "transaction", entity_key, (aggregate,))
    with pytest.raises(ConfigError, match=problem):
        check_against_schema(group, _transaction_schema())


def test_sums_and_means_declare_a_scale_and_nothing_else_does() -> None:
    with pytest.raises(ConfigError, match="'x': op 'sum' needs a scale.*scale=2 for amounts"):
        Aggregate("x", "sum", "amount", (W["1h"],))
    with pytest.raises(ConfigError, match="'x': op 'mean' needs a scale"):
        Aggregate("x", "mean", "amount", (W["1h"],))
    with pytest.raises(ConfigError, match="'x': op 'max' takes no scale"):
        Aggregate("x", "max", "amount", (W["1h"],), scale=2)
    with pytest.raises(ConfigError, match="scale must be an integer from 0 to 9"):
        Aggregate("x", "sum", "amount", (W["1h"],), scale=-2)
    assert repr(Aggregate("x", "sum", "amount", (W["1h"],), scale=3).aggregation) == \
        "<aggregation sum scale=3>"


def _with_amount(**spec: Any) -> dict[str, Any]:
    schema = _transaction_schema()
    return {**schema, "properties": {**schema["properties"], "amount": spec}}


@pytest.mark.parametrize(("spec", "scale"), [
    ({"type": "number", "exclusiveMinimum": 0, "maximum": 1_000_000}, 2),  # the real one
    ({"type": "number", "minimum": -5, "exclusiveMaximum": 5, "multipleOf": 0.01}, 2),
    ({"type": "number", "minimum": 0, "maximum": 10, "multipleOf": 0.25}, 2),
    ({"type": "number", "minimum": 0, "maximum": 10, "multipleOf": 0.5}, 1),
    ({"type": "integer", "minimum": 0, "maximum": 10**14}, 0),
    ({"type": "number", "minimum": 0, "maximum": 2.8e12}, 2),  # just below 2**48 cents
])
def test_a_scale_that_agrees_with_the_field_schema_is_accepted(spec: dict[str, Any],
                                                               scale: int) -> None:
    for op in ("sum", "mean"):
        group = GroupBy("g", "transaction", "card_id",
                        (Aggregate("x", op, "amount", (W["1h"],), scale=scale),))
        check_against_schema(group, _with_amount(**spec))


@pytest.mark.parametrize(("spec", "scale", "problem"), [
    ({"type": "number", "minimum": 0}, 2, "must bound the field"),
    ({"type": "number", "maximum": 10}, 2, "must bound the field"),
    ({"type": "number", "minimum": 0, "maximum": 3e12}, 2, "not below 2\\*\\*48"),
    ({"type": "integer", "minimum": -(10**15), "maximum": 0}, 0, "not below 2\\*\\*48"),
    ({"type": "number", "minimum": 0, "maximum": 10, "multipleOf": 0.005}, 2,
     "multipleOf 0.005 is not a whole number of 10\\*\\*-2 units; use scale=3"),
    ({"type": "number", "minimum": 0, "maximum": 10, "multipleOf": 0.25}, 1, "use scale=2"),
])
def test_a_scale_the_field_schema_contradicts_is_refused(spec: dict[str, Any], scale: int,
                                                         problem: str) -> None:
    group = GroupBy("g", "transaction", "card_id",
                    (Aggregate("x", "sum", "amount", (W["1h"],), scale=scale),))
    with pytest.raises(ConfigError, match=problem):
        check_against_schema(group, _with_amount(**spec))


# --- the card views and the model's features --------------------------------


def test_card_views_define_the_features_the_model_reads() -> None:
    names = CARD_VIEWS.feature_names()
    for expected in ("txn_count_10m", "txn_count_1h", "txn_count_24h", "txn_count_7d",
                     "amount_sum_1h", "amount_sum_24h", "amount_sum_7d", "amount_mean_7d",
                     "amount_mean_30d", "amount_max_24h", "merchant_distinct_24h",
                     "merchant_distinct_7d", "small_online_count_10m", "small_online_count_1h",
                     "online_count_1h", "last_event_time_lifetime", "hour_histogram_30d"):
        assert expected in names
    assert CARD_VIEWS.entity_key == "card_id" and CARD_VIEWS.event_type == "transaction"
    assert CARD_VIEWS.cutoff_alignment_ms() == DAY_MS
    assert len(set(FEATURES)) == len(FEATURES)
    for request_time in ("amount", "log_amount", "hour_of_day", "is_online",
                         "amount_over_mean_7d", "seconds_since_last_txn"):
        assert request_time in FEATURES
    # Raw epoch times and histograms are inputs to derived features only.
    assert "last_event_time_lifetime" not in FEATURES and "hour_histogram_30d" not in FEATURES
    assert "hour_of_day" in DERIVED_FIELDS


def test_model_features_of_a_card_without_history_use_the_documented_defaults() -> None:
    event = txn("e", T0 + 2 * HOUR_MS, amount=120.0, channel="online", country="TH",
                currency="GBP")
    vector = model_features(event, features_from_events(CARD_VIEWS, [event], "c1",
                                                        event["event_time"]))
    assert list(vector) == list(FEATURES)
    assert all(isinstance(v, float) and math.isfinite(v) for v in vector.values())
    assert vector["amount"] == 120.0 and vector["log_amount"] == math.log1p(120.0)
    assert vector["hour_of_day"] == 2.0 and vector["is_online"] == 1.0
    assert vector["is_foreign"] == 1.0
    assert vector["txn_count_24h"] == 0.0 and vector["amount_max_24h"] == 0.0
    for no_history in ("amount_over_mean_7d", "amount_over_mean_30d", "seconds_since_last_txn",
                       "hour_share_30d"):
        assert vector[no_history] == NO_HISTORY
    assert model_features(event, {}) == vector  # missing keys = no events
    assert model_features({**event, "currency": "XXX"}, {})["is_foreign"] == NO_HISTORY
    assert model_features({**event, "country": "GB"}, {})["is_foreign"] == 0.0
    assert "FR" in CURRENCY_COUNTRIES["EUR"]


def test_card_testing_burst_shows_in_the_features_of_the_next_payment() -> None:
    # 8 tiny online payments 30 s apart after a month of ordinary evening use.
    history = [txn(f"h{d}", T0 - d * DAY_MS + 19 * HOUR_MS, amount=40.0) for d in range(1, 21)]
    start = T0 + 19 * HOUR_MS + 2 * MINUTE_MS
    burst = [txn(f"b{i}", start + i * 30_000, amount=1.25, channel="online", merchant=f"s{i}",
                 category="online_services") for i in range(8)]
    big = txn("big", start + 7 * 30_000 + 45_000, amount=90.0, channel="online")
    events = [*history, *burst, big]
    views = features_from_events(CARD_VIEWS, events, "c1", big["event_time"])
    vector = model_features(big, views)
    assert vector["small_online_count_10m"] == 8.0 and vector["small_online_count_1h"] == 8.0
    assert vector["online_count_1h"] == 8.0 and vector["txn_count_10m"] == 8.0
    assert vector["merchant_distinct_1h"] == 8.0
    assert vector["seconds_since_last_txn"] == 45.0
    assert vector["amount_over_mean_30d"] == pytest.approx(90.0 / ((20 * 40 + 8 * 1.25) / 28))
    assert vector["hour_share_30d"] == 1.0  # always around 19:00 UTC


def test_account_takeover_burst_at_an_unusual_hour_shows_in_the_features() -> None:
    history = [txn(f"h{d}", T0 - d * DAY_MS + 18 * HOUR_MS, amount=30.0) for d in range(1, 11)]
    night = T0 + 3 * HOUR_MS
    burst = [txn(f"b{i}", night + i * 9 * MINUTE_MS, amount=250.0, merchant=f"new{i}",
                 country="TH", category="electronics") for i in range(4)]
    fifth = txn("b4", night + 4 * 9 * MINUTE_MS, amount=260.0, merchant="new4", country="TH")
    views = features_from_events(CARD_VIEWS, [*history, *burst, fifth], "c1",
                                 fifth["event_time"])
    vector = model_features(fifth, views)
    assert vector["txn_count_1h"] == 4.0 and vector["merchant_distinct_1h"] == 4.0
    assert vector["amount_sum_1h"] == 1000.0 and vector["amount_max_1h"] == 250.0
    # Home (GB, last evening) and abroad (TH) within 24 h.
    assert vector["country_distinct_24h"] == 2.0 and vector["is_foreign"] == 1.0
    assert vector["hour_share_30d"] == pytest.approx(4 / 14)
    assert vector["amount_over_mean_30d"] == pytest.approx(260.0 / (1300.0 / 14))


def test_approx_distinct_features_come_from_canonical_partials() -> None:
    # The distinct count of tiles plus head equals that of raw events even
    # when the same merchant appears in several tiles.
    events = [txn(f"e{i}", T0 + i * 20 * MINUTE_MS, merchant=f"m{i % 5}") for i in range(40)]
    t = T0 + 40 * 20 * MINUTE_MS
    tiles = {h: build_tiles(CARD_VIEWS, events, h) for h in CARD_VIEWS.hops()}
    online = features_at(CARD_VIEWS, tiles, events, "c1", t)
    assert online["merchant_distinct_24h"] == 5
    assert online == features_from_events(CARD_VIEWS, events, "c1", t)
    partial = tiles[HOUR_MS][("c1", T0)]["merchant_distinct"]
    assert APPROX_DISTINCT.present(partial) == 3  # 00:00, 00:20, 00:40 -> m0, m1, m2
