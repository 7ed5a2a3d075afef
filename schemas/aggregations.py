"""Aggregations as monoids: the algebra every layer shares (invariant 3).

An aggregation is a value with three functions, as in Algebird and Chronon:

* ``zero()`` -- the identity: ``merge(zero(), p) == merge(p, zero()) == p``;
* ``lift(value, event_time_ms, event_id)`` -- one event's partial;
* ``merge(a, b)`` -- associative; never raises on ``zero()``;

plus ``present(partial)``, which turns a partial into the feature value, and
``to_storage`` / ``from_storage``, which convert a partial to and from a
Python value of ``arrow_type`` so that tiles can live in Delta, Parquet or
SQLite. The *partial* is what is stored and merged -- in batch tiles, in
speed-layer state, in serving -- and it is presented only at the end.

Storage contract (fixed: the Spark batch layer writes the same types)
---------------------------------------------------------------------
=============== ============================================ ============ ==================
op              arrow_type (tile column)                     zero         present
=============== ============================================ ============ ==================
count           int64, not null                              0            int
sum             int64, not null: units of 10**-scale         0            units / 10**scale
                                                                          (float)
min, max        float64, nullable                            null         float or None
mean            struct<sum: int64 (units), count: int64>,    {0, 0}       sum / (count *
                not null                                                  10**scale); None
                                                                          when count is 0
last            struct<time_ms: int64, event_id: string,     null         value or None
                value: float64>, nullable
approx_distinct binary, nullable: DataSketches HLL, lg_k=12, null         estimate, rounded
                HLL_8, compact image, canonical (below)                   half up
histogram       list<int64>, not null: len(bounds)+1 counts  [0, ..., 0]  tuple of counts
=============== ============================================ ============ ==================

Rules every implementation follows (the Spark one included):

* A missing value (``None``) lifts to ``zero()`` -- except for ``count``,
  which counts the event and ignores its value. Values are finite numbers
  (event schemas are JSON, which has no NaN or infinity).
* ``from_storage(None)`` is ``zero()`` for every op, so a SQL ``sum`` over no
  rows (null) reads as 0; ``from_storage(to_storage(p)) == p`` always.
* ``last`` keeps the greatest ``(time_ms, event_id, value)`` in lexicographic
  order (strings by code point = by UTF-8 bytes), so ties on event time are
  broken by event id deterministically, and merge is commutative. In Spark:
  ``max(named_struct('time_ms', .., 'event_id', .., 'value', ..))``.
* ``histogram`` with bounds ``b``: value ``v`` goes to the first bucket ``i``
  with ``v < b[i]``, else to the last bucket (index ``len(b)``).
* ``sum`` and ``mean`` are exact (below): integer partials, so merge is
  associative and commutative bit for bit, whatever the split, order or
  grouping, and no layer needs to add in any particular order.

Exact sums: fixed-point units at a declared scale
-------------------------------------------------
A ``sum`` or ``mean`` aggregate declares ``scale``, the decimal places it
keeps exactly (2 for amounts in cents). ``lift`` turns a value into an
integer count of ``10**-scale`` units (:func:`decimal_units`); partials are
those integers (a mean: units and a count), stored as int64; only
``present`` makes a float -- the one nearest the exact decimal result
(``units / 10**scale``; a mean ``sum / (count * 10**scale)``), so equal
partials always present equal floats.

* The value is the decimal number the event carries: a float's shortest
  ``repr``, which for a JSON text of at most 15 significant digits is that
  text's value (JSON parsers -- Python's, orjson, Spark's Jackson -- all
  return the float nearest the text). So ``0.1 + 0.2`` (the float
  0.30000000000000004) is 30 cents, ``1e6`` at scale 2 is 10**8 units.
* A value finer than the scale is rounded **half to even** on that decimal
  value: 0.005 -> 0, 0.015 -> 2, 0.025 -> 2, 2.675 -> 268, 999999.995 ->
  10**8 cents; a value below half a unit (1e-9) lifts to 0 -- it still
  counts in a mean's count. Not ``round(x * 10**scale)``: the float product
  misplaces decimal ties and their neighbours (597073.185 -> 59707319,
  5485.014999999999 -> 548502, both one cent off). The rule is computed with
  a few float64 operations (a product, a floor, an exactly rounded division
  giving the tie, two comparisons) that Spark performs identically
  (``lamina.batch.tiles.units_column``); a property test checks it equals
  ``Decimal(repr(x))`` rounded half to even for arbitrary floats.
* Bounds. A value is lifted only if ``|value| * 10**scale < 2**48`` (about
  2.8e12 at scale 2), where float64 resolves a tenth of a unit and the rule
  is exact; anything larger raises ValueError. Event schemas bound the field
  (``lamina.schemas.view_definitions.check_against_schema`` requires a minimum and a
  maximum and checks them against this limit). A partial overflows int64
  only after ``(2**63 - 1) / (max |value| * 10**scale)`` values in one tile
  or window of one entity -- 9.2e10 transactions of the schema's maximum
  amount (1e6) at scale 2; ``to_storage`` raises OverflowError rather than
  wrap, and Spark (ANSI mode, the default) fails the job. Presented sums
  are correctly rounded for any size; other languages get the same float
  from ``float(units) / 10.0**scale`` while ``|units| < 2**53``.

approx_distinct: DataSketches HLL, and why the partial is canonicalised
-----------------------------------------------------------------------
The partial is the compact serialisation of an Apache DataSketches HLL sketch
(``lg_k=12``, target ``HLL_8``), the format Spark 4's ``hll_sketch_agg(col,
12)`` and ``hll_union_agg`` read and write, so batch and speed layers can
merge each other's partials. Values are hashed as DataSketches does in every
language: strings as their UTF-8 bytes, integers as 64-bit; the empty string
and null are ignored (as in Spark). Two properties of the library make raw
sketch bytes unsuitable as a *value*:

1. The bytes depend on insertion order: coupons (the sparse modes, up to 384
   distinct values at lg_k=12) are stored in list or hash-table order.
2. In dense (HLL) mode, from 385 distinct values on, a sketch built by
   updates in order estimates with the HIP estimator, which depends on the
   order; a union estimates from the registers -- but only when the union
   took its out-of-order path, which depends on how the partials were
   grouped. Measured: the same 700 values merged along different trees gave
   estimates 697.97, 700.32, 702.20.

So every partial this module returns is *canonical*: it is passed through a
union twice (the second pass always takes the out-of-order path, which
rebuilds the register statistics and makes the estimate a function of the
registers alone), and in the sparse modes the coupons of the compact image
are sorted. The canonical image is a function of the *set* of hashed values
only: any split, order or grouping gives the same bytes, so partials compare
with ``==``, merge is associative and commutative exactly, and tile reruns
are byte-identical. Readers are lenient: ``from_storage`` accepts any lg_k=12
HLL image (compact or updatable, any target type -- e.g. Spark's updatable
``HLL_8`` output) and canonicalises it. ``present`` rounds half up (Java's
``Math.round``, as ``hll_sketch_estimate`` does).

Checked against Spark 4.2 (datasketches-java 6.2): for 1 to 5001 distinct
strings (ASCII, accented, CJK, plus ""), ``from_storage`` of Spark's
``hll_sketch_agg(col, 12)`` output -- whole, per partition, or after
``hll_union_agg`` -- equals this module's own partial byte for byte, and
Spark's ``hll_sketch_estimate`` of a canonical image equals ``present``.
Spark's estimate of its *own* non-canonical union can differ in dense mode
(700 values: 696 there, 702 here), so features are presented with
``present``, never with ``hll_sketch_estimate`` on raw Spark bytes.

Cost (this machine): ``lift`` ~1.4 us, ``merge`` 10-25 us sparse and ~100 us
dense. A hot path merging many partials into one calls ``merge_all`` (one
union, one canonicalisation).
"""

