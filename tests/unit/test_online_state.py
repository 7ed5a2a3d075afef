"""The online point-in-time state (lamina.schemas.online) against the offline
references: ``features_from_events`` over the events applied so far and
``FeatureSweep`` (the training-set builder's sweep).

Streams are random events of two cards with arbitrary values at the
aggregates' scales (and finer), ties at the same millisecond, events on
and around tile and window edges, and arrival orders shuffled within the
allowed lateness; some events are later than that and must be refused.
Values are compared by ``repr`` (``1`` is not ``1.0``), except that a
``min``/``max`` may keep ``0.0`` or ``-0.0`` (equal values: the reference
itself keeps whichever its order met first).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.schemas.card_views import CARD_VIEWS
from lamina.schemas.online import (
    ChangedTile,
    OnlineSeed,
    OnlineState,
    QueryOutOfRange,
    batch_entries,
)
from lamina.schemas.pit import FeatureSweep
from lamina.schemas.view_definitions import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    GroupBy,
    build_tiles,
    features_from_events,
)
from lamina.stores.base import EntitySnapshot, PublishedView
from lamina.stores.codec import TileCodec
from lamina.stores.lookup import build_batch_record, definition_fingerprint
from lamina.stores.online import changed_tile_rows, online_seed
from tests.unit.test_pit import SCALES, amounts
from tests.unit.test_views import ALL_OPS, T0, txn

GROUPS = [ALL_OPS, CARD_VIEWS, SCALES]
CARDS = ("c1", "c2")
LATENESS = st.sampled_from([0, 1, 5 * MINUTE_MS, HOUR_MS, 3 * HOUR_MS + 1, 2 * DAY_MS])


def _same(got: dict[str, Any], expected: dict[str, Any]) -> bool:
    if list(got) != list(expected):
        return False
    return all(repr(got[k]) == repr(expected[k])
               or (isinstance(got[k], float) and got[k] == expected[k] == 0.0)
               for k in expected)


def _diff(got: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    return {k: (got.get(k), expected[k]) for k in expected if not _same({k: got.get(k)},
                                                                         {k: expected[k]})}


# Times on and around 5-minute, hour and day edges (ties: many events share a
# millisecond), and spread over a few days.
edge_times = st.builds(lambda k, d: T0 + k * 5 * MINUTE_MS + d,
                       st.integers(-24, 12 * 30), st.sampled_from([-1, 0, 0, 0, 1]))
spread_times = st.integers(T0 - 2 * DAY_MS, T0 + 9 * DAY_MS)
times = st.one_of(edge_times, spread_times)


@st.composite
def streams(draw: st.DrawFn, time_strategy: st.SearchStrategy[int] = times,
            max_size: int = 40) -> tuple[list[dict[str, Any]], int]:
    """Events with distinct ids in an arrival order shuffled within the
    lateness ``L`` (each arrives at event time + a delay in ``[0, L]``),
    plus a few that arrive much later than that."""
    lateness = draw(LATENESS)
    events, arrival = [], []
    for i in range(draw(st.integers(0, max_size))):
        event = txn(f"tx-{i:03d}", draw(time_strategy), card=draw(st.sampled_from(CARDS)),
                    amount=draw(amounts), channel=draw(st.sampled_from(["pos", "online", "atm"])),
                    merchant=draw(st.sampled_from(["m1", "m2", "m3", "m4", "m5", ""])),
                    country=draw(st.sampled_from(["GB", "US", "FR"])))
        delay = draw(st.one_of(st.integers(0, lateness), st.sampled_from([0, lateness]),
                               st.just(lateness + 3 * DAY_MS)))  # too late, now and then
        events.append(event)
        arrival.append(event["event_time"] + delay)
    order = sorted(range(len(events)), key=lambda i: (arrival[i], i))
    return [events[i] for i in order], lateness


def _stream_and_check(group: GroupBy, arrivals: list[dict[str, Any]], lateness: int,
                      states: dict[str, OnlineState], base: dict[str, list[dict[str, Any]]],
                      drain_every: int = 0, drained: dict[tuple[str, int, int], Any] | None = None,
                      ) -> dict[str, list[dict[str, Any]]]:
    """Feed ``arrivals`` to the per-card states; after each, the features at
    the event's time (and at the earliest time the state answers) equal the
    reference over the events applied so far (plus ``base``, the events the
    seed holds). Returns the applied events per card."""
    applied: dict[str, list[dict[str, Any]]] = {card: [] for card in states}
    newest: dict[str, int | None] = {card: states[card].newest_event_ms for card in states}
    for n, event in enumerate(arrivals):
        card, t = event["card_id"], event["event_time"]
        state = states[card]
        lowest = [state.cutoff_ms] if state.cutoff_ms is not None else []
        if newest[card] is not None:
            lowest.append(newest[card] - lateness)
        expect_applied = not lowest or t >= max(lowest)
        assert state.add(event) is expect_applied, (event, newest[card], lateness)
        if expect_applied:
            applied[card].append(event)
            newest[card] = t if newest[card] is None else max(newest[card], t)
        history = base[card] + applied[card]
        earliest = state.earliest_query_ms()
        # "Now" first: a cached window must see the late event just added.
        queries = [] if state.newest_event_ms is None else [state.newest_event_ms]
        queries += [t, t + 1] if expect_applied else []
        queries += [] if earliest is None else [earliest]
        queries += queries[:1]
        if expect_applied and state.seeded_through_ms is None:
            assert earliest is not None and t >= earliest  # an event's own time: answered
        for q in queries:
            if state.horizon_ms is not None and q >= state.horizon_ms:
                continue
            if earliest is not None and q < earliest:  # before the seeded tiles' newest
                with pytest.raises(QueryOutOfRange, match="newest seeded event"):
                    state.features_before(q)
                continue
            got = state.features_before(q)
            expected = features_from_events(group, history, card, q)
            assert _same(got, expected), (q, _diff(got, expected))
        if drained is not None and drain_every and n % drain_every == 0:
            for tile in state.drain_changed_tiles():
                drained[(card, tile.hop_ms, tile.tile_start_ms)] = tile.partials
    return applied


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
@settings(max_examples=80, deadline=None)
@given(stream=streams(), drain_every=st.integers(1, 7))
def test_online_features_equal_the_reference_over_the_events_applied_so_far(
        group: GroupBy, stream: tuple[list[dict[str, Any]], int], drain_every: int) -> None:
    arrivals, lateness = stream
    states = {card: OnlineState(group, card, allowed_lateness_ms=lateness) for card in CARDS}
    drained: dict[tuple[str, int, int], Any] = {}
    applied = _stream_and_check(group, arrivals, lateness, states, {c: [] for c in CARDS},
                                drain_every, drained)
    # Every tile a card's events made was drained (evicted ones included), and
    # the last drained form is the reference tile: coalesced, canonical.
    for card, state in states.items():
        for tile in state.drain_changed_tiles():
            drained[(card, tile.hop_ms, tile.tile_start_ms)] = tile.partials
    expected = {(card, hop, start): partials
                for hop in group.hops()
                for (card, start), partials in build_tiles(
                    group, [e for c in CARDS for e in applied[c]], hop).items()}
    assert drained.keys() == expected.keys()
    for key, partials in expected.items():
        assert repr(drained[key]) == repr(partials) or drained[key] == partials, key


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
@settings(max_examples=80, deadline=None)
@given(stream=streams())
def test_online_features_equal_the_offline_builders_unless_a_late_arrival_explains_it(
        group: GroupBy, stream: tuple[list[dict[str, Any]], int]) -> None:
    # Invariant 6's one exception: an event that arrives after a later-in-time
    # event was scored is there offline but was not online. Every other event
    # gets online exactly the features the training set's sweep gives it.
    arrivals, lateness = stream
    states = {card: OnlineState(group, card, allowed_lateness_ms=lateness) for card in CARDS}
    online: dict[str, dict[str, Any]] = {}
    applied: list[dict[str, Any]] = []
    for event in arrivals:
        if states[event["card_id"]].add(event):
            applied.append(event)
            online[event["event_id"]] = states[event["card_id"]].features_before(
                event["event_time"])
    for card in CARDS:
        sweep = FeatureSweep(group, applied, card)
        mine = [e for e in applied if e["card_id"] == card]
        for event in sorted(mine, key=lambda e: (e["event_time"], e["event_id"])):
            offline = sweep.features_before(event["event_time"])
            after = mine[mine.index(event) + 1:]
            explained = any(e["event_time"] < event["event_time"] for e in after)
            if not explained:
                assert _same(online[event["event_id"]], offline), (
                    event, _diff(online[event["event_id"]], offline))


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
@settings(max_examples=80, deadline=None)
@given(events=st.lists(st.builds(txn, st.integers(0, 10**6).map(str), times,
                                 card=st.just("c1"), amount=amounts,
                                 merchant=st.sampled_from(["m1", "m2", "m3", ""]),
                                 channel=st.sampled_from(["pos", "online"])),
                       max_size=40, unique_by=lambda e: e["event_id"]))
def test_in_order_arrival_gives_the_offline_builders_features_for_every_event(
        group: GroupBy, events: list[dict[str, Any]]) -> None:
    # The training set's sweep over the same events, at each event's time:
    # what the speed layer scores is what the model was trained on (no skew).
    ordered = sorted(events, key=lambda e: (e["event_time"], e["event_id"]))
    state = OnlineState(group, "c1", allowed_lateness_ms=0)
    sweep = FeatureSweep(group, events, "c1")
    for event in ordered:
        assert state.add(event)  # ties at one millisecond are not late
        got = state.features_before(event["event_time"])
        expected = sweep.features_before(event["event_time"])
        assert _same(got, expected), (event, _diff(got, expected))


CUTOFF = T0 + DAY_MS  # a day boundary: aligned for every hop
seeded_times = st.one_of(
    st.integers(CUTOFF - 35 * DAY_MS, CUTOFF + 3 * DAY_MS),
    st.integers(-4, 4).map(lambda d: CUTOFF + d * 5 * MINUTE_MS + d % 2),
    st.integers(-3, 3).map(lambda d: CUTOFF - 7 * DAY_MS + d * HOUR_MS),
    st.integers(-3, 3).map(lambda d: CUTOFF - 30 * DAY_MS + d * DAY_MS),
)


def _entity_tiles(group: GroupBy, events: list[dict[str, Any]], card: str
                  ) -> dict[int, dict[int, dict[str, Any]]]:
    return {hop: {start: p for (c, start), p in build_tiles(group, events, hop).items()
                  if c == card} for hop in group.hops()}


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
@settings(max_examples=80, deadline=None)
@given(stream=streams(seeded_times, max_size=50))
def test_a_state_seeded_from_batch_tiles_before_the_cutoff_equals_the_reference_after_it(
        group: GroupBy, stream: tuple[list[dict[str, Any]], int]) -> None:
    arrivals, lateness = stream
    before = [e for e in arrivals if e["event_time"] < CUTOFF]
    states = {card: OnlineState(group, card, allowed_lateness_ms=lateness, seed=OnlineSeed(
        CUTOFF, batch_entries(group, _entity_tiles(group, before, card), CUTOFF)))
        for card in CARDS}
    base = {card: [e for e in before if e["card_id"] == card] for card in CARDS}
    # Events before the cutoff are the batch's: refused (checked inside).
    _stream_and_check(group, arrivals, lateness, states, base)


def _view(group: GroupBy, cutoff: int, horizon: int) -> PublishedView:
    return PublishedView(group=group.name, cutoff_ms=cutoff, horizon_ms=horizon,
                         batch_version=1, definition=definition_fingerprint(group),
                         generation=1, published_at_ms=cutoff)


@pytest.mark.parametrize("group", [ALL_OPS, CARD_VIEWS], ids=lambda g: g.name)
@settings(max_examples=60, deadline=None)
@given(stream=streams(seeded_times, max_size=50), split=st.integers(0, 50),
       interval=st.sampled_from([HOUR_MS, DAY_MS, 8 * DAY_MS, 40 * DAY_MS]))
def test_a_restart_from_the_store_batch_record_and_drained_tiles_goes_on_exactly(
        group: GroupBy, stream: tuple[list[dict[str, Any]], int], split: int,
        interval: int) -> None:
    # Start from a published record (its [cutoff, horizon)); store the tiles a
    # first run drained; a second state seeded from the record and those tiles
    # goes on where the first left off, with the same features.
    arrivals, lateness = stream
    horizon = CUTOFF + interval
    arrivals = [e for e in arrivals if e["event_time"] < horizon]
    before = [e for e in arrivals if e["event_time"] < CUTOFF]
    codec = TileCodec(group)
    view = _view(group, CUTOFF, horizon)
    for card in CARDS:
        record = build_batch_record(group, _entity_tiles(group, before, card), CUTOFF, horizon)
        fresh = EntitySnapshot(view, card, CUTOFF, record, {})
        first = OnlineState(group, card, allowed_lateness_ms=lateness,
                            seed=online_seed(group, fresh, codec=codec))
        mine = [e for e in arrivals if e["card_id"] == card]
        base = [e for e in before if e["card_id"] == card]
        applied = _stream_and_check(group, mine[:split], lateness, {card: first}, {card: base})
        rows = changed_tile_rows(group, card, first.drain_changed_tiles(), codec=codec)
        newest = first.newest_event_ms
        stored = EntitySnapshot(view, card, CUTOFF if newest is None else newest + 1, record,
                                {(r.hop_ms, r.tile_start_ms): r.partials for r in rows})
        for through in (first.newest_event_ms, None):
            second = OnlineState(group, card, allowed_lateness_ms=lateness, seed=online_seed(
                group, stored, seeded_through_ms=through, codec=codec))
            _stream_and_check(group, mine[split:], lateness, {card: second},
                              {card: base + applied[card]})


def test_an_event_later_than_the_allowed_lateness_is_not_applied() -> None:
    state = OnlineState(CARD_VIEWS, "c1", allowed_lateness_ms=HOUR_MS)
    assert state.add(txn("a", T0 + 2 * HOUR_MS, amount=10.0))
    assert state.add(txn("b", T0 + HOUR_MS, amount=20.0))  # exactly the lateness: applied
    assert not state.add(txn("c", T0 + HOUR_MS - 1, amount=40.0))  # one ms more: refused
    assert state.earliest_query_ms() == T0 + HOUR_MS
    features = state.features_before(T0 + 3 * HOUR_MS)
    assert features["txn_count_24h"] == 2 and features["amount_sum_24h"] == 30.0
    with pytest.raises(QueryOutOfRange, match="allowed lateness"):
        state.features_before(T0 + HOUR_MS - 1)
    with pytest.raises(ValueError, match="card_id='c1'"):
        state.add(txn("d", T0 + 2 * HOUR_MS, card="c2"))


def test_a_seeded_state_refuses_events_before_the_cutoff_and_times_outside_its_range() -> None:
    horizon = CUTOFF + DAY_MS
    record = build_batch_record(CARD_VIEWS, _entity_tiles(
        CARD_VIEWS, [txn("a", CUTOFF - HOUR_MS)], "c1"), CUTOFF, horizon)
    snapshot = EntitySnapshot(_view(CARD_VIEWS, CUTOFF, horizon), "c1", CUTOFF, record, {})
    state = OnlineState(CARD_VIEWS, "c1", allowed_lateness_ms=DAY_MS,
                        seed=online_seed(CARD_VIEWS, snapshot))
    assert not state.add(txn("b", CUTOFF - 1))  # the batch's (or the next batch's) event
    assert state.add(txn("c", CUTOFF + 5 * MINUTE_MS))
    assert state.features_before(CUTOFF + 5 * MINUTE_MS + 1)["txn_count_24h"] == 2
    with pytest.raises(QueryOutOfRange, match="before the batch cutoff"):
        state.features_before(CUTOFF - 1)
    with pytest.raises(QueryOutOfRange, match="horizon"):
        state.features_before(horizon)
    # Realtime tiles whose newest event is unknown: nothing inside the newest
    # finest tile is answered, from its end on everything is.
    tiles = {(h, s): p for h in CARD_VIEWS.hops() for (c, s), p in build_tiles(
        CARD_VIEWS, [txn("c", CUTOFF + 5 * MINUTE_MS)], h).items()}
    stored = EntitySnapshot(snapshot.view, "c1", CUTOFF + 10 * MINUTE_MS, record,
                            {k: TileCodec(CARD_VIEWS).encode(k[0], p) for k, p in tiles.items()})
    restarted = OnlineState(CARD_VIEWS, "c1", allowed_lateness_ms=DAY_MS,
                            seed=online_seed(CARD_VIEWS, stored))
    assert restarted.seeded_through_ms == CUTOFF + 10 * MINUTE_MS - 1
    with pytest.raises(QueryOutOfRange, match="newest seeded event"):
        restarted.features_before(CUTOFF + 6 * MINUTE_MS)
    assert restarted.features_before(CUTOFF + 10 * MINUTE_MS)["txn_count_24h"] == 2


@pytest.mark.parametrize("group", [ALL_OPS, CARD_VIEWS], ids=lambda g: g.name)
def test_tiles_and_raw_events_held_stay_bounded_over_a_long_stream(group: GroupBy) -> None:
    # 60 days, an event every 4-11 minutes arriving up to the lateness late:
    # the state holds at most the tiles its windows can still read (per hop
    # the longest window, the lateness, the finer tiles of one coarser tile
    # and the head) and the raw events of the lateness plus one finest tile.
    lateness = HOUR_MS
    rng = random.Random(7)
    events, t = [], T0
    while t < T0 + 60 * DAY_MS:
        t += rng.randint(4, 11) * MINUTE_MS + rng.randint(0, 3)
        events.append(txn(f"tx-{len(events):05d}", t, amount=rng.randint(1, 10**6) / 100,
                          merchant=f"m{rng.randint(0, 30)}"))
    arrivals = sorted(events, key=lambda e: e["event_time"] + rng.randint(0, lateness))
    hops = group.hops()
    bound = 0
    for i, hop in enumerate(hops):
        longest = max((w.length_ms or 0 for a in group.aggregates for w in a.windows
                       if w.hop_ms == hop), default=0)
        coarser = hops[i + 1] if i + 1 < len(hops) else hop
        bound += longest // hop + -(-lateness // hop) + coarser // hop + 2
    state = OnlineState(group, "c1", allowed_lateness_ms=lateness)
    most = {"tiles": 0, "raw_events": 0}
    for n, event in enumerate(arrivals):
        assert state.add(event)
        if n % 50 == 0:
            assert isinstance(state.drain_changed_tiles(), list)
        held = state.held()
        most = {k: max(most[k], held[k]) for k in most}
        assert held["undrained_evicted"] <= n % 50 + 3  # drained every 50 events
    assert most["tiles"] <= bound, (most, bound)
    assert most["raw_events"] <= (lateness + hops[0]) // (4 * MINUTE_MS) + 1, most
    # Eviction lost nothing a window reads, the lifetime window included.
    end = arrivals[-1]["event_time"] + 1
    assert _same(state.features_before(end),
                 FeatureSweep(group, events, "c1").features_before(end))


def test_dense_hll_sketches_stay_exact_with_out_of_order_arrivals() -> None:
    # 600 merchants in two days (dense HLL from 385 distinct values), arriving
    # up to 30 minutes late: the mutable sketches inside the state, presented
    # and drained, equal the reference's canonical partials.
    rng = random.Random(3)
    events = [txn(f"tx-{i:04d}", T0 + i * 4 * MINUTE_MS + rng.randint(0, 1),
                  merchant=f"m{i if i % 5 else i // 5}") for i in range(700)]
    arrivals = sorted(events, key=lambda e: e["event_time"] + rng.randint(0, 30 * MINUTE_MS))
    state = OnlineState(CARD_VIEWS, "c1", allowed_lateness_ms=30 * MINUTE_MS)
    applied: list[dict[str, Any]] = []
    drained: dict[tuple[int, int], Any] = {}
    for n, event in enumerate(arrivals):
        assert state.add(event)
        applied.append(event)
        if n % 97 == 0:
            t = event["event_time"]
            got = state.features_before(t)
            expected = features_from_events(CARD_VIEWS, applied, "c1", t)
            assert _same(got, expected), _diff(got, expected)
            drained.update({(c.hop_ms, c.tile_start_ms): c.partials
                            for c in state.drain_changed_tiles()})
    drained.update({(c.hop_ms, c.tile_start_ms): c.partials
                    for c in state.drain_changed_tiles()})
    day = build_tiles(CARD_VIEWS, applied, DAY_MS)
    assert "merchant_distinct" not in drained[(DAY_MS, T0)]  # stored at its hop only
    hour = build_tiles(CARD_VIEWS, applied, HOUR_MS)
    assert {k: p for k, p in drained.items() if k[0] == HOUR_MS} == {
        (HOUR_MS, s): p for (_, s), p in hour.items()}
    assert len(day) == 2


def test_changed_tiles_are_coalesced_per_drain() -> None:
    state = OnlineState(CARD_VIEWS, "c1", allowed_lateness_ms=HOUR_MS)
    for i in range(5):
        state.add(txn(f"tx-{i}", T0 + i * MINUTE_MS))
    first = state.drain_changed_tiles()
    assert [(c.hop_ms, c.tile_start_ms) for c in first] == [
        (5 * MINUTE_MS, T0), (HOUR_MS, T0), (DAY_MS, T0)]
    assert all(isinstance(c, ChangedTile) for c in first)
    assert first[0].partials["txn_count"] == 5
    assert set(first[2].partials) == {"txn_count", "amount_mean", "last_event_time",
                                      "hour_histogram"}  # what the daily tile stores
    assert state.drain_changed_tiles() == []
    state.add(txn("tx-9", T0 + 7 * MINUTE_MS))
    assert [(c.hop_ms, c.tile_start_ms) for c in state.drain_changed_tiles()] == [
        (5 * MINUTE_MS, T0 + 5 * MINUTE_MS), (HOUR_MS, T0), (DAY_MS, T0)]


def test_a_state_round_trips_through_a_real_sqlite_store(tmp_path: Any) -> None:
    # Publish a batch view, write what one state drained with write_tiles,
    # read the entity back with read_entity and seed a second state from it:
    # both answer the same, and the lookup of the stored tiles agrees "now".
    from lamina.stores import BatchView, open_store
    from lamina.stores.lookup import FeatureLookup, batch_records

    rng = random.Random(5)
    before = [txn(f"b{i}", CUTOFF - rng.randint(1, 20 * DAY_MS), amount=rng.randint(1, 10**6) / 100,
                  merchant=f"m{rng.randint(0, 9)}") for i in range(60)]
    after = sorted((txn(f"a{i}", CUTOFF + rng.randint(0, 6 * HOUR_MS),
                        amount=rng.randint(1, 10**6) / 100, merchant=f"m{rng.randint(0, 9)}")
                    for i in range(40)), key=lambda e: e["event_time"])
    horizon = CUTOFF + DAY_MS
    tiles = {hop: build_tiles(CARD_VIEWS, before, hop) for hop in CARD_VIEWS.hops()}
    with open_store("sqlite", path=str(tmp_path / "tiles.db")) as store:
        store.publish_batch(BatchView(group=CARD_VIEWS.name, cutoff_ms=CUTOFF, horizon_ms=horizon,
                                      batch_version=1,
                                      definition=definition_fingerprint(CARD_VIEWS)),
                            batch_records(CARD_VIEWS, tiles, CUTOFF, horizon))
        lookup = FeatureLookup(store, CARD_VIEWS)
        first = OnlineState(CARD_VIEWS, "c1", allowed_lateness_ms=HOUR_MS,
                            seed=online_seed(CARD_VIEWS, lookup.snapshot("c1", CUTOFF)))
        for event in after[:25]:
            assert first.add(event)
        store.write_tiles(changed_tile_rows(CARD_VIEWS, "c1", first.drain_changed_tiles()),
                          consumer="speed-test", offsets={("events.raw", 0): 25})
        now = first.newest_event_ms + 1
        assert _same(lookup.features("c1", now), first.features_before(now))
        through = first.newest_event_ms
        # Read later than that, the store leaves out tiles the earlier times
        # need: the state refuses them instead of answering wrongly.
        late_read = OnlineState(CARD_VIEWS, "c1", allowed_lateness_ms=HOUR_MS, seed=online_seed(
            CARD_VIEWS, lookup.snapshot("c1", horizon - 1), seeded_through_ms=through))
        with pytest.raises(QueryOutOfRange, match="the seeded tiles were read for"):
            late_read.features_before(through + 1)
        with pytest.raises(ValueError, match=f"read it as of {through + 1}"):
            online_seed(CARD_VIEWS, lookup.snapshot("c1", through), seeded_through_ms=through)
        second = OnlineState(CARD_VIEWS, "c1", allowed_lateness_ms=HOUR_MS, seed=online_seed(
            CARD_VIEWS, lookup.snapshot("c1", through + 1), seeded_through_ms=through))
        for event in after[25:]:
            assert first.add(event) and second.add(event)
            t = event["event_time"]
            expected = features_from_events(CARD_VIEWS, before + after, "c1", t)
            assert _same(second.features_before(t), expected)
            assert _same(first.features_before(t), expected)


def _check_now(group: GroupBy, state: OnlineState, history: list[dict[str, Any]],
               t: int) -> None:
    got = state.features_before(t)
    expected = features_from_events(group, history, "c1", t)
    assert _same(got, expected), (t, _diff(got, expected))


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
def test_a_late_event_enters_running_partials_built_incrementally(group: GroupBy) -> None:
    # Queries at increasing times build each window's partial incrementally;
    # then events arrive later than newer ones, inside windows whose partial
    # already covers their time: a larger amount before smaller later ones
    # (it must displace them as the max, and lose to them as the min), a
    # smaller one (dominated), a repeated and a new merchant, another hour.
    # Every window must take them in, then subtract them when their tiles
    # leave.
    state = OnlineState(group, "c1", allowed_lateness_ms=2 * DAY_MS)
    history: list[dict[str, Any]] = []
    t = T0
    for i in range(30):
        t += (7 + i % 5) * MINUTE_MS + i % 3
        event = txn(f"in-{i:02d}", t, amount=float(10 + i % 7), merchant=f"m{i % 4}",
                    channel="online" if i % 3 else "pos")
        _check_now(group, state, history, t)
        assert state.add(event)
        history.append(event)
    newest = t
    late = [txn("late-big", newest - 50 * MINUTE_MS, amount=900.0, merchant="m-new"),
            txn("late-small", newest - 20 * MINUTE_MS, amount=0.5, merchant="m1",
                channel="online"),
            txn("late-hour", newest - 5 * HOUR_MS - 1, amount=3.0, merchant="m2",
                country="US")]
    for event in late:
        assert state.add(event)
        history.append(event)
        _check_now(group, state, history, newest + 1)
    # Onwards: the late events' tiles leave the short windows, then the day.
    for step in (10 * MINUTE_MS, 40 * MINUTE_MS, 2 * HOUR_MS, 6 * HOUR_MS, DAY_MS + HOUR_MS):
        t = newest + step
        _check_now(group, state, history, t)
        event = txn(f"next-{step}", t, amount=1.0, merchant="m3")
        assert state.add(event)
        history.append(event)
        _check_now(group, state, history, t + 1)


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.name)
def test_running_partials_are_rebuilt_when_eviction_takes_tiles_they_hold(
        group: GroupBy) -> None:
    # A query, then many events without queries: the state evicts tiles the
    # running partials still hold (they can no longer be subtracted), so the
    # next query rebuilds them; queries going back in time rebuild too.
    state = OnlineState(group, "c1", allowed_lateness_ms=HOUR_MS)
    history: list[dict[str, Any]] = []
    for i in range(12):
        event = txn(f"a{i}", T0 + i * 20 * MINUTE_MS, amount=float(i + 1), merchant=f"m{i % 3}")
        assert state.add(event)
        history.append(event)
    _check_now(group, state, history, T0 + 4 * HOUR_MS)
    t = T0 + 4 * HOUR_MS
    for i in range(40):  # 40 days on, one event every 23 h
        t += 23 * HOUR_MS
        event = txn(f"b{i}", t, amount=float(i % 9), merchant=f"m{i % 5}")
        assert state.add(event)
        history.append(event)
    assert state._t_acc is None  # the partials held evicted tiles: rebuilt next
    _check_now(group, state, history, t + 1)
    _check_now(group, state, history, t)  # back in time: rebuilt
    _check_now(group, state, history, t + 31 * DAY_MS)


def test_the_fast_lifters_give_the_aggregations_own_partials() -> None:
    from lamina.schemas.aggregations import aggregation_for
    from lamina.schemas.online import _lifter

    histogram = aggregation_for("histogram", (1.0, 5.0, 50.0))
    fast = _lifter(histogram)
    for value in (None, -3, 0.0, 0.999, 1, 1.0, 4.99, 5.0, 49.0, 50, 50.0, 1e9):
        assert fast(value, 0, "e") == histogram.lift(value, 0, "e"), value
    distinct = aggregation_for("approx_distinct")
    fast = _lifter(distinct)
    for value in ("m1", "m1", 7, "", None, "é"):
        assert fast(value, 0, "e") == distinct.lift(value, 0, "e"), value
    with pytest.raises(TypeError):  # True is not the cached 1
        fast(True, 0, "e")
    with pytest.raises(TypeError):
        fast(1.5, 0, "e")
