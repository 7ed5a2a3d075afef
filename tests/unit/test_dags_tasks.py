"""The pure parts of the DAGs' task functions: windows, cutoffs, times, the
gate's recorded decision, records per logical date, the failure callback."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lamina.config import load_settings
from lamina.orchestration import dag_support, spark_jobs, tasks

DAY = tasks.DAY_MS
JAN_10 = 1_768_003_200_000  # 2026-01-10T00:00:00Z


def test_retraining_windows_end_a_maturity_before_as_of_backtest_after_training() -> None:
    windows = tasks.retraining_windows(JAN_10, train_days=4, backtest_days=2,
                                       label_maturity_days=1)
    assert windows == {"train": (JAN_10 - 7 * DAY, JAN_10 - 3 * DAY),
                       "backtest": (JAN_10 - 3 * DAY, JAN_10 - DAY)}


def test_retraining_windows_refuse_empty_ones() -> None:
    with pytest.raises(ValueError, match="positive"):
        tasks.retraining_windows(JAN_10, train_days=0, backtest_days=2, label_maturity_days=1)


def test_backfill_cutoffs_are_daily_midnights_both_ends_included_oldest_first() -> None:
    assert tasks.backfill_cutoffs("2026-01-08", "2026-01-10T13:00") == [
        JAN_10 - 2 * DAY, JAN_10 - DAY, JAN_10]
    with pytest.raises(ValueError, match="before it starts"):
        tasks.backfill_cutoffs("2026-01-10", "2026-01-09")


@pytest.mark.parametrize("moment", [JAN_10, "2026-01-10", "2026-01-10T00:00:00Z",
                                    datetime(2026, 1, 10), datetime(2026, 1, 10, tzinfo=UTC)])
def test_times_of_every_form_agree(moment: object) -> None:
    assert tasks.to_ms(moment) == JAN_10
    assert tasks.stamp(JAN_10) == "20260110T000000Z"


def test_the_gate_result_comes_from_the_recorded_evaluation() -> None:
    recorded = {"champion_version": 3,
                "candidate": {"overall": {"n": 900, "positives": 40, "roc_auc": 0.91,
                                          "reliability": [[0.1, 0.2]]}},
                "champion": {"overall": {"n": 900, "positives": 40, "roc_auc": 0.88}},
                "decision": {"promote": True, "reasons": ["PASS: roc_auc +0.03"]}}
    result = tasks.decision_from_record(4, recorded)
    assert result == {"candidate": 4, "champion_before": 3, "champion_after": 4,
                      "promote": True, "decision": "promoted",
                      "reasons": ["PASS: roc_auc +0.03"],
                      "candidate_metrics": {"n": 900, "positives": 40, "roc_auc": 0.91},
                      "champion_metrics": {"n": 900, "positives": 40, "roc_auc": 0.88}}
    kept = tasks.decision_from_record(4, {**recorded, "decision": {"promote": False,
                                                                   "reasons": ["FAIL: x"]}})
    assert (kept["decision"], kept["champion_after"]) == ("kept", 3)


def test_a_recorded_task_result_is_computed_once_per_logical_date(tmp_path: Path) -> None:
    settings = load_settings(env={"LAMINA_HOME": str(tmp_path)})
    calls: list[int] = []

    def compute() -> dict[str, int]:
        calls.append(1)
        return {"n": len(calls)}

    assert tasks._recorded(settings, "kind", JAN_10, compute) == {"n": 1}
    assert tasks._recorded(settings, "kind", JAN_10, compute) == {"n": 1}
    assert tasks._recorded(settings, "kind", JAN_10 + DAY, compute) == {"n": 2}
    assert sorted(p.name for p in (tmp_path / "orchestration" / "kind").iterdir()) == [
        "20260110T000000Z.json", "20260111T000000Z.json"]


def test_the_spark_submit_equivalent_carries_the_spark_settings() -> None:
    settings = load_settings(env={"LAMINA_SPARK_MASTER": "spark://m:7077",
                                  "LAMINA_SPARK_CONF": '{"spark.executor.memory": "4g"}'})
    line = spark_jobs.spark_submit_equivalent(settings, "views")
    assert line[:3] == ["spark-submit", "--master", "spark://m:7077"]
    assert line[5:7] == ["--conf", "spark.executor.memory=4g"]
    assert spark_jobs.DELTA_PACKAGE in line and line[-1] == "views"


def test_an_unknown_spark_step_is_refused_before_anything_starts() -> None:
    with pytest.raises(spark_jobs.SparkStepError, match="unknown Spark step"):
        spark_jobs.run_spark_step(None, "nope", {})


def test_the_failure_callback_logs_one_line_naming_the_task_and_the_error(
        caplog: pytest.LogCaptureFixture) -> None:
    class TI:
        dag_id, task_id, run_id, try_number = "lamina_batch_views", "compute_views", "r1", 2

    with caplog.at_level(logging.ERROR):
        dag_support.task_failed({"ti": TI(), "exception": ValueError("no snapshot")})
    [record] = caplog.records
    message = record.getMessage()
    assert "lamina task failed" in message and "dag=lamina_batch_views" in message
    assert "task=compute_views" in message and "attempt=2" in message
    assert "ValueError: no snapshot" in message