from __future__ import annotations

import math
import struct
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, NamedTuple, TypeVar

import datasketches
import pyarrow as pa

from lamina.errors import ConfigError

P = TypeVar("P")

#: What ``present`` returns: the feature value of a partial.
FeatureValue = int | float | tuple[int, ...] | None


class Aggregation(ABC, Generic[P]):
    """A monoid over partials of type ``P`` with a storage type.

    Laws (proved by property tests, inherited by every layer):
    ``merge`` is associative, ``zero()`` is a two-sided identity, and
    merging the partials of any split of a stream equals aggregating the
    whole stream. Partials are immutable values; no method mutates its
    arguments.
    """

    #: The op's name in view definitions (``Aggregate.op``).
    op: str
    #: The storage type of a partial in a tile column.
    arrow_type: pa.DataType
    #: Whether the tile column may hold null (its zero is stored as null).
    nullable: bool

    @abstractmethod
    def zero(self) -> P:
        """The identity partial (no events)."""

    @abstractmethod
    def lift(self, value: Any, event_time_ms: int, event_id: str) -> P:
        """The partial of one event carrying ``value``."""

    @abstractmethod
    def merge(self, a: P, b: P) -> P:
        """Combine two partials; associative, with ``zero()`` as identity."""

    @abstractmethod
    def present(self, partial: P) -> FeatureValue:
        """The feature value of a partial."""

    @abstractmethod
    def to_storage(self, partial: P) -> Any:
        """A Python value of ``arrow_type`` (``pyarrow`` accepts it as is)."""

    @abstractmethod
    def from_storage(self, stored: Any) -> P:
        """The partial a stored value holds; ``None`` reads as ``zero()``."""

    def merge_all(self, partials: Iterable[P]) -> P:
        """Merge any number of partials (``zero()`` for none)."""
        result = self.zero()
        for partial in partials:
            result = self.merge(result, partial)
        return result

    def present_all(self, partials: Sequence[P]) -> FeatureValue:
        """``present(merge_all(partials))``; an aggregation may answer it
        without building the merged partial (a read path that only presents
        calls this)."""
        return self.present(self.merge_all(partials))

    def aggregate(self, events: Iterable[tuple[Any, int, str]]) -> P:
        """The partial of a whole stream of ``(value, event_time_ms, event_id)``."""
        return self.merge_all(self.lift(v, t, i) for v, t, i in events)

    def arrow_field(self, name: str) -> pa.Field:
        """The tile column for an aggregate called ``name``."""
        return pa.field(name, self.arrow_type, nullable=self.nullable)

    def __repr__(self) -> str:
        return f"<aggregation {self.op}>"


