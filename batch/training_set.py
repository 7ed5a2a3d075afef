"""The point-in-time training set of a feature contract: one row per query
event (a transaction, for the default contract), its model features as of
just before it, and its label as known at ``as_of``.

``build_training_set(spark, master_uri, contract, snapshot=...,
start_ms=..., end_ms=...)`` reads one snapshot of the master dataset and
returns a Spark DataFrame; ``write_training_set`` runs it and stores the
result (Parquet or Delta) with its lineage (snapshot id, window, as-of, label
maturity, the contract's name and fingerprint, the view group's fingerprint,
code version). Everything about the model's input comes from the
``lamina.schemas.contract.FeatureContract`` (default: the card-fraud
contract, ``lamina.schemas.card_views.CARD_FRAUD``): the entity key, the
query and label event types, the label rule's fields and maturity, the
context columns, the feature list and the vectoriser. A contract may have
several view groups (one entity key), over the query events or over other
event types (e.g. a card's chargebacks known before the transaction): each
entity's events of every type the contract reads are shuffled together and
each group is swept over its own type.

Rows
----
One per query event with ``start_ms <= event_time < end_ms``, each
``event_id`` once (the first landed copy, ``lamina.batch.events``). Columns:
``event_id``, the contract's entity key, ``event_time`` (int64 epoch ms), the
contract's context columns (strings), every name of ``contract.features``
(float64, in that order), ``label`` (int32, 0/1).

Features: the speed layer's definition, by construction
-------------------------------------------------------
Features are the reference definition, exactly: for each query event in the
window at time ``t``, the views are what ``features_from_events(group,
events before t, entity, t)`` returns, then ``contract.vector(event,
views)``.
"Before" is strict (ARCHITECTURE.md, "Time, windows and 'before'"): only
events with ``event_time < t`` count, so neither the event itself nor
anything at or after ``t`` can, and the windows are the sawtooth ones of
``lamina.schemas.view_definitions``. History before ``start_ms`` is read (lifetime and
30-day windows need it); nothing at or after ``end_ms`` is (no row could
use it). Every query event in the window gets its features; the label
rules then drop the rows whose outcome is not known (below).

How: the events before ``end_ms`` of the entities with a query event in
the window are shuffled once, by entity, and each Spark partition streams to
Python as Arrow batches (``mapInArrow``: one Python call per partition, not
a pandas frame per entity -- that hand-over cost more than the features).
Per entity, ``lamina.schemas.pit.FeatureSweep`` visits its query events in
time order and keeps each (aggregate, window)'s partial as the window's two
ends move forward: counts, histograms, sums and means -- all integers, sums
as fixed-point units at the aggregate's scale -- add when an event enters
and subtract when it leaves, min/max/last keep a sliding-extremum deque,
and distinct counts keep the set of values (a canonical HLL depends on
nothing else) and re-present only when it changes. The values are
bit-identical to ``features_from_events``, which ``tests/unit/test_pit.py``
checks on random histories (arbitrary values at the scale, ties, window
edges), ``tests/unit/test_training_set_rows.py`` on generated cards,
``tests/integration/test_training_set.py`` on the Spark job's output (for
the card contract and for one keyed by merchant);
``check_point_in_time`` still recomputes sampled rows with the reference
itself.

Why a sweep and not tiles + head (Chronon's way, ``lamina.batch.tiles`` then
``features_at``): since sums are exact, both give the same bits (the monoid
laws; ``tests/unit/test_views.py`` checks tiles + head against the raw
events), so the choice is cost. Tiles + head merges ``W / h`` tiles per
window per row plus a head; the sweep touches each event twice per window
(in, out) whatever the window's length, and needs no tile table. Online,
where the history is not at hand, the speed layer uses tiles + head; the
two meet bit for bit.

Cost. Per card, ``O(n)`` window moves: each event enters and leaves each
window once; distinct counts cost an HLL merge when a new value enters a
window and a rebuild from the window's values when one leaves. Measured
(issue 12) with ``python -m benchmarks.run --only training-set --no-append``
(``benchmarks/training_set.py``: 40k generated transactions, 1,600 cards,
14 days, 25,216 rows, ``as_of`` given, a warm ``local[2]`` session, Spark's
noop sink), run alternately on the code before issue 12 and on this code,
twice each, at a load average of 2.5-3.5 from other engineers' jobs:

* warm builds: 844-993 rows/s before (25-30 s) -> 2,718-3,493 rows/s now
  (7.2-9.3 s), best against best 3.5x -- not the 10x the issue asks for;
  DuckDB computing the same rows: 12,000-19,000 rows/s (Lamina 0.06-0.08x
  of it before, 0.19-0.20x now);
* the first build of a session: 408-433 -> 673-724 rows/s;
* under heavier load (6-16; ``build_training_set(...).count()`` with
  ``as_of`` defaulted, fresh processes alternating): 222-378 -> ~570-1,010
  rows/s; CPU of the JVM and the Python workers per build 40-57 s before
  (Python 25-38 s of it: a pandas frame per card in and out) -> 14-21 s
  (Python 4-7 s);
* where the time goes now: JVM CPU 8-14 s per warm build, of which the
  tasks themselves use about 2 s -- most of the rest is the JIT compiling
  (C1/C2 compiler threads: 5-9 s per warm build, 35 s in the first); with
  ``-XX:TieredStopAtLevel=1`` (C1 only, not set: it is session-wide and
  would slow the 10M-event batch views) the first build took 66 s instead
  of 127 s and warm builds 20-26 s under that load. The sweep itself is
  ~3-3.5 s of Python CPU for the 25k rows (7-8.5k rows/s on one core,
  in-process).

The one honest skew: the offline features see every event of the snapshot
before ``t``, including ones that *arrived* after the transaction was scored
online (late arrivals). That is the documented exception, not a leak.

Labels (as known at ``as_of``)
------------------------------
The contract's label rule (``lamina.schemas.contract.LabelRule``) names the
label events' type, the field holding the query event's id and the boolean
outcome field; for the card contract: ``label`` events with
``transaction_id`` and ``is_fraud`` (``event_time`` = when the outcome
became known). Labels count only with ``event_time <= as_of``; a label
arriving later is ignored, as if not yet received. ``as_of`` defaults to the
newest event time (any type) in the snapshot. Then, per query event (card
contract's words):

* ``label = 1`` if some label with ``is_fraud = true`` (a chargeback) exists
  -- fraud wins over an earlier confirmation of genuineness;
* else ``label = 0`` if some label with ``is_fraud = false`` (confirmed
  genuine) exists;
* else ``label = 0`` if the transaction is *mature*: ``event_time < as_of -
  label_maturity_ms`` (default: the rule's ``maturity_ms``, 30 days) with no
  chargeback -- **unlabelled transactions count as genuine once mature**:
  most genuine transactions are never labelled, and a chargeback is
  expected within the maturity period;
* else (recent and unlabelled) the transaction is **excluded**: its outcome
  is not known yet, and counting it as genuine would teach the model that
  recent fraud is genuine. ``write_training_set`` counts them
  (``not_mature_rows``) and ``maturity_warning`` says which
  ``--maturity-days`` or ``--end`` would keep them or make the window
  mature: a maturity longer than the data leaves out all but the labelled.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from lamina.errors import ConfigError
from lamina.lineage import code_version, fingerprint
from lamina.logs import get_logger
from lamina.schemas.card_views import CARD_FRAUD
from lamina.schemas.contract import FeatureContract, LabelRule
from lamina.schemas.pit import FeatureSweep
from lamina.schemas.view_definitions import DAY_MS, features_from_events

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

log = get_logger(__name__)

#: The modules that define a training set's rows (the contract's vectoriser
#: module is added per contract): recorded as its code version.
ROW_MODULES: Final = ("lamina.batch.events", "lamina.batch.training_set",
                      "lamina.schemas.aggregations", "lamina.schemas.contract",
                      "lamina.schemas.pit", "lamina.schemas.view_definitions")


def rows_code_version(contract: FeatureContract) -> str:
    """The code version recorded with a training set of ``contract``
    (``lamina.lineage.code_version`` of :data:`ROW_MODULES` and the module
    of the contract's vectoriser)."""
    return code_version(tuple(sorted({*ROW_MODULES, contract.vectoriser.__module__})))


def event_types(contract: FeatureContract) -> tuple[str, ...]:
    """The event types a training set of ``contract`` reads per entity: the
    query events' first, then each view group's (once each)."""
    return tuple(dict.fromkeys((contract.query_event_type,
                                *(g.event_type for g in contract.groups))))


def _views_before(sweeps: Sequence[FeatureSweep], t_ms: int) -> dict[str, Any]:
    """Every group's features just before ``t_ms`` (the contract keeps their
    names distinct)."""
    views: dict[str, Any] = {}
    for sweep in sweeps:
        views.update(sweep.features_before(t_ms))
    return views


@dataclass(frozen=True)
class TrainingSetMetadata:
    """The lineage of one training set: everything it is a function of."""

    master_uri: str
    snapshot: int
    group: str
    #: The view group's name and ``lamina.lineage.fingerprint`` (what the
    #: batch views record); with several groups, their names joined by "+"
    #: and the fingerprint of the tuple of groups.
    group_fingerprint: str
    start_ms: int
    end_ms: int
    as_of_ms: int
    label_maturity_ms: int
    code_version: str
    #: A lineage written before contracts names no features only if it was
    #: the card-fraud one's (the only model input then).
    features: tuple[str, ...] = CARD_FRAUD.features
    rows: int | None = None
    built_seconds: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: Transactions in the window left out as not yet mature (unlabelled at
    #: ``as_of_ms`` and not older than the label maturity), and the newest
    #: one's event time; None until written.
    not_mature_rows: int | None = None
    latest_not_mature_ms: int | None = None
    #: The feature contract's name and ``FeatureContract.fingerprint()``;
    #: None in a lineage written before training sets took a contract.
    contract: str | None = None
    contract_fingerprint: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=list)


# --- inputs ---------------------------------------------------------------


def _check_window(start_ms: int, end_ms: int, label_maturity_ms: int) -> None:
    for name, value in (("start_ms", start_ms), ("end_ms", end_ms),
                        ("label_maturity_ms", label_maturity_ms)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer number of ms, got {value!r}")
    if start_ms >= end_ms:
        from lamina.batch.evaluate import iso_utc

        raise ConfigError(f"the window's start {iso_utc(start_ms)} ({start_ms} ms) must be "
                          f"before its end {iso_utc(end_ms)} ({end_ms} ms)")
    if label_maturity_ms < 0:
        raise ConfigError(f"label_maturity_ms must be >= 0, got {label_maturity_ms}")


def resolve_snapshot(master_uri: str, snapshot: int | None) -> int:
    """``snapshot``, or the master dataset's latest version when None
    (DatasetError for a missing table or version)."""
    from lamina.master.dataset import MasterDataset

    return int(MasterDataset(master_uri).table(snapshot).version())


def newest_event_time(master_rows: DataFrame) -> int:
    """The newest event time (any type) of a master snapshot, epoch ms."""
    from pyspark.sql import functions as F

    value = master_rows.select(F.max(F.unix_millis("event_time"))).first()
    if value is None or value[0] is None:
        raise ConfigError("the master snapshot has no events: nothing to build a training set of")
    return int(value[0])


# --- features: one Python definition, run per entity -------------------------


def _output_schema(contract: FeatureContract, query_column: str | None = None) -> pa.Schema:
    """The feature rows' Arrow schema (the order of the Spark columns)."""
    import pyarrow as pa

    fields = [
        pa.field("event_id", pa.string()), pa.field(contract.entity_key, pa.string()),
        pa.field("event_time", pa.int64()),
        *[pa.field(c, pa.string()) for c in contract.context_columns],
        *[pa.field(name, pa.float64()) for name in contract.features],
    ]
    if query_column is not None:
        fields.append(pa.field(query_column, pa.int32()))
    return pa.schema(fields)


#: Feature rows per Arrow batch handed back to Spark.
_BATCH_ROWS: Final = 4_096


def _partition_rows(batches: Iterator[pa.RecordBatch], contract: FeatureContract,
                    start_ms: int, end_ms: int, schema: pa.Schema, *,
                    query_column: str | None, lookahead_ms: int) -> Iterator[pa.RecordBatch]:
    """The feature rows of one Spark partition whose events arrive grouped by
    entity (each entity's events contiguous, in any order inside): one
    :func:`entity_rows` per entity, rows handed back in batches. Arrow values
    convert to Python ones as the reference reads them (ints stay ints, SQL
    null is None)."""
    import pyarrow as pa

    entity_key = contract.entity_key
    pending: list[dict[str, Any]] = []
    mine: list[dict[str, Any]] = []
    current: Any = None

    def flush() -> None:
        pending.extend(entity_rows(contract, mine, start_ms, end_ms,
                                   query_column=query_column, lookahead_ms=lookahead_ms))
        mine.clear()

    for batch in batches:
        for record in batch.to_pylist():
            entity = record[entity_key]
            if entity != current and mine:
                flush()
                if len(pending) >= _BATCH_ROWS:
                    yield pa.RecordBatch.from_pylist(pending, schema=schema)
                    pending.clear()
            current = entity
            mine.append(record)
    if mine:
        flush()
    if pending:
        yield pa.RecordBatch.from_pylist(pending, schema=schema)


def entity_rows(contract: FeatureContract, events: Sequence[Mapping[str, Any]],
                start_ms: int, end_ms: int, *, query_column: str | None = None,
                lookahead_ms: int = 0) -> list[dict[str, Any]]:
    """The training rows of one entity's query events in ``[start_ms,
    end_ms)``, in (event_time, event_id) order: ``events`` are all of its
    events (any order, each event_id once). For a query event at ``t`` the
    features see exactly the events with ``event_time < t``: they equal
    ``contract.vector(event, features_from_events(group, events before t,
    entity, t))``, computed in one sweep (``lamina.schemas.pit``). With
    ``query_column``, only events where that column is not None get a row
    (the others are history only), and the row carries the column's value.

    ``lookahead_ms`` exists only to plant a leak in tests (the views are
    queried at ``t + lookahead_ms``: with 1 they include the event itself
    and events at ``t``, with more a window into the future); anything but 0
    makes a training set that lies.
    """
    entity_key, query_type = contract.entity_key, contract.query_event_type
    ordered = sorted(events, key=lambda e: (int(e["event_time"]), str(e["event_id"])))
    # One sweep per (entity, group) (one entity, when the caller keeps its
    # promise); rows are visited in time order, so query times never go back.
    sweeps: dict[str, list[FeatureSweep]] = {}
    rows = []
    for event in ordered:
        t = int(event["event_time"])
        if not start_ms <= t < end_ms:
            continue
        if event.get("event_type", query_type) != query_type:
            continue  # history of another type only
        if query_column is not None and event.get(query_column) is None:
            continue
        entity = str(event[entity_key])
        mine = sweeps.get(entity)
        if mine is None:
            mine = sweeps[entity] = [FeatureSweep(g, ordered, entity) for g in contract.groups]
        # The views' query time: t, strictly before it (t + lookahead_ms only in leak tests).
        vector = contract.vector(event, _views_before(mine, t + lookahead_ms))
        row: dict[str, Any] = {
            "event_id": event["event_id"],
            entity_key: entity,
            "event_time": t,
        }
        for column in contract.context_columns:
            row[column] = event.get(column)
        row.update(vector)
        if query_column is not None:
            row[query_column] = event[query_column]
        rows.append(row)
    return rows


def point_in_time_features(events: DataFrame, contract: FeatureContract = CARD_FRAUD, *,
                           start_ms: int, end_ms: int, query_column: str | None = None,
                           lookahead_ms: int = 0) -> DataFrame:
    """Feature rows of ``contract`` for the query events of ``events`` in
    ``[start_ms, end_ms)``; see the module doc. ``events``: the output of
    ``lamina.batch.events.events_for`` (deduplicated) for the query event
    type -- or, when the contract's groups read other types too, the union
    of each of :func:`event_types` with an ``event_type`` column
    (:func:`contract_events`). ``query_column`` (an int column of
    ``events``): only events where it is not null get a row, carrying it
    (e.g. the label: features are computed only for rows that are kept).
    ``lookahead_ms``: tests only, see :func:`entity_rows`.

    One shuffle: the events before ``end_ms`` are hash-partitioned by entity,
    entities without a row to compute are dropped (a window over the same
    partitioning), and each partition streams to Python as Arrow batches
    (``mapInArrow``), grouped by entity -- one Python call per partition, not
    per entity."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    entity = contract.entity_key
    typed = "event_type" in events.columns
    if not typed and len(event_types(contract)) > 1:
        raise ConfigError(
            f"contract {contract.name!r} reads {', '.join(event_types(contract))} events: pass "
            "their union with an event_type column (contract_events)")
    fields = sorted((set(contract.payload_fields()) | ({"event_type"} if typed else set()))
                    & set(events.columns))
    carried = [] if query_column is None else [query_column]
    query = (F.col("event_time") >= F.lit(start_ms)) & (F.col("event_time") < F.lit(end_ms))
    if typed:
        query = query & (F.col("event_type") == F.lit(contract.query_event_type))
    if query_column is not None:
        query = query & F.col(query_column).isNotNull()
    needed = events.where(F.col("event_time") < F.lit(end_ms)).select(
        "event_id", "event_time", F.col("entity_key").alias(entity), *fields, *carried,
        query.alias("_query"))
    # Only entities with a row to compute go to Python; the window reuses the
    # repartitioning, so the events are shuffled once. An explicit partition
    # count (the session's shuffle width): adaptive execution would coalesce
    # a small shuffle into one partition, leaving the Python work to one core.
    partitions = int(events.sparkSession.conf.get("spark.sql.shuffle.partitions") or 200)
    active = F.max(F.col("_query")).over(Window.partitionBy(entity))
    grouped = (needed.repartition(partitions, F.col(entity))
               .withColumn("_active", active).where(F.col("_active"))
               .drop("_query", "_active")
               .sortWithinPartitions(entity))
    schema = _output_schema(contract, query_column)

    def per_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return _partition_rows(batches, contract, start_ms, end_ms, schema,
                               query_column=query_column, lookahead_ms=lookahead_ms)

    return grouped.mapInArrow(per_partition, _spark_schema(schema))


def _spark_schema(schema: pa.Schema) -> str:
    kinds = {"string": "string", "int64": "bigint", "double": "double", "int32": "int"}
    return ", ".join(f"`{f.name}` {kinds[str(f.type)]}" for f in schema)


# --- labels -------------------------------------------------------------------


def labels_as_of(labels: DataFrame, as_of_ms: int,
                 rule: LabelRule = CARD_FRAUD.label) -> DataFrame:
    """``<rule.target_field>, has_fraud, has_genuine`` (a positive / a
    negative outcome known) from label events known at ``as_of_ms`` (label
    ``event_time <= as_of_ms``)."""
    from pyspark.sql import functions as F

    known = labels.where(F.col("event_time") <= F.lit(as_of_ms))
    outcome = F.col(rule.positive_field)
    return known.groupBy(rule.target_field).agg(
        F.max(F.when(outcome, 1).otherwise(0)).alias("has_fraud"),
        F.max(F.when(~outcome, 1).otherwise(0)).alias("has_genuine"),
    )


def label_rows(rows: DataFrame, labels: DataFrame, as_of_ms: int,
               label_maturity_ms: int, rule: LabelRule = CARD_FRAUD.label) -> DataFrame:
    """``rows`` with ``label`` per the rules in the module doc: null for a
    recent, unlabelled row (its outcome is not known yet)."""
    from pyspark.sql import functions as F

    known = labels_as_of(labels, as_of_ms, rule).withColumnRenamed(rule.target_field,
                                                                    "event_id")
    mature = F.col("event_time") < F.lit(as_of_ms - label_maturity_ms)
    label = (F.when(F.col("has_fraud") == 1, F.lit(1))
             .when(F.col("has_genuine") == 1, F.lit(0))
             .when(mature, F.lit(0)))
    joined = rows.join(known, "event_id", "left")
    return joined.withColumn("label", label.cast("int")).drop("has_fraud", "has_genuine")


def apply_label_rules(rows: DataFrame, labels: DataFrame, as_of_ms: int,
                      label_maturity_ms: int, rule: LabelRule = CARD_FRAUD.label) -> DataFrame:
    """``rows`` with ``label`` per the rules in the module doc; recent,
    unlabelled rows are dropped."""
    from pyspark.sql import functions as F

    return label_rows(rows, labels, as_of_ms, label_maturity_ms, rule).where(
        F.col("label").isNotNull())


def not_yet_mature(labelled: DataFrame) -> tuple[int, int | None]:
    """How many rows of a :func:`label_rows` frame have no label yet, and
    the newest one's event time (None if there is none). One Spark job."""
    from pyspark.sql import functions as F

    found = labelled.where(F.col("label").isNull()).agg(
        F.count(F.lit(1)), F.max("event_time")).first()
    if found is None or not found[0]:
        return 0, None
    return int(found[0]), int(found[1])


def maturity_warning(metadata: TrainingSetMetadata) -> str | None:
    """One line saying how many transactions of a written training set were
    left out as not yet mature and which ``--maturity-days`` or ``--end``
    would change that; None when none were."""
    from lamina.batch.evaluate import iso_utc

    left_out = metadata.not_mature_rows or 0
    if not left_out:
        return None
    total = left_out + (metadata.rows or 0)
    mature_before = metadata.as_of_ms - metadata.label_maturity_ms
    days = f"{metadata.label_maturity_ms / DAY_MS:g}"
    fixes = []
    latest = metadata.latest_not_mature_ms
    if latest is not None:
        # A row is mature when event_time < as_of - maturity: any maturity
        # up to as_of - latest - 1 ms keeps every row left out here.
        keep_days = math.floor((metadata.as_of_ms - latest - 1) / DAY_MS * 100) / 100
        if keep_days > 0:
            fixes.append(f"--maturity-days {keep_days:g} or less keeps them (counted genuine "
                         "unless a chargeback came)")
    end = mature_before // 60_000 * 60_000
    if end > metadata.start_ms:
        fixes.append(f"--end {iso_utc(end)} makes every row of the window mature")
    advice = "; ".join(fixes) or "no part of the window is mature yet: lower --maturity-days"
    return (f"{left_out:,} of {total:,} transactions in the window were left out as not yet "
            f"mature (unlabelled, and not before {iso_utc(mature_before)} = labels as of "
            f"{iso_utc(metadata.as_of_ms)} minus the {days}-day label maturity): {advice}")


# --- the job ------------------------------------------------------------------


def build_training_set(
    spark: SparkSession,
    master_uri: str,
    contract: FeatureContract = CARD_FRAUD,
    *,
    snapshot: int | None,
    start_ms: int,
    end_ms: int,
    label_maturity_ms: int | None = None,
    as_of_ms: int | None = None,
) -> DataFrame:
    """The training set of ``contract``'s query events in ``[start_ms,
    end_ms)`` from master ``snapshot`` (None: the latest), labelled as known
    at ``as_of_ms`` (None: the snapshot's newest event time) with a label
    maturity of ``label_maturity_ms`` (None: the contract's label rule's).
    Lazy: nothing runs until the frame is used, except resolving
    ``snapshot`` and ``as_of_ms``. See the module doc for rows, features and
    labels."""
    frame, _ = _build(spark, master_uri, contract, snapshot=snapshot, start_ms=start_ms,
                      end_ms=end_ms, label_maturity_ms=label_maturity_ms, as_of_ms=as_of_ms)
    return frame


def _build(spark: SparkSession, master_uri: str, contract: FeatureContract, *,
           snapshot: int | None, start_ms: int, end_ms: int, label_maturity_ms: int | None,
           as_of_ms: int | None, lookahead_ms: int = 0) -> tuple[DataFrame, TrainingSetMetadata]:
    frame, metadata, _ = _build_labelled(
        spark, master_uri, contract, snapshot=snapshot, start_ms=start_ms, end_ms=end_ms,
        label_maturity_ms=label_maturity_ms, as_of_ms=as_of_ms, lookahead_ms=lookahead_ms)
    return frame, metadata


def contract_events(master_rows: DataFrame, contract: FeatureContract) -> DataFrame:
    """The events a training set of ``contract`` reads, keyed by its entity,
    each event_id once (``lamina.batch.events.events_for``): the query
    events alone when every view group aggregates them, else the union of
    every type of :func:`event_types` with an ``event_type`` column (a
    column one type lacks is null in the others' rows; a payload field with
    two different types is refused)."""
    from lamina.batch import events as batch_events

    types = event_types(contract)
    if len(types) == 1:
        return batch_events.events_for(master_rows, types[0], contract.entity_key)
    from functools import reduce

    from pyspark.sql import functions as F

    request = {*contract.request_fields, *contract.context_columns}
    frames = []
    for event_type in types:
        wanted = {f for g in contract.groups if g.event_type == event_type for f in g.fields()}
        if event_type == contract.query_event_type:
            wanted |= request
        frames.append(batch_events.events_for(master_rows, event_type, contract.entity_key,
                                              fields=sorted(wanted))
                      .withColumn("event_type", F.lit(event_type)))
    seen: dict[str, tuple[str, str]] = {}
    for event_type, frame in zip(types, frames, strict=True):
        for column in frame.schema.fields:
            kind = column.dataType.simpleString()
            earlier = seen.setdefault(column.name, (event_type, kind))
            if earlier[1] != kind:
                raise ConfigError(
                    f"contract {contract.name!r}: field {column.name!r} is {kind} in "
                    f"{event_type!r} events but {earlier[1]} in {earlier[0]!r} events; the "
                    "training set reads both into one column: rename one of them")
    return reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), frames)


