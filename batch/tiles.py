"""Tile partials of a GroupBy, computed by Spark: pure DataFrame transforms.

``tiles(events, group, cutoff_ms)`` turns the typed events of
``lamina.batch.events`` into one row per (entity_key, hop_ms, tile_start)
holding, for every aggregate of the group, its partial in the storage type
of ``lamina.schemas.aggregations`` -- the same bytes the speed layer and the
Python reference produce for the same events (approx_distinct: the same
canonical HLL image; sums and means: the same int64 units).

How the hops are computed: roll-up, not one pass per hop
--------------------------------------------------------
Events are aggregated once, into tiles of the finest hop of the group; each
coarser hop is then computed by *merging* the finest partials inside it
(5 min -> 1 h and 5 min -> 1 d; each hop divides the next, which GroupBy
checks). Two reasons: the events are shuffled and aggregated once whatever
the number of hops (the coarser steps read tiles, far fewer rows than events
when cards are busy), and the roll-up is the monoid's merge at work -- the
same operation serving performs when it merges the tiles of a window -- so a
broken merge shows up in the batch tests, not only in serving. Every coarser
hop reads the finest states (which the job keeps in memory) rather than the
next finer hop's: merges are exact, so the result is the same, and a chain
(5 min -> 1 h -> 1 d) would aggregate the 1 h tiles a second time, one more
shuffle, for the 1 d hop (measured, docs/benchmarks.md). Internally each aggregate
is carried in merge-friendly state columns (a histogram as one count column
per bucket, a mean as its sum and count, an HLL sketch as Spark's own
updatable image); the storage form is built once, at the end.

Columns
-------
``entity_key`` (string), ``hop_ms`` (int64), ``tile_start`` (int64 epoch ms),
then one column per aggregate, in declaration order, typed exactly as its
``arrow_type``. A row exists for every (entity, hop, tile) with at least one
event of the group's type before the cutoff (filters only decide what an
event contributes, so a tile may hold zeros). An aggregate that has no
window with a row's hop is null in that row: ``lamina.schemas.view_definitions
.tile_schema(group, hop)`` lists the columns that are meaningful per hop.

Determinism
-----------
A rerun over the same snapshot gives the same bytes, whatever the file
layout, partitioning, shuffle order or spills, and every partial equals the
Python reference's at every hop, rolled-up ones included: no partial
depends on an order. Sums and means are int64 units of ``10**-scale``
(``lamina.schemas.aggregations``, "Exact sums"): each value is converted
once, per event, by ``units_column`` -- the same float64 operations as
Python's ``decimal_units``, so the same integer -- and then added with plain
``sum``, from events and in every roll-up (integer addition is associative;
an int64 overflow fails the job, Spark's ANSI default). Counts, extrema,
``last`` by its total order and HLL registers are order-free too; HLL images
are canonicalised (the Python ``ApproxDistinct.from_storage``, through an
Arrow UDF), which also turns an empty sketch into null, the op's zero.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from lamina.errors import ConfigError
from lamina.schemas.aggregations import HLL_LG_K, UNIT_LIMIT
from lamina.schemas.view_definitions import DERIVED_FIELDS, Aggregate, Filter, GroupBy, value_kind

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame
    from pyspark.sql.types import DataType

KEY_COLUMNS = ("entity_key", "hop_ms", "tile_start")


class CutoffError(ConfigError):
    """The batch cutoff is not a tile boundary of every hop of the group."""


def _iso(epoch_ms: int) -> str:
    """``epoch_ms`` as ISO-8601 UTC, as the CLI takes it (``--cutoff``)."""
    from datetime import UTC, datetime

    try:
        return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return "out of range"


def check_cutoff(group: GroupBy, cutoff_ms: int) -> int:
    """``cutoff_ms`` if it is a multiple of the group's cutoff alignment (the
    largest hop), else CutoffError saying the nearest valid cutoffs."""
    if isinstance(cutoff_ms, bool) or not isinstance(cutoff_ms, int):
        raise CutoffError(f"cutoff must be an integer number of epoch ms, got {cutoff_ms!r}")
    alignment = group.cutoff_alignment_ms()
    if cutoff_ms % alignment:
        below = cutoff_ms // alignment * alignment
        raise CutoffError(
            f"cutoff {cutoff_ms} ({_iso(cutoff_ms)}) is not a multiple of {alignment} ms, "
            f"the largest hop of group-by {group.name!r}: a batch view must end on a tile "
            f"boundary of every hop; use {_iso(below)} ({below}) or "
            f"{_iso(below + alignment)} ({below + alignment})"
        )
    return cutoff_ms


# --- fields and filters ----------------------------------------------------


def _kind(data_type: DataType) -> str:
    from pyspark.sql.types import BooleanType, NumericType, StringType

    if isinstance(data_type, BooleanType):
        return "bool"
    if isinstance(data_type, NumericType):
        return "number"
    if isinstance(data_type, StringType):
        return "string"
    return "other"


def with_fields(events: DataFrame, group: GroupBy) -> DataFrame:
    """``events`` plus a column per derived field the group reads
    (``DERIVED_FIELDS[name].spark_sql``); ConfigError for a field that is
    neither a column nor a derived field."""
    from pyspark.sql import functions as F

    out = events
    for name in group.fields():
        if name in out.columns:
            continue
        derived = DERIVED_FIELDS.get(name)
        if derived is None:
            raise ConfigError(
                f"group-by {group.name!r} reads field {name!r}, which the "
                f"{group.event_type!r} events do not have (columns: {', '.join(events.columns)})"
            )
        out = out.withColumn(name, F.expr(derived.spark_sql))
    return out


def filter_condition(events: DataFrame, flt: Filter) -> Column:
    """A never-null boolean column: whether an event passes ``flt``, with the
    Python semantics of ``Filter.matches`` -- a null field, or a value of
    another kind (string / number / bool) than the column's, matches
    nothing."""
    from pyspark.sql import functions as F

    column = F.col(flt.field)
    kind = _kind(events.schema[flt.field].dataType)
    if flt.op == "in":
        values = [v for v in flt.value if value_kind(v) == kind]
        condition = column.isin(values) if values else F.lit(False)
    elif value_kind(flt.value) != kind:
        condition = F.lit(False)
    else:
        value = F.lit(flt.value)
        condition = {
            "==": column == value, "!=": column != value, "<": column < value,
            "<=": column <= value, ">": column > value, ">=": column >= value,
        }[flt.op]
    return F.coalesce(condition, F.lit(False))


def _accept(events: DataFrame, aggregate: Aggregate) -> Column:
    from pyspark.sql import functions as F

    condition = F.lit(True)
    for flt in aggregate.filters:
        condition = condition & filter_condition(events, flt)
    return condition


# --- per-op plans: lift+aggregate, merge, present as storage ---------------


class _Plan(ABC):
    """How one aggregate is computed in Spark, as state columns named
    ``{aggregate}__{i}``: aggregated from events, merged from finer tiles,
    and turned into the storage column."""

    def __init__(self, aggregate: Aggregate) -> None:
        self.aggregate = aggregate
        self.name = aggregate.name

    def state(self, i: int = 0) -> str:
        return f"{self.name}__{i}"

    @abstractmethod
    def from_events(self, accept: Column, value: Column) -> list[Column]:
        """Aggregations over events; ``accept`` and ``value`` are columns
        computed per event beforehand (``value_column``)."""

    @abstractmethod
    def merge(self) -> list[Column]: ...

    @abstractmethod
    def storage(self) -> Column: ...

    def value_column(self, events: DataFrame) -> Column:
        """The per-event input of the aggregation: by default the field as
        float64 (numeric ops)."""
        from pyspark.sql import functions as F

        assert self.aggregate.field is not None  # checked by Aggregate
        return F.col(self.aggregate.field).cast("double")


class _CountPlan(_Plan):
    def value_column(self, events: DataFrame) -> Column:
        from pyspark.sql import functions as F

        return F.lit(None)  # count ignores the value

    def from_events(self, accept: Column, value: Column) -> list[Column]:
        from pyspark.sql import functions as F

        return [F.count_if(accept).cast("bigint").alias(self.state())]

    def merge(self) -> list[Column]:
        from pyspark.sql import functions as F

        return [F.sum(self.state()).cast("bigint").alias(self.state())]

    def storage(self) -> Column:
        from pyspark.sql import functions as F

        return F.col(self.state())


class _SumPlan(_Plan):
    """``sum``: int64 units (``units_column``) added with a plain ``sum`` --
    integer addition is exact, so no order of additions matters."""

    def value_column(self, events: DataFrame) -> Column:
        from pyspark.sql import functions as F

        assert self.aggregate.field is not None and self.aggregate.scale is not None
        return units_column(F.col(self.aggregate.field), self.aggregate.scale)

    def from_events(self, accept: Column, value: Column) -> list[Column]:
        from pyspark.sql import functions as F

        # A missing value lifts to 0, which adds nothing; no value at all is 0.
        total = F.sum(F.when(accept, value))
        return [F.coalesce(total, F.lit(0).cast("bigint")).alias(self.state())]

    def merge(self) -> list[Column]:
        from pyspark.sql import functions as F

        return [F.sum(self.state()).alias(self.state())]

    def storage(self) -> Column:
        from pyspark.sql import functions as F

        return F.col(self.state())


def units_column(value: Column, scale: int) -> Column:
    """``value`` (a numeric column) as int64 units of ``10**-scale``: the
    same integer as ``lamina.schemas.aggregations.decimal_units``, by the
    same float64 operations (IEEE 754 product, floor, division and
    comparisons are exact or correctly rounded in the JVM as in CPython);
    null stays null, and a value at or beyond ``UNIT_LIMIT`` units fails the
    job, as ``lift`` raises."""
    from pyspark.sql import functions as F

    x = value.cast("double")
    scaled = x * F.lit(float(10**scale))
    floor = F.floor(scaled).cast("bigint")
    tie = (floor * F.lit(2) + F.lit(1)).cast("double") / F.lit(float(2 * 10**scale))
    units = (F.when(x < tie, floor).when(x > tie, floor + F.lit(1))
             .otherwise(floor + F.pmod(floor, F.lit(2))))
    too_large = F.raise_error(F.concat(
        F.lit("a sum or mean value is too large for an exact sum: "), x.cast("string"),
        F.lit(f" * 10**{scale} is not below 2**48 (bound the field in the event schema)")))
    return (F.when(x.isNull(), F.lit(None).cast("bigint"))
            .when(~(F.abs(scaled) < F.lit(float(UNIT_LIMIT))), too_large.cast("bigint"))
            .otherwise(units))


class _ExtremumPlan(_Plan):
    def __init__(self, aggregate: Aggregate, smallest: bool) -> None:
        super().__init__(aggregate)
        self.smallest = smallest

    def _agg(self, column: Column) -> Column:
        from pyspark.sql import functions as F

        return F.min(column) if self.smallest else F.max(column)

    def from_events(self, accept: Column, value: Column) -> list[Column]:
        from pyspark.sql import functions as F

        return [self._agg(F.when(accept, value)).alias(self.state())]

    def merge(self) -> list[Column]:
        return [self._agg(self.state()).alias(self.state())]  # type: ignore[arg-type]

    def storage(self) -> Column:
        from pyspark.sql import functions as F

        return F.col(self.state())


class _MeanPlan(_Plan):
    """``mean``: the units' plain ``sum`` and the number of values."""

    def value_column(self, events: DataFrame) -> Column:
        from pyspark.sql import functions as F

        assert self.aggregate.field is not None and self.aggregate.scale is not None
        return units_column(F.col(self.aggregate.field), self.aggregate.scale)

    def from_events(self, accept: Column, value: Column) -> list[Column]:
        from pyspark.sql import functions as F

        accepted = F.when(accept, value)
        return [F.coalesce(F.sum(accepted), F.lit(0).cast("bigint")).alias(self.state(0)),
                F.count(accepted).cast("bigint").alias(self.state(1))]

    def merge(self) -> list[Column]:
        from pyspark.sql import functions as F

        return [F.sum(self.state(0)).alias(self.state(0)),
                F.sum(self.state(1)).cast("bigint").alias(self.state(1))]

    def storage(self) -> Column:
        from pyspark.sql import functions as F

        return F.struct(F.col(self.state(0)).alias("sum"), F.col(self.state(1)).alias("count"))


