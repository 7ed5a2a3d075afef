"""The online state presents a sparse approx_distinct window from its number
of distinct coupons (``sparse_present``) instead of building the union: that
is exact only if a sparse sketch's presented estimate depends on its coupon
count alone, which these properties check against the aggregation's own
``present(merge_all(...))`` over random value sets, partial groupings and a
static part, up to and past the dense switch."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.schemas.aggregations import ApproxDistinct, hll_coupons, sparse_present
from lamina.schemas.online import _coupon, _static_coupons

HLL = ApproxDistinct()
values = st.one_of(st.integers(-(2**40), 2**40), st.text(min_size=1, max_size=12))


@settings(max_examples=120, deadline=None)
@given(st.lists(values, max_size=420), st.integers(0, 420))
def test_a_sparse_union_presents_as_its_coupon_count_says(items: list, split: int) -> None:
    # A static part (the batch entry: the merge of some values) plus one-value
    # images, as a window holds them.
    static = HLL.merge_all([HLL.lift(v, 0, "e") for v in items[:split]])
    images = {HLL.lift(v, 0, "e") for v in items[split:]} - {None}
    expected = HLL.present(HLL.merge_all([static, *images]))
    static_coupons = _static_coupons(static)
    if static_coupons is None:  # a dense static part: the state takes the union path
        assert hll_coupons(static) is None
        return
    coupons = len(static_coupons | {_coupon(image) for image in images})
    got = sparse_present(coupons)
    merged = HLL.merge_all([static, *images])
    if got is None:  # too many for a sparse sketch: the union is dense
        assert merged is not None and hll_coupons(merged) is None
    else:
        assert got == expected
        assert merged is None or len(hll_coupons(merged) or ()) == coupons


def test_the_table_covers_every_sparse_count_and_stops_at_the_dense_switch() -> None:
    assert sparse_present(0) == 0 and sparse_present(1) == 1
    assert sparse_present(384) is not None and sparse_present(385) is None
