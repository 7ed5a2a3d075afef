"""Aggregations are monoids (invariant 3): the laws, split-invariance, storage
round trips, and the DataSketches HLL canonical form that lets batch (Spark)
and speed partials merge and compare."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import datasketches
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.errors import ConfigError
from lamina.schemas.aggregations import (
    APPROX_DISTINCT,
    COUNT,
    HLL_LG_K,
    INT64_MAX,
    LAST,
    MAX,
    MIN,
    OPS,
    UNIT_LIMIT,
    Aggregation,
    Histogram,
    LastPartial,
    Mean,
    MeanPartial,
    Sum,
    aggregation_for,
    decimal_units,
)

SUM, MEAN = Sum(2), Mean(2)  # cents
exact_numbers = st.integers(-4_000_000, 4_000_000).map(lambda k: k / 4)
# Sums are exact for any value: at the scale (cents, which do not add
# exactly in binary), finer than it (rounded once, when lifted), or any float.
cents = st.integers(-10**8, 10**8).map(lambda k: k / 100)
any_amount = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
sum_values = cents | any_amount | exact_numbers | st.sampled_from([0.1, 0.2, 0.3, 0.005, -0.0])
HISTOGRAM = Histogram((0.0, 5.0, 20.0, 100.0))

# (monoid, strategy for values): every op of the contract.
CASES: list[tuple[Aggregation[Any], st.SearchStrategy[Any]]] = [
    (COUNT, st.none() | exact_numbers),
    (SUM, sum_values | st.none()),
    (Sum(0), sum_values | st.integers(-10**9, 10**9) | st.none()),
    (Sum(6), sum_values | st.none()),
    (MIN, exact_numbers | st.none()),
    (MAX, exact_numbers | st.none()),
    (MEAN, sum_values | st.none()),
    (Mean(4), sum_values | st.none()),
    (LAST, exact_numbers | st.none()),
    (APPROX_DISTINCT, st.sampled_from(["m1", "m2", "m3", "é", "商户"])
     | st.text(min_size=0, max_size=6) | st.integers(-(2**63), 2**63 - 1) | st.none()),
    (HISTOGRAM, exact_numbers | st.sampled_from([0.0, 5.0, 20.0, 100.0]) | st.none()),
]
IDS = [repr(monoid).strip("<>").replace("aggregation ", "") for monoid, _ in CASES]


def stream(values: st.SearchStrategy[Any], max_size: int = 30
           ) -> st.SearchStrategy[list[tuple[Any, int, str]]]:
    """(value, event_time_ms, event_id) with many ties on time and id."""
    return st.lists(
        st.tuples(values, st.integers(0, 20), st.sampled_from(["a", "b", "c", "d"])),
        max_size=max_size,
    )


def partial_of(monoid: Aggregation[Any], values: st.SearchStrategy[Any]
               ) -> st.SearchStrategy[Any]:
    return stream(values, 12).map(monoid.aggregate)


@pytest.mark.parametrize(("monoid", "values"), CASES, ids=IDS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_merge_is_associative(monoid: Aggregation[Any], values: Any, data: st.DataObject) -> None:
    a, b, c = (data.draw(partial_of(monoid, values)) for _ in range(3))
    assert monoid.merge(monoid.merge(a, b), c) == monoid.merge(a, monoid.merge(b, c))


@pytest.mark.parametrize(("monoid", "values"), CASES, ids=IDS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_zero_is_a_two_sided_identity(monoid: Aggregation[Any], values: Any,
                                      data: st.DataObject) -> None:
    a = data.draw(partial_of(monoid, values))
    assert monoid.merge(monoid.zero(), a) == a
    assert monoid.merge(a, monoid.zero()) == a
    assert monoid.merge(monoid.zero(), monoid.zero()) == monoid.zero()


@pytest.mark.parametrize(("monoid", "values"), CASES, ids=IDS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_merge_is_commutative(monoid: Aggregation[Any], values: Any, data: st.DataObject) -> None:
    # Every op of the contract commutes: last breaks ties on (time, id, value)
    # and HLL partials are canonical, so no result depends on the side.
    a, b = (data.draw(partial_of(monoid, values)) for _ in range(2))
    assert monoid.merge(a, b) == monoid.merge(b, a)


@pytest.mark.parametrize(("monoid", "values"), CASES, ids=IDS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_merging_the_partials_of_any_split_equals_aggregating_the_whole_stream(
    monoid: Aggregation[Any], values: Any, data: st.DataObject
) -> None:
    events = data.draw(stream(values))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=6)))
    bounds = [0, *cuts, len(events)]
    parts = [monoid.aggregate(events[i:j]) for i, j in zip(bounds, bounds[1:], strict=False)]
    # Merge along a random tree, as tiles and partitions get merged.
    while len(parts) > 1:
        k = data.draw(st.integers(0, len(parts) - 2))
        parts[k:k + 2] = [monoid.merge(parts[k], parts[k + 1])]
    whole = monoid.aggregate(events)
    assert parts[0] == whole
    assert monoid.present(parts[0]) == monoid.present(whole)


@pytest.mark.parametrize(("monoid", "values"), CASES, ids=IDS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_storage_round_trips_through_arrow(monoid: Aggregation[Any], values: Any,
                                           data: st.DataObject) -> None:
    partial = data.draw(partial_of(monoid, values))
    stored = monoid.to_storage(partial)
    assert monoid.from_storage(stored) == partial
    column = pa.array([stored], type=monoid.arrow_type)  # the value fits arrow_type
    assert monoid.from_storage(column.to_pylist()[0]) == partial


@pytest.mark.parametrize(("monoid", "values"), CASES, ids=IDS)
def test_null_in_storage_reads_as_zero(monoid: Aggregation[Any], values: Any) -> None:
    assert monoid.from_storage(None) == monoid.zero()
    if not monoid.nullable:
        assert monoid.to_storage(monoid.zero()) is not None


@settings(max_examples=100, deadline=None)
@given(st.lists(sum_values, max_size=40), st.data())
def test_sums_and_means_of_any_split_and_order_are_bit_identical(
        values: list[float], data: st.DataObject) -> None:
    # Arbitrary floats, not only values that add exactly in binary: the
    # partials are integers, so every split, order and grouping agrees.
    order = data.draw(st.permutations(values))
    cut = data.draw(st.integers(0, len(values)))
    for monoid in (SUM, MEAN):
        whole = monoid.aggregate((v, 0, "e") for v in values)
        split = monoid.merge(monoid.aggregate((v, 0, "e") for v in order[cut:]),
                             monoid.aggregate((v, 0, "e") for v in order[:cut]))
        assert split == whole
        assert repr(monoid.present(split)) == repr(monoid.present(whole))
    # The sum presents the float nearest the exact sum of the values, each
    # first rounded to cents half to even.
    exact = sum((Decimal(repr(v)).quantize(Decimal("0.01"), ROUND_HALF_EVEN) for v in values),
                Decimal(0))
    assert SUM.present(SUM.aggregate((v, 0, "e") for v in values)) == float(exact)
    if values:
        assert MEAN.present(MEAN.aggregate((v, 0, "e") for v in values)) == float(
            exact / len(values))


def test_present_of_each_op() -> None:
    events = [(3.0, 10, "b"), (None, 11, "z"), (-1.5, 30, "a"), (7.0, 30, "c"), (2.0, 5, "d")]
    assert COUNT.present(COUNT.aggregate(events)) == 5
    assert SUM.present(SUM.aggregate(events)) == 10.5
    assert MIN.present(MIN.aggregate(events)) == -1.5
    assert MAX.present(MAX.aggregate(events)) == 7.0
    assert MEAN.aggregate(events) == MeanPartial(1050, 4)  # cents
    assert MEAN.present(MEAN.aggregate(events)) == 10.5 / 4
    # Latest time is 30, twice: the greater event id ("c") wins.
    assert LAST.aggregate(events) == LastPartial(30, "c", 7.0)
    assert LAST.present(LAST.aggregate(events)) == 7.0
    for monoid in (MIN, MAX, MEAN, LAST):
        assert monoid.present(monoid.zero()) is None
    assert APPROX_DISTINCT.present(APPROX_DISTINCT.zero()) == 0


def test_histogram_puts_a_value_in_the_first_bucket_whose_bound_exceeds_it() -> None:
    # Bounds (0, 5, 20, 100): buckets (<0), [0,5), [5,20), [20,100), >=100.
    assert [HISTOGRAM.bucket(v) for v in (-1, 0, 4.99, 5, 19, 20, 99.9, 100, 1e9)] == [
        0, 1, 1, 2, 2, 3, 3, 4, 4]
    events = [(v, 0, "e") for v in (-1, 0, 4.99, 5, 100, 1e9)] + [(None, 0, "n")]
    assert HISTOGRAM.present(HISTOGRAM.aggregate(events)) == (1, 2, 1, 0, 2)
    assert HISTOGRAM.zero() == (0, 0, 0, 0, 0)


def test_histogram_refuses_stored_counts_of_another_length() -> None:
    with pytest.raises(ValueError, match="buckets"):
        HISTOGRAM.from_storage([1, 2])


@pytest.mark.parametrize("bounds", [(), (1.0, 1.0), (2.0, 1.0), (float("nan"),),
                                    (1.0, float("inf")), ("a",), (True,), "12"])
def test_histogram_bounds_must_be_finite_and_strictly_increasing(bounds: Any) -> None:
    with pytest.raises(ConfigError):
        Histogram(bounds)


def test_aggregation_for_knows_every_op_and_refuses_the_rest() -> None:
    assert {aggregation_for(op, (1.0,) if op == "histogram" else (),
                            2 if op in ("sum", "mean") else None).op for op in OPS} == set(OPS)
    with pytest.raises(ConfigError, match="unknown aggregation op 'median'"):
        aggregation_for("median")
    with pytest.raises(ConfigError, match="takes no buckets"):
        aggregation_for("sum", (1.0,), 2)
    with pytest.raises(ConfigError, match="at least one"):
        aggregation_for("histogram")


# --- approx_distinct: DataSketches HLL -------------------------------------

HLL_8 = datasketches.tgt_hll_type.HLL_8


def direct_sketch(values: list[Any], target: Any = HLL_8) -> datasketches.hll_sketch:
    """A sketch built by updates, as Spark's hll_sketch_agg builds one."""
    sketch = datasketches.hll_sketch(HLL_LG_K, target)
    for value in values:
        sketch.update(value)
    return sketch


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=8) | st.integers(-(2**40), 2**40), max_size=60))
def test_hll_estimate_is_exact_for_small_sets(values: list[Any]) -> None:
    partial = APPROX_DISTINCT.aggregate((v, 0, "e") for v in values)
    assert APPROX_DISTINCT.present(partial) == len(set(values))