class _LastPlan(_Plan):
    def from_events(self, accept: Column, value: Column) -> list[Column]:
        from pyspark.sql import functions as F

        # Struct order is (time_ms, event_id, value): max() is the greatest
        # by time, then event id (binary UTF-8 = code point order), as in
        # Python; a null value lifts to the zero (null), not a candidate.
        candidate = F.struct(F.col("event_time").cast("bigint").alias("time_ms"),
                             F.col("event_id").alias("event_id"), value.alias("value"))
        return [F.max(F.when(accept & value.isNotNull(), candidate)).alias(self.state())]

    def merge(self) -> list[Column]:
        from pyspark.sql import functions as F

        return [F.max(self.state()).alias(self.state())]

    def storage(self) -> Column:
        from pyspark.sql import functions as F

        return F.col(self.state())


class _ApproxDistinctPlan(_Plan):
    def value_column(self, events: DataFrame) -> Column:
        from pyspark.sql import functions as F
        from pyspark.sql.types import IntegralType, StringType

        assert self.aggregate.field is not None
        data_type = events.schema[self.aggregate.field].dataType
        if isinstance(data_type, StringType):
            return F.col(self.aggregate.field)
        if isinstance(data_type, IntegralType):
            # DataSketches hashes every integer as 64 bits, in Python too.
            return F.col(self.aggregate.field).cast("bigint")
        raise ConfigError(
            f"aggregate {self.name!r}: approx_distinct counts strings or integers, "
            f"{self.aggregate.field!r} is {data_type.simpleString()}"
        )

    def from_events(self, accept: Column, value: Column) -> list[Column]:
        from pyspark.sql import functions as F

        # Null and "" are not counted by hll_sketch_agg, as in Python.
        return [F.hll_sketch_agg(F.when(accept, value), HLL_LG_K).alias(self.state())]

    def merge(self) -> list[Column]:
        from pyspark.sql import functions as F

        return [F.hll_union_agg(self.state()).alias(self.state())]

    def storage(self) -> Column:
        return canonical_hll(self.state())


