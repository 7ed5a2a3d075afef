"""Backtest metrics (NumPy) and the promotion gate (invariant 7)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lamina.batch.evaluate import (
    Decision,
    Evaluation,
    GateThresholds,
    Metrics,
    average_precision,
    compute_metrics,
    evaluate,
    expected_calibration_error,
    gate,
    log_loss,
    reliability_table,
    roc_auc,
    time_split,
)


def _scores(n: int = 4000, seed: int = 0, strength: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.1).astype(float)
    raw = rng.normal(size=n) + strength * y
    # Round so that many scores tie: tie handling must match too.
    return y, np.round(1 / (1 + np.exp(-raw)), 2)


def test_roc_auc_small_hand_example() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # A tie between a positive and a negative counts one half.
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


def test_metrics_are_undefined_not_invented_with_one_class() -> None:
    assert roc_auc([1, 1, 1], [0.2, 0.5, 0.9]) is None
    assert roc_auc([0, 0], [0.2, 0.5]) is None
    assert average_precision([0, 0], [0.2, 0.5]) is None
    assert log_loss([], []) is None
    m = compute_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    assert m.roc_auc is None and m.pr_auc is None and m.n == 3 and m.positives == 0


def test_average_precision_hand_example() -> None:
    # scikit-learn's documented example: 0.8333...
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(5 / 6)


def test_metrics_match_scikit_learn_with_ties() -> None:
    from sklearn import metrics

    for seed in range(5):
        y, p = _scores(seed=seed)
        assert roc_auc(y, p) == pytest.approx(metrics.roc_auc_score(y, p), abs=1e-12)
        assert average_precision(y, p) == pytest.approx(
            metrics.average_precision_score(y, p), abs=1e-12)
        assert log_loss(y, p) == pytest.approx(metrics.log_loss(y, p), abs=1e-9)


def test_log_loss_clips_certain_wrong_predictions() -> None:
    value = log_loss([1, 0], [0.0, 0.0])
    assert value is not None and math.isfinite(value)
    assert value == pytest.approx(-math.log(1e-15) / 2, rel=1e-6)


def test_expected_calibration_error_of_a_constant_prediction() -> None:
    y = np.array([1] * 10 + [0] * 90)
    p = np.full(100, 0.5)
    assert expected_calibration_error(y, p) == pytest.approx(0.4)


def test_calibrated_scores_have_small_ece_and_miscalibrated_large() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(200_000)
    y = (rng.random(len(p)) < p).astype(float)
    calibrated = expected_calibration_error(y, p)
    assert calibrated is not None and calibrated < 0.01
    overconfident = expected_calibration_error(y, np.clip(p * 1.5, 0, 1))
    assert overconfident is not None and overconfident > 0.1


def test_reliability_table_bins_cover_zero_to_one_inclusive() -> None:
    table = reliability_table([0, 1, 1, 0], [0.0, 0.05, 1.0, 0.95])
    assert len(table) == 10
    assert table[0].lower == 0.0 and table[-1].upper == 1.0
    assert [b.count for b in table] == [2, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert table[0].observed_rate == pytest.approx(0.5)
    assert table[-1].mean_predicted == pytest.approx(0.975)
    assert table[3].mean_predicted is None


def test_evaluate_per_slice_and_round_trip() -> None:
    y, p = _scores(n=3000)
    frame = pd.DataFrame({"label": y, "merchant_category": np.where(
        np.arange(len(y)) % 3 == 0, "travel", "grocery")})
    result = evaluate(frame, p, slice_columns=["merchant_category"], window=(0, 10))
    travel = result.slices["merchant_category"]["travel"]
    mask = frame["merchant_category"].to_numpy() == "travel"
    assert travel.n == mask.sum()
    assert travel.roc_auc == pytest.approx(roc_auc(y[mask], p[mask]))
    assert Evaluation.from_dict(result.to_dict()) == result
    assert set(result.flat()) >= {"roc_auc", "pr_auc", "log_loss", "ece", "n"}


def test_time_split_is_strict_at_the_cutoff() -> None:
    frame = pd.DataFrame({"event_time": [0, 99, 100, 150, 200], "label": [0, 1, 0, 1, 0]})
    train, backtest = time_split(frame, 100, 200)
    assert train["event_time"].tolist() == [0, 99]
    assert backtest["event_time"].tolist() == [100, 150]


# --- the gate ------------------------------------------------------------------------


def _metrics(auc: float, ll: float = 0.2, n: int = 5000, pos: int = 250,
             ece: float = 0.01) -> Metrics:
    return Metrics(n=n, positives=pos, roc_auc=auc, pr_auc=0.5, log_loss=ll, brier=0.05,
                   ece=ece)


def _eval(auc: float, ll: float = 0.2, slices: dict[str, float] | None = None,
          window: tuple[int, int] = (100, 200), slice_n: int = 1000) -> Evaluation:
    per = {value: _metrics(a, n=slice_n, pos=50) for value, a in (slices or {}).items()}
    return Evaluation(_metrics(auc, ll), {"merchant_category": per} if per else {}, window)


def _failed(decision: Decision) -> list[str]:
    return [r for r in decision.reasons if r.startswith("FAIL")]


def test_gate_promotes_first_model_meeting_absolute_minimums() -> None:
    decision = gate(_eval(0.85), None)
    assert decision.promote
    assert any("no champion" in r for r in decision.reasons)


def test_gate_refuses_first_model_below_minimums() -> None:
    decision = gate(_eval(0.6), None, GateThresholds(min_roc_auc=0.7))
    assert not decision.promote
    assert any("ROC AUC 0.6000 vs minimum" in r for r in _failed(decision))


def test_gate_promotes_a_candidate_that_beats_the_champion() -> None:
    decision = gate(_eval(0.86, slices={"travel": 0.84}), _eval(0.85, slices={"travel": 0.84}))
    assert decision.promote, decision.reasons
    assert not _failed(decision)


def test_gate_keeps_champion_when_candidate_is_not_better() -> None:
    equal = gate(_eval(0.85), _eval(0.85))
    assert not equal.promote
    worse = gate(_eval(0.80), _eval(0.85))
    assert not worse.promote
    assert any("ROC AUC 0.8000 vs champion 0.8500" in r for r in _failed(worse))


def test_gate_refuses_a_worse_log_loss_even_with_better_auc() -> None:
    decision = gate(_eval(0.87, ll=0.30), _eval(0.85, ll=0.20))
    assert not decision.promote
    assert any("log loss" in r for r in _failed(decision))


def test_gate_refuses_a_large_slice_that_drops() -> None:
    decision = gate(_eval(0.87, slices={"travel": 0.70, "grocery": 0.9}),
                    _eval(0.85, slices={"travel": 0.80, "grocery": 0.9}))
    assert not decision.promote
    assert any("merchant_category=travel" in r for r in _failed(decision))


def test_gate_ignores_slices_too_small_to_judge() -> None:
    decision = gate(_eval(0.87, slices={"travel": 0.60}, slice_n=50),
                    _eval(0.85, slices={"travel": 0.80}, slice_n=50))
    assert decision.promote, decision.reasons


def test_gate_refuses_metrics_from_different_windows() -> None:
    decision = gate(_eval(0.9, window=(100, 200)), _eval(0.8, window=(0, 100)))
    assert not decision.promote
    assert any("same rows" in r for r in _failed(decision))