@settings(max_examples=12, deadline=None)
@given(st.integers(300, 2500), st.data())
def test_hll_partials_are_canonical_across_the_dense_mode_threshold(
    n: int, data: st.DataObject
) -> None:
    # Above 384 distinct values the sketch goes dense, where raw DataSketches
    # estimates depend on the merge tree; canonical partials must not.
    values = [f"merchant-{i}" for i in range(n)]
    shuffled = data.draw(st.permutations(values))
    cuts = sorted(data.draw(st.lists(st.integers(0, n), min_size=1, max_size=8)))
    bounds = [0, *cuts, n]
    parts = [APPROX_DISTINCT.from_storage(direct_sketch(shuffled[i:j]).serialize_updatable())
             for i, j in zip(bounds, bounds[1:], strict=False)]
    while len(parts) > 1:
        k = data.draw(st.integers(0, len(parts) - 2))
        parts[k:k + 2] = [APPROX_DISTINCT.merge(parts[k], parts[k + 1])]
    reference = APPROX_DISTINCT.from_storage(direct_sketch(values).serialize_compact())
    assert parts[0] == reference
    assert abs(APPROX_DISTINCT.present(parts[0]) - n) <= 0.05 * n  # ~1.6 % RSE at lg_k 12


def test_hll_reads_spark_style_updatable_and_other_target_images_canonically() -> None:
    values = [f"m{i}" for i in range(50)]
    ours = APPROX_DISTINCT.aggregate((v, 0, "e") for v in values)
    for target in (HLL_8, datasketches.tgt_hll_type.HLL_4, datasketches.tgt_hll_type.HLL_6):
        sketch = direct_sketch(values[::-1], target)
        assert APPROX_DISTINCT.from_storage(sketch.serialize_updatable()) == ours
        assert APPROX_DISTINCT.from_storage(sketch.serialize_compact()) == ours
    # Spark writes an empty sketch (not null) for a group with no values.
    assert APPROX_DISTINCT.from_storage(direct_sketch([]).serialize_updatable()) is None
    assert APPROX_DISTINCT.from_storage(b"") is None


