"""The drift report in `lamina evaluate`'s output, with real TensorFlow
models and a real MLflow SQLite registry: the reference saved at training
(covered feature bins, training scores and AUC), warm-up of a windowed
feature in a short backtest, and the champion's alert when the relation
between features and label changes while the inputs do not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lamina.batch.commands import evaluate_command, train_command
from lamina.batch.drift import DriftReference
from lamina.errors import ConfigError
from lamina.models.registry import ModelRegistry
from lamina.schemas.view_definitions import HOUR_MS, MINUTE_MS

pytestmark = pytest.mark.integration

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
#: Two columns that are not view features (instantaneous) and one that is:
#: a 24-hour count, which a 25-hour backtest cannot cover.
FEATURES = ["f0", "f1", "txn_count_24h"]
PARAMS = {"epochs": 3, "batch_size": 256, "hidden": [16], "learning_rate": 0.01}
#: 75 h of training rows, then a backtest of under 24 h.
ROWS, TRAIN_ROWS = 5_800, 4_500


def _frame(seed: int, *, flipped: bool = False) -> pd.DataFrame:
    """One row a minute; the label follows f0 (or, ``flipped``, its
    opposite: the pattern changes, the inputs do not)."""
    rng = np.random.default_rng(seed)
    f0, f1 = rng.normal(size=ROWS), rng.normal(size=ROWS)
    logit = -2.8 + (-2.0 if flipped else 2.0) * f0
    return pd.DataFrame({
        "event_id": [f"e{seed}-{i}" for i in range(ROWS)],
        "event_time": START_MS + np.arange(ROWS, dtype=np.int64) * MINUTE_MS,
        "f0": f0, "f1": f1, "txn_count_24h": rng.poisson(3.0, ROWS).astype(float),
        "label": (rng.random(ROWS) < 1 / (1 + np.exp(-logit))).astype(np.int64),
    })


def test_evaluate_reports_drift_with_warm_up_and_the_champion_alerts_on_a_changed_pattern(
        tmp_path: Path) -> None:
    home, models = tmp_path / "home", tmp_path / "models"
    frame = _frame(1)
    train, backtest = frame.iloc[:TRAIN_ROWS], frame.iloc[TRAIN_ROWS:]

    trained = train_command(train, models_dir=models, registry=home, snapshot_id=1,
                            features=FEATURES, params=PARAMS, seed=3)
    saved = json.loads((Path(trained["model_dir"]) / "drift_profile.json").read_text())
    reference = DriftReference.from_dict(saved)
    assert reference.format == 2 and reference.auc is not None and reference.auc > 0.75
    # The 24-hour count (and so the score) is covered from the first row + 24 h.
    covered = int((train["event_time"] >= START_MS + 24 * HOUR_MS).sum())
    assert reference.features["txn_count_24h"].rows == covered == reference.score_rows
    assert reference.features["f0"].rows == TRAIN_ROWS

    first = evaluate_command(backtest, registry=home, candidate=trained["version"],
                             thresholds={"min_roc_auc": 0.6, "max_ece": 0.2})
    assert first["promote"] is True, first["reasons"]
    report = first["drift"]
    assert report["alert"] is False, report["reasons"]
    count = report["features"]["txn_count_24h"]
    assert count["status"] == "warming_up"
    assert count["until_ms"] == START_MS + TRAIN_ROWS * MINUTE_MS + 24 * HOUR_MS
    assert set(first["psi"]) == {"f0", "f1"} and first["drifted_features"] == []
    assert report["score"]["status"] == "warming_up"
    assert report["performance"]["status"] == "checked"
    assert first["champion_drift"] is None  # no champion before this one

    # Later: the pattern flips. A new candidate trained on noise loses, and
    # the champion's drift says why retraining is due.
    later = _frame(2, flipped=True)
    later["event_time"] += ROWS * MINUTE_MS
    noise = train.assign(label=np.random.default_rng(0).permutation(train["label"]))
    weak = train_command(noise, models_dir=models, registry=home, snapshot_id=2,
                         features=FEATURES, params=PARAMS, seed=3)
    result = evaluate_command(later.iloc[:2_000], registry=home, candidate=weak["version"],
                              thresholds={"min_roc_auc": 0.6, "max_ece": 0.2})
    assert result["champion_after"] == trained["version"]
    champion = result["champion_drift"]
    assert champion["alert"] is True
    assert champion["performance"]["alert"] is True
    assert champion["reasons"][0].startswith("ALERT: performance: ROC AUC")
    assert champion["drifted_features"] == []  # the inputs did not move
    assert ModelRegistry.local(home).champion() == trained["version"]


def test_bad_drift_thresholds_are_refused_before_anything_is_recorded(tmp_path: Path) -> None:
    frame = _frame(3)
    trained = train_command(frame.iloc[:TRAIN_ROWS], models_dir=tmp_path / "models",
                            registry=tmp_path / "home", snapshot_id=1, features=FEATURES,
                            params=PARAMS, seed=3)
    with pytest.raises(ConfigError, match="drift threshold min_rows must be an integer >= 1"):
        evaluate_command(frame.iloc[TRAIN_ROWS:], registry=tmp_path / "home",
                         candidate=trained["version"], drift_thresholds={"min_rows": 0})
    assert ModelRegistry.local(tmp_path / "home").champion() is None