def _build_labelled(
    spark: SparkSession, master_uri: str, contract: FeatureContract, *, snapshot: int | None,
    start_ms: int, end_ms: int, label_maturity_ms: int | None, as_of_ms: int | None,
    lookahead_ms: int = 0,
) -> tuple[DataFrame, TrainingSetMetadata, DataFrame]:
    """The training set, its metadata, and the window's query events with
    their label or null (:func:`label_rows`, for the maturity count)."""

    from lamina.batch import events as batch_events

    rule = contract.label
    if label_maturity_ms is None:
        label_maturity_ms = rule.maturity_ms
    _check_window(start_ms, end_ms, label_maturity_ms)
    snapshot = resolve_snapshot(master_uri, snapshot)
    master_rows = batch_events.read_master(spark, master_uri, snapshot)
    if as_of_ms is None:
        as_of_ms = newest_event_time(master_rows)
    queries = contract_events(master_rows, contract)
    # Label events need no entity key: they point at a query event by id.
    labels = batch_events.events_for(master_rows, rule.event_type, None,
                                     fields=(rule.target_field, rule.positive_field))
    # Features for every query event in the window, then the label rules on
    # those rows: the events are read, parsed and deduplicated once
    # (labelling first needed them twice, which cost more than the features
    # of the rows the rules then drop). ``window_labels`` keeps the rows
    # whose label is not known yet (null) for the maturity count.
    features = point_in_time_features(queries, contract, start_ms=start_ms, end_ms=end_ms,
                                      lookahead_ms=lookahead_ms)
    window_labels = label_rows(features, labels, as_of_ms, label_maturity_ms, rule)
    frame = window_labels.where(window_labels["label"].isNotNull())
    ordered = ["event_id", contract.entity_key, "event_time", *contract.context_columns,
               *contract.features, "label"]
    groups = contract.groups
    metadata = TrainingSetMetadata(
        master_uri=master_uri, snapshot=snapshot, group="+".join(g.name for g in groups),
        group_fingerprint=fingerprint(groups[0] if len(groups) == 1 else groups),
        start_ms=start_ms, end_ms=end_ms,
        as_of_ms=as_of_ms, label_maturity_ms=label_maturity_ms,
        code_version=rows_code_version(contract), features=contract.features,
        contract=contract.name, contract_fingerprint=contract.fingerprint())
    return frame.select(*ordered), metadata, window_labels


