"""The embedded tile store: one SQLite file in WAL mode, shared by processes.

Options (``open_store("sqlite", path=..., ...)``)
-------------------------------------------------
``path``
    The database file (created with its tables if missing; its folder must
    exist). Every process and thread that opens the same path shares the
    store. ``:memory:`` is refused: each connection would get its own.
``busy_timeout_ms`` (5000)
    How long a writer waits for another writer's transaction before
    failing with ``StoreError`` (SQLite has one writer at a time; readers
    never wait in WAL mode).
``synchronous`` ("NORMAL")
    SQLite's ``synchronous`` pragma. In WAL mode NORMAL loses no commit
    when a *process* dies (``kill -9``), only on power loss or an OS crash,
    and then tiles and offsets go back together (never one without the
    other). FULL survives power loss too (measured here: about the same
    rate, ARCHITECTURE.md).
``wal_autocheckpoint`` (1000)
    Pages in the WAL before a checkpoint (SQLite's default). 25000 wrote
    ~1.6x faster here with 0.3-0.6 s checkpoint stalls.
``publish_chunk`` (5000)
    Batch records per transaction while publishing, and rows per
    transaction when removing old records or dropping tiles: a publish of
    a million records never blocks the speed layer's writes for long.
``scores_per_entity`` (5)
    Score records kept per entity (``latest_scores``); older ones are
    deleted in the write that adds newer ones.

Tables: ``realtime_tiles`` (group, entity, hop_ms, tile_start) -> partials;
``consumer_offsets`` (consumer, topic, partition) -> position;
``batch_records`` (group, generation, entity) -> payload;
``batch_views`` (group) -> the published view, whose ``generation`` says
which records are current; ``latest_scores`` (entity, event_id,
model_version) -> the score record (with its event time, for the order).
A publish writes its records under a new generation (invisible: no view
points at it), then updates the one ``batch_views`` row in one
transaction. A lookup reads the view row, the
record and the tiles in one read transaction, which in WAL mode is one
snapshot of the database: it sees the switch entirely or not at all.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any, Final

from lamina.errors import ConfigError
from lamina.logs import get_logger
from lamina.schemas.scores import ScoreRecord, decode_score
from lamina.stores.base import (
    DEFAULT_SCORES_PER_ENTITY,
    BatchRecord,
    BatchView,
    EntitySnapshot,
    NoPublishedView,
    Offsets,
    OffsetsWentBackwards,
    PublishedView,
    RealtimeSpans,
    ScoreRow,
    StoreError,
    StoreUnavailable,
    TileRow,
    TileSlot,
    TileStore,
    backwards_message,
    check_as_of,
    check_drop,
    check_group,
    check_offsets,
    check_scores_per_entity,
    check_switch,
    now_ms,
    published_view,
    realtime_ranges,
    score_rows,
)

log = get_logger(__name__)

FORMAT: Final = "lamina.tile_store.sqlite/1"
SYNCHRONOUS: Final = ("OFF", "NORMAL", "FULL", "EXTRA")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS store_meta (
  key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS realtime_tiles (
  grp TEXT NOT NULL, entity TEXT NOT NULL, hop_ms INTEGER NOT NULL,
  tile_start INTEGER NOT NULL, partials BLOB NOT NULL,
  PRIMARY KEY (grp, entity, hop_ms, tile_start)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consumer_offsets (
  consumer TEXT NOT NULL, topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL,
  position INTEGER NOT NULL,
  PRIMARY KEY (consumer, topic, kafka_partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batch_generations (
  grp TEXT NOT NULL, generation INTEGER NOT NULL, started_at_ms INTEGER NOT NULL,
  PRIMARY KEY (grp, generation)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batch_records (
  grp TEXT NOT NULL, generation INTEGER NOT NULL, entity TEXT NOT NULL,
  payload BLOB NOT NULL,
  PRIMARY KEY (grp, generation, entity)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batch_views (
  grp TEXT PRIMARY KEY, generation INTEGER NOT NULL, cutoff_ms INTEGER NOT NULL,
  horizon_ms INTEGER NOT NULL, batch_version INTEGER NOT NULL,
  definition TEXT NOT NULL, lineage TEXT NOT NULL,
  published_at_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS latest_scores (
  entity TEXT NOT NULL, event_id TEXT NOT NULL, model_version INTEGER NOT NULL,
  event_time INTEGER NOT NULL, record BLOB NOT NULL,
  PRIMARY KEY (entity, event_id, model_version)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS latest_scores_by_time
  ON latest_scores (entity, event_time, event_id, model_version);
"""
_SCORES_ORDER: Final = "ORDER BY event_time DESC, event_id DESC, model_version DESC"
# Keep the newest scores_per_entity of one entity, delete the rest.
_TRIM_SCORES: Final = (
    "DELETE FROM latest_scores WHERE entity = ?1 AND (event_time, event_id, model_version) "
    "NOT IN (SELECT event_time, event_id, model_version FROM latest_scores WHERE entity = ?1 "
    f"{_SCORES_ORDER} LIMIT ?2)")
