"""Publishing a batch view into the tile store: views table -> batch records.

``run_batch_views`` publishes a view's tiles as one version of a Delta
table; serving and the speed layer read the batch part of every feature
from the tile store (``lamina.stores``) instead. ``publish_to_store``
connects the two: it reads **one published version** of the views table
with Spark, collapses each entity's tiles into one ``BatchRecord`` for the
queries at ``T <= t < H`` (``lamina.stores.lookup.build_batch_record``
on the executors: ``batch_record_frame``), streams the
records to the driver and hands them to ``TileStore.publish_batch``, which
switches readers to the new view atomically. After the switch the
realtime tiles before the new cutoff no longer count, and
``drop_realtime_before`` removes them.

What is published
-----------------
``BatchView(cutoff_ms=T, horizon_ms=H, batch_version=V, definition,
lineage)``: ``T`` is the view's cutoff, ``V`` the version of the views
table whose commit published it (a vacuum's commits, which change no rows,
are looked through to that publish), ``H = horizon_ms(T,
publish_interval_ms)`` -- by default twice the publish interval after the
cutoff, so one late or failed batch run does not stop lookups (see
``lamina.stores.lookup``). ``lineage`` is JSON: the view's
``ViewMetadata`` (source snapshot, master URI, definition fingerprint,
the views' code version), the views table and version, the interval and
the code version of the record builder.

Idempotence (invariant 10)
--------------------------
The store's published view is the state; a publish is decided against it
before any Spark work (``plan_store_publish``):

* the same views table and version, definition, horizon and record code
  already published -> ``"skipped"`` (no Spark job; the realtime tiles
  before the cutoff are dropped again, so a run that died after its switch
  is completed by the retry);
* a published cutoff after this view's, or the same cutoff from a newer
  version of the same views table -> ``"superseded"``: nothing is written
  (the realtime tiles before the published cutoff may be gone already, so
  going back would lose events). A publish that loses a race against a
  newer one (the store's ``CutoffWentBackwards``) is reported the same way;
* anything else -> ``"published"``.

A publish killed before its switch leaves readers on the previous view;
the records it wrote are invisible and the next publish removes them.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from lamina.batch.published import ROWLESS_OPERATIONS, ViewMetadata, ViewsError, _metadata_of
from lamina.errors import ConfigError
from lamina.lineage import code_version
from lamina.logs import get_logger
from lamina.schemas.view_definitions import DAY_MS, GroupBy
from lamina.stores import (
    BatchRecord,
    BatchView,
    CutoffWentBackwards,
    PublishedView,
    TileStore,
    open_store,
    store_class,
)
from lamina.stores.codec import TileCodec
from lamina.stores.lookup import definition_fingerprint, horizon_ms, realtime_spans

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

    from lamina.config import Settings

log = get_logger(__name__)

LINEAGE_FORMAT: Final = "lamina.store_publish/1"
DEFAULT_PUBLISH_INTERVAL_MS: Final = DAY_MS
#: The modules that decide a batch record's bytes: a change to them
#: republishes the same views version, a change elsewhere does not.
RECORD_MODULES: Final = ("lamina.batch.store_publish", "lamina.stores.lookup",
                         "lamina.stores.codec", "lamina.schemas.aggregations")

Action = Literal["publish", "skip", "supersede"]


# --- which version, and what to do with it ----------------------------------------


def publish_version(views_uri: str, version: int | None = None) -> tuple[int, ViewMetadata]:
    """``(publish version, metadata)`` of the view a reader of ``version``
    (default: the latest) of the views table sees: the version whose commit
    published it (a vacuum's row-less commits are looked through).
    ViewsError if there is no table, no such version, or no publish."""
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(views_uri):
        raise ViewsError(f"no batch view published at {views_uri}; run `lamina batch run` "
                         "first")
    table = DeltaTable(views_uri)
    latest = table.version()
    wanted = latest if version is None else version
    if not 0 <= wanted <= latest:
        raise ViewsError(f"the views table {views_uri} has versions 0 to {latest}, not "
                         f"{version}; pick one of them (default: the latest)")
    for entry in sorted(table.history(), key=lambda e: -int(e.get("version", -1))):
        entry_version = int(entry.get("version", -1))
        if entry_version > wanted or entry.get("operation") in ROWLESS_OPERATIONS:
            continue
        metadata = _metadata_of(entry)
        if metadata is not None:
            return entry_version, metadata
        break
    raise ViewsError(f"version {wanted} of {views_uri} carries no Lamina batch-view metadata; "
                     "it was not published by `lamina batch run`")


@dataclass(frozen=True)
class StorePublishPlan:
    """What ``publish_to_store`` will do: ``action`` with the ``view`` it
    would switch to (``reason`` says why it would not), decided against the
    store's ``current`` view."""

    action: Action
    views_uri: str
    metadata: ViewMetadata
    view: BatchView
    current: PublishedView | None
    reason: str = ""


def _lineage(views_uri: str, version: int, metadata: ViewMetadata,
             publish_interval_ms: int) -> str:
    return json.dumps({
        "format": LINEAGE_FORMAT, "views_uri": views_uri, "views_version": version,
        "view": asdict(metadata), "publish_interval_ms": publish_interval_ms,
        "record_code_version": code_version(RECORD_MODULES),
    }, sort_keys=True)


def _lineage_of(view: PublishedView) -> dict[str, Any]:
    """The lineage a store publish recorded (empty if another writer's)."""
    try:
        lineage = json.loads(view.lineage)
    except ValueError:
        return {}
    if not isinstance(lineage, dict) or lineage.get("format") != LINEAGE_FORMAT:
        return {}
    return lineage


def plan_store_publish(views_uri: str, store: TileStore, group: GroupBy, *,
                       version: int | None = None,
                       publish_interval_ms: int = DEFAULT_PUBLISH_INTERVAL_MS
                       ) -> StorePublishPlan:
    """Decide what publishing ``version`` (default: the latest) of the views
    table at ``views_uri`` into ``store`` does (see the module docstring).
    Reads the Delta log and the store's view; starts no Spark job.

    ViewsError if the views were computed for another group or definition
    than ``group``; ValueError for a publish interval <= 0."""
    views_version, metadata = publish_version(views_uri, version)
    definition = definition_fingerprint(group)
    if metadata.group != group.name or metadata.definition != definition:
        raise ViewsError(
            f"version {views_version} of {views_uri} was computed for group "
            f"{metadata.group!r} (definition {metadata.definition}), not this definition of "
            f"{group.name!r} ({definition}); rerun `lamina batch run`")
    view = BatchView(group=group.name, cutoff_ms=metadata.cutoff_ms,
                     horizon_ms=horizon_ms(metadata.cutoff_ms, publish_interval_ms),
                     batch_version=views_version, definition=definition,
                     lineage=_lineage(views_uri, views_version, metadata, publish_interval_ms))
    current = store.current_view(group.name)

    def plan(action: Action, reason: str = "") -> StorePublishPlan:
        return StorePublishPlan(action, views_uri, metadata, view, current, reason)

    if current is None:
        return plan("publish")
    published = _lineage_of(current)
    same_table = published.get("views_uri") == views_uri
    if current.cutoff_ms > view.cutoff_ms:
        return plan("supersede", (
            f"the store already holds a later view of {group.name!r}: cutoff "
            f"{current.cutoff_ms} (batch version {current.batch_version}) after this one's "
            f"{view.cutoff_ms} (views version {views_version}); nothing was published, since "
            "realtime tiles before the published cutoff may already be dropped"))
    if same_table and current.cutoff_ms == view.cutoff_ms \
            and current.batch_version > views_version:
        return plan("supersede", (
            f"the store already holds views version {current.batch_version} of {views_uri} "
            f"with the same cutoff {view.cutoff_ms}, newer than version {views_version}; "
            "nothing was published"))
    unchanged = (same_table and current.batch_version == views_version
                 and current.cutoff_ms == view.cutoff_ms
                 and current.horizon_ms == view.horizon_ms
                 and current.definition == view.definition
                 and published.get("record_code_version") == code_version(RECORD_MODULES))
    if unchanged:
        return plan("skip", f"views version {views_version} of {views_uri} is already "
                            f"published in the store (generation {current.generation})")
    return plan("publish")


# --- the records, in Spark -----------------------------------------------------------


#: Records per Arrow batch a Spark task sends back.
RECORDS_PER_BATCH: Final = 1000


def collapse_sorted_tiles(group: GroupBy, cutoff_ms: int, horizon: int,
                          batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Batch records ``(entity, payload)`` of tile rows in views-table
    columns, **sorted by entity** (an entity's rows are contiguous, across
    batch boundaries too): ``build_batch_record`` per entity over its
    tiles read with ``from_storage``. Entities that need no record are
    left out. Runs in a Spark task (``mapInArrow``), or anywhere."""
    import pyarrow as pa

    from lamina.stores.lookup import build_batch_record

    codec = TileCodec(group)
    per_hop = {hop: [(a.name, a.aggregation) for a in group.aggregates_for_hop(hop)]
               for hop in group.hops()}
    names = sorted({name for aggregates in per_hop.values() for name, _ in aggregates})
    schema = pa.schema([("entity", pa.string()), ("payload", pa.binary())])
    entities: list[str] = []
    payloads: list[bytes] = []
    current: str | None = None
    tiles: dict[int, dict[int, dict[str, Any]]] = {}

    def finish() -> None:
        payload = build_batch_record(group, tiles, cutoff_ms, horizon, codec=codec)
        if payload is not None and current is not None:
            entities.append(current)
            payloads.append(payload)

    def flush() -> pa.RecordBatch:
        batch = pa.RecordBatch.from_arrays(
            [pa.array(entities, pa.string()), pa.array(payloads, pa.binary())], schema=schema)
        entities.clear()
        payloads.clear()
        return batch

    for batch in batches:
        keys = batch.column("entity_key").to_pylist()
        hops = batch.column("hop_ms").to_pylist()
        starts = batch.column("tile_start").to_pylist()
        stored = {name: batch.column(name).to_pylist() for name in names}
        for i, entity in enumerate(keys):
            if entity != current:
                if current is not None:
                    finish()
                current, tiles = entity, {}
            tiles.setdefault(hops[i], {})[starts[i]] = {
                name: aggregation.from_storage(stored[name][i])
                for name, aggregation in per_hop[hops[i]]}
        if len(entities) >= RECORDS_PER_BATCH:
            yield flush()
    if current is not None:
        finish()
    if entities:
        yield flush()


def needed_tiles(tiles: DataFrame, group: GroupBy, cutoff_ms: int) -> DataFrame:
    """The rows of ``tiles`` a batch record can use: per hop, the tiles from
    the start of the longest window at that hop on (``cutoff - W``; a query
    at ``t >= cutoff`` starts no earlier), every tile at a hop with a
    lifetime window. The card views keep 1 h of 5-min tiles out of months."""
    from pyspark.sql import functions as F

    condition = None
    for hop, longest in realtime_spans(group).items():
        at_hop = F.col("hop_ms") == hop
        if longest is not None:
            at_hop = at_hop & (F.col("tile_start") >= cutoff_ms - longest)
        condition = at_hop if condition is None else condition | at_hop
    return tiles.where(condition) if condition is not None else tiles


def batch_record_frame(spark: SparkSession, views_uri: str, views_version: int,
                       group: GroupBy, cutoff_ms: int, horizon: int) -> DataFrame:
    """One row ``(entity, payload)`` per entity of version ``views_version``
    of the views table that needs a batch record for ``[cutoff_ms,
    horizon)``: the tiles it needs, partitioned by entity and sorted, each
    partition collapsed by one Python call (``collapse_sorted_tiles``).

    Not ``groupBy().applyInArrow``: its fixed cost per group (an Arrow
    table per entity) was most of the time with one small group per card
    (docs/decisions.md)."""
    tiles = spark.read.format("delta").option("versionAsOf", views_version).load(views_uri)
    columns = ["entity_key", "hop_ms", "tile_start",
               *sorted({a.name for hop in group.hops() for a in group.aggregates_for_hop(hop)})]
    sorted_tiles = (needed_tiles(tiles, group, cutoff_ms).select(*columns)
                    .repartition("entity_key").sortWithinPartitions("entity_key"))

    def collapse(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return collapse_sorted_tiles(group, cutoff_ms, horizon, batches)

    return sorted_tiles.mapInArrow(collapse, "entity string, payload binary")


# --- the publish -----------------------------------------------------------------------


@dataclass(frozen=True)
class StorePublishResult:
    """What ``publish_to_store`` did (``as_dict`` is JSON-able)."""

    status: Literal["published", "skipped", "superseded"]
    store: str
    plan: StorePublishPlan
    published: PublishedView | None  # the store's view after the run
    records: int | None  # records written (published) or None
    dropped_tiles: int | None  # realtime tiles before the cutoff removed
    records_seconds: float  # Spark: reading tiles, building records (published only)
    store_seconds: float  # writing records and switching (published only)
    seconds: float
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        view = self.plan.view
        return {
            "status": self.status,
            "store": self.store,
            "group": view.group,
            "views_uri": self.plan.views_uri,
            "batch_version": view.batch_version,
            "cutoff_ms": view.cutoff_ms,
            "horizon_ms": view.horizon_ms,
            "snapshot": self.plan.metadata.source_snapshot,
            "records": self.records,
            "dropped_tiles": self.dropped_tiles,
            "published": None if self.published is None else {
                "batch_version": self.published.batch_version,
                "cutoff_ms": self.published.cutoff_ms,
                "horizon_ms": self.published.horizon_ms,
                "generation": self.published.generation,
            },
            "reason": self.reason,
            "records_seconds": round(self.records_seconds, 3),
            "store_seconds": round(self.store_seconds, 3),
            "seconds": round(self.seconds, 3),
        }


def _streamed(frame: DataFrame, counter: list[int]) -> Iterator[BatchRecord]:
    for row in frame.toLocalIterator(prefetchPartitions=True):
        counter[0] += 1
        yield BatchRecord(row["entity"], bytes(row["payload"]))


def publish_to_store(spark: SparkSession | None, views_uri: str, store: TileStore,
                     group: GroupBy, *, version: int | None = None,
                     publish_interval_ms: int = DEFAULT_PUBLISH_INTERVAL_MS,
                     plan: StorePublishPlan | None = None) -> StorePublishResult:
    """Publish ``version`` (default: the latest) of the views table at
    ``views_uri`` into ``store`` as the batch view of ``group``, then drop
    the realtime tiles before its cutoff. Returns what happened
    (``"published"``, ``"skipped"`` or ``"superseded"``: module docstring).

    ``plan`` is a ``plan_store_publish`` made just before (the caller
    decided whether to start Spark on it); ``spark`` may be None unless the
    plan is to publish. Raises ViewsError for a missing or foreign views
    table, StoreError / StoreUnavailable for a store that fails.
    """
    started = time.monotonic()
    if plan is None:
        plan = plan_store_publish(views_uri, store, group, version=version,
                                  publish_interval_ms=publish_interval_ms)
    view = plan.view
    fields = {"group": group.name, "store": store.name, "views_uri": views_uri,
              "batch_version": view.batch_version, "cutoff_ms": view.cutoff_ms,
              "snapshot_id": plan.metadata.source_snapshot}

    def result(status: Literal["published", "skipped", "superseded"], *,
               published: PublishedView | None, records: int | None = None,
               dropped: int | None = None, records_s: float = 0.0, store_s: float = 0.0,
               reason: str = "") -> StorePublishResult:
        return StorePublishResult(status, store.name, plan, published, records, dropped,
                                  records_s, store_s, time.monotonic() - started, reason)

    if plan.action == "supersede":
        log.warning("batch view not published to the store: a later one is", **fields,
                    reason=plan.reason)
        return result("superseded", published=plan.current, reason=plan.reason)
    if plan.action == "skip":
        dropped = store.drop_realtime_before(group.name, view.cutoff_ms)
        log.info("batch view already in the store", **fields, dropped_tiles=dropped)
        return result("skipped", published=plan.current, dropped=dropped, reason=plan.reason)
    if spark is None:
        raise ValueError("publish_to_store needs a Spark session to publish "
                         f"views version {view.batch_version}")

    log.info("batch view publishing to the store", **fields, horizon_ms=view.horizon_ms)
    frame = batch_record_frame(spark, views_uri, view.batch_version, group, view.cutoff_ms,
                               view.horizon_ms).persist()
    try:
        # Computed on every core first; then streamed to the store one
        # partition at a time, so the driver never holds them all.
        records_started = time.monotonic()
        frame.count()
        records_s = time.monotonic() - records_started
        counter = [0]
        store_started = time.monotonic()
        try:
            published = store.publish_batch(view, _streamed(frame, counter))
        except CutoffWentBackwards as error:
            reason = str(error)
            log.warning("batch view not published to the store: a later one switched first",
                        **fields, reason=reason)
            return result("superseded", published=store.current_view(group.name),
                          records_s=records_s, store_s=time.monotonic() - store_started,
                          reason=reason)
        store_s = time.monotonic() - store_started
    finally:
        frame.unpersist()
    dropped = store.drop_realtime_before(group.name, view.cutoff_ms)
    outcome = result("published", published=published, records=counter[0], dropped=dropped,
                     records_s=records_s, store_s=store_s)
    log.info("batch view published to the store", **fields, horizon_ms=view.horizon_ms,
             generation=published.generation, records=counter[0], dropped_tiles=dropped,
             seconds=round(outcome.seconds, 2))
    return outcome


# --- store options (the CLI's; a settings section later) -------------------------------


def parse_store_options(pairs: Sequence[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` as a dict (the last of a repeated key wins);
    ConfigError for an item without ``=`` or with an empty key."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"store option {pair!r} is not KEY=VALUE (e.g. "
                              "--store-option path=/var/lib/lamina/tiles.db)")
        options[key.strip()] = value
    return options


def _coerce_option(store: str, key: str, default: Any, value: Any) -> Any:
    if not isinstance(value, str) or default is inspect.Parameter.empty \
            or isinstance(default, str | Path) or default is None:
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise ConfigError(f"tile store {store!r}: option {key} must be "
                          f"{type(default).__name__} like its default {default!r}, got "
                          f"{value!r}") from None
    return value


def store_options(name: str, options: Mapping[str, Any], home: Path) -> dict[str, Any]:
    """``options`` for tile store ``name`` with text values converted to the
    type of each option's default, and the SQLite store's ``path``
    defaulting to ``<home>/tiles.db``. ConfigError names an unknown store
    or option and lists the known ones."""
    parameters = inspect.signature(store_class(name)).parameters
    known = [p for p in parameters if p != "self"]
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in known:
            raise ConfigError(f"tile store {name!r} has no option {key!r}; its options: "
                              f"{', '.join(known)}")
        out[key] = _coerce_option(name, key, parameters[key].default, value)
    if name == "sqlite" and "path" not in out:
        home.mkdir(parents=True, exist_ok=True)
        out["path"] = str(home / "tiles.db")
    return out


def batch_publish_command(settings: Settings, *, store: str | None = None,
                          options: Mapping[str, Any] | None = None,
                          version: int | None = None,
                          publish_interval_ms: int = DEFAULT_PUBLISH_INTERVAL_MS,
                          master: str | None = None,
                          group: GroupBy | None = None) -> dict[str, Any]:
    """`lamina batch publish`: publish the card views (or ``group``) from
    ``settings.view_uri(group)`` (version ``version``, default the latest)
    into a tile store. The store is ``settings.tile_store`` (kind and
    options) unless ``store`` names another kind; ``options`` override the
    settings' options of the same kind (``store_options`` converts text
    values). Spark (``master``, default ``settings.spark.master``) starts
    only when there is something to publish; a session already running in
    this process is used and left running. Returns
    ``StorePublishResult.as_dict()`` plus ``spark_start_seconds`` (None
    when Spark was not needed)."""
    from lamina.schemas.card_views import CARD_VIEWS

    group = group or CARD_VIEWS
    home = Path(settings.home)
    kind = store or settings.tile_store.kind
    configured = settings.tile_store_options() if kind == settings.tile_store.kind else {}
    views_uri = settings.view_uri(group.name)
    if "://" not in views_uri:
        views_uri = str(Path(views_uri).resolve())
    publish_version(views_uri, version)  # no views, no store file: fail first
    opened = open_store(kind, **store_options(kind, {**configured, **(options or {})}, home))
    with opened:
        plan = plan_store_publish(views_uri, opened, group, version=version,
                                  publish_interval_ms=publish_interval_ms)
        if plan.action != "publish":
            outcome = publish_to_store(None, views_uri, opened, group, plan=plan)
            return {**outcome.as_dict(), "spark_start_seconds": None}
        from pyspark.sql import SparkSession

        from lamina.batch.spark import spark_session

        already_running = SparkSession.getActiveSession() is not None
        started = time.monotonic()
        spark = spark_session(master or settings.spark.master, extra_conf=settings.spark.conf)
        spark_start = time.monotonic() - started
        try:
            outcome = publish_to_store(spark, views_uri, opened, group, plan=plan)
        finally:
            if not already_running:
                spark.stop()
    return {**outcome.as_dict(), "spark_start_seconds": round(spark_start, 3)}