class _HistogramPlan(_Plan):
    def __init__(self, aggregate: Aggregate) -> None:
        super().__init__(aggregate)
        self.bounds: tuple[float, ...] = tuple(float(b) for b in aggregate.buckets)

    def value_column(self, events: DataFrame) -> Column:
        """The bucket index of the value (null for a null value): the first
        bucket whose upper bound is above the value, else the last one.
        Computed once per event before the aggregation -- inside it, Spark
        would evaluate the CASE once per bucket column (measured: 10x)."""
        from pyspark.sql import functions as F

        value = super().value_column(events)
        chosen = F.when(value < F.lit(self.bounds[0]), F.lit(0))
        for index, bound in enumerate(self.bounds[1:], start=1):
            chosen = chosen.when(value < F.lit(bound), F.lit(index))
        return F.when(value.isNotNull(), chosen.otherwise(F.lit(len(self.bounds))))

    def from_events(self, accept: Column, value: Column) -> list[Column]:
        from pyspark.sql import functions as F

        return [F.count_if(accept & (value == F.lit(i))).cast("bigint").alias(self.state(i))
                for i in range(len(self.bounds) + 1)]

    def merge(self) -> list[Column]:
        from pyspark.sql import functions as F

        return [F.sum(self.state(i)).cast("bigint").alias(self.state(i))
                for i in range(len(self.bounds) + 1)]

    def storage(self) -> Column:
        from pyspark.sql import functions as F

        return F.array(*[F.col(self.state(i)) for i in range(len(self.bounds) + 1)])