LINEAGE_FILE: Final = "_lamina_lineage.json"


def write_training_set(
    spark: SparkSession,
    master_uri: str,
    out_uri: str,
    contract: FeatureContract = CARD_FRAUD,
    *,
    snapshot: int | None,
    start_ms: int,
    end_ms: int,
    label_maturity_ms: int | None = None,
    as_of_ms: int | None = None,
    fmt: Literal["parquet", "delta"] = "parquet",
) -> TrainingSetMetadata:
    """Build ``contract``'s training set (see :func:`build_training_set`)
    and write it to ``out_uri`` (overwriting),
    each file sorted by (event_time, event_id) (no global sort: readers
    that need one sort on read). Lineage: for Delta, the commit's
    ``userMetadata`` (JSON of :class:`TrainingSetMetadata`); for Parquet, a
    ``_lamina_lineage.json`` file in the folder (readers skip files starting
    with ``_``). Returns the metadata, with the row count, the rows left out
    as not yet mature (see :func:`maturity_warning`) and seconds."""
    started = time.monotonic()
    frame, metadata, window_labels = _build_labelled(
        spark, master_uri, contract, snapshot=snapshot, start_ms=start_ms, end_ms=end_ms,
        label_maturity_ms=label_maturity_ms, as_of_ms=as_of_ms)
    # Cached: the feature job fills it, the maturity count then only reads it.
    window_labels = window_labels.persist()
    frame = frame.persist()
    try:
        rows = frame.count()
        not_mature, latest_not_mature = not_yet_mature(window_labels)
        ordered = frame.sortWithinPartitions("event_time", "event_id")
        writer = ordered.write.mode("overwrite")
        done = TrainingSetMetadata(**{**asdict(metadata), "rows": rows,
                                      "built_seconds": round(time.monotonic() - started, 3),
                                      "features": tuple(metadata.features),
                                      "not_mature_rows": not_mature,
                                      "latest_not_mature_ms": latest_not_mature})
        if fmt == "delta":
            (writer.format("delta").option("overwriteSchema", "true")
             .option("userMetadata", done.to_json()).save(out_uri))
        elif fmt == "parquet":
            writer.parquet(out_uri)
            _write_lineage(out_uri, done.to_json())
        else:
            raise ConfigError(f"fmt must be 'parquet' or 'delta', got {fmt!r}")
    finally:
        frame.unpersist()
        window_labels.unpersist()
    log.info("training set written", out_uri=out_uri, rows=rows, snapshot_id=done.snapshot,
             start_ms=start_ms, end_ms=end_ms, as_of_ms=done.as_of_ms,
             not_mature=not_mature, seconds=done.built_seconds)
    return done


