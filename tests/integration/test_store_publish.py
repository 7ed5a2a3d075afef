"""The batch layer's publish into the tile store (lamina.batch.store_publish),
against both stores, with a real Spark session and a real redis-server.

Test data: a generated master dataset (40 cards, 4,000 transactions over
four days, late arrivals, producer resends) whose amounts are rounded to
quarters before landing. Quarters add exactly in binary floating point, so
every sum and mean is exact whatever the grouping -- Spark's roll-ups, the
batch record's suffix merges, the reference's left fold -- and features
are compared with ``==``. (The sum and mean partials become exact int64
fixed-point elsewhere; until then arbitrary float amounts could differ in
the last bit, see docs/decisions.md, "Tile store".)

The oracle is ``lamina.schemas.view_definitions.features_from_events`` over the raw
landed events (first landed copy of each event id): it has no tiles, no
store and no Spark.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow.compute as pc
import pytest

from lamina.batch.store_publish import (
    batch_publish_command,
    batch_record_frame,
    plan_store_publish,
    publish_to_store,
)
from lamina.batch.views import run_batch_views
from lamina.config import MasterSettings, Settings, TileStoreSettings
from lamina.generator import GeneratorConfig, write_files
from lamina.master.dataset import MasterDataset
from lamina.master.importer import import_files
from lamina.schemas.card_views import CARD_VIEWS
from lamina.schemas.validation import EventValidator
from lamina.schemas.view_definitions import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    GroupBy,
    build_tiles,
    features_from_events,
)
from lamina.stores import TileRow, TileStore, open_store
from lamina.stores.codec import TileCodec
from lamina.stores.lookup import FeatureLookup, batch_records, horizon_ms
from tests.integration.test_batch_views import ALL_OPS
from tests.master_helpers import append_resends
from tests.spark_fixtures import TEST_SPARK_CONF

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAYS = 4
T1 = START_MS + 1 * DAY_MS  # an older cutoff
T2 = START_MS + 2 * DAY_MS  # the cutoff most tests publish
INTERVAL = DAY_MS  # a daily publish: the view answers [T, T + 2 d)
FIVE_MIN = 5 * MINUTE_MS
NO_EVENTS_CARD = "card-without-events"


# --- the master dataset and its events -------------------------------------------


def _quarters(files: list[Path]) -> None:
    """Round every transaction's amount to a positive multiple of 0.25."""
    for path in files:
        lines = []
        for line in path.read_bytes().splitlines():
            event = orjson.loads(line)
            if isinstance(event.get("amount"), int | float):
                event["amount"] = max(1, round(event["amount"] * 4)) / 4
            lines.append(orjson.dumps(event))
        path.write_bytes(b"\n".join(lines) + b"\n")


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> MasterDataset:
    root = tmp_path_factory.mktemp("store-publish-master")
    config = GeneratorConfig(seed=23, cards=40, merchants=60, transactions=4_000,
                             start=START_MS, days=float(DAYS), late_fraction=0.05,
                             max_lateness_ms=2 * HOUR_MS, duplicate_fraction=0.0,
                             malformed_fraction=0.0)
    files = write_files(config, root / "files", events_per_file=1_000)
    _quarters(files)
    dataset = MasterDataset(str(root / "master"))
    import_files(dataset, files, EventValidator(), root / "dlq", batch_size=900, progress=False)
    append_resends(dataset, 50, seed=9)
    return dataset


@pytest.fixture(scope="module")
def events(master: MasterDataset) -> list[dict[str, Any]]:
    """Transaction payloads, the first landed copy of each event id, in
    (event_time, event_id) order."""
    rows = master.read()
    rows = rows.filter(pc.equal(rows.column("event_type"), "transaction")).sort_by(
        [("ingest_time", "ascending"), ("kafka_topic", "ascending"),
         ("kafka_partition", "ascending"), ("kafka_offset", "ascending")])
    first: dict[str, dict[str, Any]] = {}
    for raw in rows.column("payload").to_pylist():
        event = orjson.loads(raw)
        first.setdefault(event["event_id"], event)
    landed = sorted(first.values(), key=lambda e: (e["event_time"], e["event_id"]))
    assert all((e["amount"] * 4).is_integer() for e in landed)
    return landed


@pytest.fixture(scope="module")
def cards(events: list[dict[str, Any]]) -> list[str]:
    return [*sorted({e["card_id"] for e in events}), NO_EVENTS_CARD]