_VIEW_COLUMNS: Final = ("generation, cutoff_ms, horizon_ms, batch_version, definition, lineage, "
                        "published_at_ms")
# read_entity's one statement: the view row (kind 0), the entity's record
# of that view's generation (1), and its realtime tiles of every hop (2),
# all read from one snapshot, and a consumer's offsets when asked (3). Seven
# value columns, the last the payload. The tiles are one range of the
# primary key, (grp, entity), each hop with its own lower bound: one seek,
# not one per hop (41 -> 31 us for the statement with three hops, measured
# in-process on the serving benchmark's store).
_ENTITY_VIEW: Final = f"SELECT 0, {_VIEW_COLUMNS} FROM batch_views WHERE grp = ?"
_ENTITY_RECORD: Final = ("SELECT 1, NULL, NULL, NULL, NULL, NULL, NULL, r.payload "
                         "FROM batch_records r JOIN batch_views v ON v.grp = r.grp "
                         "AND v.generation = r.generation WHERE r.grp = ? AND r.entity = ?")
_ENTITY_TILES: Final = ("SELECT 2, t.hop_ms, t.tile_start, NULL, NULL, NULL, NULL, t.partials "
                        "FROM realtime_tiles t JOIN batch_views v ON v.grp = t.grp "
                        "WHERE t.grp = ? AND t.entity = ? AND t.tile_start >= v.cutoff_ms "
                        "AND t.tile_start < ? AND ({hops})")
_ENTITY_TILE_HOP: Final = "(t.hop_ms = ? AND t.tile_start >= ?)"
_ENTITY_OFFSETS: Final = ("SELECT 3, topic, kafka_partition, NULL, NULL, NULL, NULL, position "
                          "FROM consumer_offsets WHERE consumer = ?")
_NO_BOUND: Final = -(2**62)
_TILE_RANGE: Final = ("SELECT hop_ms, tile_start, partials FROM realtime_tiles "
                      "WHERE grp = ? AND entity = ? AND hop_ms = ? AND tile_start >= ? "
                      "AND tile_start < ?")


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"sqlite store: {name} must be a positive integer, got {value!r}")
    return value


