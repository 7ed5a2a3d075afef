"""Population stability index with quantile bins from the reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from lamina.batch.drift import (
    PSI_ALERT,
    drifted_features,
    feature_bins,
    profile_from_dict,
    profile_to_dict,
    psi,
    psi_against,
    psi_report,
    quantile_cuts,
    reference_profile,
)


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _expected_binned_psi(cuts: np.ndarray, shift: float) -> float:
    """PSI of N(shift, 1) against N(0, 1) over the given cut points, exactly."""
    edges = [-math.inf, *cuts.tolist(), math.inf]
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        e = _normal_cdf(hi) - _normal_cdf(lo)
        a = _normal_cdf(hi - shift) - _normal_cdf(lo - shift)
        total += (a - e) * math.log(a / e)
    return total


def test_same_distribution_has_psi_near_zero() -> None:
    rng = np.random.default_rng(0)
    assert psi(rng.normal(size=50_000), rng.normal(size=50_000)) < 0.005


def test_hand_computed_psi_when_everything_moves_to_the_top_bin() -> None:
    reference = np.arange(100, dtype=float)
    assert quantile_cuts(reference, bins=4).tolist() == [24.75, 49.5, 74.25]
    recent = np.full(10, 99.0)
    expected = 3 * (1e-4 - 0.25) * math.log(1e-4 / 0.25) + (1 - 0.25) * math.log(1 / 0.25)
    assert psi(reference, recent, bins=4) == pytest.approx(expected)


@pytest.mark.parametrize("shift", [0.1, 0.5, 1.0])
def test_mean_shift_matches_the_analytic_binned_psi(shift: float) -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=200_000)
    recent = rng.normal(loc=shift, size=200_000)
    cuts = quantile_cuts(reference, bins=10)
    assert psi(reference, recent) == pytest.approx(_expected_binned_psi(cuts, shift),
                                                   rel=0.05, abs=0.002)


def test_known_shifts_are_flagged_and_stable_features_are_not() -> None:
    rng = np.random.default_rng(2)
    n = 20_000
    reference = pd.DataFrame({"stable": rng.normal(size=n), "small": rng.normal(size=n),
                              "big": rng.exponential(size=n)})
    recent = pd.DataFrame({"stable": rng.normal(size=n), "small": rng.normal(0.1, 1, n),
                           "big": rng.exponential(size=n) * 3})
    report = psi_report(reference, recent, ["stable", "small", "big"])
    assert report["stable"] < 0.01
    assert 0.005 < report["small"] < 0.1
    assert report["big"] > PSI_ALERT
    assert drifted_features(report) == ["big"]
    assert drifted_features(report, threshold=0.005) == ["big", "small"]


def test_discrete_feature_gets_one_bin_per_value() -> None:
    reference = np.array([0.0] * 900 + [1.0] * 100)
    fb = feature_bins(reference)
    assert fb.cuts == [0.0, 1.0]
    assert fb.reference == pytest.approx([0.0, 0.9, 0.1, 0.0])
    recent = np.array([0.0] * 500 + [1.0] * 500)
    expected = (0.5 - 0.9) * math.log(0.5 / 0.9) + (0.5 - 0.1) * math.log(0.5 / 0.1)
    assert psi(reference, recent) == pytest.approx(expected)


def test_tied_quantiles_merge_into_one_bin() -> None:
    # 80% zeros and a continuous tail: the zero quantiles collapse into one cut.
    rng = np.random.default_rng(5)
    reference = np.r_[np.zeros(8000), rng.exponential(size=2000)]
    cuts = quantile_cuts(reference)
    assert cuts[0] == 0.0 and len(cuts) == len(set(cuts.tolist())) < 9
    assert psi(reference, reference.copy()) == pytest.approx(0.0, abs=1e-12)


def test_values_outside_the_reference_range_and_missing_values_count() -> None:
    rng = np.random.default_rng(3)
    reference = rng.uniform(0, 1, 10_000)
    far = psi(reference, rng.uniform(5, 6, 10_000))
    assert far > 1.0  # all in the open top bin, not dropped
    with_missing = np.where(rng.random(10_000) < 0.5, np.nan, rng.uniform(0, 1, 10_000))
    assert psi(reference, with_missing) > PSI_ALERT


def test_reference_profile_survives_json_and_gives_the_same_report() -> None:
    rng = np.random.default_rng(4)
    reference = pd.DataFrame({"a": rng.normal(size=5000), "b": rng.integers(0, 5, 5000)})
    recent = pd.DataFrame({"a": rng.normal(0.3, 1, 5000), "b": rng.integers(0, 7, 5000)})
    profile = reference_profile(reference, ["a", "b"])
    restored = profile_from_dict(json.loads(json.dumps(profile_to_dict(profile))))
    assert psi_against(restored, recent) == psi_report(reference, recent, ["a", "b"])
