"""One contract, every tile store: each test runs against the embedded
SQLite store and against Redis (a real `redis-server`, tests/redis_fixtures.py).

The guarantees are those of ``lamina.stores.base``: tiles and offsets in
one transaction (an exception or a ``kill -9`` of the writer leaves
neither), offsets never going backwards, a publish switching view and
records atomically for readers in other processes, realtime tiles before a
new cutoff no longer counting from the switch on and dropped afterwards,
and lookups through the store equal to the reference features.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from lamina.errors import ConfigError
from lamina.generator import KIND_VALID, GeneratorConfig, generate
from lamina.schemas.card_views import CARD_VIEWS
from lamina.schemas.scores import ScoreRecord
from lamina.schemas.view_definitions import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    build_tiles,
    features_from_events,
)
from lamina.stores import (
    AsOfOutOfRange,
    BatchRecord,
    BatchView,
    CutoffWentBackwards,
    NoPublishedView,
    OffsetsWentBackwards,
    StoreError,
    TileRow,
    TileStore,
    open_store,
)
from lamina.stores.base import realtime_ranges
from lamina.stores.codec import TileCodec
from lamina.stores.lookup import (
    FeatureLookup,
    batch_records,
    definition_fingerprint,
    realtime_spans,
)
from tests.integration import tile_store_worker as worker

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
C0 = worker.C0  # 2026-01-01T00:00Z
FIVE_MIN = 5 * MINUTE_MS
WAIT_S = 120


@dataclass
class Target:
    """A store under test: its short name and the options to open it."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def open(self, **extra: Any) -> TileStore:
        return open_store(self.name, **{**self.options, **extra})

    def worker(self, role: str, workdir: Path, *extra: str, **options: Any
               ) -> subprocess.Popen[bytes]:
        """Start tests/integration/tile_store_worker.py in its own process."""
        log = (workdir / f"{role}.log").open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "tests.integration.tile_store_worker", role, self.name,
             json.dumps({**self.options, **options}), str(workdir), *extra],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(params=["sqlite", "redis"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "sqlite":
        return Target("sqlite", {"path": str(tmp_path / "tiles.db")})
    return Target("redis", {"url": request.getfixturevalue("redis_url")})


@pytest.fixture
def store(target: Target) -> Iterator[TileStore]:
    with target.open() as opened:
        yield opened


def wait_for(condition: Callable[[], bool], what: str, process: subprocess.Popen[bytes] | None
             = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the worker exited with {process.returncode} before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill_9(process: subprocess.Popen[bytes]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def tile(entity: str, start: int, value: bytes, *, group: str = "g", hop: int = DAY_MS
         ) -> TileRow:
    return TileRow(group, entity, hop, start, value)


def view(cutoff: int, version: int, *, group: str = "g", days: int = 10) -> BatchView:
    return BatchView(group=group, cutoff_ms=cutoff, horizon_ms=cutoff + days * DAY_MS,
                     batch_version=version, lineage=f'{{"version": {version}}}')


def records(version: int, entities: int = 5) -> list[BatchRecord]:
    return [BatchRecord(f"e{i}", f"v{version}:e{i}".encode()) for i in range(entities)]


# --- tiles and offsets ----------------------------------------------------------


def test_tiles_and_offsets_are_written_together_and_read_back(store: TileStore) -> None:
    rows = [tile("a", C0, b"a0"), tile("a", C0 + DAY_MS, b"a1"), tile("b", C0, b"b0"),
            tile("a", C0, b"a0-other-group", group="h")]
    assert store.write_tiles(rows, consumer="speed", offsets={("events.raw", 0): 41,
                                                               ("events.raw", 2): 7}) == 4
    assert store.read_offsets("speed") == {("events.raw", 0): 41, ("events.raw", 2): 7}
    assert store.read_offsets("nobody") == {}
    slots = [(DAY_MS, C0), (DAY_MS, C0 + DAY_MS), (DAY_MS, C0 + 2 * DAY_MS)]
    assert store.read_tiles("g", "a", slots) == {(DAY_MS, C0): b"a0",
                                                 (DAY_MS, C0 + DAY_MS): b"a1"}
    assert store.read_tiles("h", "a", slots) == {(DAY_MS, C0): b"a0-other-group"}
    # A write replaces a tile; within one write the last row of a key wins;
    # offsets not named in a write keep their position.
    store.write_tiles([tile("a", C0, b"old"), tile("a", C0, b"new")], consumer="speed",
                      offsets={("events.raw", 0): 42})
    assert store.read_tiles("g", "a", slots[:1]) == {(DAY_MS, C0): b"new"}
    assert store.read_offsets("speed") == {("events.raw", 0): 42, ("events.raw", 2): 7}
    # Tiles without offsets (no consumer), and offsets without tiles.
    assert store.write_tiles([tile("c", C0, b"c0")]) == 1
    assert store.write_tiles([], consumer="speed", offsets={("events.raw", 1): 3}) == 0
    assert store.read_offsets("speed")[("events.raw", 1)] == 3


def test_an_error_inside_the_write_leaves_neither_tiles_nor_offsets(store: TileStore) -> None:
    entities = [f"e{i}" for i in range(100)]
    store.write_tiles([tile(e, C0, b"1") for e in entities], consumer="speed",
                      offsets={("events.raw", 0): 1})

    def failing_rows() -> Iterator[TileRow]:
        for i, entity in enumerate(entities):
            if i == 60:
                raise RuntimeError("the speed layer failed between two tiles")
            yield tile(entity, C0, b"2")
        # never reached: the offsets of batch 2 must not be stored either

    with pytest.raises(RuntimeError, match="between two tiles"):
        store.write_tiles(failing_rows(), consumer="speed", offsets={("events.raw", 0): 2})
    with pytest.raises(ValueError, match="TileRow"):
        not_a_row: Any = ("e1", C0, b"2")
        store.write_tiles([tile("e0", C0, b"2"), not_a_row], consumer="speed",
                          offsets={("events.raw", 0): 2})
    assert store.read_offsets("speed") == {("events.raw", 0): 1}
    for entity in entities:
        assert store.read_tiles("g", entity, [(DAY_MS, C0)]) == {(DAY_MS, C0): b"1"}


def test_an_offset_behind_the_stored_one_refuses_the_whole_write(store: TileStore) -> None:
    store.write_tiles([tile("a", C0, b"1")], consumer="speed",
                      offsets={("events.raw", 0): 10, ("events.raw", 1): 5})
    with pytest.raises(OffsetsWentBackwards, match=r"offset 9 for events.raw\[0\] is behind "
                                                   r"the stored 10; nothing was written"):
        store.write_tiles([tile("a", C0, b"zombie"), tile("b", C0, b"zombie")],
                          consumer="speed", offsets={("events.raw", 1): 6, ("events.raw", 0): 9})
    assert store.read_offsets("speed") == {("events.raw", 0): 10, ("events.raw", 1): 5}
    assert store.read_tiles("g", "a", [(DAY_MS, C0)]) == {(DAY_MS, C0): b"1"}
    assert store.read_tiles("g", "b", [(DAY_MS, C0)]) == {}
    # The same position again is a replay of the same batch: accepted.
    store.write_tiles([tile("a", C0, b"1")], consumer="speed", offsets={("events.raw", 0): 10})
    store.write_tiles([tile("a", C0, b"2")], consumer="speed", offsets={("events.raw", 0): 11})
    # Positions are per consumer.
    store.write_tiles([tile("a", C0 + DAY_MS, b"x")], consumer="other",
                      offsets={("events.raw", 0): 3})
    assert store.read_offsets("speed")[("events.raw", 0)] == 11
    assert store.read_offsets("other") == {("events.raw", 0): 3}
    with pytest.raises(ValueError, match="consumer name"):
        store.write_tiles([], offsets={("events.raw", 0): 1})



# --- latest scores ---------------------------------------------------------------


def score(entity: str, event_id: str, event_time: int, *, version: int = 1,
          value: float = 0.5) -> ScoreRecord:
    return ScoreRecord(event_id=event_id, entity_key="card_id", entity=entity,
                       event_time=event_time, score=value, model_version=version,
                       batch_version=3, batch_cutoff=C0, scored_at=event_time + 7,
                       produce_to_score_ms=7, features={"amount": 1.5, "txn_count_1h": 2.0})


def test_scores_are_kept_per_entity_newest_first_up_to_the_configured_number(
        target: Target) -> None:
    with target.open(scores_per_entity=3) as store:
        assert store.latest_scores("a") == []
        first = [score("a", f"t{i}", C0 + i * 1000) for i in range(4)] + [score("b", "u", C0)]
        store.write_tiles([tile("a", C0, b"1")], consumer="speed",
                          offsets={("events.raw", 0): 5}, scores=first)
        assert [r.event_id for r in store.latest_scores("a")] == ["t3", "t2", "t1"]
        assert store.latest_scores("b") == [first[-1]]  # decoded back field for field
        # A replayed batch (at-least-once scoring) rewrites the same keys: one
        # record per (event, model version); another version is another record.
        store.write_tiles([], consumer="speed", offsets={("events.raw", 0): 5},
                          scores=[score("a", "t3", C0 + 3000, value=0.5),
                                  score("a", "t3", C0 + 3000, version=2, value=0.9)])
        latest = store.latest_scores("a")
        assert [(r.event_id, r.model_version) for r in latest] == [
            ("t3", 2), ("t3", 1), ("t2", 1)]
        # An older score than every kept one goes straight out.
        store.write_tiles([], scores=[score("a", "old", C0 - DAY_MS)])
        assert store.latest_scores("a") == latest
    with target.open() as store:  # what another process with the default sees
        assert len(store.latest_scores("a")) == 3
    with pytest.raises(ConfigError, match="scores_per_entity must be an integer >= 1"):
        target.open(scores_per_entity=0)


def test_a_refused_write_stores_none_of_its_scores(store: TileStore) -> None:
    store.write_tiles([tile("a", C0, b"1")], consumer="speed", offsets={("events.raw", 0): 10},
                      scores=[score("a", "kept", C0)])
    with pytest.raises(OffsetsWentBackwards):
        store.write_tiles([tile("a", C0, b"zombie")], consumer="speed",
                          offsets={("events.raw", 0): 9}, scores=[score("a", "zombie", C0 + 1)])

    def failing_rows() -> Iterator[TileRow]:
        yield tile("a", C0, b"2")
        raise RuntimeError("the speed layer failed between two tiles")

    with pytest.raises(RuntimeError, match="between two tiles"):
        store.write_tiles(failing_rows(), consumer="speed", offsets={("events.raw", 0): 11},
                          scores=[score("a", "failed", C0 + 2)])
    with pytest.raises(ValueError, match="ScoreRecord"):
        not_a_score: Any = {"event_id": "x"}
        store.write_tiles([], scores=[score("a", "x", C0 + 3), not_a_score])
    assert [r.event_id for r in store.latest_scores("a")] == ["kept"]
    assert store.read_tiles("g", "a", [(DAY_MS, C0)]) == {(DAY_MS, C0): b"1"}


def test_kill_9_of_a_writer_mid_transaction_leaves_neither_its_tiles_nor_its_offsets(
        target: Target, tmp_path: Path) -> None:
    def check_consistent(store: TileStore) -> int:
        """The stored offset k and every tile holding batch k: all of one
        committed batch, nothing of the killed one."""
        batch = store.read_offsets(worker.CONSUMER).get((worker.TOPIC, 0), 0)
        values = {store.read_tiles("writes", f"e{i:04d}", [(worker.HOP, 0)]).get(
            (worker.HOP, 0)) for i in range(worker.ENTITIES)}
        assert values == {str(batch).encode()}, f"offset {batch}, tiles {sorted(values)}"
        return batch

    rng = random.Random(3)
    with target.open() as store:
        # 1: killed while its rows are going into the transaction of batch 3.
        writer = target.worker("writer", tmp_path, "--pause-at", "3", "120")
        wait_for(lambda: (tmp_path / "paused").exists(), "the writer to pause in batch 3", writer)
        kill_9(writer)
        assert check_consistent(store) == 2
        # 2-4: killed at random moments while committing batch after batch.
        committed = tmp_path / "committed"

        def last_committed() -> int:
            logged = committed.read_text().split() if committed.exists() else []
            return int(logged[-1]) if logged else 0

        def committed_at_least(batch: int) -> Callable[[], bool]:
            return lambda: last_committed() >= batch

        for incarnation in range(3):
            before = check_consistent(store)
            writer = target.worker("writer", tmp_path)
            wait_for(committed_at_least(before + 2), "two more committed batches", writer)
            time.sleep(rng.uniform(0.0, 0.3))
            kill_9(writer)
            after = check_consistent(store)
            # The writer logs a batch after its commit: the kill may fall between.
            assert after in (last_committed(), last_committed() + 1), (incarnation, after)
            assert after > before
        # The killed writers left no lock or half transaction behind.
        store.write_tiles([TileRow("writes", "e0000", worker.HOP, 0, b"after")],
                          consumer=worker.CONSUMER, offsets={(worker.TOPIC, 0): after + 1})


def test_writes_and_publishes_of_one_process_are_seen_by_another(
        target: Target, tmp_path: Path) -> None:
    script = (
        "import json, sys\n"
        "from lamina.stores import BatchRecord, BatchView, TileRow, open_store\n"
        "store = open_store(sys.argv[1], **json.loads(sys.argv[2]))\n"
        "seen = store.read_tiles('g', 'parent', [(86400000, 0)])\n"
        "assert seen == {(86400000, 0): b'from parent'}, seen\n"
        "store.write_tiles([TileRow('g', 'child', 86400000, 0, b'from child')],\n"
        "                  consumer='child', offsets={('events.raw', 0): 5})\n"
        "store.publish_batch(BatchView(group='g', cutoff_ms=0, horizon_ms=86400000,\n"
        "                              batch_version=9), [BatchRecord('child', b'r')])\n"
        "store.close()\n"
    )
    with target.open() as store:
        store.write_tiles([tile("parent", 0, b"from parent")])
        subprocess.run([sys.executable, "-c", script, target.name, json.dumps(target.options)],
                       cwd=REPO, check=True, timeout=WAIT_S)
        assert store.read_tiles("g", "child", [(DAY_MS, 0)]) == {(DAY_MS, 0): b"from child"}
        assert store.read_offsets("child") == {("events.raw", 0): 5}
        published = store.current_view("g")
        assert published is not None and published.batch_version == 9
        assert store.read_entity("g", "child", 1, {}).batch_record == b"r"


def test_one_store_object_is_shared_by_threads(store: TileStore) -> None:
    store.publish_batch(view(C0, 1), records(1))
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for k in range(1, 21):
                store.write_tiles([tile(f"t{n}", C0, str(k).encode())], consumer=f"c{n}",
                                  offsets={("events.raw", n): k})
                snapshot = store.read_entity("g", f"t{n}", C0 + DAY_MS, {DAY_MS: None})
                assert snapshot.tiles == {(DAY_MS, C0): str(k).encode()}
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT_S)
    assert not errors, errors
    for n in range(4):
        assert store.read_offsets(f"c{n}") == {("events.raw", n): 20}


# --- publishing -------------------------------------------------------------------


def test_a_publish_switches_view_and_records_atomically_for_a_reader_in_another_process(
        target: Target, tmp_path: Path) -> None:
    # The reader (tile_store_worker) checks every snapshot: its record is
    # the marker of the snapshot's own batch version, its realtime tiles are
    # at or after the snapshot's cutoff. Records go in chunks of 4, so a
    # publish spans three transactions a reader could see between; many
    # small publishes give the reader many switches to cross.
    group, entities = worker.GROUP, worker.PUBLISHED_ENTITIES
    LAST_VERSION = 60  # noqa: N806 - a constant of this test
    assert worker.TILE_DAYS[-1] >= LAST_VERSION + 8  # tiles up to the last horizon
    names = [f"e{i:04d}" for i in range(entities)]

    def publish(store: TileStore, version: int) -> None:
        cutoff = C0 + (version - 1) * DAY_MS
        store.publish_batch(view(cutoff, version, group=group),
                            (BatchRecord(e, worker.record_marker(version, e)) for e in names))

    with target.open(publish_chunk=4) as store:
        store.write_tiles([TileRow(group, e, DAY_MS, C0 + k * DAY_MS,
                                   worker.tile_marker(C0 + k * DAY_MS))
                           for e in names for k in worker.TILE_DAYS])
        publish(store, 1)
        reader = target.worker("reader", tmp_path)
        try:
            wait_for(lambda: (tmp_path / "reading").exists(), "the reader's first read", reader)
            for version in range(2, LAST_VERSION + 1):
                publish(store, version)
                if version % 2:  # tiles before the cutoff are dropped later, or not yet
                    store.drop_realtime_before(group, C0 + (version - 1) * DAY_MS)
            final = store.current_view(group)
            assert final is not None and final.batch_version == LAST_VERSION
            seen = tmp_path / "version"
            wait_for(lambda: seen.exists() and seen.read_text() == str(LAST_VERSION),
                     "the reader to read the last view", reader)
        finally:
            (tmp_path / "stop").write_text("1")
            reader.wait(timeout=WAIT_S)
    report = json.loads((tmp_path / "reader.json").read_text())
    assert report["reads"] > 0
    assert report["violations"] == 0, report["problems"]
    # It read the first and the last view, and across the switches between.
    assert {1, LAST_VERSION} <= set(report["versions"]), report


def test_a_publish_with_an_older_cutoff_is_refused_and_the_same_cutoff_replaces(
        store: TileStore) -> None:
    first = store.publish_batch(view(C0, 1), records(1))
    assert first.generation >= 1 and first.cutoff_ms == C0 and first.lineage == '{"version": 1}'
    with pytest.raises(CutoffWentBackwards, match="before the published cutoff"):
        store.publish_batch(view(C0 - DAY_MS, 2), records(2))
    assert store.current_view("g") == first
    assert store.read_entity("g", "e1", C0, {}).batch_record == b"v1:e1"
    again = store.publish_batch(view(C0, 3), records(3, entities=2))
    assert again.generation > first.generation
    assert store.read_entity("g", "e1", C0, {}).batch_record == b"v3:e1"
    # The previous view's records are gone with it.
    assert store.read_entity("g", "e4", C0, {}).batch_record is None


def test_a_publish_overtaken_by_a_later_one_is_not_switched(target: Target) -> None:
    with target.open() as store, target.open() as other:
        store.publish_batch(view(C0, 1), records(1))

        def slow_records() -> Iterator[BatchRecord]:
            yield from records(2)[:2]
            # Meanwhile another batch run publishes, and switches first.
            other.publish_batch(view(C0 + DAY_MS, 3), records(3))
            yield from records(2)[2:]

        with pytest.raises(CutoffWentBackwards):
            store.publish_batch(view(C0 + DAY_MS, 2), slow_records())
        current = store.current_view("g")
        assert current is not None and current.batch_version == 3
        assert store.read_entity("g", "e3", C0 + DAY_MS, {}).batch_record == b"v3:e3"


def test_a_failed_publish_leaves_the_published_view_and_the_next_one_cleans_up(
        target: Target, store: TileStore) -> None:
    published = store.publish_batch(view(C0, 1), records(1))

    def failing() -> Iterator[BatchRecord]:
        yield from records(2)[:3]
        raise RuntimeError("the batch job died while publishing")

    with pytest.raises(RuntimeError, match="died while publishing"):
        store.publish_batch(view(C0 + DAY_MS, 2), failing())
    assert store.current_view("g") == published
    assert store.read_entity("g", "e0", C0, {}).batch_record == b"v1:e0"
    store.publish_batch(view(C0 + DAY_MS, 3), records(3, entities=2))
    assert stored_batch_records(target, "g") == 2  # only the current view's


def stored_batch_records(target: Target, group: str) -> int:
    """Batch records the store holds for ``group``, every generation."""
    if target.name == "sqlite":
        import sqlite3

        with sqlite3.connect(target.options["path"]) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM batch_records WHERE grp = ?",
                                    (group,)).fetchone()[0])
    import redis

    client = redis.Redis.from_url(target.options["url"])
    try:
        return sum(int(client.hlen(key)) for key in client.scan_iter(f"lamina:batch:{group}:*"))
    finally:
        client.close()


# --- snapshots, cutoffs and dropping realtime tiles -----------------------------


def test_tiles_before_a_new_cutoff_stop_counting_at_the_switch_and_are_dropped_after(
        store: TileStore) -> None:
    starts = [C0 - DAY_MS, C0, C0 + DAY_MS, C0 + 2 * DAY_MS]
    store.write_tiles([tile("a", s, worker.tile_marker(s)) for s in starts])
    spans = {DAY_MS: None}
    t = C0 + 3 * DAY_MS
    with pytest.raises(NoPublishedView, match="run the batch layer first"):
        store.read_entity("g", "a", t, spans)
    with pytest.raises(StoreError, match="nothing is published"):
        store.drop_realtime_before("g", C0)

    store.publish_batch(view(C0, 1), records(1))
    assert sorted(store.read_entity("g", "a", t, spans).tiles) == [(DAY_MS, s) for s in starts[1:]]
    store.publish_batch(view(C0 + DAY_MS, 2), records(2))
    # Not dropped yet, but no longer counted.
    snapshot = store.read_entity("g", "a", t, spans)
    assert snapshot.view.cutoff_ms == C0 + DAY_MS and snapshot.batch_record is None
    assert sorted(snapshot.tiles) == [(DAY_MS, s) for s in starts[2:]]
    every = [(DAY_MS, s) for s in starts]
    assert len(store.read_tiles("g", "a", every)) == 4

    with pytest.raises(StoreError, match="still count"):
        store.drop_realtime_before("g", C0 + 2 * DAY_MS)
    assert store.drop_realtime_before("g", C0 + DAY_MS) == 2
    assert sorted(store.read_tiles("g", "a", every)) == every[2:]
    assert store.drop_realtime_before("g", C0 + DAY_MS) == 0
    assert sorted(store.read_entity("g", "a", t, spans).tiles) == every[2:]


def test_a_snapshot_reads_the_tiles_the_spans_ask_for_and_nothing_else(
        store: TileStore) -> None:
    cutoff = C0
    rows = [tile("a", cutoff + k * FIVE_MIN, b"5m", hop=FIVE_MIN) for k in range(-2, 40)]
    rows += [tile("a", cutoff + k * HOUR_MS, b"1h", hop=HOUR_MS) for k in range(-2, 5)]
    rows += [tile("b", cutoff + k * FIVE_MIN, b"b", hop=FIVE_MIN) for k in range(40)]
    store.write_tiles(rows)
    store.publish_batch(view(cutoff, 1, days=1), [BatchRecord("a", b"batch-a")])
    spans = {FIVE_MIN: HOUR_MS, HOUR_MS: None}
    for t in (cutoff, cutoff + 1, cutoff + 37 * MINUTE_MS, cutoff + 2 * HOUR_MS + 1,
              cutoff + 3 * HOUR_MS):
        snapshot = store.read_entity("g", "a", t, spans)
        expected = {(hop, s) for hop, first, end in realtime_ranges(cutoff, t, spans)
                    for s in range(first, end, hop)} & {(r.hop_ms, r.tile_start_ms) for r in rows
                                                        if r.entity == "a"}
        assert set(snapshot.tiles) == expected, t
        assert snapshot.batch_record == b"batch-a" and snapshot.as_of_ms == t
    assert store.read_entity("g", "nobody", cutoff + 1, spans).batch_record is None
    with pytest.raises(AsOfOutOfRange, match="before the published batch cutoff"):
        store.read_entity("g", "a", cutoff - 1, spans)
    with pytest.raises(AsOfOutOfRange, match="at or after the horizon"):
        store.read_entity("g", "a", cutoff + DAY_MS, spans)


def test_a_snapshot_can_carry_a_consumers_offsets_read_with_it(store: TileStore) -> None:
    cutoff = C0
    store.publish_batch(view(cutoff, 1, days=1), [BatchRecord("a", b"batch-a")])
    spans = {FIVE_MIN: HOUR_MS, HOUR_MS: None}
    t = cutoff + 30 * MINUTE_MS
    # Without offsets_of: none read. A consumer that stored none: empty.
    assert store.read_entity("g", "a", t, spans).offsets == {}
    assert store.read_entity("g", "a", t, spans, offsets_of="speed").offsets == {}
    store.write_tiles([tile("a", cutoff + FIVE_MIN, b"5m", hop=FIVE_MIN)], consumer="speed",
                      offsets={("events.raw", 0): 41, ("events.raw", 2): 7})
    store.write_tiles([], consumer="other", offsets={("events.raw", 0): 3})
    plain = store.read_entity("g", "a", t, spans)
    with_offsets = store.read_entity("g", "a", t, spans, offsets_of="speed")
    assert with_offsets.offsets == store.read_offsets("speed") == {
        ("events.raw", 0): 41, ("events.raw", 2): 7}
    # The rest of the snapshot is the same with or without them.
    assert (with_offsets.view, with_offsets.batch_record, dict(with_offsets.tiles)) == (
        plain.view, plain.batch_record, dict(plain.tiles))
    assert dict(plain.tiles) == {(FIVE_MIN, cutoff + FIVE_MIN): b"5m"}
    # The tiles and the offsets move together: a later write shows in both.
    store.write_tiles([tile("a", cutoff + 2 * FIVE_MIN, b"5m-2", hop=FIVE_MIN)],
                      consumer="speed", offsets={("events.raw", 0): 50})
    later = store.read_entity("g", "a", t, spans, offsets_of="speed")
    assert later.offsets[("events.raw", 0)] == 50
    assert (FIVE_MIN, cutoff + 2 * FIVE_MIN) in later.tiles
    with pytest.raises(AsOfOutOfRange):
        store.read_entity("g", "a", cutoff - 1, spans, offsets_of="speed")


# --- lookups through the store ------------------------------------------------------


def card_events() -> list[dict[str, Any]]:
    """Generated transactions of 40 cards over 12 days (amounts rounded to
    quarters so that float sums add exactly whatever the grouping)."""
    config = GeneratorConfig(seed=5, cards=40, merchants=60, transactions=4000, start=C0,
                             days=12.0)
    events = []
    for record in generate(config):
        if record.kind != KIND_VALID:
            continue
        payload = orjson.loads(record.value)
        if payload.get("event_type") == "transaction":
            payload["amount"] = round(payload["amount"] * 4) / 4
            events.append(payload)
    return events


def test_features_looked_up_through_the_store_equal_the_reference(store: TileStore) -> None:
    group = CARD_VIEWS
    events = card_events()
    cutoff = C0 + 10 * DAY_MS
    horizon = cutoff + DAY_MS
    before = [e for e in events if e["event_time"] < cutoff]
    tiles = {hop: build_tiles(group, before, hop) for hop in group.hops()}
    published = store.publish_batch(
        BatchView(group=group.name, cutoff_ms=cutoff, horizon_ms=horizon, batch_version=1,
                  definition=definition_fingerprint(group)),
        batch_records(group, tiles, cutoff, horizon))
    assert published.definition == definition_fingerprint(group)
    codec = TileCodec(group)
    lookup = FeatureLookup(store, group)
    cards = sorted({e["card_id"] for e in events})[:15]
    offset = 0
    for t in (cutoff, cutoff + 3 * HOUR_MS + 17_000, cutoff + 23 * HOUR_MS + 59 * MINUTE_MS):
        # The speed layer's state at t: the tiles of the events before t.
        realtime = [e for e in events if cutoff <= e["event_time"] < t]
        rows = [TileRow(group.name, entity, hop, start, codec.encode(hop, partials))
                for hop in group.hops()
                for (entity, start), partials in build_tiles(group, realtime, hop).items()]
        offset += len(rows)
        store.write_tiles(rows, consumer="speed", offsets={("events.raw", 0): offset})
        seen = [e for e in events if e["event_time"] < t]
        for card in cards:
            assert lookup.features(card, t) == features_from_events(group, seen, card, t), \
                (card, t)
    snapshot = lookup.snapshot(cards[0], cutoff + 23 * HOUR_MS)
    assert len(snapshot.tiles) <= sum(
        len(range(first, end, hop)) for hop, first, end in
        realtime_ranges(cutoff, cutoff + 23 * HOUR_MS, realtime_spans(group)))


def test_redis_runs_each_snapshot_write_and_switch_as_one_script(redis_url: str) -> None:
    # Redis runs a script to the end before any other command, which is what
    # makes its snapshots consistent and its writes whole: a read made of
    # several commands could interleave with a publish (the concurrent test
    # above only catches that when the timing is unlucky). The server's own
    # MONITOR shows what the store sends, and what runs inside its scripts.
    import redis

    client = redis.Redis.from_url(redis_url)
    with open_store("redis", url=redis_url) as store:
        store.publish_batch(view(C0, 1), records(1))
        # Each script's first call loads it (NOSCRIPT, SCRIPT LOAD): not counted.
        store.read_entity("g", "e1", C0 + 1, {DAY_MS: None})
        store.write_tiles([tile("e0", C0, b"w")], consumer="speed",
                          offsets={("events.raw", 0): 0})

        marker = redis.Redis.from_url(redis_url)
        marker.ping()  # connected before the monitor starts

        def sent_by_the_store(operation: Callable[[], object]) -> tuple[list[str], list[str]]:
            with client.monitor() as monitor:
                operation()
                marker.echo("end-of-operation")
                sent: list[str] = []
                in_scripts: list[str] = []
                while True:
                    command = monitor.next_command()
                    if command["command"] == "ECHO end-of-operation":
                        break
                    words = command["command"].split()
                    (in_scripts if command["client_type"] == "lua" else sent).append(
                        words[0].upper() + (f" {words[1]}" if len(words) > 1 else ""))
            return sent, in_scripts

        sent, inside = sent_by_the_store(
            lambda: store.read_entity("g", "e1", C0 + 3 * DAY_MS, {DAY_MS: None}))
        assert [c.split()[0] for c in sent] == ["EVALSHA"], sent
        assert {c.split()[0] for c in inside} == {"HMGET", "HGET"}, inside
        sent, inside = sent_by_the_store(lambda: store.write_tiles(
            [tile("e1", C0, b"x"), tile("e2", C0, b"y")], consumer="speed",
            offsets={("events.raw", 0): 1}))
        assert [c.split()[0] for c in sent] == ["EVALSHA"], sent
        sent, inside = sent_by_the_store(
            lambda: store.publish_batch(view(C0 + DAY_MS, 2), records(2)))
        view_key = "lamina:view:g"
        assert not [c for c in sent if view_key in c], sent  # the view changes in a script
        assert f"HSET {view_key}" in inside, inside
    marker.close()
    client.close()


def test_read_entities_reads_one_snapshot_of_many_entities(store: TileStore) -> None:
    # The checks of tests/unit/test_store_read_entities.py, on each store.
    from tests.unit import test_store_read_entities as batch

    batch.check_same_as_per_entity_reads(store)


def test_a_publish_while_reading_a_batch_cannot_split_it(store: TileStore) -> None:
    from tests.unit import test_store_read_entities as batch

    batch.check_a_publish_cannot_split_a_batch(store, batch.per_entity_loop_is_split)