@pytest.fixture(scope="module")
def views(spark: Any, master: MasterDataset, tmp_path_factory: pytest.TempPathFactory
          ) -> dict[str, str]:
    """Views tables: ``card_views`` (CARD_VIEWS at T2, version 0) and
    ``all_ops`` (ALL_OPS: version 0 at T1, 1 at T2, 2 at T2 again, forced)."""
    root = tmp_path_factory.mktemp("store-publish-views")
    card_views, all_ops = str(root / "card_views"), str(root / "all_ops")
    runs = [(card_views, CARD_VIEWS, T2, False), (all_ops, ALL_OPS, T1, False),
            (all_ops, ALL_OPS, T2, False), (all_ops, ALL_OPS, T2, True)]
    for uri, group, cutoff, force in runs:
        result = run_batch_views(spark, master.uri, uri, group, snapshot=None,
                                 cutoff_ms=cutoff, force=force)
        assert result.status == "published"
    return {"card_views": card_views, "all_ops": all_ops}


# --- the stores ------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def open(self, **extra: Any) -> TileStore:
        return open_store(self.name, **{**self.options, **extra})


@pytest.fixture(params=["sqlite", "redis"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "sqlite":
        return Target("sqlite", {"path": str(tmp_path / "tiles.db")})
    return Target("redis", {"url": request.getfixturevalue("redis_url")})


@pytest.fixture
def store(target: Target) -> Iterator[TileStore]:
    with target.open() as opened:
        yield opened


def realtime_rows(group: GroupBy, events: list[dict[str, Any]], start: int, end: int
                  ) -> list[TileRow]:
    """The speed layer's tiles of the events in [start, end), every hop."""
    codec = TileCodec(group)
    recent = [e for e in events if start <= e["event_time"] < end]
    return [TileRow(group.name, entity, hop, tile_start, codec.encode(hop, partials))
            for hop in group.hops()
            for (entity, tile_start), partials in build_tiles(group, recent, hop).items()]


def query_times(cutoff: int, horizon: int, seed: int) -> list[int]:
    """Query times in [cutoff, horizon): the cutoff, tile boundaries of every
    hop (where a window's start lands exactly on a tile edge), the last
    millisecond, and random times on and off boundaries; ascending."""
    rng = random.Random(seed)
    times = {cutoff, cutoff + 1, cutoff + FIVE_MIN, cutoff + HOUR_MS, cutoff + DAY_MS,
             cutoff + DAY_MS - 1, horizon - 1, horizon - FIVE_MIN}
    times |= {cutoff + rng.randrange((horizon - cutoff) // FIVE_MIN) * FIVE_MIN
              for _ in range(4)}
    times |= {rng.randrange(cutoff, horizon) for _ in range(4)}
    return sorted(times)


# --- the records themselves ------------------------------------------------------------


@pytest.mark.parametrize("group, name", [(ALL_OPS, "all_ops"), (CARD_VIEWS, "card_views")],
                         ids=["all_ops", "card_views"])
def test_spark_batch_records_are_the_reference_records_byte_for_byte(
        spark: Any, views: dict[str, str], events: list[dict[str, Any]], group: GroupBy,
        name: str) -> None:
    version = 1 if name == "all_ops" else 0
    horizon = horizon_ms(T2, INTERVAL)
    frame = batch_record_frame(spark, views[name], version, group, T2, horizon)
    got = {row["entity"]: bytes(row["payload"]) for row in frame.collect()}
    before = [e for e in events if e["event_time"] < T2]
    reference = {hop: build_tiles(group, before, hop) for hop in group.hops()}
    expected = {r.entity: r.payload for r in batch_records(group, reference, T2, horizon)}
    assert len(expected) >= 30
    assert got == expected


# --- (a) the lambda equation through the store ---------------------------------------


@pytest.mark.parametrize("group, name", [(ALL_OPS, "all_ops"), (CARD_VIEWS, "card_views")],
                         ids=["all_ops", "card_views"])
def test_store_batch_plus_realtime_tiles_equal_the_features_of_all_events_before_t(
        spark: Any, views: dict[str, str], events: list[dict[str, Any]], cards: list[str],
        store: TileStore, group: GroupBy, name: str) -> None:
    """Invariant 4 on the serving read path: the published batch record
    (events < T) plus realtime tiles of [T, t) written like the speed layer
    writes them, read through the store, equal the reference over every
    event before t -- for every card and query times in [T, H) on and off
    tile boundaries, T itself and H - 1 included."""
    version = 1 if name == "all_ops" else 0
    outcome = publish_to_store(spark, views[name], store, group, version=version,
                               publish_interval_ms=INTERVAL)
    assert outcome.status == "published", outcome.reason
    result = outcome.as_dict()
    horizon = T2 + 2 * INTERVAL
    assert (result["cutoff_ms"], result["horizon_ms"], result["batch_version"]) == (
        T2, horizon, version)
    assert result["records"] == len({e["card_id"] for e in events if e["event_time"] < T2})
    assert json.loads(json.dumps(result)) == result
    view = store.current_view(group.name)
    assert view is not None and view.batch_version == version
    lineage = json.loads(view.lineage)
    assert lineage["view"]["source_snapshot"] == outcome.plan.metadata.source_snapshot
    assert lineage["view"]["code_version"] and lineage["views_version"] == version

    lookup = FeatureLookup(store, group)
    checked = 0
    # Ascending t: each write of the tiles of [T, t) completes (replaces)
    # every tile an earlier, shorter range wrote.
    for t in query_times(T2, horizon, seed=version + len(name)):
        store.write_tiles(realtime_rows(group, events, T2, t))
        before_t = [e for e in events if e["event_time"] < t]
        for card in cards:
            served = lookup.features(card, t)
            expected = features_from_events(group, before_t, card, t)
            assert served == expected, (card, t)
            checked += len(served)
    assert checked >= len(cards) * len(group.feature_names()) * 16


# --- (b) idempotence -------------------------------------------------------------------


def test_the_same_version_again_is_skipped_and_older_ones_are_superseded(
        spark: Any, views: dict[str, str], store: TileStore) -> None:
    """Invariant 10: publishing the published views version again does
    nothing (no Spark needed); an older cutoff, or an older version with the
    same cutoff, is refused with status "superseded" and leaves the store's
    view as it was."""
    uri = views["all_ops"]
    first = publish_to_store(spark, uri, store, ALL_OPS, version=1)
    assert first.status == "published" and first.published is not None
    generation = first.published.generation

    again = publish_to_store(None, uri, store, ALL_OPS, version=1)  # no Spark: nothing to do
    assert again.status == "skipped" and "already published" in again.reason
    assert again.records is None
    current = store.current_view(ALL_OPS.name)
    assert current is not None and current.generation == generation

    older = publish_to_store(None, uri, store, ALL_OPS, version=0)
    assert older.status == "superseded"
    assert f"cutoff {T2}" in older.reason and f"this one's {T1}" in older.reason
    assert older.as_dict()["published"]["batch_version"] == 1
    assert store.current_view(ALL_OPS.name) == current

    # A newer version with the same cutoff replaces it; then the older one
    # with that cutoff is refused.
    forced = publish_to_store(spark, uri, store, ALL_OPS)  # latest: version 2
    assert forced.status == "published" and forced.plan.view.batch_version == 2
    same_cutoff_older = publish_to_store(None, uri, store, ALL_OPS, version=1)
    assert same_cutoff_older.status == "superseded"
    assert "newer than version 1" in same_cutoff_older.reason
    current = store.current_view(ALL_OPS.name)
    assert current is not None and current.batch_version == 2

    # Another horizon is another publish of the same version.
    longer = publish_to_store(spark, uri, store, ALL_OPS, publish_interval_ms=2 * DAY_MS)
    assert longer.status == "published" and longer.plan.view.horizon_ms == T2 + 4 * DAY_MS
    assert publish_to_store(None, uri, store, ALL_OPS,
                            publish_interval_ms=2 * DAY_MS).status == "skipped"


def test_a_publish_that_loses_the_race_to_a_newer_one_reports_superseded(
        spark: Any, views: dict[str, str], store: TileStore) -> None:
    """Decided to publish version 0 (cutoff T1), but version 1 (cutoff T2)
    switched in between: the store's refusal comes back as a status, and the
    newer view stays."""
    uri = views["all_ops"]
    stale = plan_store_publish(uri, store, ALL_OPS, version=0)
    assert stale.action == "publish"
    assert publish_to_store(spark, uri, store, ALL_OPS, version=1).status == "published"
    lost = publish_to_store(spark, uri, store, ALL_OPS, version=0, plan=stale)
    assert lost.status == "superseded"
    assert f"cutoff {T1} is before the published cutoff {T2}" in lost.reason
    current = store.current_view(ALL_OPS.name)
    assert current is not None and (current.cutoff_ms, current.batch_version) == (T2, 1)


# --- (d) realtime tiles before the new cutoff ---------------------------------------------


def test_realtime_tiles_before_the_new_cutoff_are_dropped_after_the_switch(
        spark: Any, views: dict[str, str], events: list[dict[str, Any]], cards: list[str],
        store: TileStore) -> None:
    """The speed layer wrote tiles from T1 on; publishing the view with
    cutoff T2 counts the events before T2 once (from the batch record, not
    the tiles) and then removes exactly the tiles before T2."""
    uri = views["all_ops"]
    assert publish_to_store(spark, uri, store, ALL_OPS, version=0).status == "published"
    now = T2 + 3 * HOUR_MS
    rows = realtime_rows(ALL_OPS, events, T1, now)
    store.write_tiles(rows)
    early = [r for r in rows if r.tile_start_ms < T2]
    late = [r for r in rows if r.tile_start_ms >= T2]
    assert early and late

    outcome = publish_to_store(spark, uri, store, ALL_OPS, version=1)
    assert outcome.status == "published"
    assert outcome.dropped_tiles == len(early)
    for row in early:
        assert store.read_tiles(ALL_OPS.name, row.entity, [(row.hop_ms, row.tile_start_ms)]) \
            == {}
    for row in late:
        assert store.read_tiles(ALL_OPS.name, row.entity, [(row.hop_ms, row.tile_start_ms)]) \
            == {(row.hop_ms, row.tile_start_ms): row.partials}
    lookup = FeatureLookup(store, ALL_OPS)
    before_now = [e for e in events if e["event_time"] < now]
    for card in cards:
        assert lookup.features(card, now) == features_from_events(ALL_OPS, before_now, card,
                                                                  now)
    # A retry of the same publish is skipped and finds nothing left to drop.
    retry = publish_to_store(None, uri, store, ALL_OPS, version=1)
    assert (retry.status, retry.dropped_tiles) == ("skipped", 0)


# --- (c) kill -9 mid-publish ---------------------------------------------------------------

_CHILD = """
import json, sys
from lamina.batch.spark import spark_session
from lamina.batch.store_publish import publish_to_store
from lamina.stores import open_store
from tests.integration.test_batch_views import ALL_OPS
spark = spark_session("local[2]", app_name="lamina-store-kill-test", extra_conf={conf!r})
store = open_store({store!r}, **json.loads({options!r}))
import time
import lamina.batch.store_publish as store_publish
streamed = store_publish._streamed
def held(frame, counter):
    # Written one at a time (publish_chunk 1): pulling record `hold` means
    # the ones before it are in the store; the publisher then waits there
    # for its kill, so the kill always lands between two writes.
    for i, record in enumerate(streamed(frame, counter)):
        if i == {hold}:
            print("holding", flush=True)
            time.sleep(3600)
        yield record
store_publish._streamed = held
print("started", flush=True)
result = publish_to_store(spark, {views!r}, store, ALL_OPS, version=1)
print(result.status, flush=True)
"""


def _records_of_other_generations(target: Target, generation: int) -> int:
    """Batch records of ALL_OPS the store holds under any generation but
    ``generation`` (read from the store's own tables / keys)."""
    if target.name == "sqlite":
        with sqlite3.connect(target.options["path"]) as conn:
            row = conn.execute("SELECT count(*) FROM batch_records WHERE grp = ? AND "
                               "generation != ?", (ALL_OPS.name, generation)).fetchone()
        return int(row[0])
    import redis

    client = redis.Redis.from_url(target.options["url"])
    try:
        keys = [k for k in client.scan_iter(f"lamina:batch:{ALL_OPS.name}:*")
                if not k.decode().endswith(f":{generation}")]
        return sum(int(client.hlen(k)) for k in keys)
    finally:
        client.close()


def test_kill_9_while_records_are_written_leaves_readers_on_the_previous_view(
        spark: Any, views: dict[str, str], events: list[dict[str, Any]], cards: list[str],
        target: Target, tmp_path: Path) -> None:
    """The publisher (Python and its JVM) is killed after it has written
    some records of the new view and before its switch (held between two
    writes, so the kill cannot come after the switch): readers still get
    the previous view and its features; a rerun publishes the new one, and
    the dead run's records are removed."""
    uri = views["all_ops"]
    with target.open() as store:
        previous = publish_to_store(spark, uri, store, ALL_OPS, version=0)
        assert previous.status == "published" and previous.published is not None
    old = previous.published

    # Records one at a time, and the shuffle spread over many partitions
    # (each streamed to the driver as its own job): the writes take seconds.
    conf = {**TEST_SPARK_CONF, "spark.sql.shuffle.partitions": "16",
            "spark.sql.adaptive.coalescePartitions.enabled": "false"}
    options = json.dumps({**target.options, "publish_chunk": 1})
    # One record per card at least: the hold comes before the last one.
    hold = random.Random(f"{target.name}-20261202").randint(1, max(1, len(cards) - 2))
    script = _CHILD.format(conf=conf, store=target.name, options=options, views=uri, hold=hold)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    written_at_kill = 0
    try:
        deadline = time.monotonic() + 240
        while written_at_kill == 0:
            assert child.poll() is None, "the publisher ended before writing a record"
            assert time.monotonic() < deadline, "the publisher wrote no record in time"
            time.sleep(0.005)
            written_at_kill = _records_of_other_generations(target, old.generation)
        os.killpg(child.pid, signal.SIGKILL)  # the driver: Python and its JVM
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    output = child.stdout.read().decode() if child.stdout else ""
    assert "published" not in output.splitlines(), "the publish finished before the kill"

    with target.open() as store:
        assert store.current_view(ALL_OPS.name) == old
        assert _records_of_other_generations(target, old.generation) >= written_at_kill > 0
        lookup = FeatureLookup(store, ALL_OPS)
        t = T1 + HOUR_MS
        before_t = [e for e in events if e["event_time"] < T1]  # no realtime tiles
        for card in cards:
            assert lookup.features(card, t) == features_from_events(ALL_OPS, before_t, card, t)

        rerun = publish_to_store(spark, uri, store, ALL_OPS, version=1)
        assert rerun.status == "published" and rerun.published is not None
        assert rerun.published.generation > old.generation
        assert _records_of_other_generations(target, rerun.published.generation) == 0
        t = T2 + HOUR_MS
        before_t = [e for e in events if e["event_time"] < T2]
        for card in cards:
            assert lookup.features(card, t) == features_from_events(ALL_OPS, before_t, card, t)


# --- the command ---------------------------------------------------------------------------


def test_batch_publish_command_publishes_the_home_views_into_the_home_sqlite_store(
        spark: Any, master: MasterDataset, tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home, master=MasterSettings(uri=master.uri))
    run_batch_views(spark, master.uri, str(home / "views" / CARD_VIEWS.name), CARD_VIEWS,
                    snapshot=None, cutoff_ms=T2)
    result = batch_publish_command(settings)
    assert result["status"] == "published" and result["store"] == "sqlite"
    assert result["horizon_ms"] == T2 + 2 * DAY_MS
    assert json.loads(json.dumps(result)) == result
    with open_store("sqlite", path=str(home / "tiles.db")) as store:
        view = store.current_view(CARD_VIEWS.name)
        assert view is not None and view.batch_version == result["batch_version"]
    again = batch_publish_command(settings, options={"publish_chunk": "10"})
    assert again["status"] == "skipped" and again["spark_start_seconds"] is None



def test_batch_publish_command_uses_the_tile_store_settings_and_lets_options_override(
        spark: Any, master: MasterDataset, tmp_path: Path) -> None:
    home = tmp_path / "home"
    configured = tmp_path / "elsewhere" / "tiles.db"
    configured.parent.mkdir()
    settings = Settings(home=home, master=MasterSettings(uri=master.uri),
                        tile_store=TileStoreSettings(kind="sqlite",
                                                     options={"path": str(configured)}))
    run_batch_views(spark, master.uri, settings.view_uri(CARD_VIEWS.name), CARD_VIEWS,
                    snapshot=None, cutoff_ms=T2)
    result = batch_publish_command(settings)
    assert result["status"] == "published"
    assert configured.exists() and not (home / "tiles.db").exists()
    overridden = tmp_path / "override.db"
    again = batch_publish_command(settings, options={"path": str(overridden)})
    assert again["status"] == "published" and overridden.exists()
    with open_store("sqlite", path=str(overridden)) as store:
        view = store.current_view(CARD_VIEWS.name)
        assert view is not None and view.batch_version == result["batch_version"]