def _plan(aggregate: Aggregate) -> _Plan:
    op = aggregate.op
    if op == "count":
        return _CountPlan(aggregate)
    if op == "sum":
        return _SumPlan(aggregate)
    if op in ("min", "max"):
        return _ExtremumPlan(aggregate, smallest=op == "min")
    if op == "mean":
        return _MeanPlan(aggregate)
    if op == "last":
        return _LastPlan(aggregate)
    if op == "approx_distinct":
        return _ApproxDistinctPlan(aggregate)
    if op == "histogram":
        return _HistogramPlan(aggregate)
    raise ConfigError(f"aggregate {aggregate.name!r}: the batch layer has no plan for {op!r}")


# --- HLL canonicalisation ---------------------------------------------------


#: Canonical images of small (sparse) Spark images already seen by this
#: Python worker: most tiles hold one or a few values (one card's merchant,
#: its country), so the same Spark image recurs across tiles and batches, and
#: a dict lookup replaces two DataSketches unions and a re-serialisation.
#: The canonical image is a pure function of the input bytes, so the memo
#: changes no output. Bounded: cleared when full.
_CANONICAL_MEMO: dict[bytes, bytes | None] = {}
_MEMO_ENTRIES = 200_000
_MEMO_IMAGE_BYTES = 256  # sparse images only; dense ones (~4 KB) rarely recur