class SqliteTileStore(TileStore):
    """``TileStore`` in one SQLite file (see the module docstring)."""

    name = "sqlite"

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000,
                 synchronous: str = "NORMAL", wal_autocheckpoint: int = 1000,
                 publish_chunk: int = 5000,
                 scores_per_entity: int = DEFAULT_SCORES_PER_ENTITY) -> None:
        if not isinstance(path, str | Path) or str(path) in ("", ":memory:"):
            raise ConfigError(f"sqlite store: path must be a database file, got {path!r} "
                              "(an in-memory database cannot be shared)")
        if not isinstance(synchronous, str) or synchronous.upper() not in SYNCHRONOUS:
            raise ConfigError(f"sqlite store: synchronous must be one of "
                              f"{', '.join(SYNCHRONOUS)}, got {synchronous!r}")
        self.path = Path(path)
        self.busy_timeout_ms = _positive("busy_timeout_ms", busy_timeout_ms)
        self.synchronous = synchronous.upper()
        self.wal_autocheckpoint = _positive("wal_autocheckpoint", wal_autocheckpoint)
        self.publish_chunk = _positive("publish_chunk", publish_chunk)
        self.scores_per_entity = check_scores_per_entity("sqlite", scores_per_entity)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._views: dict[str, tuple[tuple[Any, ...], PublishedView]] = {}
        self._range_sql: dict[int, str] = {}
        self._entity_sql: dict[tuple[int, bool], str] = {}
        self._setup(self._conn())

    # -- connections and transactions ------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (one per thread: sqlite3 connections are
        not to be used by two threads at once)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise StoreError(f"sqlite store {self.path} is closed")
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000,
                                   isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreUnavailable(f"sqlite store {self.path}: WAL mode refused (journal "
                                       f"mode {mode}); use a local file system")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {self.wal_autocheckpoint}")
        except sqlite3.Error as error:
            raise StoreUnavailable(f"sqlite store {self.path} cannot be opened: {error}; check "
                                   "that its folder exists and is writable") from None
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection, *, write: bool) -> Iterator[None]:
        """One transaction: BEGIN IMMEDIATE (takes the write lock now, so a
        write never fails half-way on a busy database) or a read snapshot."""
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as error:
            raise StoreError(f"sqlite store {self.path}: {error} (another writer held it for "
                             f"more than {self.busy_timeout_ms} ms)") from None
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _setup(self, conn: sqlite3.Connection) -> None:
        with self._transaction(conn, write=True):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO store_meta VALUES ('format', ?)", (FORMAT,))
            stored = conn.execute("SELECT value FROM store_meta WHERE key = 'format'").fetchone()
        if stored[0] != FORMAT:
            raise StoreError(f"sqlite store {self.path} has format {stored[0]!r}, this code "
                             f"reads {FORMAT!r}; use a new file")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # -- realtime tiles and offsets --------------------------------------------

    def write_tiles(self, rows: Iterable[TileRow], *, consumer: str | None = None,
                    offsets: Offsets | None = None,
                    scores: Iterable[ScoreRecord | ScoreRow] | None = None) -> int:
        checked = check_offsets(consumer, offsets)
        scored = score_rows(scores)
        conn = self._conn()
        count = 0

        def parameters() -> Iterator[tuple[str, str, int, int, bytes]]:
            nonlocal count
            for row in rows:
                if not isinstance(row, TileRow):
                    raise ValueError(f"write_tiles takes TileRow values, got {row!r}")
                count += 1
                yield row.group, row.entity, row.hop_ms, row.tile_start_ms, row.partials

        with self._transaction(conn, write=True):
            if checked:
                stored = {(topic, partition): position for topic, partition, position in
                          conn.execute("SELECT topic, kafka_partition, position FROM "
                                       "consumer_offsets WHERE consumer = ?", (consumer,))}
                for key, position in sorted(checked.items()):
                    if key in stored and position < stored[key]:
                        raise OffsetsWentBackwards(
                            backwards_message(str(consumer), *key, stored[key], position))
            conn.executemany(
                "INSERT INTO realtime_tiles VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE "
                "SET partials = excluded.partials", parameters())
            if checked:
                conn.executemany(
                    "INSERT INTO consumer_offsets VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE "
                    "SET position = excluded.position",
                    [(consumer, topic, partition, position)
                     for (topic, partition), position in checked.items()])
            if scored:
                conn.executemany(
                    "INSERT INTO latest_scores VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE "
                    "SET event_time = excluded.event_time, record = excluded.record",
                    [(r.entity, r.event_id, r.model_version, r.event_time_ms, r.record)
                     for r in scored])
                conn.executemany(_TRIM_SCORES, [(entity, self.scores_per_entity)
                                                for entity in sorted({r.entity for r in scored})])
        return count

    def latest_scores(self, entity: str) -> list[ScoreRecord]:
        rows = self._conn().execute(
            f"SELECT record FROM latest_scores WHERE entity = ? {_SCORES_ORDER} LIMIT ?",
            (entity, self.scores_per_entity)).fetchall()
        return [decode_score(record) for (record,) in rows]

    def read_offsets(self, consumer: str) -> dict[tuple[str, int], int]:
        rows = self._conn().execute(
            "SELECT topic, kafka_partition, position FROM consumer_offsets WHERE consumer = ?",
            (consumer,)).fetchall()
        return {(topic, partition): position for topic, partition, position in rows}

    def read_tiles(self, group: str, entity: str, slots: Iterable[TileSlot]
                   ) -> dict[TileSlot, bytes]:
        conn = self._conn()
        found: dict[TileSlot, bytes] = {}
        with self._transaction(conn, write=False):
            for hop, start in slots:
                row = conn.execute(
                    "SELECT partials FROM realtime_tiles WHERE grp = ? AND entity = ? AND "
                    "hop_ms = ? AND tile_start = ?", (group, entity, hop, start)).fetchone()
                if row is not None:
                    found[(hop, start)] = row[0]
        return found

    def drop_realtime_before(self, group: str, cutoff_ms: int) -> int:
        check_group(group)
        check_drop(group, self.current_view(group), cutoff_ms)
        conn = self._conn()
        dropped = 0
        after: str | None = None
        while True:
            # One short transaction per slice of entities (primary-key order).
            with self._transaction(conn, write=True):
                if after is None:
                    sql = ("SELECT DISTINCT entity FROM realtime_tiles WHERE grp = ? "
                           "ORDER BY entity LIMIT ?")
                    entities = conn.execute(sql, (group, self.publish_chunk)).fetchall()
                else:
                    sql = ("SELECT DISTINCT entity FROM realtime_tiles WHERE grp = ? AND "
                           "entity > ? ORDER BY entity LIMIT ?")
                    entities = conn.execute(sql, (group, after, self.publish_chunk)).fetchall()
                if not entities:
                    break
                first, last = entities[0][0], entities[-1][0]
                cursor = conn.execute(
                    "DELETE FROM realtime_tiles WHERE grp = ? AND entity >= ? AND entity <= ? "
                    "AND tile_start < ?", (group, first, last, cutoff_ms))
                dropped += cursor.rowcount
                after = last
        log.info("realtime tiles dropped", store=self.name, group=group, cutoff_ms=cutoff_ms,
                 tiles=dropped)
        return dropped

    # -- batch views -------------------------------------------------------------

    def _view_from_row(self, group: str, row: tuple[Any, ...]) -> PublishedView:
        cached = self._views.get(group)
        if cached is not None and cached[0] == row:
            return cached[1]
        generation, cutoff, horizon, version, definition, lineage, published_at = row
        view = PublishedView(group=group, cutoff_ms=cutoff, horizon_ms=horizon,
                             batch_version=version, definition=definition, lineage=lineage,
                             generation=generation, published_at_ms=published_at)
        self._views[group] = (row, view)
        return view

    def _view_row(self, conn: sqlite3.Connection, group: str) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = conn.execute(
            f"SELECT {_VIEW_COLUMNS} FROM batch_views WHERE grp = ?", (group,)).fetchone()
        return row

    def current_view(self, group: str) -> PublishedView | None:
        row = self._view_row(self._conn(), group)
        return None if row is None else self._view_from_row(group, row)

    def publish_batch(self, view: BatchView, records: Iterable[BatchRecord]) -> PublishedView:
        conn = self._conn()
        group = view.group
        with self._transaction(conn, write=True):
            newest = conn.execute(
                "SELECT MAX(generation) FROM (SELECT generation FROM batch_generations WHERE "
                "grp = ? UNION ALL SELECT generation FROM batch_views WHERE grp = ?)",
                (group, group)).fetchone()[0]
            generation = (newest or 0) + 1
            conn.execute("INSERT INTO batch_generations VALUES (?, ?, ?)",
                         (group, generation, now_ms()))
        written = 0
        iterator = iter(records)
        while True:
            chunk = [(group, generation, r.entity, r.payload)
                     for r in islice(iterator, self.publish_chunk)]
            if not chunk:
                break
            with self._transaction(conn, write=True):
                conn.executemany("INSERT OR REPLACE INTO batch_records VALUES (?, ?, ?, ?)",
                                 chunk)
            written += len(chunk)
        published_at = now_ms()
        with self._transaction(conn, write=True):
            row = self._view_row(conn, group)
            if row is not None:
                current = self._view_from_row(group, row)
                check_switch(current, view, generation)
            conn.execute(
                f"INSERT OR REPLACE INTO batch_views (grp, {_VIEW_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (group, generation, view.cutoff_ms, view.horizon_ms, view.batch_version,
                 view.definition, view.lineage, published_at))
        published = published_view(view, generation, published_at)
        log.info("batch view published", store=self.name, group=group,
                 cutoff_ms=view.cutoff_ms, horizon_ms=view.horizon_ms,
                 batch_version=view.batch_version, generation=generation, records=written)
        self._remove_generations_before(conn, group, generation)
        return published

    def _remove_generations_before(self, conn: sqlite3.Connection, group: str,
                                   generation: int) -> None:
        """Delete the records of every older generation (the previous view's,
        and any a crashed publish left), a chunk per transaction. Readers
        never point at them any more."""
        old = [g for (g,) in conn.execute(
            "SELECT generation FROM batch_generations WHERE grp = ? AND generation < ?",
            (group, generation))]
        for stale in old:
            while True:
                with self._transaction(conn, write=True):
                    cursor = conn.execute(
                        "DELETE FROM batch_records WHERE grp = ? AND generation = ? AND entity IN "
                        "(SELECT entity FROM batch_records WHERE grp = ? AND generation = ? "
                        "LIMIT ?)", (group, stale, group, stale, self.publish_chunk))
                    if cursor.rowcount == 0:
                        conn.execute("DELETE FROM batch_generations WHERE grp = ? AND "
                                     "generation = ?", (group, stale))
                        break

    def read_entity(self, group: str, entity: str, as_of_ms: int,
                    spans: RealtimeSpans, *, offsets_of: str | None = None) -> EntitySnapshot:
        # One SELECT: in autocommit mode a statement is its own read
        # transaction, one snapshot of the database (the view, its record
        # and the tiles, whatever a publish or a speed layer commits
        # meanwhile), without the BEGIN and COMMIT round of three more.
        hops = sorted(spans.items())
        shape = (len(hops), offsets_of is not None)
        sql = self._entity_sql.get(shape)
        if sql is None:
            tiles_sql = [_ENTITY_TILES.format(hops=" OR ".join([_ENTITY_TILE_HOP] * len(hops)))
                         ] if hops else []
            sql = self._entity_sql[shape] = " UNION ALL ".join(
                [_ENTITY_VIEW, _ENTITY_RECORD, *tiles_sql,
                 *([_ENTITY_OFFSETS] if offsets_of is not None else [])])
        parameters: list[Any] = [group, group, entity]
        if hops:
            parameters += (group, entity, as_of_ms)
        for hop, lookback in hops:
            # realtime_ranges: from the later of the cutoff and the longest
            # window's start at this hop, up to the head.
            parameters += (hop, _NO_BOUND if lookback is None
                           else (as_of_ms - lookback) // hop * hop)
        if offsets_of is not None:
            parameters.append(offsets_of)
        view_row: tuple[Any, ...] | None = None
        record: bytes | None = None
        tiles: dict[TileSlot, bytes] = {}
        offsets: dict[tuple[str, int], int] = {}
        for kind, *columns, data in self._conn().execute(sql, parameters):
            if kind == 0:
                view_row = (*columns, data)
            elif kind == 1:
                record = data
            elif kind == 2:
                tiles[(columns[0], columns[1])] = data
            else:
                offsets[(columns[0], columns[1])] = data
        if view_row is None:
            raise NoPublishedView(f"view {group!r}: no batch view is published in "
                                  f"{self.path}; run the batch layer first")
        view = self._view_from_row(group, view_row)
        check_as_of(view, as_of_ms)
        return EntitySnapshot(view, entity, as_of_ms, record, tiles, offsets)

    def read_entities(self, group: str, entities: Iterable[str], as_of_ms: int,
                      spans: RealtimeSpans) -> list[EntitySnapshot]:
        conn = self._conn()
        snapshots: list[EntitySnapshot] = []
        # One read transaction: in WAL mode one snapshot of the database,
        # whatever a publish commits meanwhile.
        with self._transaction(conn, write=False):
            view: PublishedView | None = None
            for entity in entities:
                if view is None:
                    view = self._view_at(conn, group, as_of_ms)
                snapshots.append(self._entity_at(conn, view, entity, as_of_ms, spans))
        return snapshots

    def _view_at(self, conn: sqlite3.Connection, group: str, as_of_ms: int) -> PublishedView:
        """The published view (inside a read transaction), checked for ``as_of_ms``."""
        row = self._view_row(conn, group)
        if row is None:
            raise NoPublishedView(f"view {group!r}: no batch view is published in "
                                  f"{self.path}; run the batch layer first")
        view = self._view_from_row(group, row)
        check_as_of(view, as_of_ms)
        return view

    def _entity_at(self, conn: sqlite3.Connection, view: PublishedView, entity: str,
                   as_of_ms: int, spans: RealtimeSpans) -> EntitySnapshot:
        """One entity's record and tiles under ``view`` (inside a read transaction)."""
        group = view.group
        record = conn.execute(
            "SELECT payload FROM batch_records WHERE grp = ? AND generation = ? AND "
            "entity = ?", (group, view.generation, entity)).fetchone()
        ranges = realtime_ranges(view.cutoff_ms, as_of_ms, spans)
        tiles: dict[TileSlot, bytes] = {}
        if ranges:
            sql = self._range_sql.get(len(ranges))
            if sql is None:
                sql = self._range_sql[len(ranges)] = " UNION ALL ".join(
                    [_TILE_RANGE] * len(ranges))
            parameters: list[Any] = []
            for hop, first, end in ranges:
                parameters += (group, entity, hop, first, end)
            for hop, start, partials in conn.execute(sql, parameters):
                tiles[(hop, start)] = partials
        return EntitySnapshot(view, entity, as_of_ms, None if record is None else record[0],
                              tiles)
