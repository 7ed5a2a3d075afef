"""The bounded lookup (lamina.stores.lookup): a batch record plus realtime
tiles gives exactly the reference features for every query time the
record is published for, reads a bounded number of records, and refuses
the times it cannot answer. Pure functions: no store involved."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.schemas.aggregations import aggregation_for
from lamina.schemas.card_views import CARD_VIEWS
from lamina.schemas.view_definitions import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    GroupBy,
    build_tiles,
    features_at,
    features_from_events,
    lift_event,
)
from lamina.stores.base import (
    AsOfOutOfRange,
    EntitySnapshot,
    PublishedView,
    StoreError,
    realtime_ranges,
)
from lamina.stores.codec import TileCodec
from lamina.stores.lookup import (
    FeatureReader,
    batch_records,
    build_batch_record,
    definition_fingerprint,
    horizon_ms,
    realtime_spans,
)
from tests.unit.test_views import (
    ALL_OPS,
    REHOPPED,
    T0,
    amounts,
    card_views_with_hop,
    txn,
)

CUTOFF = T0  # a day boundary: aligned for every hop

event_strategy = st.builds(
    txn,
    event_id=st.integers(0, 80).map(lambda n: f"tx-{n}"),
    event_time=st.one_of(
        st.integers(CUTOFF - 35 * DAY_MS, CUTOFF + 3 * DAY_MS),
        # Bunch events at the cutoff, the windows' edges and tile boundaries.
        st.integers(-4, 4).map(lambda d: CUTOFF + d * 5 * MINUTE_MS),
        st.integers(-3, 3).map(lambda d: CUTOFF - 7 * DAY_MS + d * HOUR_MS),
        st.integers(-3, 3).map(lambda d: CUTOFF - 24 * HOUR_MS + d * HOUR_MS),
    ),
    card=st.sampled_from(["c1", "c2"]),
    amount=st.one_of(amounts, st.sampled_from([0.5, 4.75, 5.0, 50.0])),
    channel=st.sampled_from(["pos", "online", "atm"]),
    merchant=st.sampled_from(["m1", "m2", "m3", "m4"]),
    country=st.sampled_from(["GB", "US", "FR"]),
)
# Publish intervals shorter and longer than each window (5 min .. 40 days).
interval_strategy = st.one_of(
    st.sampled_from([5 * MINUTE_MS, HOUR_MS, DAY_MS, 2 * DAY_MS, 8 * DAY_MS, 40 * DAY_MS]),
    st.integers(1, 40 * 288).map(lambda k: k * 5 * MINUTE_MS),
    st.integers(1, 3 * DAY_MS),
)


def _resends(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    first: dict[str, dict[str, Any]] = {}
    return [first.setdefault(e["event_id"], e) for e in events]


def view_for(group: GroupBy, cutoff: int, horizon: int) -> PublishedView:
    return PublishedView(group=group.name, cutoff_ms=cutoff, horizon_ms=horizon,
                         batch_version=1, definition=definition_fingerprint(group),
                         generation=1, published_at_ms=cutoff)


def snapshot_of(group: GroupBy, events: list[dict[str, Any]], entity: str, cutoff: int,
                horizon: int, t: int) -> EntitySnapshot:
    """What a store would return for ``entity`` at ``t``: the batch record
    built from the events before the cutoff, and the realtime tiles of the
    events in [cutoff, t) within the ranges a store reads."""
    before = [e for e in events if e["event_time"] < cutoff]
    batch_tiles = {hop: build_tiles(group, before, hop) for hop in group.hops()}
    records = {r.entity: r.payload for r in batch_records(group, batch_tiles, cutoff, horizon)}
    realtime = [e for e in events if cutoff <= e["event_time"] < t]
    codec = TileCodec(group)
    ranges = realtime_ranges(cutoff, t, realtime_spans(group))
    tiles = {}
    for hop, first, end in ranges:
        for (tile_entity, start), partials in build_tiles(group, realtime, hop).items():
            if tile_entity == entity and first <= start < end:
                tiles[(hop, start)] = codec.encode(hop, partials)
    return EntitySnapshot(view_for(group, cutoff, horizon), entity, t, records.get(entity),
                          tiles)


@pytest.mark.parametrize("group", [ALL_OPS, CARD_VIEWS, REHOPPED], ids=lambda g: g.name)
@settings(max_examples=60, deadline=None)
@given(events=st.lists(event_strategy, max_size=40).map(_resends),
       interval=interval_strategy, data=st.data(), entity=st.sampled_from(["c1", "c2"]))
def test_batch_record_plus_realtime_tiles_equal_the_reference_for_every_t_in_the_interval(
    group: GroupBy, events: list[dict[str, Any]], interval: int, data: st.DataObject,
    entity: str,
) -> None:
    horizon = CUTOFF + interval
    t = data.draw(st.one_of(
        st.integers(CUTOFF, horizon - 1),
        st.sampled_from([CUTOFF, horizon - 1]),
        st.integers(0, (interval - 1) // (5 * MINUTE_MS)).map(
            lambda k: CUTOFF + k * 5 * MINUTE_MS)), label="t")
    seen = [e for e in events if e["event_time"] < t]  # the events landed by "now" = t
    expected = features_at(group, {hop: build_tiles(group, seen, hop) for hop in group.hops()},
                           seen, entity, t)
    assert expected == features_from_events(group, seen, entity, t)
    snapshot = snapshot_of(group, events, entity, CUTOFF, horizon, t)
    assert FeatureReader(group).features(snapshot) == expected


def test_a_lookup_outside_the_published_interval_is_refused() -> None:
    events = [txn("a", CUTOFF - HOUR_MS), txn("b", CUTOFF + HOUR_MS)]
    horizon = CUTOFF + DAY_MS
    reader = FeatureReader(CARD_VIEWS)
    inside = snapshot_of(CARD_VIEWS, events, "c1", CUTOFF, horizon, horizon - 1)
    assert reader.features(inside)["txn_count_24h"] == 2
    for t, problem in ((CUTOFF - 1, "before the published batch cutoff"),
                       (horizon, "at or after the horizon"),
                       (horizon + 5 * DAY_MS, "publish a newer batch view")):
        snapshot = EntitySnapshot(inside.view, "c1", t, inside.batch_record, inside.tiles)
        with pytest.raises(AsOfOutOfRange, match=problem) as raised:
            reader.features(snapshot)
        assert raised.value.view == inside.view


def test_a_record_of_another_publish_or_definition_is_refused() -> None:
    events = [txn("a", CUTOFF - HOUR_MS)]
    snapshot = snapshot_of(CARD_VIEWS, events, "c1", CUTOFF, CUTOFF + DAY_MS, CUTOFF + 1)
    other_record = build_batch_record(
        CARD_VIEWS, {HOUR_MS: {CUTOFF - HOUR_MS: lift_event(CARD_VIEWS, events[0])}},
        CUTOFF, CUTOFF + 2 * DAY_MS)
    mixed = EntitySnapshot(snapshot.view, "c1", CUTOFF + 1, other_record, {})
    with pytest.raises(StoreError, match="built for cutoff"):
        FeatureReader(CARD_VIEWS).features(mixed)
    # A view published with the card views' definition, read with another.
    wrong = PublishedView(group=ALL_OPS.name, cutoff_ms=CUTOFF, horizon_ms=CUTOFF + DAY_MS,
                          batch_version=1, definition=definition_fingerprint(CARD_VIEWS),
                          generation=1, published_at_ms=CUTOFF)
    with pytest.raises(StoreError, match="built for definition"):
        FeatureReader(ALL_OPS).features(EntitySnapshot(wrong, "c1", CUTOFF + 1, None, {}))


def test_a_view_published_before_a_hop_changed_is_refused() -> None:
    # The same group with its 1 h windows tiled at 10 min: a different
    # definition, so a reader of it refuses the view published for the old one.
    rehopped = card_views_with_hop(10 * MINUTE_MS)
    events = [txn("a", CUTOFF - HOUR_MS)]
    published = snapshot_of(CARD_VIEWS, events, "c1", CUTOFF, CUTOFF + DAY_MS, CUTOFF + 1)
    assert FeatureReader(CARD_VIEWS).features(published)["txn_count_24h"] == 1
    with pytest.raises(StoreError, match="publish the view again with this definition"):
        FeatureReader(rehopped).features(published)


def _dense_history(days: int) -> list[dict[str, Any]]:
    """One transaction in every 5-minute tile for ``days`` before the cutoff,
    at alternating merchants: the worst case for a tile-per-window read."""
    step = 5 * MINUTE_MS
    return [txn(f"d{i}", CUTOFF - days * DAY_MS + i * step + 1, merchant=f"m{i % 7}",
                channel="online" if i % 3 else "pos", amount=float(i % 40) / 4 + 1)
            for i in range(days * DAY_MS // step)]


def test_a_lookup_reads_one_record_and_a_bounded_number_of_tiles() -> None:
    # Daily publishes, horizon one day: the record keeps at most one entry
    # per hour of the day for the hourly windows and one for the rest; the
    # realtime tiles read at any time of the day are <= 13 + 25 + 2.
    group = CARD_VIEWS
    horizon = CUTOFF + DAY_MS
    events = _dense_history(40)
    tiles = {hop: build_tiles(group, events, hop) for hop in group.hops()}
    payload = next(iter(batch_records(group, tiles, CUTOFF, horizon))).payload
    entries = orjson.loads(payload)["w"]
    for aggregate in group.aggregates:
        for window in aggregate.windows:
            stored = entries.get(aggregate.feature_name(window), [])
            if window.length_ms is None:
                assert len(stored) == 1
                continue
            # One suffix per tail tile that leaves the window before the
            # horizon, plus the collapsed rest when some tiles never leave.
            hop, length = window.hop_ms, window.length_ms
            last_start = (horizon - 1 - length) // hop * hop
            expected = (min(last_start, CUTOFF) - (CUTOFF - length)) // hop \
                + (1 if last_start < CUTOFF else 0)
            if aggregate.name == "txn_count":  # every tile holds one: no suffix repeats
                assert len(stored) == expected, aggregate.feature_name(window)
            assert len(stored) <= expected, aggregate.feature_name(window)
    naive = sum(len(range(0, (w.length_ms or 40 * DAY_MS), w.hop_ms))
                for a in group.aggregates for w in a.windows)
    stored_total = sum(len(v) for v in entries.values())
    assert stored_total < naive / 5
    spans = realtime_spans(group)
    assert spans == {5 * MINUTE_MS: HOUR_MS, HOUR_MS: 7 * DAY_MS, DAY_MS: None}
    for t in range(CUTOFF, horizon, 7 * MINUTE_MS):
        read = sum(len(range(first, end, hop))
                   for hop, first, end in realtime_ranges(CUTOFF, t, spans))
        assert read <= 13 + 25 + 2


def test_entries_that_add_nothing_are_left_out_of_the_record() -> None:
    # Filtered counts that matched nothing in the tail hold zeros: no entry.
    group = CARD_VIEWS
    events = [txn(f"p{i}", CUTOFF - 20 * HOUR_MS + i * HOUR_MS + 1, channel="pos",
                  amount=20.0) for i in range(10)]
    payload = build_batch_record(
        group, {hop: {s: p for (_, s), p in build_tiles(group, events, hop).items()}
                for hop in group.hops()}, CUTOFF, CUTOFF + DAY_MS)
    entries = orjson.loads(payload or b"{}")["w"]
    assert "online_count_24h" not in entries and "small_online_count_1h" not in entries
    assert len(entries["txn_count_24h"]) == 10  # one suffix per non-empty hourly tile
    assert [p for _, p in entries["txn_count_24h"]] == list(range(10, 0, -1))
    assert build_batch_record(group, {}, CUTOFF, CUTOFF + DAY_MS) is None


def test_building_a_record_refuses_late_tiles_and_misaligned_cutoffs() -> None:
    partials = lift_event(CARD_VIEWS, txn("a", CUTOFF))
    with pytest.raises(ValueError, match="not before the cutoff"):
        build_batch_record(CARD_VIEWS, {HOUR_MS: {CUTOFF: partials}}, CUTOFF, CUTOFF + DAY_MS)
    with pytest.raises(ValueError, match="not a multiple of 86400000"):
        build_batch_record(CARD_VIEWS, {}, CUTOFF + HOUR_MS, CUTOFF + DAY_MS)
    with pytest.raises(ValueError, match="must be after the cutoff"):
        build_batch_record(CARD_VIEWS, {}, CUTOFF, CUTOFF)


def test_the_horizon_leaves_slack_for_a_late_publish() -> None:
    assert horizon_ms(CUTOFF, DAY_MS) == CUTOFF + 2 * DAY_MS
    assert horizon_ms(CUTOFF, DAY_MS, slack=0.5) == CUTOFF + DAY_MS + 12 * HOUR_MS
    with pytest.raises(ValueError):
        horizon_ms(CUTOFF, 0)


@settings(max_examples=60, deadline=None)
@given(events=st.lists(event_strategy, min_size=1, max_size=12).map(_resends))
def test_tiles_survive_the_codec_bit_for_bit(events: list[dict[str, Any]]) -> None:
    codec = TileCodec(ALL_OPS)
    for hop in ALL_OPS.hops():
        for partials in build_tiles(ALL_OPS, events, hop).values():
            assert codec.decode(hop, codec.encode(hop, partials)) == partials


def test_the_codec_refuses_an_aggregate_the_hop_does_not_store() -> None:
    codec = TileCodec(CARD_VIEWS)
    with pytest.raises(ValueError, match="stores no"):
        codec.encode(5 * MINUTE_MS, {"hour_histogram": aggregation_for(
            "histogram", tuple(float(h) for h in range(1, 24))).zero()})
    with pytest.raises(ValueError, match="has no window with hop"):
        codec.encode(7, {})
    # A missing aggregate is stored as zero (and reads back as zero).
    decoded = codec.decode(DAY_MS, codec.encode(DAY_MS, {}))
    assert decoded["last_event_time"] is None and sum(decoded["hour_histogram"]) == 0


# One reader per group for every example: its record and tile caches, and
# each record's batch parts kept per window starts, are shared across
# entities, events and query times, as in a serving process.
SHARED_READERS = {g.name: FeatureReader(g) for g in (ALL_OPS, CARD_VIEWS, REHOPPED)}


@pytest.mark.parametrize("group", [ALL_OPS, CARD_VIEWS, REHOPPED], ids=lambda g: g.name)
@settings(max_examples=40, deadline=None)
@given(events=st.lists(event_strategy, max_size=30).map(_resends),
       interval=interval_strategy, data=st.data(), entity=st.sampled_from(["c1", "c2"]))
def test_one_reader_answers_many_query_times_of_one_record_exactly(
    group: GroupBy, events: list[dict[str, Any]], interval: int, data: st.DataObject,
    entity: str,
) -> None:
    horizon = CUTOFF + interval
    # Query times in any order, many of them just either side of a hop edge,
    # so the record's batch parts are taken again for starts seen before.
    times = data.draw(st.lists(st.one_of(
        st.integers(CUTOFF, horizon - 1),
        st.integers(0, (interval - 1) // (5 * MINUTE_MS)).flatmap(
            lambda k: st.sampled_from([CUTOFF + k * 5 * MINUTE_MS,
                                       max(CUTOFF, CUTOFF + k * 5 * MINUTE_MS - 1)]))),
        min_size=2, max_size=6), label="times")
    reader = SHARED_READERS[group.name]
    for t in times:
        seen = [e for e in events if e["event_time"] < t]
        expected = features_from_events(group, seen, entity, t)
        snapshot = snapshot_of(group, events, entity, CUTOFF, horizon, t)
        assert reader.features(snapshot) == expected, t