def _number(value: Any) -> float:
    return float(value)


# --- exact sums: fixed-point units ------------------------------------------

#: Largest scale an aggregate may declare (10**scale and 2 * 10**scale are
#: exact float64 values far beyond this; 9 places is already nanounits).
MAX_SCALE: Final = 9
#: A value is lifted only if ``abs(value) * 10**scale < UNIT_LIMIT``: there
#: the float64 spacing is below a tenth of a unit, which makes the rounding
#: rule of :func:`decimal_units` exact (see the module docstring).
UNIT_LIMIT: Final = 2**48
INT64_MAX: Final = 2**63 - 1


def check_scale(scale: Any) -> int:
    """``scale`` if it is an integer in ``0..MAX_SCALE``, else ConfigError."""
    if isinstance(scale, bool) or not isinstance(scale, int) or not 0 <= scale <= MAX_SCALE:
        raise ConfigError(
            f"scale must be an integer from 0 to {MAX_SCALE} (the decimal places kept "
            f"exactly, e.g. 2 for amounts in cents), got {scale!r}"
        )
    return scale


def decimal_units(value: Any, scale: int) -> int:
    """``value`` as an integer number of ``10**-scale`` units: the decimal
    value of the number (a float's shortest repr, which is the JSON text for
    any text of up to 15 significant digits) rounded half to even at
    ``scale`` places. Exactly ``Decimal(repr(x)).scaleb(scale)
    .to_integral_value(ROUND_HALF_EVEN)`` for a float ``x``, computed with
    float64 operations that Spark repeats one for one
    (``lamina.batch.tiles.units_column``). ValueError for a value that is
    not finite or not below ``UNIT_LIMIT`` units; TypeError for a bool."""
    if isinstance(value, bool):
        raise TypeError(f"a sum or mean takes numbers, got {value!r}")
    if isinstance(value, int):
        units = value * 10**scale
        if abs(units) >= UNIT_LIMIT:
            raise ValueError(_too_large(value, scale))
        return units
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"a sum or mean takes finite numbers, got {value!r}")
    # m is floor(x * 10**scale) or one more (the product is rounded, never
    # across an integer in the wrong direction); the tie m + 1/2 as the
    # float nearest the decimal (2m + 1) / (2 * 10**scale) -- an exactly
    # rounded division of exact integers -- then decides, since x and the
    # tie compare as their shortest decimal reprs do.
    scaled = x * _POWERS[scale]
    if not abs(scaled) < UNIT_LIMIT:
        raise ValueError(_too_large(value, scale))
    m = math.floor(scaled)
    tie = float(2 * m + 1) / _TWICE_POWERS[scale]
    if x < tie:
        return m
    if x > tie:
        return m + 1
    return m + m % 2  # exactly half a unit: to the even one


