"""Tile stores: write and read rates of SQLite and Redis on the same tiles,
each figure next to a raw store operation on the same records.

    .venv/bin/python -m benchmarks.tile_store            # 150k transactions, appends
    .venv/bin/python -m benchmarks.tile_store --quick --no-append
    .venv/bin/python -m benchmarks.tile_store --only publish   # from a views table, 1M

The data (built once per run, not a figure)
-------------------------------------------
`GeneratorConfig(seed=42, transactions=N, cards=N/50, days=30)` (defaults
otherwise; valid transaction events only). The card views (`CARD_VIEWS`)
are tiled with the reference `build_tiles`: batch tiles before the cutoff
(day 28, 00:00) become one batch record per card (`batch_records`, horizon
one day after a daily publish: `horizon_ms(T, 1 d)`), and the events of the
next 20 hours become the realtime tiles of the three hops, encoded with
`TileCodec`. Every store gets exactly these records and tiles.

Figures, per store (one process: this one; `redis-server` started here on
a free loopback port without persistence, pinned to core 1 and this
process to core 0 when two cores and taskset are there)
----------------------------------------------------------------------
* publish_batch -- all batch records, then the switch; records/s.
  Reference: the same records bulk-written raw (SQLite: `executemany`
  INSERTs in transactions of `publish_chunk` rows into a bare table;
  Redis: pipelined `HSET`s of the same chunks into a plain hash).
Each store runs ROUNDS (2) rounds of publish, writes and reads; rates are
the better round's, reads the round with the lower features p99 (its raw
read ran beside it, interleaved).

* write_tiles -- the realtime tiles in transactions of 500 tiles with the
  consumer's offsets; tiles/s. Reference: the same rows raw (SQLite: one
  `executemany` upsert per 500 rows in `BEGIN IMMEDIATE`..`COMMIT` into a
  bare table; Redis: `MULTI`/`EXEC` of 500 `HSET`s).
* read_entity -- the snapshot of one random card at t (view, batch record,
  the realtime tiles the card views need: `realtime_spans`); per-call
  latency p50/p99 and calls/s. Reference: a raw read of the same records
  (SQLite: the same SELECTs without the transaction and the view; Redis:
  one pipelined `HGET` + `HMGET`).
* features -- `FeatureLookup.features`: the snapshot plus decoding,
  merging and presenting every feature (what serving calls per request);
  latency p50/p99 against the same raw read. The serving target (p99 <=
  3 ms at 8 clients, HTTP included, ARCHITECTURE.md) is for the whole
  request: this is the part the store and the lookup take.
  The three reads are interleaved per card (raw, snapshot, features, in a
  random order) so they share the machine's conditions.

Publishing from the batch layer (``--only publish``, or both by default)
--------------------------------------------------------------------------
The batch layer's publish into the store (``lamina.batch.store_publish.
publish_to_store``) on the views of N generated transactions (default
1M; the master dataset of ``benchmarks/views.py``, cached under
``.lamina/bench/``, ``default_cutoff``). Per round: the views job
(``run_batch_views(force=True)``: tiles and their one Delta commit) --
THE REFERENCE, the Delta publish of the same view -- then
``publish_to_store`` of that views version into a fresh SQLite store and
a fresh Redis database (daily publish: ``H = T + 2 d``). Its time is split
into building the records in Spark (reading the Delta version's tiles
that a record can use, partitioned and sorted by card,
``build_batch_record`` per card in ``mapInArrow``; persisted and counted)
and the store part (streaming the records to the driver,
``publish_batch``'s writes and switch, ``drop_realtime_before``). Spark
``local[2]`` with Lamina's local settings; nothing pinned (Spark uses both
cores); ROUNDS rounds, the best of each figure.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.common import BenchmarkError, fmt_ratio
from benchmarks.machine import (
    BENCH_CORE,
    BROKER_CORE,
    can_pin,
    cpu_steal,
    cpu_times,
    describe_machine,
    git_commit,
    load_average,
    pin_pid_threads,
    pin_self,
)
from benchmarks.report import Row, append_section, render_section

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "docs" / "benchmarks.md"
DEFAULT_TRANSACTIONS = 150_000
QUICK_TRANSACTIONS = 20_000
DAYS = 30
WRITE_BATCH = 500
LOOKUPS = 4000
QUICK_LOOKUPS = 1000
TARGET_P99_MS = 3.0
STORES = ("sqlite", "redis")
ROUNDS = 2


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- the data ----------------------------------------------------------------------


@dataclass
class TileData:
    """What every store gets: batch records, realtime tiles, lookups."""

    transactions: int
    cards: list[str]
    cutoff_ms: int
    horizon_ms: int
    now_ms: int
    records: list[Any]  # BatchRecord
    rows: list[Any]  # TileRow
    record_bytes: int
    seconds: float

    def describe(self) -> str:
        return (f"{self.transactions:,} transactions of {len(self.cards):,} cards over {DAYS} "
                f"days; {len(self.records):,} batch records (mean "
                f"{self.record_bytes / max(1, len(self.records)):,.0f} B), {len(self.rows):,} "
                f"realtime tiles over 3 hops; built in {self.seconds:.0f} s (not a figure)")


def prepare_data(transactions: int) -> TileData:
    import orjson

    from lamina.generator import KIND_VALID, GeneratorConfig, generate
    from lamina.schemas.card_views import CARD_VIEWS
    from lamina.schemas.view_definitions import DAY_MS, HOUR_MS, build_tiles
    from lamina.stores import TileRow
    from lamina.stores.codec import TileCodec
    from lamina.stores.lookup import batch_records, horizon_ms

    started = time.monotonic()
    config = GeneratorConfig(seed=42, transactions=transactions,
                             cards=max(10, transactions // 50), days=float(DAYS))
    events = [payload for record in generate(config) if record.kind == KIND_VALID
              for payload in (orjson.loads(record.value),)
              if payload.get("event_type") == "transaction"]
    cutoff = config.start + (DAYS - 2) * DAY_MS
    now = cutoff + 20 * HOUR_MS
    group = CARD_VIEWS
    before = [e for e in events if e["event_time"] < cutoff]
    realtime = [e for e in events if cutoff <= e["event_time"] < now]
    horizon = horizon_ms(cutoff, DAY_MS, slack=0.0)
    records = list(batch_records(group, {h: build_tiles(group, before, h) for h in group.hops()},
                                 cutoff, horizon))
    codec = TileCodec(group)
    rows = [TileRow(group.name, entity, hop, start, codec.encode(hop, partials))
            for hop in group.hops()
            for (entity, start), partials in build_tiles(group, realtime, hop).items()]
    random.Random(1).shuffle(rows)  # as a speed layer writes them: cards interleaved
    cards = sorted({str(e["card_id"]) for e in events})
    return TileData(len(events), cards, cutoff, horizon, now, records, rows,
                    sum(len(r.payload) for r in records), time.monotonic() - started)


# -- redis-server ------------------------------------------------------------------------


@contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[str, int]]:
    """Debian's redis-server on a free loopback port, no persistence;
    yields (url, pid) and stops it."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchmarkError("redis-server is not installed: apt-get install -y redis-server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    log = (workdir / "redis.log").open("ab")
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--daemonize", "no", "--dir",
                                str(workdir)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise BenchmarkError(
                        f"redis-server did not start; see {workdir}/redis.log") from None
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0", process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