def test_hll_partial_is_a_compact_hll8_image_with_lg_k_12() -> None:
    partial = APPROX_DISTINCT.aggregate((v, 0, "e") for v in ("a", "b", "c"))
    assert partial is not None
    sketch = datasketches.hll_sketch.deserialize(partial)
    assert sketch.lg_config_k == 12
    assert sketch.tgt_type == HLL_8
    assert partial[5] & 0x08, "the compact flag of the image header"
    assert len(partial) == 8 + 3 * 4  # LIST header + three 4-byte coupons


def test_hll_canonical_bytes_are_pinned() -> None:
    # Golden bytes: a datasketches upgrade that changed hashing or layout would
    # break compatibility with stored tiles and with Spark; fail loudly here.
    partial = APPROX_DISTINCT.aggregate((v, 0, "e") for v in ("m-1", "m-2", "m-3"))
    assert partial is not None
    assert partial.hex() == GOLDEN_M123


def test_hll_ignores_null_and_empty_string_and_refuses_floats() -> None:
    assert APPROX_DISTINCT.lift(None, 0, "e") is None
    assert APPROX_DISTINCT.lift("", 0, "e") is None
    with pytest.raises(TypeError, match="strings or integers"):
        APPROX_DISTINCT.lift(1.5, 0, "e")