_POWERS: Final = tuple(float(10**s) for s in range(MAX_SCALE + 1))
_TWICE_POWERS: Final = tuple(float(2 * 10**s) for s in range(MAX_SCALE + 1))


def _too_large(value: Any, scale: int) -> str:
    return (f"{value!r} is too large for an exact sum at scale {scale}: |value| * 10**{scale} "
            f"must be below 2**48 (bound the field in the event schema)")


def present_units(units: int, scale: int) -> float:
    """The float nearest ``units * 10**-scale`` (Python's int division is
    correctly rounded; for ``|units| < 2**53`` it equals ``float(units) /
    10.0**scale`` in any IEEE 754 language)."""
    return units / 10**scale


def check_int64(units: int, op: str) -> int:
    """``units`` if it fits the int64 tile column, else OverflowError."""
    if not -INT64_MAX - 1 <= units <= INT64_MAX:
        raise OverflowError(
            f"{op}: {units} units overflow the int64 tile column; use a smaller scale or "
            f"a shorter window")
    return units


class Count(Aggregation[int]):
    """Number of events; the value is ignored (a filter decides what counts)."""

    op = "count"
    arrow_type = pa.int64()
    nullable = False

    def zero(self) -> int:
        return 0

    def lift(self, value: Any, event_time_ms: int, event_id: str) -> int:
        return 1

    def merge(self, a: int, b: int) -> int:
        return a + b

    def merge_all(self, partials: Iterable[int]) -> int:
        return sum(partials)

    def present(self, partial: int) -> int:
        return partial

    def to_storage(self, partial: int) -> int:
        return partial

    def from_storage(self, stored: Any) -> int:
        return 0 if stored is None else int(stored)


class Sum(Aggregation[int]):
    """Sum of the values, exactly: an integer count of ``10**-scale`` units
    (see "Exact sums" in the module docstring)."""

    op = "sum"
    arrow_type = pa.int64()
    nullable = False

    def __init__(self, scale: int) -> None:
        self.scale: int = check_scale(scale)

    def zero(self) -> int:
        return 0

    def lift(self, value: Any, event_time_ms: int, event_id: str) -> int:
        return 0 if value is None else decimal_units(value, self.scale)

    def merge(self, a: int, b: int) -> int:
        return a + b

    def merge_all(self, partials: Iterable[int]) -> int:
        return sum(partials)

    def present(self, partial: int) -> float:
        return present_units(partial, self.scale)

    def to_storage(self, partial: int) -> int:
        return check_int64(partial, self.op)

    def from_storage(self, stored: Any) -> int:
        return 0 if stored is None else int(stored)

    def __repr__(self) -> str:
        return f"<aggregation sum scale={self.scale}>"