# -- measuring ---------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    items: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")


def _quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Latencies:
    """Per-call wall times and this thread's CPU times, in seconds."""

    samples: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def quantile(self, q: float) -> float:
        return _quantile(self.samples, q)

    @property
    def rate(self) -> float:
        return len(self.samples) / sum(self.samples)

    def describe(self) -> str:
        return (f"p50 {self.quantile(0.5) * 1e3:.3f} ms, p99 {self.quantile(0.99) * 1e3:.3f} ms "
                f"(CPU p50 {_quantile(self.cpu, 0.5) * 1e3:.3f} ms)")


@dataclass
class StoreResults:
    name: str
    version: str
    publish: Rate
    publish_raw: Rate
    write: Rate
    write_raw: Rate
    raw_read: Latencies
    snapshot: Latencies
    features: Latencies
    tiles_per_lookup: list[int]
    records_per_lookup: float
    features_p99s: list[float]  # every round's
    write_rates: list[float]  # every round's


def _timed(function: Callable[[], object], items: int) -> Rate:
    started = time.perf_counter()
    function()
    return Rate(items, time.perf_counter() - started)


def measure_store(name: str, data: TileData, workdir: Path, lookups: int,
                  url: str | None = None) -> StoreResults:
    from lamina.schemas.card_views import CARD_VIEWS
    from lamina.stores import BatchView, open_store
    from lamina.stores.base import realtime_ranges
    from lamina.stores.lookup import FeatureLookup, definition_fingerprint

    options: dict[str, Any] = ({"path": str(workdir / "tiles.db")} if name == "sqlite"
                               else {"url": url})
    store = open_store(name, **options)
    group = CARD_VIEWS
    view = BatchView(group=group.name, cutoff_ms=data.cutoff_ms, horizon_ms=data.horizon_ms,
                     batch_version=1, definition=definition_fingerprint(group))
    raw = RawStore(name, options)
    try:
        publishes: list[tuple[Rate, Rate]] = []
        writes: list[tuple[Rate, Rate]] = []
        reads: list[tuple[Latencies, Latencies, Latencies]] = []
        tiles_seen: list[int] = []
        records_seen = 0
        for round_no in range(ROUNDS):
            publish_raw = _timed(lambda: raw.bulk_records(data.records), len(data.records))
            publish = _timed(lambda: store.publish_batch(view, data.records),
                             len(data.records))
            publishes.append((publish, publish_raw))
            say(f"{name}: publish {publish.rate:,.0f} records/s (raw {publish_raw.rate:,.0f})")
            base = round_no * len(data.rows)

            def write_all(base: int = base) -> None:
                for i in range(0, len(data.rows), WRITE_BATCH):
                    store.write_tiles(data.rows[i:i + WRITE_BATCH], consumer="bench",
                                      offsets={("events.raw", 0): base + i})

            def write_raw() -> None:
                for i in range(0, len(data.rows), WRITE_BATCH):
                    raw.tiles(data.rows[i:i + WRITE_BATCH])

            write_raw_rate = _timed(write_raw, len(data.rows))
            write = _timed(write_all, len(data.rows))
            writes.append((write, write_raw_rate))
            say(f"{name}: write_tiles {write.rate:,.0f} tiles/s "
                f"(raw {write_raw_rate.rate:,.0f})")

            published = store.current_view(group.name)
            if published is None:
                raise BenchmarkError(f"{name}: nothing published after publish_batch")
            lookup = FeatureLookup(store, group)
            ranges = realtime_ranges(data.cutoff_ms, data.now_ms, lookup.reader.spans)
            rng = random.Random(2)
            raw_read, snapshot_read, features_read = Latencies(), Latencies(), Latencies()
            for _ in range(lookups):
                card = rng.choice(data.cards)
                steps: list[tuple[Latencies, Callable[[], Any]]] = [
                    (raw_read, functools.partial(raw.read, published.generation, card, ranges)),
                    (snapshot_read, functools.partial(lookup.snapshot, card, data.now_ms)),
                    (features_read, functools.partial(lookup.features, card, data.now_ms)),
                ]
                rng.shuffle(steps)
                for latencies, call in steps:
                    cpu_started = time.thread_time()
                    started = time.perf_counter()
                    result = call()
                    latencies.samples.append(time.perf_counter() - started)
                    latencies.cpu.append(time.thread_time() - cpu_started)
                    if latencies is snapshot_read and round_no == 0:
                        tiles_seen.append(len(result.tiles))
                        records_seen += result.batch_record is not None
            reads.append((raw_read, snapshot_read, features_read))
            say(f"{name}: snapshot {snapshot_read.describe()}, features "
                f"{features_read.describe()}, raw {raw_read.describe()}")
        version = (f"SQLite {sqlite3.sqlite_version}" if name == "sqlite"
                   else f"redis-server {raw.server_version()}, redis-py "
                        f"{metadata.version('redis')}")
        # Best of the rounds: rates by the store's rate, reads by the round
        # whose features p99 is lowest (its raw read ran beside it).
        publish, publish_raw = max(publishes, key=lambda pair: pair[0].rate)
        write, write_raw_rate = max(writes, key=lambda pair: pair[0].rate)
        raw_read, snapshot_read, features_read = min(reads, key=lambda r: r[2].quantile(0.99))
        return StoreResults(name, version, publish, publish_raw, write, write_raw_rate,
                            raw_read, snapshot_read, features_read, tiles_seen,
                            records_seen / lookups,
                            [r[2].quantile(0.99) for r in reads],
                            [pair[0].rate for pair in writes])
    finally:
        raw.close()
        store.close()


