"""Feature drift: population stability index (PSI) per feature.

PSI compares how recent data spreads over bins with how a reference sample
(the training data) did:

    PSI = sum_b (recent_b - reference_b) * ln(recent_b / reference_b)

over proportions per bin. The bins are the reference's quantiles (10 by
default, so each holds about a tenth of the reference), with open ends, so
values outside the reference range still count; tied quantiles merge into
one bin; a feature with no more distinct values than bins (a flag, a small
count) gets one bin per value; missing values (NaN/None) get a bin of their
own. An empty bin's proportion is floored at 1e-4 so the log stays finite.

Rule of thumb (used by `drifted_features`): < 0.1 stable, 0.1-0.25 moderate
shift, > 0.25 a major shift worth retraining or investigating.

A `ReferenceProfile` (bin cut points and reference proportions per feature)
is small and JSON-able: save it with a model, and compute PSI of later data
against it without keeping the training sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lamina.batch.model import TrainingError, to_pandas

DEFAULT_BINS = 10
PSI_MODERATE = 0.1
PSI_ALERT = 0.25
_FLOOR = 1e-4


@dataclass(frozen=True)
class FeatureBins:
    """Cut points c_1 < ... < c_k: bins (-inf, c_1), [c_1, c_2), ..., [c_k, inf),
    then a missing-value bin. `reference` holds the reference proportions."""

    cuts: list[float]
    reference: list[float]

    def proportions(self, values: Any) -> np.ndarray:
        return _proportions(np.asarray(values, dtype=np.float64).reshape(-1),
                            np.asarray(self.cuts, dtype=np.float64))


def _proportions(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Share of values per bin (len(cuts) + 1 value bins, then missing)."""
    missing = np.isnan(values)
    index = np.searchsorted(cuts, values[~missing], side="right")
    counts = np.bincount(index, minlength=len(cuts) + 1).astype(np.float64)
    counts = np.r_[counts, missing.sum()]
    total = max(len(values), 1)
    return counts / total


def quantile_cuts(reference: Any, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Interior quantile cut points of the reference's non-missing values."""
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    values = np.asarray(reference, dtype=np.float64).reshape(-1)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return np.zeros(0)
    distinct = np.unique(values)
    if len(distinct) <= bins:
        # A discrete feature (a flag, a small count): one bin per value, so
        # a change in how often each value occurs is seen.
        return distinct
    return np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def feature_bins(reference: Any, bins: int = DEFAULT_BINS) -> FeatureBins:
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    cuts = quantile_cuts(ref, bins)
    return FeatureBins(cuts.tolist(), _proportions(ref, cuts).tolist())


def psi_from_proportions(reference: Any, recent: Any) -> float:
    e = np.maximum(np.asarray(reference, dtype=np.float64), _FLOOR)
    a = np.maximum(np.asarray(recent, dtype=np.float64), _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def psi(reference: Any, recent: Any, bins: int = DEFAULT_BINS) -> float:
    """PSI of one feature: `recent` values against `reference` values."""
    fb = feature_bins(reference, bins)
    return psi_from_proportions(fb.reference, fb.proportions(recent))


ReferenceProfile = dict[str, FeatureBins]


def _column(frame: Any, feature: str) -> np.ndarray:
    df = to_pandas(frame)
    if feature not in df.columns:
        raise TrainingError(f"feature column '{feature}' is missing from the data")
    return df[feature].to_numpy(dtype=np.float64, na_value=np.nan)


def reference_profile(reference: Any, features: Sequence[str],
                      bins: int = DEFAULT_BINS) -> ReferenceProfile:
    """Bins and proportions per feature from a reference (training) sample."""
    return {f: feature_bins(_column(reference, f), bins) for f in features}


def psi_against(profile: ReferenceProfile, recent: Any) -> dict[str, float]:
    """PSI per feature of `recent` against a saved profile."""
    return {f: psi_from_proportions(fb.reference, fb.proportions(_column(recent, f)))
            for f, fb in profile.items()}


def psi_report(reference: Any, recent: Any, features: Sequence[str],
               bins: int = DEFAULT_BINS) -> dict[str, float]:
    """PSI per feature between a reference sample and recent data (pandas
    DataFrames or pyarrow Tables), with quantile bins from the reference."""
    return psi_against(reference_profile(reference, features, bins), recent)


def drifted_features(report: Mapping[str, float], threshold: float = PSI_ALERT) -> list[str]:
    """Features whose PSI exceeds `threshold`, most drifted first."""
    return sorted((f for f, v in report.items() if v > threshold),
                  key=lambda f: (-report[f], f))


def profile_to_dict(profile: ReferenceProfile) -> dict[str, Any]:
    return {f: {"cuts": fb.cuts, "reference": fb.reference} for f, fb in profile.items()}


def profile_from_dict(values: Mapping[str, Any]) -> ReferenceProfile:
    return {f: FeatureBins(list(v["cuts"]), list(v["reference"])) for f, v in values.items()}