class _Extremum(Aggregation[float | None]):
    arrow_type = pa.float64()
    nullable = True

    def zero(self) -> float | None:
        return None

    def lift(self, value: Any, event_time_ms: int, event_id: str) -> float | None:
        return None if value is None else _number(value)

    def merge(self, a: float | None, b: float | None) -> float | None:
        if a is None:
            return b
        if b is None:
            return a
        return self._pick(a, b)

    @staticmethod
    @abstractmethod
    def _pick(a: float, b: float) -> float: ...

    def present(self, partial: float | None) -> float | None:
        return partial

    def to_storage(self, partial: float | None) -> float | None:
        return partial

    def from_storage(self, stored: Any) -> float | None:
        return None if stored is None else float(stored)


class Min(_Extremum):
    """Smallest value; null when there is none."""

    op = "min"

    @staticmethod
    def _pick(a: float, b: float) -> float:
        return min(a, b)


class Max(_Extremum):
    """Largest value; null when there is none."""

    op = "max"

    @staticmethod
    def _pick(a: float, b: float) -> float:
        return max(a, b)


@dataclass(frozen=True, slots=True)
class MeanPartial:
    """The stored state of a mean: what is merged, not the mean itself --
    the exact sum in ``10**-scale`` units and the number of values."""

    sum: int
    count: int


class Mean(Aggregation[MeanPartial]):
    """Arithmetic mean, kept as (sum in units, count); presents None for no
    values, else the float nearest the exact quotient."""

    op = "mean"
    arrow_type = pa.struct([("sum", pa.int64()), ("count", pa.int64())])
    nullable = False

    def __init__(self, scale: int) -> None:
        self.scale: int = check_scale(scale)

    def zero(self) -> MeanPartial:
        return MeanPartial(0, 0)

    def lift(self, value: Any, event_time_ms: int, event_id: str) -> MeanPartial:
        if value is None:
            return self.zero()
        return MeanPartial(decimal_units(value, self.scale), 1)

    def merge(self, a: MeanPartial, b: MeanPartial) -> MeanPartial:
        return MeanPartial(a.sum + b.sum, a.count + b.count)

    def merge_all(self, partials: Iterable[MeanPartial]) -> MeanPartial:
        total = count = 0
        for partial in partials:
            total += partial.sum
            count += partial.count
        return MeanPartial(total, count)

    def present(self, partial: MeanPartial) -> float | None:
        if partial.count == 0:
            return None
        # int / int is correctly rounded: the float nearest sum / (count * 10**scale).
        return partial.sum / (partial.count * 10**self.scale)

    def to_storage(self, partial: MeanPartial) -> dict[str, Any]:
        return {"sum": check_int64(partial.sum, self.op), "count": partial.count}

    def from_storage(self, stored: Any) -> MeanPartial:
        if stored is None:
            return self.zero()
        # A SQL sum over no rows is null: read it as the zero it means.
        total, count = stored.get("sum"), stored.get("count")
        return MeanPartial(0 if total is None else int(total),
                           0 if count is None else int(count))

    def __repr__(self) -> str:
        return f"<aggregation mean scale={self.scale}>"


class LastPartial(NamedTuple):
    """The latest event's value; field order is the merge order."""

    time_ms: int
    event_id: str
    value: float


class Last(Aggregation[LastPartial | None]):
    """Value of the latest event by event time (ties: greater event_id)."""

    op = "last"
    arrow_type = pa.struct(
        [("time_ms", pa.int64()), ("event_id", pa.string()), ("value", pa.float64())]
    )
    nullable = True

    def zero(self) -> LastPartial | None:
        return None

    def lift(self, value: Any, event_time_ms: int, event_id: str) -> LastPartial | None:
        if value is None:
            return None
        return LastPartial(int(event_time_ms), str(event_id), _number(value))

    def merge(self, a: LastPartial | None, b: LastPartial | None) -> LastPartial | None:
        if a is None:
            return b
        if b is None:
            return a
        # Tuple order: time, then event id, then value -- total, so the
        # result never depends on which side an equal-time event came from.
        return max(a, b)

    def present(self, partial: LastPartial | None) -> float | None:
        return None if partial is None else partial.value

    def to_storage(self, partial: LastPartial | None) -> dict[str, Any] | None:
        return None if partial is None else partial._asdict()

    def from_storage(self, stored: Any) -> LastPartial | None:
        if stored is None:
            return None
        return LastPartial(int(stored["time_ms"]), str(stored["event_id"]),
                           float(stored["value"]))