class RawStore:
    """The reference: the same records written and read with the bare
    client, no transaction discipline, no view, no decoding."""

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name
        if name == "sqlite":
            self.conn = sqlite3.connect(options["path"], isolation_level=None)
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute("CREATE TABLE IF NOT EXISTS raw_tiles (grp TEXT, entity TEXT, "
                              "hop_ms INTEGER, tile_start INTEGER, partials BLOB, PRIMARY KEY "
                              "(grp, entity, hop_ms, tile_start)) WITHOUT ROWID")
            self.conn.execute("CREATE TABLE IF NOT EXISTS raw_records (entity TEXT PRIMARY KEY, "
                              "payload BLOB) WITHOUT ROWID")
        else:
            import redis

            self.client = redis.Redis.from_url(options["url"])

    def close(self) -> None:
        if self.name == "sqlite":
            self.conn.close()
        else:
            self.client.close()

    def server_version(self) -> str:
        return str(self.client.info("server")["redis_version"])

    def bulk_records(self, records: list[Any], chunk: int = 5000) -> None:
        if self.name == "sqlite":
            for i in range(0, len(records), chunk):
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany("INSERT OR REPLACE INTO raw_records VALUES (?, ?)",
                                      [(r.entity, r.payload) for r in records[i:i + chunk]])
                self.conn.execute("COMMIT")
            return
        pipe = self.client.pipeline(transaction=False)
        for i in range(0, len(records), 1000):
            pipe.hset("raw:records", mapping={r.entity: r.payload for r in records[i:i + 1000]})
        pipe.execute()

    def tiles(self, rows: list[Any]) -> None:
        if self.name == "sqlite":
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(
                "INSERT INTO raw_tiles VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                "partials = excluded.partials",
                [(r.group, r.entity, r.hop_ms, r.tile_start_ms, r.partials) for r in rows])
            self.conn.execute("COMMIT")
            return
        pipe = self.client.pipeline(transaction=True)
        for r in rows:
            pipe.hset("raw:rt", f"{r.hop_ms}:{r.tile_start_ms}:{r.entity}", r.partials)
        pipe.execute()

    def read(self, generation: int, entity: str, ranges: list[tuple[int, int, int]]) -> Any:
        """The same records a snapshot reads, from the store's own tables."""
        if self.name == "sqlite":
            record = self.conn.execute(
                "SELECT payload FROM batch_records WHERE grp = 'card_transactions' AND "
                "generation = ? AND entity = ?", (generation, entity)).fetchone()
            tiles = []
            for hop, first, end in ranges:
                tiles += self.conn.execute(
                    "SELECT tile_start, partials FROM realtime_tiles WHERE grp = "
                    "'card_transactions' AND entity = ? AND hop_ms = ? AND tile_start >= ? AND "
                    "tile_start < ?", (entity, hop, first, end)).fetchall()
            return record, tiles
        fields = [f"{hop}:{s}:{entity}" for hop, first, end in ranges
                  for s in range(first, end, hop)]
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(f"lamina:batch:card_transactions:{generation}", entity)
        pipe.hmget("lamina:rt:card_transactions", fields)
        return pipe.execute()