def _canonical_images(images: pa.Array) -> pa.Array:
    from lamina.schemas.aggregations import APPROX_DISTINCT

    memo = _CANONICAL_MEMO
    out: list[bytes | None] = []
    for image in images.to_pylist():
        if image is None or len(image) > _MEMO_IMAGE_BYTES:
            out.append(APPROX_DISTINCT.from_storage(image))
            continue
        try:
            out.append(memo[image])
        except KeyError:
            if len(memo) >= _MEMO_ENTRIES:
                memo.clear()
            canonical = memo[image] = APPROX_DISTINCT.from_storage(image)
            out.append(canonical)
    return pa.array(out, type=pa.binary())


def canonical_hll(column: str | Column) -> Column:
    """Spark's HLL image -> the canonical compact image of the contract
    (null for an empty sketch), computed by the Python aggregation itself."""
    from pyspark.sql.functions import arrow_udf

    # The Array -> Array type hints make it a scalar Arrow UDF (pyspark's
    # stubs only know the older form with an explicit function type).
    make_udf: Any = arrow_udf
    udf = make_udf(_canonical_images, "binary")
    result: Column = udf(column)
    return result


# --- the transforms ---------------------------------------------------------


def storage_type(aggregate: Aggregate) -> DataType:
    """The Spark type of an aggregate's tile column (its ``arrow_type``)."""
    from pyspark.sql.types import (
        ArrayType,
        BinaryType,
        DoubleType,
        LongType,
        StringType,
        StructField,
        StructType,
    )

    op = aggregate.op
    if op == "count":
        return LongType()
    if op == "sum":
        return LongType()
    if op in ("min", "max"):
        return DoubleType()
    if op == "mean":
        return StructType([StructField("sum", LongType()), StructField("count", LongType())])
    if op == "last":
        return StructType([StructField("time_ms", LongType()),
                           StructField("event_id", StringType()),
                           StructField("value", DoubleType())])
    if op == "approx_distinct":
        return BinaryType()
    if op == "histogram":
        return ArrayType(LongType())
    raise ConfigError(f"aggregate {aggregate.name!r}: unknown op {op!r}")


def events_before(events: DataFrame, cutoff_ms: int) -> DataFrame:
    """Events with ``event_time < cutoff_ms`` and an entity key."""
    from pyspark.sql import functions as F

    return events.where((F.col("event_time") < F.lit(cutoff_ms))
                        & F.col("entity_key").isNotNull())