# --- approx_distinct -------------------------------------------------------

HLL_LG_K: Final = 12
_HLL_8 = datasketches.tgt_hll_type.HLL_8
# Compact image layout (DataSketches HLL serialisation, version 1):
# byte 3 lg_k, byte 6 coupon count of LIST mode, byte 7 low two bits the
# mode; LIST coupons start at byte 8, SET has a 4-byte count at byte 8 and
# coupons from byte 12; a coupon is a 4-byte little-endian integer.
_MODE_LIST, _MODE_SET = 0, 1
_LIST_COUNT_BYTE, _LIST_COUPONS, _SET_COUNT, _SET_COUPONS = 6, 8, 8, 12


def _canonical_image(sketch: datasketches.hll_sketch) -> bytes | None:
    """The canonical compact image of a sketch (see the module docstring)."""
    if sketch.is_empty():
        return None
    union = datasketches.hll_union(HLL_LG_K)
    union.update(sketch)
    # A second union of the same sketch always takes the out-of-order path:
    # register statistics are rebuilt and the estimator no longer depends on
    # the order the registers were filled in.
    union.update(sketch)
    image = bytearray(union.get_result(_HLL_8).serialize_compact())
    mode = image[7] & 0b11
    if mode == _MODE_LIST:
        start, count = _LIST_COUPONS, image[_LIST_COUNT_BYTE]
    elif mode == _MODE_SET:
        start = _SET_COUPONS
        count = struct.unpack_from("<I", image, _SET_COUNT)[0]
    else:
        return bytes(image)
    end = start + 4 * count
    coupons = sorted(struct.unpack_from(f"<{count}I", image, start))
    image[start:end] = struct.pack(f"<{count}I", *coupons)
    return bytes(image)


def hll_coupons(image: bytes) -> tuple[int, ...] | None:
    """The coupons of a compact HLL image in a sparse mode (list or set:
    up to 384 distinct values at lg_k=12), None for a dense (HLL) image."""
    mode = image[7] & 0b11
    if mode == _MODE_LIST:
        start, count = _LIST_COUPONS, image[_LIST_COUNT_BYTE]
    elif mode == _MODE_SET:
        start = _SET_COUPONS
        count = struct.unpack_from("<I", image, _SET_COUNT)[0]
    else:
        return None
    return struct.unpack_from(f"<{count}I", image, start)


#: Index n: ``ApproxDistinct.present`` of a canonical sparse image holding n
#: coupons (filled once, by sparse_present).
_SPARSE_PRESENTS: list[int] = []


def sparse_present(coupons: int) -> int | None:
    """``ApproxDistinct.present`` of any canonical image holding ``coupons``
    distinct coupons in a sparse mode, or None when that many coupons make a
    dense sketch. A sparse sketch estimates from its coupon count alone
    (DataSketches' coupon list and set), so the presented value of a union
    of sparse partials is a function of how many distinct coupons they
    hold; the table is built once from real sketches (a property test checks
    it against ``present(merge_all(...))`` for random value sets)."""
    if not _SPARSE_PRESENTS:
        sketch = datasketches.hll_sketch(HLL_LG_K, _HLL_8)
        table = [0]
        value = 0
        while True:
            value += 1
            sketch.update(value)
            image = _canonical_image(sketch)
            assert image is not None
            held = hll_coupons(image)
            if held is None:
                break
            if len(held) == len(table):  # a colliding value adds no coupon
                table.append(math.floor(_read_sketch(image).get_estimate() + 0.5))
        _SPARSE_PRESENTS.extend(table)
    return _SPARSE_PRESENTS[coupons] if coupons < len(_SPARSE_PRESENTS) else None