@dataclass
class TileStoreResults:
    data: TileData
    stores: list[StoreResults]
    pinned: str


def measure_tile_stores(transactions: int, lookups: int, pin: bool = True) -> TileStoreResults:
    data = prepare_data(transactions)
    say(f"tile store data: {data.describe()}")
    workdir = Path(tempfile.mkdtemp(prefix="lamina-bench-stores-"))
    results: list[StoreResults] = []
    cores = set(os.sched_getaffinity(0))
    pinned = ("Nothing pinned (needs cores 0 and 1 and taskset)." if pin else
              "Nothing pinned (--no-pin): redis-server and this process share the cores.")
    try:
        with redis_server(workdir) as (url, pid):
            if pin and can_pin():
                pin_pid_threads(pid, BROKER_CORE)
                pin_self(BENCH_CORE)
                pinned = (f"redis-server pinned to core {BROKER_CORE}, this process (SQLite "
                          f"included) to core {BENCH_CORE}.")
            for name in STORES:
                results.append(measure_store(name, data, workdir, lookups, url))
    finally:
        os.sched_setaffinity(0, cores)
        shutil.rmtree(workdir, ignore_errors=True)
    return TileStoreResults(data, results, pinned)


# -- publishing from a views table -------------------------------------------------

PUBLISH_TRANSACTIONS = 1_000_000
QUICK_PUBLISH_TRANSACTIONS = 100_000