def test_hll_refuses_foreign_images_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="lg_k=11"):
        APPROX_DISTINCT.from_storage(_lg11())
    with pytest.raises(ValueError, match="not a DataSketches HLL image"):
        APPROX_DISTINCT.from_storage(b"\x00\x01garbage")


def _lg11() -> bytes:
    sketch = datasketches.hll_sketch(11, HLL_8)
    sketch.update("x")
    return bytes(sketch.serialize_compact())


GOLDEN_M123 = "0201070c030803080ec6ec0769404509f69e0e10"


# --- exact sums: decimal_units ---------------------------------------------


def _decimal_reference(x: float, scale: int) -> int:
    """The definition: the float's decimal value (its shortest repr) rounded
    half to even at ``scale`` places."""
    return int(Decimal(repr(x)).scaleb(scale).to_integral_value(ROUND_HALF_EVEN))


@pytest.mark.parametrize(("value", "units"), [
    (0.005, 0), (0.015, 2), (0.025, 2), (0.035, 4), (2.675, 268), (1.005, 100),
    (-0.005, 0), (-0.015, -2), (-2.675, -268),
    (1e6, 10**8), (999_999.995, 10**8), (999_999.985, 99_999_998), (999_999.99, 99_999_999),
    (0.1 + 0.2, 30), (0.29, 29), (1.15, 115), (4.35, 435), (123_456.785, 12_345_678),
    # round(x * 100) gets these wrong: a decimal tie and the neighbour of one.
    (597_073.185, 59_707_318), (5485.014999999999, 548_501),
    (1e-9, 0), (5e-324, 0), (0.0049999999999999, 0), (0.0050000000000001, 1),
    (0.0, 0), (-0.0, 0), (5, 500), (-7, -700), (12.0, 1200),
])
def test_values_become_cents_rounded_half_to_even_on_their_decimal_value(
        value: float, units: int) -> None:
    assert decimal_units(value, 2) == units
    if isinstance(value, float):
        assert _decimal_reference(value, 2) == units


def test_the_float_rule_is_not_round_of_the_product() -> None:
    # Why decimal_units exists: the float product rounds these the wrong way.
    assert round(597_073.185 * 100) == 59_707_319 != decimal_units(597_073.185, 2)
    assert round(5485.014999999999 * 100) == 548_502 != decimal_units(5485.014999999999, 2)


def _ties_and_neighbours(scale: int) -> st.SearchStrategy[float]:
    limit = UNIT_LIMIT // 10**scale
    tie = st.integers(-limit, limit).map(lambda k: (2 * k + 1) / (2 * 10**scale))
    return tie | st.tuples(tie, st.sampled_from([math.inf, -math.inf])).map(
        lambda pair: math.nextafter(*pair))


@settings(max_examples=2000, deadline=None)
@given(st.data(), st.integers(0, 9))
def test_decimal_units_equals_the_decimal_definition_for_any_float(
        data: st.DataObject, scale: int) -> None:
    bound = UNIT_LIMIT / 10**scale * 0.999
    x = data.draw(st.floats(-bound, bound, allow_nan=False) | _ties_and_neighbours(scale)
                  | st.decimals(-10**6, 10**6, places=scale + 1).map(float)
                  | st.decimals(-10**6, 10**6, places=scale + 3).map(float))
    if abs(x) * 10**scale < UNIT_LIMIT:
        assert decimal_units(x, scale) == _decimal_reference(x, scale)