def _read_sketch(image: bytes) -> datasketches.hll_sketch:
    try:
        sketch = datasketches.hll_sketch.deserialize(bytes(image))
    except Exception as error:  # the C++ reader raises several types
        raise ValueError(f"approx_distinct: not a DataSketches HLL image ({error})") from None
    if sketch.lg_config_k != HLL_LG_K:
        raise ValueError(
            f"approx_distinct: sketch has lg_k={sketch.lg_config_k}, the contract is "
            f"lg_k={HLL_LG_K} (Spark: hll_sketch_agg(col, {HLL_LG_K}))"
        )
    return sketch


class ApproxDistinct(Aggregation[bytes | None]):
    """Approximate number of distinct values: a canonical HLL sketch image."""

    op = "approx_distinct"
    arrow_type = pa.binary()
    nullable = True

    def zero(self) -> bytes | None:
        return None

    def lift(self, value: Any, event_time_ms: int, event_id: str) -> bytes | None:
        if value is None or value == "":
            return None  # DataSketches and Spark ignore null and ""
        if isinstance(value, bool) or not isinstance(value, str | int):
            # Floats hash by their bits, which Spark refuses for HLL input.
            raise TypeError(f"approx_distinct counts strings or integers, got {value!r}")
        sketch = datasketches.hll_sketch(HLL_LG_K, _HLL_8)
        sketch.update(value)
        # One coupon: the plain compact image is already canonical.
        return bytes(sketch.serialize_compact())

    def merge(self, a: bytes | None, b: bytes | None) -> bytes | None:
        if a is None:
            return b
        if b is None:
            return a
        return self.merge_all((a, b))

    def merge_all(self, partials: Iterable[bytes | None]) -> bytes | None:
        union = datasketches.hll_union(HLL_LG_K)
        seen = 0
        last: bytes | None = None
        for partial in partials:
            if partial is not None:
                union.update(_read_sketch(partial))
                seen += 1
                last = partial
        if seen <= 1:
            return last  # already canonical (or zero)
        return _canonical_image(union.get_result(_HLL_8))

    def present_all(self, partials: Sequence[bytes | None]) -> int:
        # Sparse images (at most a few hundred values each) present as a
        # function of their distinct coupons alone (``sparse_present``): no
        # union is built unless one is dense or their union would be.
        coupons: set[int] = set()
        for partial in partials:
            if partial is not None:
                held = hll_coupons(partial)
                if held is None:
                    return self.present(self.merge_all(partials))
                coupons.update(held)
        value = sparse_present(len(coupons))
        return self.present(self.merge_all(partials)) if value is None else value

    def present(self, partial: bytes | None) -> int:
        if partial is None:
            return 0
        # Round half up, as Java's Math.round in Spark's hll_sketch_estimate.
        return math.floor(_read_sketch(partial).get_estimate() + 0.5)

    def to_storage(self, partial: bytes | None) -> bytes | None:
        return partial

    def from_storage(self, stored: Any) -> bytes | None:
        if stored is None or len(stored) == 0:
            return None
        return _canonical_image(_read_sketch(bytes(stored)))


# --- histogram -------------------------------------------------------------