@dataclass(frozen=True)
class PublishRun:
    store: str
    seconds: float  # publish_to_store, all of it
    records_seconds: float  # Spark: the records, persisted and counted
    store_seconds: float  # streaming them into publish_batch, the switch
    records: int


@dataclass
class PublishResults:
    data: Any  # benchmarks.views.ViewsData
    views_runs: list[Any] = field(default_factory=list)  # benchmarks.views.ViewsRun
    runs: dict[str, list[PublishRun]] = field(default_factory=dict)
    spark_start_s: float | None = None


def measure_publish(transactions: int, rounds: int = ROUNDS) -> PublishResults:
    """``rounds`` rounds of the views job (Delta publish) and then
    ``publish_to_store`` of the same views version into each store."""
    from benchmarks import views as views_bench
    from lamina.batch import spark as lamina_spark
    from lamina.batch.store_publish import publish_to_store
    from lamina.schemas.card_views import CARD_VIEWS
    from lamina.stores import open_store

    data = views_bench.prepare_data(transactions, say)
    say(f"publish data: {data.describe()}")
    results = PublishResults(data, runs={name: [] for name in STORES})
    workdir = Path(tempfile.mkdtemp(prefix="lamina-bench-publish-"))
    views_uri = workdir / "views"
    spark = lamina_spark.spark_session("local[2]", app_name="lamina-bench-publish",
                                       extra_conf={"spark.ui.enabled": "false"})
    results.spark_start_s = lamina_spark.last_start_seconds
    try:
        with redis_server(workdir) as (url, _):
            for round_no in range(1, rounds + 1):
                views_run = views_bench.run_lamina(spark, data, views_uri)
                results.views_runs.append(views_run)
                say(f"round {round_no}: views job {views_run.seconds:.1f} s, "
                    f"{views_run.tiles_out:,} tiles")
                for name in STORES:
                    if name == "sqlite":
                        db = workdir / f"tiles-{round_no}.db"
                        store = open_store("sqlite", path=str(db))
                    else:
                        store = open_store("redis", url=url, prefix=f"bench{round_no}")
                    try:
                        began = time.perf_counter()
                        outcome = publish_to_store(spark, str(views_uri), store, CARD_VIEWS)
                        seconds = time.perf_counter() - began
                    finally:
                        store.close()
                    if outcome.status != "published" or outcome.records is None:
                        raise BenchmarkError(f"publish_to_store into {name} returned "
                                             f"{outcome.status!r}: {outcome.reason}")
                    run = PublishRun(name, seconds, outcome.records_seconds,
                                     outcome.store_seconds, outcome.records)
                    results.runs[name].append(run)
                    say(f"round {round_no}: publish to {name} {seconds:.1f} s ({run.records:,} "
                        f"records: Spark {run.records_seconds:.1f} s, store "
                        f"{run.store_seconds:.1f} s)")
    finally:
        spark.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def publish_rows(results: PublishResults) -> list[Row]:
    views = min(results.views_runs, key=lambda r: r.seconds)
    reference = f"views job (Delta publish) {views.seconds:.1f} s"
    rows = [Row("views job: tiles + one Delta commit (run_batch_views, reference)",
                f"{views.seconds:.1f} s", "—", "1.00×", "—",
                f"{views.rows_in:,} transaction rows → {views.tiles_out:,} tiles; best of "
                f"{len(results.views_runs)}: "
                + ", ".join(f"{r.seconds:.1f} s" for r in results.views_runs))]
    for name, runs in results.runs.items():
        best = min(runs, key=lambda r: r.seconds)
        rows += [
            Row(f"publish into the {name} tile store (publish_to_store)",
                f"{best.seconds:.1f} s ({best.records / best.seconds:,.0f} records/s)",
                reference, fmt_ratio(best.seconds / views.seconds), "—",
                f"{best.records:,} batch records from {views.tiles_out:,} tiles; ratio = its "
                f"time / the views job's; best of {len(runs)}: "
                + ", ".join(f"{r.seconds:.1f} s" for r in runs)),
            Row(f"publish into {name}: records in Spark (mapInArrow, sorted by card)",
                f"{best.records_seconds:.1f} s", f"publish {best.seconds:.1f} s",
                f"{best.records_seconds / best.seconds:.0%}", "—",
                "read the Delta version, the tiles a record can use, build_batch_record per "
                "card; persisted and counted"),
            Row(f"publish into {name}: records to the store, switch, drop",
                f"{best.store_seconds:.1f} s", f"publish {best.seconds:.1f} s",
                f"{best.store_seconds / best.seconds:.0%}", "—",
                "streamed to the driver a partition at a time (toLocalIterator), "
                "publish_batch, drop_realtime_before"),
        ]
    return rows