def finest_tiles(events: DataFrame, group: GroupBy, hop_ms: int) -> DataFrame:
    """State columns of every aggregate, per (entity_key, tile_start) of
    ``hop_ms``, aggregated from events (filters and per-event inputs are
    computed once per event, before the aggregation)."""
    from pyspark.sql import functions as F

    plans = [_plan(a) for a in group.aggregates]
    prepared = with_fields(events, group)
    lifted = prepared.select(
        "entity_key", "event_time", "event_id",
        *[_accept(prepared, p.aggregate).alias(f"{p.name}__accept") for p in plans],
        *[p.value_column(prepared).alias(f"{p.name}__value") for p in plans],
    )
    tile = (F.floor(F.col("event_time") / F.lit(hop_ms)) * F.lit(hop_ms)).cast("bigint")
    aggregations = [
        column
        for p in plans
        for column in p.from_events(F.col(f"{p.name}__accept"), F.col(f"{p.name}__value"))
    ]
    return lifted.groupBy(F.col("entity_key"), tile.alias("tile_start")).agg(*aggregations)


def roll_up(finer: DataFrame, group: GroupBy, hop_ms: int) -> DataFrame:
    """State columns per (entity_key, tile_start) of ``hop_ms``, by merging
    the finer tiles inside each coarser one (``hop_ms`` must be a multiple
    of the finer hop): plain SQL aggregates, in whatever order Spark merges."""
    from pyspark.sql import functions as F

    plans = [_plan(a) for a in group.aggregates]
    tile = (F.floor(F.col("tile_start") / F.lit(hop_ms)) * F.lit(hop_ms)).cast("bigint")
    merges = [column for p in plans for column in p.merge()]
    return finer.groupBy(F.col("entity_key"), tile.alias("tile_start")).agg(*merges)


def as_storage(states: DataFrame, group: GroupBy, hop_ms: int) -> DataFrame:
    """The tile rows of one hop in the storage contract: key columns, then
    each aggregate's storage column (typed null where the aggregate has no
    window with this hop)."""
    from pyspark.sql import functions as F

    columns = [F.col("entity_key"), F.lit(hop_ms).cast("bigint").alias("hop_ms"),
               F.col("tile_start")]
    for aggregate in group.aggregates:
        stored = hop_ms in aggregate.hops()
        column = _plan(aggregate).storage() if stored else F.lit(None)
        columns.append(column.cast(storage_type(aggregate)).alias(aggregate.name))
    return states.select(*columns)


def finest_states(events: DataFrame, group: GroupBy, cutoff_ms: int) -> DataFrame:
    """The state columns of the finest hop's tiles for the events before
    ``cutoff_ms`` (CutoffError unless aligned, see ``check_cutoff``): the
    input of ``tiles_from_states``. A job that runs both persists this
    frame in between, so the events are aggregated once for every hop."""
    check_cutoff(group, cutoff_ms)
    return finest_tiles(events_before(events, cutoff_ms), group, group.hops()[0])


def tiles_from_states(states: DataFrame, group: GroupBy) -> DataFrame:
    """Every hop's tiles in the storage contract, from ``finest_states``:
    the finest hop as is, each coarser one rolled up from the finest states
    (not from the next finer hop: see the module docstring)."""
    hops: Sequence[int] = group.hops()
    per_hop = [as_storage(states, group, hops[0])]
    for hop in hops[1:]:
        per_hop.append(as_storage(roll_up(states, group, hop), group, hop))
    result = per_hop[0]
    for more in per_hop[1:]:
        result = result.unionByName(more)
    return result


def tiles(events: DataFrame, group: GroupBy, cutoff_ms: int) -> DataFrame:
    """Every tile of every hop of ``group`` for the events before
    ``cutoff_ms`` (which must be aligned, see ``check_cutoff``).

    ``events`` is the output of ``lamina.batch.events.events_for``: columns
    ``entity_key``, ``event_id``, ``event_time`` (epoch ms) and the fields.
    Returns the columns of the module docstring. (Without a persist between
    the two steps, Spark aggregates the events once per hop.)
    """
    return tiles_from_states(finest_states(events, group, cutoff_ms), group)
