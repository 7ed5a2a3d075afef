"""Scoring inside the realtime step, without Kafka or TensorFlow: a
transaction's features are read before it is added (its own event and
others at the same millisecond are not in them), what cannot be scored is
counted, and the scores are sent before the store transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from lamina.schemas.card_views import CARD_FRAUD, CARD_VIEWS
from lamina.schemas.scores import ScoreRecord, encode_score, encode_scores
from lamina.schemas.validation import EventValidator
from lamina.schemas.view_definitions import features_from_events
from lamina.speed.models import Champion
from lamina.speed.realtime import RealtimeTiles, StreamScoring
from lamina.speed.sink import ScoreSinkError
from lamina.stores.base import TileStore
from lamina.stores.sqlite import SqliteTileStore
from tests.unit.test_speed_realtime import DAY_MS, HOUR_MS, LATENESS, TOPIC, publish
from tests.unit.test_speed_scoring import CountingScorer, champion
from tests.unit.test_views import T0, txn


class ListSink:
    """Keeps what it is sent; ``fail`` makes the next send raise."""

    def __init__(self) -> None:
        self.records: list[ScoreRecord] = []
        self.encoded: list[bytes] = []
        self.handed_encodings = 0  # sends that came with the records' encodings
        self.fail = False

    def send(self, records: Sequence[ScoreRecord],
             encoded: Sequence[bytes] | None = None) -> None:
        if self.fail:
            raise ScoreSinkError("the broker is down")
        self.records.extend(records)
        self.encoded.extend(encode_scores(records) if encoded is None else encoded)
        self.handed_encodings += encoded is not None


class Fixed:
    def __init__(self, current: Champion | None) -> None:
        self.current = current

    def check(self) -> Champion | None:
        return self.current


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TileStore]:
    with SqliteTileStore(tmp_path / "tiles.db") as opened:
        yield opened


def scoring_tiles(store: TileStore, sink: ListSink, current: Champion | None) -> RealtimeTiles:
    return RealtimeTiles(store, CARD_VIEWS, consumer="lamina-speed", validator=EventValidator(),
                         allowed_lateness_ms=LATENESS,
                         scoring=StreamScoring(CARD_FRAUD, Fixed(current), sink))


def feed(tiles: RealtimeTiles, events: list[dict[str, Any]], first: int = 0) -> int:
    records = [(TOPIC, 0, first + i, orjson.dumps(e)) for i, e in enumerate(events)]
    tiles.process(records, {(TOPIC, 0): first + len(events)},
                  [e["event_time"] + 3 for e in events])
    return first + len(events)


def reference_vector(stream_before: list[dict[str, Any]], event: dict[str, Any]) -> dict:
    view = features_from_events(CARD_VIEWS, stream_before, event["card_id"], event["event_time"])
    return CARD_FRAUD.vector(event, view)


def test_a_transactions_features_leave_out_itself_and_events_at_the_same_millisecond(
        store: TileStore) -> None:
    history = [txn(f"h{i}", T0 - DAY_MS + i * HOUR_MS, amount=3.0 + i) for i in range(10)]
    publish(store, history, T0, 1)
    at = T0 + 2 * HOUR_MS
    stream = [txn("a", at - 1000, amount=7.0), txn("b", at, amount=100.0),
              txn("c", at, amount=200.0), txn("d", at + 1, amount=1.0)]
    sink = ListSink()
    tiles = scoring_tiles(store, sink, champion(3, CountingScorer(len(CARD_FRAUD.features))))
    feed(tiles, stream)

    by_id = {r.event_id: r for r in sink.records}
    assert list(by_id) == ["a", "b", "c", "d"]
    # b and c (same millisecond) see a but neither themselves nor each other...
    view_b = features_from_events(CARD_VIEWS, [*history, stream[0]], "c1", at)
    assert features_from_events(CARD_VIEWS, [*history, *stream[:3]], "c1", at) == view_b
    assert by_id["b"].features == CARD_FRAUD.vector(stream[1], view_b)
    assert by_id["c"].features == CARD_FRAUD.vector(stream[2], view_b)
    # ...d, a millisecond later, sees all three.
    assert by_id["d"].features == reference_vector([*history, *stream[:3]], stream[3])
    assert by_id["d"].features != CARD_FRAUD.vector(stream[3], view_b)
    assert {r.model_version for r in sink.records} == {3}
    assert {(r.batch_version, r.batch_cutoff) for r in sink.records} == {(1, T0)}
    assert [r.produce_to_score_ms for r in sink.records] == [
        r.scored_at - r.event_time - 3 for r in sink.records]
    assert (tiles.stats.scored, tiles.stats.model_version) == (4, 3)


def test_without_a_champion_or_a_batch_view_nothing_is_scored_and_each_is_counted(
        store: TileStore) -> None:
    sink = ListSink()
    no_view = scoring_tiles(store, sink, champion(1, CountingScorer(len(CARD_FRAUD.features))))
    end = feed(no_view, [txn("a", T0 + 1000), txn("b", T0 + 2000)])
    assert (no_view.stats.applied, no_view.stats.unscored_no_batch_view) == (2, 2)
    publish(store, [], T0, 1)
    no_champion = scoring_tiles(store, sink, None)
    feed(no_champion, [txn("c", T0 + 3000), txn("a", T0 + 1000)], first=end)
    assert (no_champion.stats.unscored_no_champion, no_champion.stats.duplicates) == (1, 1)
    assert sink.records == [] and no_champion.stats.scored == 0


def test_late_and_duplicate_events_are_not_scored(store: TileStore) -> None:
    publish(store, [], T0, 1)
    sink = ListSink()
    tiles = scoring_tiles(store, sink, champion(2, CountingScorer(len(CARD_FRAUD.features))))
    newest = T0 + 5 * HOUR_MS
    feed(tiles, [txn("a", newest), txn("a", newest), txn("late", newest - LATENESS - 1),
                 txn("early", T0 - 1), txn("ok", newest - LATENESS)])
    assert [r.event_id for r in sink.records] == ["a", "ok"]
    stats = tiles.stats
    assert (stats.scored, stats.duplicates, stats.late, stats.before_cutoff) == (2, 1, 1, 1)


def test_scores_that_cannot_be_sent_leave_the_batch_unstored(store: TileStore) -> None:
    publish(store, [], T0, 1)
    sink = ListSink()
    tiles = scoring_tiles(store, sink, champion(2, CountingScorer(len(CARD_FRAUD.features))))
    sink.fail = True
    with pytest.raises(ScoreSinkError):
        feed(tiles, [txn("a", T0 + 1000)])
    assert store.read_offsets("lamina-speed") == {} and tiles.stats.applied == 0
    sink.fail = False
    feed(tiles, [txn("a", T0 + 1000)])  # read again from the store's offsets
    assert [r.event_id for r in sink.records] == ["a"]
    assert store.read_offsets("lamina-speed") == {(TOPIC, 0): 1}


def test_an_allowed_late_event_older_than_a_restarted_state_is_counted_not_scored_wrongly(
        store: TileStore) -> None:
    publish(store, [], T0, 1)
    sink = ListSink()
    current = champion(2, CountingScorer(len(CARD_FRAUD.features)))
    end = feed(scoring_tiles(store, sink, current), [txn("a", T0 + 2 * HOUR_MS),
                                                     txn("b", T0 + 3 * HOUR_MS)])
    restarted = scoring_tiles(store, sink, current)  # seeded through b, from stored tiles
    feed(restarted, [txn("c", T0 + 3 * HOUR_MS - 60_000), txn("d", T0 + 4 * HOUR_MS)],
         first=end)
    assert (restarted.stats.applied, restarted.stats.unscored_out_of_range) == (2, 1)
    assert [r.event_id for r in sink.records] == ["a", "b", "d"]


def test_a_partition_given_back_where_this_process_left_it_keeps_its_states(
        store: TileStore) -> None:
    # Seen in CI: a rebalance on a loaded machine (a missed heartbeat) gave
    # the one partition back; the re-seeded state could not answer the
    # allowed-late event that came next, and it went unscored.
    publish(store, [], T0, 1)
    sink = ListSink()
    tiles = scoring_tiles(store, sink, champion(2, CountingScorer(len(CARD_FRAUD.features))))
    a, b = txn("a", T0 + 2 * HOUR_MS), txn("b", T0 + 3 * HOUR_MS)
    c, d = txn("c", T0 + 3 * HOUR_MS - 60_000, amount=4.0), txn("d", T0 + 4 * HOUR_MS)
    end = feed(tiles, [a, b])
    assert tiles.reassigned([(TOPIC, 0)], store.read_offsets("lamina-speed")) == 0
    feed(tiles, [c, d], first=end)
    assert (tiles.stats.scored, tiles.stats.unscored_out_of_range, tiles.stats.seeds) == (4, 0, 1)
    by_id = {r.event_id: r for r in sink.records}
    assert by_id["c"].features == reference_vector([a, b], c)
    assert by_id["d"].features == reference_vector([a, b, c], d)


def test_states_of_a_partition_another_member_wrote_or_this_one_lost_are_dropped(
        store: TileStore) -> None:
    publish(store, [], T0, 1)
    sink = ListSink()
    current = champion(2, CountingScorer(len(CARD_FRAUD.features)))
    tiles = scoring_tiles(store, sink, current)
    on_0 = [txn("a", T0 + 2 * HOUR_MS), txn("b", T0 + 3 * HOUR_MS)]
    end = feed(tiles, on_0)
    tiles.process([(TOPIC, 1, 0, orjson.dumps(txn("x", T0 + HOUR_MS, card="c2")))],
                  {(TOPIC, 1): 1})
    assert tiles.entities() == 2
    # Partition 0 only: c2's state (read from partition 1) goes, c1's stays.
    assert tiles.reassigned([(TOPIC, 0)], store.read_offsets("lamina-speed")) == 1
    assert tiles.entities() == 1
    # Another member takes partition 0 and writes a batch of it; when it
    # comes back, c1's state is stale and is seeded again from the store.
    other = scoring_tiles(store, ListSink(), current)
    end = feed(other, [txn("e", T0 + 3 * HOUR_MS + 1)], first=end)
    assert tiles.reassigned([(TOPIC, 0), (TOPIC, 1)], store.read_offsets("lamina-speed")) == 1
    assert tiles.entities() == 0
    seeds = tiles.stats.seeds
    feed(tiles, [txn("c", T0 + 3 * HOUR_MS - 60_000)], first=end)  # seeded through e
    assert (tiles.stats.seeds, tiles.stats.unscored_out_of_range) == (seeds + 1, 1)


def test_an_entity_whose_events_move_to_another_partition_is_seeded_again(
        store: TileStore) -> None:
    # The topic gained partitions: c1's events, read here from partition 0,
    # now hash to partition 1, which another member read and wrote first.
    publish(store, [], T0, 1)
    sink = ListSink()
    current = champion(2, CountingScorer(len(CARD_FRAUD.features)))
    tiles = scoring_tiles(store, sink, current)
    a = txn("a", T0 + 2 * HOUR_MS)
    feed(tiles, [a])
    assert tiles.reassigned([(TOPIC, 0)], store.read_offsets("lamina-speed")) == 0
    other = scoring_tiles(store, ListSink(), current)
    b = txn("b", T0 + 3 * HOUR_MS)
    other.process([(TOPIC, 1, 0, orjson.dumps(b))], {(TOPIC, 1): 1})
    seeds = tiles.stats.seeds
    c = txn("c", T0 + 4 * HOUR_MS)
    tiles.process([(TOPIC, 1, 1, orjson.dumps(c))], {(TOPIC, 1): 2})
    assert tiles.stats.seeds == seeds + 1
    by_id = {r.event_id: r for r in sink.records}
    assert by_id["c"].features == reference_vector([a, b], c)


def test_the_latest_scores_of_each_card_are_stored_with_the_tiles_for_serving(
        store: TileStore) -> None:
    publish(store, [], T0, 1)
    sink = ListSink()
    tiles = scoring_tiles(store, sink, champion(5, CountingScorer(len(CARD_FRAUD.features))))
    stream = [txn(f"t{i}", T0 + i * 60_000, card="c1" if i % 3 else "c2") for i in range(12)]
    end = feed(tiles, stream[:6])
    feed(tiles, stream[6:], first=end)
    for card in ("c1", "c2"):
        sent = sorted((r for r in sink.records if r.entity == card),
                      key=lambda r: r.event_time, reverse=True)
        assert store.latest_scores(card) == sent[:store.scores_per_entity]
    # A batch that is not stored leaves its scores out of the store as well.
    sink.fail = True
    with pytest.raises(ScoreSinkError):
        feed(tiles, [txn("lost", T0 + HOUR_MS, card="c2")], first=12)
    assert "lost" not in {r.event_id for r in store.latest_scores("c2")}


def test_each_score_is_encoded_once_and_the_topic_and_the_store_get_the_same_bytes(
        store: TileStore, tmp_path: Path) -> None:
    history = [txn(f"h{i}", T0 - DAY_MS + i * HOUR_MS, amount=3.0 + i) for i in range(5)]
    publish(store, history, T0, 1)
    stream = [txn(f"s{i}", T0 + HOUR_MS + i * 1000, amount=2.0 + i) for i in range(3)]
    sink = ListSink()
    tiles = scoring_tiles(store, sink, champion(2, CountingScorer(len(CARD_FRAUD.features))))
    feed(tiles, stream)
    assert [r.event_id for r in sink.records] == [e["event_id"] for e in stream]
    # The loop encoded the batch once and handed the sink those bytes ...
    assert sink.handed_encodings == 1
    assert sink.encoded == [encode_score(r) for r in sink.records]
    # ... and the very bytes the store keeps for serving's latest scores.
    stored = {bytes(record) for (record,) in sqlite3.connect(tmp_path / "tiles.db").execute(
        "SELECT record FROM latest_scores")}
    assert stored == set(sink.encoded)