def publish_notes(results: PublishResults) -> list[str]:
    spark = (f"started in {results.spark_start_s:.1f} s (not timed)"
             if results.spark_start_s is not None else "")
    return [
        f"Publish data: {results.data.describe()}; cutoff {results.data.cutoff_ms} (epoch ms).",
        f"Spark `local[2]` with Lamina's local settings, {spark}; nothing pinned. Each round "
        "runs the views job, then publishes that views version into a fresh SQLite file and "
        "a fresh Redis key prefix.",
    ]


# -- the report --------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def tile_store_rows(results: TileStoreResults) -> list[Row]:
    from lamina.schemas.card_views import CARD_VIEWS

    rows = []
    for r in results.stores:
        tiles = r.tiles_per_lookup
        rows += [
            Row(f"tile store {r.name}: publish_batch", f"{r.publish.rate:,.0f} records/s",
                f"raw bulk write {r.publish_raw.rate:,.0f} records/s",
                fmt_ratio(r.publish.rate / r.publish_raw.rate), "—",
                f"{r.publish.items:,} batch records in {r.publish.seconds:.2f} s, then the "
                "switch and the old generation's removal"),
            Row(f"tile store {r.name}: write_tiles ({WRITE_BATCH} tiles + offsets per "
                "transaction)", f"{r.write.rate:,.0f} tiles/s",
                f"raw {'executemany' if r.name == 'sqlite' else 'MULTI/EXEC'} "
                f"{r.write_raw.rate:,.0f} tiles/s", fmt_ratio(r.write.rate / r.write_raw.rate),
                "—", f"{r.write.items:,} realtime tiles in {r.write.seconds:.2f} s; best of "
                f"{len(r.write_rates)}: " + ", ".join(f"{x:,.0f}" for x in r.write_rates)),
            Row(f"tile store {r.name}: read_entity (snapshot)",
                f"{r.snapshot.rate:,.0f} reads/s; {r.snapshot.describe()}",
                f"raw read {r.raw_read.rate:,.0f} reads/s; {r.raw_read.describe()}",
                fmt_ratio(r.snapshot.rate / r.raw_read.rate), "—",
                f"{len(tiles):,} random cards at cutoff + 20 h: 1 batch record (present for "
                f"{r.records_per_lookup:.0%}) + {statistics.mean(tiles):.1f} realtime tiles "
                f"(max {max(tiles)})"),
            Row(f"tile store {r.name}: features lookup (FeatureLookup.features)",
                f"{r.features.rate:,.0f} lookups/s; {r.features.describe()}",
                f"raw read {r.raw_read.rate:,.0f} reads/s; {r.raw_read.describe()}",
                fmt_ratio(r.features.rate / r.raw_read.rate),
                f"p99 ≤ {TARGET_P99_MS:.0f} ms (whole request)",
                f"{'met' if r.features.quantile(0.99) * 1e3 <= TARGET_P99_MS else 'NOT met'} "
                f"for the store + lookup part; {len(CARD_VIEWS.feature_names())} features of "
                "CARD_VIEWS decoded, merged and presented; the round with the lower p99 of "
                f"{len(r.features_p99s)}: " + ", ".join(f"{x * 1e3:.2f} ms"
                                                      for x in r.features_p99s)),
        ]
    return rows