@settings(max_examples=500, deadline=None)
@given(st.integers(-(UNIT_LIMIT - 1), UNIT_LIMIT - 1), st.integers(0, 9))
def test_a_value_at_the_scale_lifts_to_its_units_and_presents_as_itself(
        units: int, scale: int) -> None:
    value = units / 10**scale  # the float nearest the decimal, as a JSON parser makes it
    assert decimal_units(value, scale) == units
    assert Sum(scale).present(Sum(scale).lift(value, 0, "e")) == value


def test_values_too_large_for_exact_units_and_odd_inputs_are_refused() -> None:
    assert decimal_units(2**48 / 100 - 1, 2) < UNIT_LIMIT
    for value in (2**48 / 100, -(2**48) / 100, 10**13, 1e300):
        with pytest.raises(ValueError, match="2\\*\\*48"):
            decimal_units(value, 2)
    for value in (math.inf, math.nan):
        with pytest.raises(ValueError, match="finite"):
            decimal_units(value, 2)
    with pytest.raises(TypeError, match="numbers"):
        decimal_units(True, 2)


def test_a_partial_beyond_int64_is_refused_in_storage_not_wrapped() -> None:
    assert SUM.to_storage(INT64_MAX) == INT64_MAX
    assert SUM.to_storage(-INT64_MAX - 1) == -INT64_MAX - 1
    with pytest.raises(OverflowError, match="int64"):
        SUM.to_storage(INT64_MAX + 1)
    with pytest.raises(OverflowError, match="int64"):
        MEAN.to_storage(MeanPartial(-INT64_MAX - 2, 3))


@pytest.mark.parametrize("scale", [-1, 10, 1.5, True, "2"])
def test_a_bad_scale_is_refused(scale: Any) -> None:
    with pytest.raises(ConfigError, match="scale must be an integer"):
        Sum(scale)
    with pytest.raises(ConfigError, match="scale must be an integer"):
        aggregation_for("mean", scale=scale)


def test_only_sums_and_means_take_a_scale_and_they_need_one() -> None:
    with pytest.raises(ConfigError, match="needs a scale"):
        aggregation_for("sum")
    with pytest.raises(ConfigError, match="needs a scale"):
        aggregation_for("mean")
    with pytest.raises(ConfigError, match="takes no scale"):
        aggregation_for("max", scale=2)


def test_a_mean_presents_the_float_nearest_the_exact_quotient() -> None:
    partial = MEAN.aggregate((v, 0, "e") for v in (0.1, 0.2, 0.2))  # 50 cents / 3
    assert partial == MeanPartial(50, 3)
    assert MEAN.present(partial) == float(Decimal(50) / Decimal(300))
    # A value below half a cent adds nothing but still counts.
    assert MEAN.aggregate([(0.001, 0, "a"), (1.0, 0, "b")]) == MeanPartial(100, 2)


def _fold(monoid: Aggregation[Any], parts: list[Any]) -> Any:
    result = monoid.zero()
    for part in parts:
        result = monoid.merge(result, part)
    return result


@pytest.mark.parametrize(("monoid", "values"), CASES, ids=IDS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_merge_all_and_present_all_equal_the_fold_of_merge(
        monoid: Aggregation[Any], values: Any, data: st.DataObject) -> None:
    # The fast merge_all overrides (sums, means, histograms) and present_all
    # (the lookup's read path) are shortcuts of the pairwise fold, never
    # other values.
    parts = data.draw(st.lists(partial_of(monoid, values), max_size=6))
    folded = _fold(monoid, parts)
    assert monoid.merge_all(parts) == folded
    assert monoid.merge_all(iter(parts)) == folded
    assert repr(monoid.present_all(parts)) == repr(monoid.present(folded))


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 400), min_size=1, max_size=4),
       offsets=st.lists(st.integers(0, 600), min_size=4, max_size=4))
def test_present_all_of_sparse_and_dense_sketches_equals_present_of_their_union(
        sizes: list[int], offsets: list[int]) -> None:
    # Overlapping ranges of integers: unions that stay sparse, cross the
    # dense threshold (385 distinct values at lg_k 12), or start dense.
    parts = [APPROX_DISTINCT.aggregate([(value, 0, "e") for value in range(o, o + n)])
             for n, o in zip(sizes, offsets, strict=False)]
    assert APPROX_DISTINCT.present_all(parts) == APPROX_DISTINCT.present(
        APPROX_DISTINCT.merge_all(parts))


def test_histogram_merge_all_refuses_partials_of_another_length() -> None:
    with pytest.raises(ValueError, match="buckets"):
        HISTOGRAM.merge_all([(1, 0, 0, 0, 0), (1, 0)])
