"""The batch-views job: master snapshot -> tiles -> one published Delta table.

``run_batch_views`` is ``read -> transform -> write``: it reads one snapshot
of the master dataset with delta-spark, computes the tiles of a GroupBy for
the events before a cutoff (``lamina.batch.tiles``) and publishes them at
``views_uri`` as **one Delta commit** that overwrites the whole table. A
reader (``read_published``, ``BatchViewStore``, delta-rs, Spark) therefore
sees either the previous complete view or the new complete one, never a
mix: files a killed job left behind are in no commit, so no reader lists
them. The commit's ``userMetadata`` carries the lineage (``ViewMetadata``):
group, cutoff, source snapshot, a fingerprint of the definition and the
code version, which is also how a rerun is recognised.

Idempotence (invariant 10)
--------------------------
The job is a function of (snapshot, cutoff, group definition, code): the
tiles are deterministic (see ``lamina.batch.tiles``, "Determinism"), so a
rerun writes the same rows. It does not even rewrite them: if the latest
published view already has the same (group, snapshot, cutoff, definition,
code version) the job returns ``status="skipped"`` without starting a Spark
job. A run that would replace the published view by an *older* one (a lower
cutoff, or the same cutoff from an older snapshot, same definition) is
refused as ``status="superseded"``: serving drops realtime tiles before the
published cutoff, so publishing an older cutoff would lose events. An
Airflow backfill of an old logical date is then a harmless no-op.
``force=True`` publishes anyway.

Vacuum
------
An overwrite leaves the replaced view's files on disk (readers of the
previous version may still use them). ``vacuum_views`` deletes those older
than a retention (the table's ``delta.deletedFileRetentionDuration``, 7 days
by default), always keeping the previous publish's files unless told that
less is safe; its ``VACUUM START``/``END`` commits change no rows, and the
readers here look through them to the last publish.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from pyarrow.fs import FileType

from lamina import __version__
from lamina.errors import DatasetError
from lamina.logs import get_logger
from lamina.master.dataset import MasterDataset
from lamina.schemas.views import GroupBy, TileKey, tile_schema

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from lamina.config import Settings

log = get_logger(__name__)

METADATA_FORMAT = "lamina.batch_view/1"
PARTITION_BY = "hop_ms"
#: Commits that change no rows: a vacuum is logged as two of them (delta-rs
#: and Spark alike). A reader at such a version sees the last publish.
ROWLESS_OPERATIONS = frozenset({"VACUUM START", "VACUUM END"})
#: Delta's default for ``delta.deletedFileRetentionDuration``: one week.
DEFAULT_RETENTION_HOURS = 7 * 24


class ViewsError(DatasetError):
    """No published view where one was expected, or a view that was not
    written by this job."""


@dataclass(frozen=True)
class ViewMetadata:
    """What a published batch view was computed from (its commit's
    ``userMetadata``): enough to rebuild it exactly."""

    group: str
    cutoff_ms: int
    source_snapshot: int
    master_uri: str
    definition: str  # fingerprint of the GroupBy, see definition_fingerprint
    code_version: str
    format: str = METADATA_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ViewMetadata:
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("format") != METADATA_FORMAT:
            raise ViewsError(f"commit metadata {text[:200]!r} is not a Lamina batch view's")
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})

    def same_inputs(self, other: ViewMetadata) -> bool:
        return (self.group, self.cutoff_ms, self.source_snapshot, self.definition,
                self.code_version) == (other.group, other.cutoff_ms, other.source_snapshot,
                                       other.definition, other.code_version)


@dataclass(frozen=True)
class BatchRunResult:
    status: str  # "published", "skipped" or "superseded"
    views_uri: str
    version: int | None  # the views table version readers now see
    metadata: ViewMetadata  # what was asked for (published: what was written)
    published: ViewMetadata | None  # what readers see after the run
    rows: int | None  # tile rows of that version
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "views_uri": self.views_uri,
            "version": self.version,
            "group": self.metadata.group,
            "cutoff_ms": self.metadata.cutoff_ms,
            "snapshot": self.metadata.source_snapshot,
            "rows": self.rows,
            "published": asdict(self.published) if self.published else None,
            "seconds": round(self.seconds, 3),
        }


def definition_fingerprint(group: GroupBy) -> str:
    """A hash of the view definition (frozen dataclasses: a stable repr)."""
    return hashlib.sha256(repr(group).encode()).hexdigest()[:16]


@functools.cache
def code_version() -> str:
    """``lamina.__version__`` plus a hash of the code that computes tiles
    (this job's modules and the view algebra), so a change to that code
    reruns a view -- and a change anywhere else in the package does not."""
    from lamina.batch import events, tiles
    from lamina.schemas import aggregations
    from lamina.schemas import views as view_definitions

    digest = hashlib.sha256()
    sources = [Path(m.__file__ or "") for m in (events, tiles, aggregations, view_definitions)]
    sources.append(Path(__file__))
    for source in sources:
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def default_cutoff(dataset: MasterDataset, snapshot: int, group: GroupBy) -> int:
    """The latest event time of the group's type in ``snapshot`` floored to
    the group's cutoff alignment (the tile holding that event is not
    complete, so it is left to the speed layer). Read from the Delta file
    statistics, so it costs no scan; DatasetError if there are no events."""
    stats = dataset.file_stats(snapshot)
    names = stats.column_names
    if stats.num_rows and "max.event_time" in names and "partition.event_type" in names:
        mine = stats.filter(pc.equal(stats.column("partition.event_type"), group.event_type))
        latest = pc.max(mine.column("max.event_time")).as_py() if mine.num_rows else None
    else:  # no statistics: read the one column
        rows = dataset.read(snapshot, columns=["event_time"],
                            filters=pc.field("event_type") == group.event_type)
        latest = pc.max(rows.column("event_time")).as_py() if rows.num_rows else None
    if latest is None:
        raise DatasetError(
            f"snapshot {snapshot} of {dataset.uri} has no {group.event_type!r} events; "
            "land events before computing batch views"
        )
    latest_ms = int(latest.timestamp() * 1000) if hasattr(latest, "timestamp") else int(latest)
    alignment = group.cutoff_alignment_ms()
    return latest_ms // alignment * alignment


def run_batch_views(
    spark: SparkSession,
    master_uri: str,
    views_uri: str,
    group: GroupBy,
    *,
    snapshot: int | None,
    cutoff_ms: int | None,
    force: bool = False,
) -> BatchRunResult:
    """Compute the tiles of ``group`` from master snapshot ``snapshot``
    (latest if None) for the events before ``cutoff_ms`` (default: see
    ``default_cutoff``; must be a multiple of ``group.cutoff_alignment_ms()``,
    else CutoffError) and publish them at ``views_uri`` in one Delta commit.

    Returns what happened (see the module docstring for "skipped" and
    "superseded"). Raises DatasetError if the master dataset or snapshot does
    not exist. ``spark`` is built by the caller (``spark_session``).
    """
    from lamina.batch import events as batch_events
    from lamina.batch import tiles as batch_tiles

    started = time.monotonic()
    dataset = MasterDataset(master_uri)
    source = dataset.table(snapshot)  # DatasetError for a missing table or version
    snapshot = source.version()
    if cutoff_ms is None:
        cutoff_ms = default_cutoff(dataset, snapshot, group)
    batch_tiles.check_cutoff(group, cutoff_ms)
    wanted = ViewMetadata(
        group=group.name, cutoff_ms=cutoff_ms, source_snapshot=snapshot,
        master_uri=master_uri, definition=definition_fingerprint(group),
        code_version=code_version(),
    )
    current = latest_published(views_uri)
    if current is not None and not force:
        version, published = current
        if published.same_inputs(wanted):
            log.info("batch view already published", group=group.name, views_uri=views_uri,
                     version=version, cutoff_ms=cutoff_ms, snapshot_id=snapshot)
            return BatchRunResult("skipped", views_uri, version, wanted, published,
                                  published_rows(views_uri, version),
                                  time.monotonic() - started)
        newer = (published.cutoff_ms, published.source_snapshot) > (cutoff_ms, snapshot)
        if newer and published.group == group.name and published.definition == wanted.definition:
            log.warning("batch view not published: a later one is", group=group.name,
                        views_uri=views_uri, version=version, cutoff_ms=cutoff_ms,
                        snapshot_id=snapshot, published_cutoff_ms=published.cutoff_ms,
                        published_snapshot_id=published.source_snapshot)
            return BatchRunResult("superseded", views_uri, version, wanted, published,
                                  published_rows(views_uri, version),
                                  time.monotonic() - started)

    log.info("batch view computing", group=group.name, master_uri=master_uri,
             snapshot_id=snapshot, cutoff_ms=cutoff_ms, views_uri=views_uri)
    rows = batch_events.read_master(spark, master_uri, snapshot)
    events = batch_events.events_for(rows, group.event_type, group.entity_key,
                                     fields=("event_time", *group.fields()))
    # The finest tiles feed every hop (roll-ups): keep them instead of
    # aggregating the events once per hop.
    states = batch_tiles.finest_states(events, group, cutoff_ms).persist()
    tile_rows = batch_tiles.tiles_from_states(states, group)
    # Clustered files (entity, tile) keep per-entity reads cheap.
    ordered = tile_rows.sortWithinPartitions(PARTITION_BY, "entity_key", "tile_start")

    try:
        (
            ordered.write.format("delta")
            .mode("overwrite")
            .option("overwriteSchema", "true")
            .option("userMetadata", wanted.to_json())
            .partitionBy(PARTITION_BY)
            .save(views_uri)
        )
    finally:
        states.unpersist()
    version = _version_with(views_uri, wanted)
    rows_published = published_rows(views_uri, version)
    seconds = time.monotonic() - started
    log.info("batch view published", group=group.name, views_uri=views_uri,
             version=version, rows=rows_published, cutoff_ms=cutoff_ms,
             snapshot_id=snapshot, seconds=round(seconds, 2))
    return BatchRunResult("published", views_uri, version, wanted, wanted,
                          rows_published, seconds)


def _version_with(views_uri: str, metadata: ViewMetadata) -> int:
    """The newest version of the views table committed with ``metadata``
    (the commit this run just made; Spark's writer does not return it)."""
    from deltalake import DeltaTable

    table = DeltaTable(views_uri)
    for entry in table.history(20):
        if _metadata_of(entry) == metadata:
            version = int(entry["version"])
            if version != table.version():
                log.warning("batch view published, then replaced by another writer",
                            views_uri=views_uri, version=version, latest=table.version())
            return version
    raise ViewsError(f"the commit of this run is missing from the history of {views_uri}")


# --- reading published views without Spark ---------------------------------


def _metadata_of(entry: Mapping[str, Any]) -> ViewMetadata | None:
    text = entry.get("userMetadata")
    if not text:
        return None
    try:
        return ViewMetadata.from_json(str(text))
    except (ViewsError, ValueError, TypeError, KeyError):
        return None


def latest_published(views_uri: str) -> tuple[int, ViewMetadata] | None:
    """(version, metadata) of the latest version of the views table, or None
    when there is no table yet. ViewsError if the table was not written by
    this job."""
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(views_uri):
        return None
    table = DeltaTable(views_uri)
    return table.version(), _metadata_at(table, views_uri)


def published_rows(views_uri: str, version: int) -> int:
    """Tile rows of a version of the views table, from the Delta log."""
    from deltalake import DeltaTable

    actions = pa.table(DeltaTable(views_uri, version=version).get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return 0
    return int(pc.sum(actions.column("num_records")).as_py() or 0)


def _metadata_at(table: Any, views_uri: str) -> ViewMetadata:
    """The metadata of the view a reader of ``table``'s version sees: that of
    the version's own commit, or -- if the version is a vacuum's commit,
    which changes no rows -- of the publish before it."""
    version = table.version()
    history = sorted(table.history(), key=lambda e: -int(e.get("version", -1)))
    for entry in history:
        if int(entry.get("version", -1)) > version:
            continue
        if entry.get("operation") in ROWLESS_OPERATIONS:
            continue
        metadata = _metadata_of(entry)
        if metadata is not None:
            return metadata
        break
    raise ViewsError(
        f"version {version} of {views_uri} carries no Lamina batch-view metadata; "
        "it was not published by `lamina batch run`"
    )


def read_published(views_uri: str, version: int | None = None
                   ) -> tuple[ViewMetadata, pa.Table]:
    """The metadata and every tile row of a published view (the latest
    version, or ``version``), read with delta-rs: no Spark needed. Both come
    from one table version, so they always belong together."""
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(views_uri):
        raise ViewsError(f"no batch view published at {views_uri}; run `lamina batch run`")
    table = DeltaTable(views_uri, version=version)
    return _metadata_at(table, views_uri), table.to_pyarrow_table()


# --- vacuum: removing the files of views no reader needs ----------------------


@dataclass(frozen=True)
class VacuumResult:
    """What ``vacuum_views`` removed (or, in a dry run, would remove)."""

    views_uri: str
    dry_run: bool
    retain_hours: int
    minimum_hours: int  # the table's safe minimum (delta.deletedFileRetentionDuration)
    published_version: int | None  # the view readers see (a vacuum changes no rows)
    kept_versions: tuple[int, ...]  # versions whose files are kept whatever their age
    files: tuple[str, ...]  # relative to views_uri
    bytes: int  # their total size

    def as_dict(self) -> dict[str, Any]:
        return {
            "views_uri": self.views_uri,
            "dry_run": self.dry_run,
            "retain_hours": self.retain_hours,
            "minimum_hours": self.minimum_hours,
            "published_version": self.published_version,
            "kept_versions": list(self.kept_versions),
            "would_remove" if self.dry_run else "removed": list(self.files),
            "files": len(self.files),
            "bytes": self.bytes,
        }


_HOURS_PER_UNIT: dict[str, float] = {
    "week": 168.0, "day": 24.0, "hour": 1.0, "minute": 1 / 60, "second": 1 / 3600,
    "millisecond": 1 / 3_600_000, "microsecond": 1 / 3_600_000_000,
}


def retention_minimum_hours(table: Any) -> int:
    """The table's ``delta.deletedFileRetentionDuration`` (e.g. ``interval 1
    week``) in whole hours, rounded up; Delta's default of 168 h if unset.
    ViewsError if it cannot be read (vacuuming would then be a guess)."""
    text = str(table.metadata().configuration.get("delta.deletedFileRetentionDuration") or "")
    if not text:
        return DEFAULT_RETENTION_HOURS
    words = text.lower().split()
    if words and words[0] == "interval":
        words = words[1:]
    hours = 0.0
    try:
        if not words or len(words) % 2:
            raise ValueError(text)
        for amount, unit in zip(words[::2], words[1::2], strict=True):
            hours += float(amount) * _HOURS_PER_UNIT[unit.rstrip("s")]
    except (ValueError, KeyError):
        raise ViewsError(
            f"cannot read delta.deletedFileRetentionDuration={text!r} of the views table; "
            "set it to e.g. 'interval 7 days'"
        ) from None
    return int(math.ceil(hours))


def _published_versions(table: Any) -> list[int]:
    """Versions of the views table made by a publish, newest first."""
    return sorted((int(e["version"]) for e in table.history() if _metadata_of(e) is not None),
                  reverse=True)


def _table_filesystem(views_uri: str) -> tuple[Any, str]:
    """A pyarrow filesystem and the table's root path on it."""
    from pyarrow import fs

    filesystem, root = fs.FileSystem.from_uri(
        views_uri if "://" in views_uri else str(Path(views_uri).resolve()))
    return filesystem, root.rstrip("/")


def _checksum_source(path: str) -> str | None:
    """``dir/NAME`` for Hadoop's checksum file ``dir/.NAME.crc``, else None."""
    folder, _, name = path.rpartition("/")
    if not (name.startswith(".") and name.endswith(".crc")):
        return None
    return f"{folder}/{name[1:-4]}" if folder else name[1:-4]


def vacuum_views(
    views_uri: str,
    retain_hours: int | None = None,
    *,
    dry_run: bool = False,
    unsafe_retention: bool = False,
) -> VacuumResult:
    """Delete the files of the views table at ``views_uri`` that no version
    newer than ``retain_hours`` ago needs: files the publishes replaced more
    than ``retain_hours`` ago, files in no commit at all (a killed run's
    leftovers) older than that, and the Hadoop ``.crc`` checksums of both.
    The published view never changes; time travel to a version whose files
    are gone stops working. Delta's vacuum (delta-rs) deletes what the log
    tombstoned; the rest (no commit lists them) is deleted here.

    ``retain_hours`` defaults to the table's safe minimum,
    ``delta.deletedFileRetentionDuration`` (Delta's default: 168 h). A
    shorter retention is refused (ViewsError) unless ``unsafe_retention``:
    a reader still on an older view, or a publish still writing its files,
    could lose them. Without ``unsafe_retention`` the files of the previous
    publish are kept whatever their age, so a reader that loaded the view
    before the latest publish keeps working. ``dry_run`` lists and deletes
    nothing. A real vacuum adds two commits that change no rows (``VACUUM
    START``/``END``); readers here see the last publish through them.
    """
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(views_uri):
        raise ViewsError(f"no batch view published at {views_uri}; run `lamina batch run`")
    table = DeltaTable(views_uri)
    minimum = retention_minimum_hours(table)
    hours = minimum if retain_hours is None else int(retain_hours)
    if hours < 0:
        raise ViewsError(f"the retention must be 0 hours or more, got {hours}")
    if hours < minimum and not unsafe_retention:
        raise ViewsError(
            f"a retention of {hours} h is below the safe minimum of {minimum} h for "
            f"{views_uri} (delta.deletedFileRetentionDuration): a reader still on an older "
            "view, or a publish still writing its files, could lose them; pass "
            "--unsafe-retention to vacuum anyway"
        )
    publishes = _published_versions(table)
    kept = () if unsafe_retention else tuple(publishes[1:2])
    options: dict[str, Any] = {
        "retention_hours": hours,
        "enforce_retention_duration": not unsafe_retention,
        "keep_versions": list(kept) or None,
    }
    from deltalake.exceptions import DeltaError

    try:
        # Every file no kept version lists and older than the retention:
        # what publishes replaced, a killed run's files, and the `.NAME.crc`
        # checksums Spark's Hadoop writer puts beside each file (no commit
        # lists those) -- except the checksum of a file that stays.
        unreferenced = set(table.vacuum(dry_run=True, full=True, **options))
        filesystem, root = _table_filesystem(views_uri)
        sources = {f: _checksum_source(f) for f in unreferenced}
        staying = {src for src in sources.values() if src and src not in unreferenced}
        staying_infos = filesystem.get_file_info([f"{root}/{src}" for src in sorted(staying)])
        present = {src for src, info in zip(sorted(staying), staying_infos, strict=True)
                   if info.type != FileType.NotFound}
        doomed = sorted(f for f, src in sources.items() if src not in present)
        infos = filesystem.get_file_info([f"{root}/{f}" for f in doomed])
        size = sum(int(info.size or 0) for info in infos)
        if not dry_run and doomed:
            # Delta's own vacuum for the files the log tombstoned (it records
            # two VACUUM commits), then the ones no commit ever listed.
            table.vacuum(dry_run=False, full=False, **options)
            for path, info in zip(doomed, filesystem.get_file_info(
                    [f"{root}/{f}" for f in doomed]), strict=True):
                if info.type != FileType.NotFound:
                    filesystem.delete_file(f"{root}/{path}")
    except (DeltaError, OSError) as exc:
        raise ViewsError(f"vacuum of {views_uri} failed: {exc}") from exc
    result = VacuumResult(views_uri, dry_run, hours, minimum,
                          publishes[0] if publishes else None, kept, tuple(doomed), size)
    log.info("batch views vacuum (dry run)" if dry_run else "batch views vacuumed",
             views_uri=views_uri, retain_hours=hours, kept_versions=list(kept),
             files=len(doomed), bytes=size, published_version=result.published_version)
    return result


class BatchViewStore:
    """Read API over one published version of a batch view (delta-rs).

    ``refresh()`` loads the latest published version (atomically: metadata
    and rows of one Delta version); reads between refreshes see that version.
    ``tiles_for(entity, hop_ms)`` returns the entity's tiles of one hop in the
    contract of ``lamina.schemas.views.tile_schema`` (entity column named
    after the group's entity key, only the aggregates stored at that hop),
    sorted by tile_start.
    """

    def __init__(self, views_uri: str, group: GroupBy, version: int | None = None) -> None:
        self.views_uri = views_uri
        self.group = group
        self.metadata: ViewMetadata
        self._rows: pa.Table
        self._index: dict[tuple[int, str], tuple[int, int]] = {}
        self.refresh(version)

    def refresh(self, version: int | None = None) -> ViewMetadata:
        metadata, rows = read_published(self.views_uri, version)
        if metadata.group != self.group.name or \
                metadata.definition != definition_fingerprint(self.group):
            raise ViewsError(
                f"the view at {self.views_uri} was computed for group {metadata.group!r} "
                f"(definition {metadata.definition}), not this definition of "
                f"{self.group.name!r}; rerun `lamina batch run`"
            )
        rows = rows.sort_by([("hop_ms", "ascending"), ("entity_key", "ascending"),
                             ("tile_start", "ascending")])
        index: dict[tuple[int, str], tuple[int, int]] = {}
        hops = rows.column("hop_ms").to_pylist()
        entities = rows.column("entity_key").to_pylist()
        start = 0
        for i in range(1, len(hops) + 1):
            if i == len(hops) or hops[i] != hops[start] or entities[i] != entities[start]:
                index[(hops[start], entities[start])] = (start, i - start)
                start = i
        self.metadata, self._rows, self._index = metadata, rows, index
        return metadata

    @property
    def cutoff_ms(self) -> int:
        return self.metadata.cutoff_ms

    def tiles_for(self, entity: str, hop_ms: int) -> pa.Table:
        schema = tile_schema(self.group, hop_ms)  # ConfigError for an unknown hop
        where = self._index.get((hop_ms, entity))
        rows = self._rows.slice(*where) if where else self._rows.slice(0, 0)
        columns = [rows.column("entity_key"), rows.column("tile_start")] + [
            rows.column(field.name) for field in list(schema)[2:]]
        return pa.Table.from_arrays(
            [c.cast(f.type) for c, f in zip(columns, schema, strict=True)], schema=schema)

    def partials_for(self, entity: str) -> dict[int, dict[TileKey, dict[str, Any]]]:
        """The entity's tiles as the Python reference takes them
        (``lamina.schemas.views.features_at``): ``{hop: {(entity, tile_start):
        {aggregate: partial}}}``, partials read with ``from_storage``."""
        out: dict[int, dict[TileKey, dict[str, Any]]] = {}
        for hop in self.group.hops():
            aggregates = self.group.aggregates_for_hop(hop)
            table = self.tiles_for(entity, hop)
            starts = table.column("tile_start").to_pylist()
            stored = {a.name: table.column(a.name).to_pylist() for a in aggregates}
            out[hop] = {
                (entity, s): {a.name: a.aggregation.from_storage(stored[a.name][i])
                              for a in aggregates}
                for i, s in enumerate(starts)
            }
        return out


# --- the CLI's entry point ---------------------------------------------------


def batch_run_command(settings: Settings, snapshot: int | None, cutoff: int | None,
                      master: str | None, *, group: GroupBy | None = None,
                      force: bool = False) -> dict[str, Any]:
    """`lamina batch run`: compute and publish the card views (or ``group``)
    from ``settings.master_path`` into ``settings.home / "views" / group.name``
    on Spark master ``master`` (default local[2]; ignored when a session
    already runs in this process). Returns the run as a dict
    (``views_uri``, ``status``, ``version``, ``cutoff_ms``, ``snapshot``,
    ``rows``, ``seconds``, ``spark_start_seconds``)."""
    from lamina.batch.spark import spark_session
    from lamina.schemas.card_views import CARD_VIEWS

    group = group or CARD_VIEWS
    views_path = Path(settings.home) / "views" / group.name
    views_path.parent.mkdir(parents=True, exist_ok=True)
    master_url = master or "local[2]"
    from pyspark.sql import SparkSession

    # A session that already runs in this process (a test's, a notebook's)
    # is used and left running; one started here is stopped here.
    already_running = SparkSession.getActiveSession() is not None
    started = time.monotonic()
    spark = spark_session(master_url)
    spark_start = time.monotonic() - started
    try:
        result = run_batch_views(spark, settings.master_path, str(views_path.resolve()), group,
                                 snapshot=snapshot, cutoff_ms=cutoff, force=force)
    finally:
        if not already_running:
            spark.stop()
    return {**result.as_dict(), "spark_master": master_url,
            "spark_start_seconds": round(spark_start, 3)}


def batch_vacuum_command(settings: Settings, retain_hours: int | None, *, dry_run: bool = False,
                         unsafe_retention: bool = False,
                         group: GroupBy | None = None) -> dict[str, Any]:
    """`lamina batch vacuum`: ``vacuum_views`` on the card views (or
    ``group``) under ``settings.home / "views"``. Returns the result as a
    dict (see ``VacuumResult.as_dict``)."""
    from lamina.schemas.card_views import CARD_VIEWS

    group = group or CARD_VIEWS
    views_path = Path(settings.home) / "views" / group.name
    return vacuum_views(str(views_path.resolve()), retain_hours, dry_run=dry_run,
                        unsafe_retention=unsafe_retention).as_dict()
