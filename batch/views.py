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

Reading a published view without Spark: ``lamina.batch.published``;
removing replaced files: ``lamina.batch.vacuum``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.compute as pc

from lamina.batch.published import (
    ViewMetadata,
    ViewsError,
    _metadata_of,
    definition_fingerprint,
    latest_published,
    published_rows,
)
from lamina.errors import DatasetError
from lamina.lineage import code_version
from lamina.logs import get_logger
from lamina.master.dataset import MasterDataset
from lamina.schemas.view_definitions import GroupBy

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from lamina.config import Settings

log = get_logger(__name__)

PARTITION_BY = "hop_ms"


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

#: The modules that compute tiles: a change to them reruns a view, a change
#: anywhere else does not.
TILE_MODULES = ("lamina.batch.events", "lamina.batch.tiles", "lamina.batch.views",
                "lamina.schemas.aggregations", "lamina.schemas.view_definitions")


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
        code_version=code_version(TILE_MODULES),
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

# --- the CLI's entry point ---------------------------------------------------


def batch_run_command(settings: Settings, snapshot: int | None, cutoff: int | None,
                      master: str | None, *, group: GroupBy | None = None,
                      force: bool = False) -> dict[str, Any]:
    """`lamina batch run`: compute and publish the card views (or ``group``)
    from ``settings.master_uri`` into ``settings.view_uri(group.name)``
    on Spark master ``master`` (default local[2]; ignored when a session
    already runs in this process). Returns the run as a dict
    (``views_uri``, ``status``, ``version``, ``cutoff_ms``, ``snapshot``,
    ``rows``, ``seconds``, ``spark_start_seconds``)."""
    from lamina.batch.spark import spark_session
    from lamina.schemas.card_views import CARD_VIEWS

    group = group or CARD_VIEWS
    views_uri = settings.view_uri(group.name)
    if "://" not in views_uri:
        Path(views_uri).parent.mkdir(parents=True, exist_ok=True)
        views_uri = str(Path(views_uri).resolve())
    master_url = master or settings.spark.master
    from pyspark.sql import SparkSession

    # A session that already runs in this process (a test's, a notebook's)
    # is used and left running; one started here is stopped here.
    already_running = SparkSession.getActiveSession() is not None
    started = time.monotonic()
    spark = spark_session(master_url, extra_conf=settings.spark.conf)
    spark_start = time.monotonic() - started
    try:
        result = run_batch_views(spark, settings.master_uri, views_uri, group,
                                 snapshot=snapshot, cutoff_ms=cutoff, force=force)
    finally:
        if not already_running:
            spark.stop()
    return {**result.as_dict(), "spark_master": master_url,
            "spark_start_seconds": round(spark_start, 3)}