class Histogram(Aggregation[tuple[int, ...]]):
    """Counts per bucket for fixed upper bounds (``len(bounds) + 1`` buckets).

    Value ``v`` goes to the first bucket ``i`` with ``v < bounds[i]``, else to
    the last one; so bucket ``i`` holds ``bounds[i-1] <= v < bounds[i]``.
    """

    op = "histogram"
    arrow_type = pa.list_(pa.int64())
    nullable = False

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds: tuple[float, ...] = check_histogram_bounds(bounds)

    def zero(self) -> tuple[int, ...]:
        return (0,) * (len(self.bounds) + 1)

    def bucket(self, value: float) -> int:
        """Index of the bucket ``value`` falls in."""
        for index, bound in enumerate(self.bounds):
            if value < bound:
                return index
        return len(self.bounds)

    def lift(self, value: Any, event_time_ms: int, event_id: str) -> tuple[int, ...]:
        counts = [0] * (len(self.bounds) + 1)
        if value is not None:
            counts[self.bucket(_number(value))] = 1
        return tuple(counts)

    def merge(self, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(x + y for x, y in zip(a, b, strict=True))

    def merge_all(self, partials: Iterable[tuple[int, ...]]) -> tuple[int, ...]:
        parts = list(partials)
        if not parts:
            return self.zero()
        if len(parts) == 1:
            return parts[0]
        buckets = len(self.bounds) + 1
        if any(len(part) != buckets for part in parts):
            raise ValueError(f"histogram: partials of {sorted({len(p) for p in parts})} "
                             f"buckets, the definition has {buckets}")
        return tuple(map(sum, zip(*parts, strict=True)))

    def present(self, partial: tuple[int, ...]) -> tuple[int, ...]:
        return partial

    def to_storage(self, partial: tuple[int, ...]) -> list[int]:
        return list(partial)

    def from_storage(self, stored: Any) -> tuple[int, ...]:
        if stored is None:
            return self.zero()
        counts = tuple(int(c) for c in stored)
        if len(counts) != len(self.bounds) + 1:
            raise ValueError(
                f"histogram: stored {len(counts)} buckets, the definition has "
                f"{len(self.bounds) + 1}"
            )
        return counts

    def __repr__(self) -> str:
        return f"<aggregation histogram bounds={self.bounds}>"


def check_histogram_bounds(bounds: Sequence[float]) -> tuple[float, ...]:
    """Bounds as a tuple of floats, or ``ConfigError`` if they are not finite
    and strictly increasing (or there are none)."""
    if isinstance(bounds, str | bytes) or not isinstance(bounds, Sequence):
        raise ConfigError(f"histogram bounds must be a sequence of numbers, got {bounds!r}")
    if not bounds:
        raise ConfigError("histogram needs at least one bucket bound")
    values: list[float] = []
    for bound in bounds:
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            raise ConfigError(f"histogram bound {bound!r} is not a number")
        if not math.isfinite(bound):
            raise ConfigError(f"histogram bound {bound!r} is not finite")
        values.append(float(bound))
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ConfigError(f"histogram bounds must increase strictly, got {tuple(bounds)}")
    return tuple(values)


COUNT: Final = Count()
MIN: Final = Min()
MAX: Final = Max()
LAST: Final = Last()
APPROX_DISTINCT: Final = ApproxDistinct()

#: Every op name a view definition may use.
OPS: Final = ("count", "sum", "min", "max", "mean", "last", "approx_distinct", "histogram")
#: Ops whose partials are fixed-point sums: they need a ``scale``.
SCALED_OPS: Final = frozenset({"sum", "mean"})
_SIMPLE: Final[Mapping[str, Aggregation[Any]]] = {
    a.op: a for a in (COUNT, MIN, MAX, LAST, APPROX_DISTINCT)
}


def aggregation_for(op: str, buckets: Sequence[float] = (),
                    scale: int | None = None) -> Aggregation[Any]:
    """The monoid for an op name (``buckets``: histogram bounds, else empty;
    ``scale``: the decimal places of a sum or mean, else None).

    Raises ``ConfigError`` for an unknown op, for a histogram without valid
    bounds, for bounds given to any other op, for a sum or mean without a
    valid scale, or for a scale given to any other op.
    """
    if op not in OPS:
        raise ConfigError(f"unknown aggregation op {op!r}; known: {', '.join(OPS)}")
    if buckets and op != "histogram":
        raise ConfigError(f"op {op!r} takes no buckets (only histogram does), got {buckets!r}")
    if op in SCALED_OPS:
        if scale is None:
            raise ConfigError(
                f"op {op!r} needs a scale: the decimal places it keeps exactly (e.g. "
                f"scale=2 for amounts in cents); finer values are rounded half to even")
        return Sum(scale) if op == "sum" else Mean(scale)
    if scale is not None:
        raise ConfigError(f"op {op!r} takes no scale (only sum and mean do), got {scale!r}")
    if op == "histogram":
        return Histogram(buckets)
    return _SIMPLE[op]