def tile_store_notes(results: TileStoreResults) -> list[str]:
    from lamina.schemas.card_views import CARD_VIEWS
    from lamina.stores.lookup import realtime_spans

    # Every tile of the longest window at each hop (lifetime: the history).
    naive = sum((span or DAYS * 86_400_000) // hop + 1
                for hop, span in realtime_spans(CARD_VIEWS).items())
    return [
        results.pinned,
        "Versions: " + "; ".join(r.version for r in results.stores) + ".",
        "Each read figure is one call at a time from this process (no concurrency): the "
        "raw read, the snapshot and the features lookup of the same card run back to back "
        "in a random order. Latencies are wall time per call; CPU is this thread's CPU time "
        "per call (for Redis without the server's), which a busy machine does not inflate.",
        f"A lookup reads one batch record and the realtime tiles its windows need; reading "
        f"every tile of the longest window per hop instead would be about {naive} tiles per "
        "card at the hops 5 min, 1 h and 1 d.",
    ]


def render(results: TileStoreResults | None, published: PublishResults | None, command: str,
           commit: str, started: datetime, load_before: str, seconds: float,
           cpu_before: tuple[int, ...] = ()) -> str:
    facts = [
        ("Date", started.strftime("%Y-%m-%d %H:%M UTC")),
        ("Commit", f"`{commit}`"),
        ("Command", f"`{command}`"),
        ("Machine", describe_machine().describe()),
        ("Load average (1/5/15 min)", f"{load_before} at start, {load_average()} at end"),
        ("CPU time", cpu_steal(cpu_before)),
    ]
    rows: list[Row] = []
    notes: list[str] = []
    parts = []
    if results is not None:
        facts.append(("Data", results.data.describe()))
        rows += tile_store_rows(results)
        notes += tile_store_notes(results)
        parts.append(f"tile stores over {results.data.transactions:,} transactions")
    if published is not None:
        rows += publish_rows(published)
        notes += publish_notes(published)
        parts.append(f"store publish over {published.data.rows:,} transactions")
    facts.append(("Duration", f"{seconds:.0f} s"))
    title = f"{started:%Y-%m-%d %H:%M} UTC · {'; '.join(parts)} · `{commit}`"
    return render_section(title, facts, rows, notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tile_store",
                                     description="Tile-store write and read rates.")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_TRANSACTIONS:,} transactions, {QUICK_LOOKUPS:,} lookups")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin redis-server and this process to cores 1 and 0")
    parser.add_argument("--no-append", action="store_true",
                        help="print the table only; do not append it to docs/benchmarks.md")
    parser.add_argument("--only", choices=["stores", "publish"],
                        help="only the store figures, or only publishing from a views table "
                             "(default: both)")
    parser.add_argument("--publish-transactions", type=int, default=None, metavar="N",
                        help=f"transactions behind the published views (default "
                             f"{PUBLISH_TRANSACTIONS:,}; --quick {QUICK_PUBLISH_TRANSACTIONS:,})")
    args = parser.parse_args(argv)
    publish_n = args.publish_transactions or (QUICK_PUBLISH_TRANSACTIONS if args.quick
                                              else PUBLISH_TRANSACTIONS)
    if publish_n < 1000:
        parser.error("--publish-transactions must be at least 1000")
    started = datetime.now(UTC)
    load_before = load_average()
    cpu_before = cpu_times()
    began = time.monotonic()
    commit = git_commit(REPO)
    command = " ".join([".venv/bin/python", "-m", "benchmarks.tile_store",
                        *(sys.argv[1:] if argv is None else argv)])
    results: TileStoreResults | None = None
    published: PublishResults | None = None
    try:
        if args.only in (None, "stores"):
            results = measure_tile_stores(
                QUICK_TRANSACTIONS if args.quick else DEFAULT_TRANSACTIONS,
                QUICK_LOOKUPS if args.quick else LOOKUPS, pin=not args.no_pin)
        if args.only in (None, "publish"):
            published = measure_publish(publish_n)
    except BenchmarkError as exc:
        say(f"benchmark failed: {exc}")
        return 1
    section = render(results, published, command, commit, started, load_before,
                     time.monotonic() - began, cpu_before)
    print(section)
    if not args.no_append:
        append_section(REPORT, section)
        say(f"appended to {REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