def _write_lineage(out_uri: str, text: str) -> None:
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(out_uri if "://" in out_uri else
                                              f"file://{_absolute(out_uri)}")
    with filesystem.open_output_stream(f"{path.rstrip('/')}/{LINEAGE_FILE}") as stream:
        stream.write(text.encode())


def _absolute(path: str) -> str:
    from pathlib import Path

    return str(Path(path).resolve())


def read_lineage(out_uri: str) -> TrainingSetMetadata:
    """The lineage of a written training set (Parquet folder or Delta table)."""
    from pathlib import Path

    local = Path(out_uri.removeprefix("file://"))
    if (local / "_delta_log").is_dir():
        from deltalake import DeltaTable

        history = DeltaTable(str(local)).history(1)
        text = history[0].get("userMetadata") if history else None
    else:
        lineage = local / LINEAGE_FILE
        text = lineage.read_text() if lineage.is_file() else None
    if not text:
        raise ConfigError(f"{out_uri} has no training-set lineage")
    data = json.loads(text)
    data["features"] = tuple(data["features"])
    known = TrainingSetMetadata.__dataclass_fields__
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{out_uri}: its lineage has fields this Lamina does not know ({unknown}); it was "
            "written by a newer version: rebuild it with `lamina training-set`")
    return TrainingSetMetadata(**data)


