"""The Lamina page's registry section read from a real MLflow registry (no
Airflow needed): every alias move with its reason and both models' metrics,
the gate's backtest metrics where it judged, and the champion now."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina.config import load_settings
from lamina.models.registry import Lineage, ModelRegistry
from lamina.orchestration.page import render_page
from lamina.orchestration.summary import collect_summary

pytestmark = pytest.mark.integration  # MLflow


def lineage(auc: float) -> Lineage:
    return Lineage(snapshot_id=3, code_version="test", params={"seed": 1},
                   metrics={"roc_auc": auc}, training_window=(0, 1000), features=["f0"])


def test_the_registry_section_shows_each_move_with_its_reason_and_both_models_metrics(
        tmp_path: Path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.txt").write_text("not a real model: the page only reads tags")
    registry = ModelRegistry.local(tmp_path)
    first = registry.register(model_dir, lineage(0.80))
    second = registry.register(model_dir, lineage(0.88))
    registry.promote(first, "first champion")
    registry.record_evaluation(second, {
        "candidate": {"overall": {"roc_auc": 0.9, "n": 500}}, "champion_version": first,
        "champion": {"overall": {"roc_auc": 0.84, "n": 500}},
        "decision": {"promote": True, "reasons": ["PASS: auc"]}})
    registry.promote(second, "gate passed: PASS: auc")
    registry.rollback("alerts in production")

    settings = load_settings(None, env={"LAMINA_HOME": str(tmp_path),
                                        "LAMINA_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    section = collect_summary(settings, ["registry"])["registry"]
    assert section["available"] is True, section
    assert section["champion"] == first
    moves = section["history"]
    assert [(m["action"], m["version"], m["previous"]) for m in moves] == [
        ("rollback", first, second), ("promote", second, first), ("promote", first, None)]
    assert moves[0]["reason"] == "alerts in production"
    assert moves[1]["metrics"] == {"roc_auc": 0.88}
    assert moves[1]["previous_metrics"] == {"roc_auc": 0.80}
    assert moves[1]["backtest"]["candidate"] == {"roc_auc": 0.9, "n": 500}
    assert moves[1]["backtest"]["champion"] == {"roc_auc": 0.84, "n": 500}
    page = render_page({"registry": section})
    assert "alerts in production" in page and "gate passed: PASS: auc" in page
