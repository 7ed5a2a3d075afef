"""The speed layer's realtime tiles without Kafka: the micro-batch rule, the
dedup rule, and ``RealtimeTiles.process`` against a SQLite store on disk
(the stored tiles equal ``build_tiles`` of the events it should apply)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from lamina.errors import ConfigError
from lamina.generator import GeneratorConfig, generate
from lamina.schemas.card_views import CARD_VIEWS
from lamina.schemas.validation import EventValidator
from lamina.schemas.view_definitions import build_tiles
from lamina.speed.microbatch import MicroBatch
from lamina.speed.realtime import RealtimeTiles
from lamina.speed.seen import SEEN_SLOT, SeenIds, seen_group
from lamina.stores.base import BatchView, OffsetsWentBackwards, TileStore
from lamina.stores.lookup import batch_records, definition_fingerprint
from lamina.stores.sqlite import SqliteTileStore
from tests.speed_helpers import expected_tiles, stored_tiles
from tests.unit.test_views import T0, txn

DAY_MS, HOUR_MS, MINUTE_MS = 86_400_000, 3_600_000, 60_000
LATENESS = 30 * MINUTE_MS
TOPIC = "events.raw"


def record(offset: int, value: bytes) -> Any:
    return SimpleNamespace(offset=offset, value=value)


# --- the micro-batch -------------------------------------------------------------------


def test_a_micro_batch_is_due_at_its_size_or_its_age_and_resumes_behind_its_last_record():
    batch = MicroBatch(max_events=3, max_wait_s=1.0)
    assert not batch.due(100.0)  # empty: never due
    batch.add(TOPIC, 0, [record(7, b"a"), record(8, None)], now=10.0)
    assert not batch.due(10.5)
    assert batch.due(11.0)  # age
    batch.add(TOPIC, 1, [record(0, b"c")], now=10.2)
    assert batch.due(10.3)  # size
    assert batch.positions() == {(TOPIC, 0): 9, (TOPIC, 1): 1}
    assert batch.drop_partitions([(TOPIC, 0)]) == 2  # counted: they are read again
    assert batch.records == [(TOPIC, 1, 0, b"c")] and batch.positions() == {(TOPIC, 1): 1}
    records, positions = batch.take()
    assert (len(records), positions, len(batch), batch.positions()) == (1, {(TOPIC, 1): 1}, 0, {})


def test_a_poll_never_waits_past_the_open_batchs_wait():
    batch = MicroBatch(max_events=100, max_wait_s=0.05)
    assert batch.poll_timeout_ms(10.0, 100) == 100  # nothing waiting: the longest poll
    batch.add(TOPIC, 0, [record(1, b"a")], now=10.0)
    assert batch.poll_timeout_ms(10.0, 100) == 50
    assert batch.poll_timeout_ms(10.0301, 100) == 20  # 19.9 ms left, rounded up
    assert batch.poll_timeout_ms(10.0, 20) == 20  # never longer than the longest poll
    assert batch.poll_timeout_ms(10.2, 100) == 0  # overdue: do not wait at all
    batch.take()
    assert batch.poll_timeout_ms(10.2, 100) == 100


class _ScriptedLoop:
    """The consumer loop's surface ``SpeedLayer._run`` uses: polls answer
    from a script, then wait their whole timeout for nothing (as a poll of
    a quiet topic does); each timeout recorded; stops after ``polls``."""

    def __init__(self, script: list[dict[Any, list[Any]]], polls: int) -> None:
        self.script, self.polls, self.timeouts = script, polls, []
        self.rejoins = 0

    @property
    def stopped(self) -> bool:
        return len(self.timeouts) >= self.polls

    def subscribe(self) -> None:
        pass

    def poll(self, *, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        self.timeouts.append(timeout_ms)
        if self.script:
            return self.script.pop(0)
        time.sleep(timeout_ms / 1000)
        return {}

    def idle_and_caught_up(self, *_: Any) -> bool:
        return False

    def close(self) -> None:
        pass


def test_the_speed_layer_polls_no_longer_than_its_open_batch_may_wait():
    from lamina.speed.realtime import SpeedLayer

    processed: list[Any] = []
    tiles = SimpleNamespace(stats=SimpleNamespace(poll_s=0.0, rejoins=0, consumed=0),
                            process=lambda records, positions, produced:
                            processed.append((records, positions)))
    consumer = SimpleNamespace(commit_async=lambda **_: None)
    layer = SpeedLayer(consumer=consumer, topic=TOPIC, tiles=tiles,  # type: ignore[arg-type]
                       batch_max_wait_s=0.05, poll_max_ms=80)
    from kafka import TopicPartition

    tp = TopicPartition(TOPIC, 0)
    loop = _ScriptedLoop([{tp: [record(4, b"e")]}], polls=5)
    layer.loop = loop  # type: ignore[assignment]
    layer._run(idle_exit_s=None, max_events=None, on_commit=None)
    assert loop.timeouts[0] == 80  # no batch open yet
    assert 0 <= loop.timeouts[1] <= 50  # the batch's wait, not the longest poll
    # Written once due, by the loop (not by the final write at the stop).
    assert processed == [([(TOPIC, 0, 4, b"e")], {(TOPIC, 0): 5})]
    assert loop.timeouts[2:] == [80, 80, 80]  # nothing open again


# --- the dedup rule ----------------------------------------------------------------------


def test_an_id_is_kept_while_its_event_can_still_be_applied_and_round_trips_the_store():
    seen = SeenIds(LATENESS)
    seen.add("a", T0)
    seen.add("b", T0 + LATENESS)  # "a" is exactly at the lateness bound: still applicable
    assert "a" in seen and "b" in seen
    seen.add("c", T0 + LATENESS + 1)  # now "a" is too late to be applied at all
    assert "a" not in seen and len(seen) == 2
    seen.add("d", T0 + 5)  # an older (allowed) event moves nothing
    assert seen.newest_ms == T0 + LATENESS + 1 and "d" in seen
    again = SeenIds.decode(seen.encode(), LATENESS)
    assert (sorted(again._ids.items()), again.newest_ms) == (sorted(seen._ids.items()),
                                                             seen.newest_ms)
    assert seen.row(CARD_VIEWS, "c1").group == seen_group(CARD_VIEWS)
    assert SeenIds.decode(None, LATENESS).newest_ms is None


def test_a_lateness_longer_than_the_shortest_window_is_refused_naming_the_setting(tmp_path):
    with SqliteTileStore(tmp_path / "t.db") as store, \
            pytest.raises(ConfigError, match="allowed_lateness_ms"):
        RealtimeTiles(store, CARD_VIEWS, consumer="speed", validator=EventValidator(),
                      allowed_lateness_ms=2 * HOUR_MS)


# --- process() against a store on disk ---------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TileStore]:
    with SqliteTileStore(tmp_path / "tiles.db") as opened:
        yield opened


def speed(store: TileStore, **options: Any) -> RealtimeTiles:
    return RealtimeTiles(store, CARD_VIEWS, consumer="lamina-speed",
                         validator=EventValidator(), allowed_lateness_ms=LATENESS, **options)


def generated(**changes: Any) -> list[Any]:
    config = dict(seed=5, cards=40, merchants=20, transactions=1500, days=2.0,
                  max_lateness_ms=20 * MINUTE_MS, duplicate_fraction=0.03,
                  malformed_fraction=0.01)
    config.update(changes)
    return list(generate(GeneratorConfig(**config)))


def feed(tiles: RealtimeTiles, values: list[bytes], *, first: int = 0, chunk: int = 250) -> int:
    """``values`` as partition 0 from offset ``first``, in micro-batches."""
    for at in range(0, len(values), chunk):
        part = values[at:at + chunk]
        records = [(TOPIC, 0, first + at + i, v) for i, v in enumerate(part)]
        tiles.process(records, {(TOPIC, 0): first + at + len(part)})
    return first + len(values)


def valid_events(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records if r.kind == "valid"]


def test_stored_tiles_equal_the_batch_layers_tiles_of_the_valid_deduplicated_events(
        store: TileStore, tmp_path: Path):
    records = generated()
    assert {r.kind for r in records} == {"valid", "duplicate", "malformed"}
    tiles = speed(store)
    end = feed(tiles, [r.value for r in records])

    assert stored_tiles(tmp_path / "tiles.db", CARD_VIEWS) == expected_tiles(
        CARD_VIEWS, valid_events(records))
    stats = tiles.stats
    transactions = [e for e in valid_events(records) if e["event_type"] == "transaction"]
    assert stats.applied == len(transactions)
    assert stats.duplicates == sum(r.kind == "duplicate" and orjson.loads(r.value)[
        "event_type"] == "transaction" for r in records)
    assert stats.invalid == sum(r.kind == "malformed" for r in records) > 0
    assert (stats.late, stats.before_cutoff) == (0, 0)
    assert stats.consumed == 0  # process() alone: the loop counts what it polls
    assert sum(stats.invalid_reasons.values()) == stats.invalid
    assert store.read_offsets("lamina-speed") == {(TOPIC, 0): end}


def test_a_resend_counts_once_across_a_restart_and_a_replayed_batch_changes_nothing(
        store: TileStore, tmp_path: Path):
    records = [r for r in generated(duplicate_fraction=0.0) if r.kind == "valid"]
    values = [r.value for r in records]
    half = len(values) // 2
    first = speed(store)
    end = feed(first, values[:half])
    # A restart: a new process, seeded from the store only. The producer
    # resends the last 100 events of the first half, then goes on.
    second = speed(store)
    feed(second, values[half - 100:half] + values[half:], first=end)
    def transactions(values: list[bytes]) -> int:
        return sum(orjson.loads(v)["event_type"] == "transaction" for v in values)

    # Each resend is refused: as a duplicate while its event is within the
    # allowed lateness, as late beyond it (the id is forgotten, the event
    # could not be applied anyway); only the new events are applied.
    assert second.stats.duplicates > 0
    assert second.stats.duplicates + second.stats.late == transactions(values[half - 100:half])
    assert second.stats.applied == transactions(values[half:])
    want = expected_tiles(CARD_VIEWS, valid_events(records))
    assert stored_tiles(tmp_path / "tiles.db", CARD_VIEWS) == want
    # A replay of an already written range (a crash after the write, before
    # the next poll): the store's offsets go back, so it is refused whole.
    third = speed(store)
    with pytest.raises(OffsetsWentBackwards):
        feed(third, values[:10])
    assert third.entities() == 0  # nothing half-applied survives
    assert stored_tiles(tmp_path / "tiles.db", CARD_VIEWS) == want


def test_malformed_payloads_are_counted_by_reason_and_the_batch_goes_on(
        store: TileStore, tmp_path: Path):
    good = [orjson.dumps(txn(f"t{i}", T0 + i * MINUTE_MS)) for i in range(5)]
    bad = [b"", b"\xff\xfe garbage", b"{", orjson.dumps({**txn("x", T0), "amount": "ten"}),
           orjson.dumps({**txn("y", T0), "schema_version": 99}), b"[1, 2]"]
    tiles = speed(store)
    feed(tiles, [v for pair in zip(good, bad, strict=False) for v in pair] + bad[5:])
    assert tiles.stats.invalid == len(bad) and tiles.stats.applied == len(good)
    assert set(tiles.stats.invalid_reasons) >= {"malformed_json", "schema_violation",
                                                "unknown_schema_version", "not_an_object"}
    assert stored_tiles(tmp_path / "tiles.db", CARD_VIEWS) == expected_tiles(
        CARD_VIEWS, [orjson.loads(v) for v in good])


def test_events_later_than_the_allowed_lateness_are_counted_and_stay_late_after_a_restart(
        store: TileStore, tmp_path: Path):
    tiles = speed(store)
    on_time = [txn("a", T0 + HOUR_MS), txn("b", T0 + 3 * HOUR_MS)]
    feed(tiles, [orjson.dumps(e) for e in on_time])
    late = txn("late", T0 + 3 * HOUR_MS - LATENESS - 1)
    allowed = txn("allowed", T0 + 3 * HOUR_MS - LATENESS)
    feed(tiles, [orjson.dumps(late), orjson.dumps(allowed)], first=2)
    assert (tiles.stats.late, tiles.stats.applied) == (1, 3)
    # The restarted layer knows the entity's newest event time from the ids
    # row, so it takes the same decision for the same event.
    again = speed(store)
    feed(again, [orjson.dumps(txn("late2", T0 + 3 * HOUR_MS - LATENESS - 1))], first=4)
    assert again.stats.late == 1
    assert store.read_tiles(seen_group(CARD_VIEWS), "c1", [SEEN_SLOT])
    assert stored_tiles(tmp_path / "tiles.db", CARD_VIEWS) == expected_tiles(
        CARD_VIEWS, [*on_time, allowed])


def publish(store: TileStore, events: list[dict[str, Any]], cutoff: int, version: int) -> None:
    before = [e for e in events if e["event_time"] < cutoff]
    by_hop = {hop: build_tiles(CARD_VIEWS, before, hop) for hop in CARD_VIEWS.hops()}
    store.publish_batch(
        BatchView(group=CARD_VIEWS.name, cutoff_ms=cutoff, horizon_ms=cutoff + 2 * DAY_MS,
                  batch_version=version, definition=definition_fingerprint(CARD_VIEWS)),
        batch_records(CARD_VIEWS, by_hop, cutoff, cutoff + 2 * DAY_MS))


def test_a_new_cutoff_mid_stream_reseeds_and_realtime_tiles_before_it_go(
        store: TileStore, tmp_path: Path):
    records = generated(days=3.0, transactions=2000)
    events = valid_events(records)
    start = GeneratorConfig().start
    values = [r.value for r in records]
    # The stream up to a bit after the second day begins, with no batch view.
    split = next(i for i, r in enumerate(records)
                 if r.event_time_ms is not None and r.event_time_ms >= start + DAY_MS + 6 * HOUR_MS)
    tiles = speed(store)
    end = feed(tiles, values[:split])
    # The batch layer publishes cutoff = day 1; the speed layer goes on.
    publish(store, events, start + DAY_MS, 1)
    feed(tiles, values[split:], first=end)
    assert tiles.stats.cutoff_switches == 1 and tiles.stats.cutoff_ms == start + DAY_MS
    stored = stored_tiles(tmp_path / "tiles.db", CARD_VIEWS)
    assert stored == expected_tiles(CARD_VIEWS, events, start + DAY_MS)
    # Events before the cutoff that arrived after the switch were left to the batch.
    assert tiles.stats.before_cutoff == sum(
        1 for r in records[split:] if r.kind == "valid" and r.event_time_ms < start + DAY_MS
        and orjson.loads(r.value)["event_type"] == "transaction")


def test_a_switch_is_counted_when_a_rebalance_came_between_the_two_views(store: TileStore):
    # Seen in CI: a rebalance (``reset``) before the new view was read made
    # the layer take it as its first one; the switch went uncounted.
    records = generated(days=3.0, transactions=600)
    events = valid_events(records)
    start = GeneratorConfig().start
    values = [r.value for r in records]
    split = next(i for i, r in enumerate(records)
                 if r.event_time_ms is not None and r.event_time_ms >= start + 2 * DAY_MS)
    publish(store, events, start + DAY_MS, 1)
    tiles = speed(store)
    end = feed(tiles, values[:split])
    tiles.reset()  # partitions assigned again
    end = feed(tiles, values[split:split + 10], first=end)
    assert tiles.stats.cutoff_switches == 0  # the same view, read again
    tiles.reset()
    publish(store, events, start + 2 * DAY_MS, 2)
    feed(tiles, values[split + 10:], first=end)
    assert tiles.stats.cutoff_switches == 1 and tiles.stats.cutoff_ms == start + 2 * DAY_MS


def test_past_the_views_horizon_a_restarted_layer_still_writes_exact_tiles(
        store: TileStore, tmp_path: Path):
    records = generated(days=4.0, transactions=2500, duplicate_fraction=0.0)
    events = valid_events(records)
    start = GeneratorConfig().start
    cutoff = start + DAY_MS
    publish(store, events, cutoff, 1)  # answers up to cutoff + 2 days
    values = [r.value for r in records]
    after = cutoff + 2 * DAY_MS + HOUR_MS
    split = next(i for i, r in enumerate(records)
                 if r.event_time_ms is not None and r.event_time_ms >= after)
    end = feed(speed(store), values[:split])
    # Restarted after the horizon: the snapshot cannot be read as of the
    # newest event, so the tiles an allowed event can change are reloaded.
    again = speed(store)
    feed(again, values[split:], first=end)
    assert again.stats.applied > 0
    assert stored_tiles(tmp_path / "tiles.db", CARD_VIEWS) == expected_tiles(
        CARD_VIEWS, events, cutoff)


def test_entity_states_dropped_for_memory_are_seeded_again_exactly(
        store: TileStore, tmp_path: Path):
    records = generated(seed=9)
    tiles = speed(store, max_entities=3)  # 40 cards: states come and go all the time
    feed(tiles, [r.value for r in records], chunk=50)
    assert tiles.entities() <= 3 and tiles.stats.seeds > 40
    assert tiles.stats.duplicates > 0
    assert stored_tiles(tmp_path / "tiles.db", CARD_VIEWS) == expected_tiles(
        CARD_VIEWS, valid_events(records))


def test_records_a_revocation_drops_from_the_open_batch_are_counted_as_read_again():
    from kafka import TopicPartition

    from lamina.speed.realtime import SpeedLayer, SpeedStats

    stats = SpeedStats()
    layer = SpeedLayer(consumer=SimpleNamespace(), topic=TOPIC,  # type: ignore[arg-type]
                       tiles=SimpleNamespace(stats=stats))  # type: ignore[arg-type]
    layer._batch.add(TOPIC, 0, [record(3, b"a"), record(4, b"b")], now=1.0)
    layer._batch.add(TOPIC, 1, [record(9, b"c")], now=1.0)
    layer.on_partitions_revoked([TopicPartition(TOPIC, 0)])
    assert stats.reread == 2 and len(layer._batch) == 1