# --- the point-in-time (leak) check -----------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    event_id: str
    feature: str
    got: float
    expected: float


@dataclass(frozen=True)
class PointInTimeReport:
    """What :func:`check_point_in_time` found: ``ok`` when no sampled row's
    features differ from a strictly-before recomputation."""

    checked: int
    mismatches: tuple[Mismatch, ...]

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> str:
        if self.ok:
            return f"{self.checked} rows checked, no point-in-time mismatch"
        features = sorted({m.feature for m in self.mismatches})
        rows = len({m.event_id for m in self.mismatches})
        return (f"{rows} of {self.checked} rows have features that differ from a strictly-"
                f"before recomputation ({len(self.mismatches)} values; features: "
                f"{', '.join(features)}); first: {self.mismatches[0]}")


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def check_point_in_time(rows: DataFrame | pd.DataFrame | Iterable[Mapping[str, Any]],
                        events: Iterable[Mapping[str, Any]],
                        contract: FeatureContract = CARD_FRAUD, *, sample: int | None = 200,
                        seed: int = 0) -> PointInTimeReport:
    """Recompute the features of (a sample of) training rows strictly before
    each row's event time, from raw ``events`` (payload dicts of the query
    and view groups' types, any order, repeats of an event_id ignored, other
    types ignored), with the reference functions and ``contract``'s
    vectoriser, and report every value that differs.

    A leak -- a view that saw the event itself, events at its time or after
    -- shows up as a mismatch. ``rows``: a Spark or pandas frame or dicts
    with ``event_id`` and the ``contract.features`` columns; ``sample`` rows
    are checked (None: all), chosen with ``seed``."""
    entity_key, query_type = contract.entity_key, contract.query_event_type
    types = set(event_types(contract))
    records = _as_records(rows, contract.features)
    if sample is not None and len(records) > sample:
        records = random.Random(seed).sample(records, sample)
    by_entity: dict[str, list[Mapping[str, Any]]] = {}
    by_id: dict[str, Mapping[str, Any]] = {}
    seen: set[str] = set()
    for event in events:
        event_type = event.get("event_type", query_type)
        if event_type not in types:
            continue
        if event.get(entity_key) is None or event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        if event_type == query_type:
            by_id[event["event_id"]] = event
        by_entity.setdefault(str(event[entity_key]), []).append(event)
    for mine in by_entity.values():
        mine.sort(key=lambda e: (int(e["event_time"]), str(e["event_id"])))
    mismatches: list[Mismatch] = []
    for row in records:
        found = by_id.get(str(row["event_id"]))
        if found is None:  # a row with no such event: reported, never silently skipped
            mismatches.append(Mismatch(str(row["event_id"]), "<event>", math.nan, math.nan))
            continue
        event = found
        t = int(event["event_time"])
        entity = str(event[entity_key])
        before = [e for e in by_entity[entity] if int(e["event_time"]) < t]
        views: dict[str, Any] = {}
        for group in contract.groups:
            views.update(features_from_events(group, before, entity, t))
        expected = contract.vector(event, views)
        for name in contract.features:
            got = float(row[name])
            if not _close(got, expected[name]):
                mismatches.append(Mismatch(str(row["event_id"]), name, got, expected[name]))
    return PointInTimeReport(len(records), tuple(mismatches))


def _as_records(rows: Any, features: Sequence[str]) -> list[dict[str, Any]]:
    if hasattr(rows, "toPandas"):
        rows = rows.select("event_id", *features).toPandas()
    if hasattr(rows, "to_dict"):
        return list(rows.to_dict("records"))
    return [dict(r) for r in rows]

