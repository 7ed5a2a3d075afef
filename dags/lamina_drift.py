"""Drift check, daily at 03:00 UTC: the champion scored on the latest mature
labelled window, its feature, score and performance drift against its
training data; a drift alert emits the drift asset, which schedules the
retraining DAG."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Asset, Metadata, Param, dag, get_current_context, task

from lamina.orchestration import dag_support as support

DRIFT = Asset(support.DRIFT_ASSET_URI)


@dag(
    dag_id="lamina_drift",
    schedule="0 3 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=3),
    default_args=support.default_args(timeout=timedelta(hours=1)),
    tags=[*support.TAGS, "training", "drift"],
    params={"days": Param(3.0, type="number", exclusiveMinimum=0),
            "label_maturity_days": Param(30.0, type="number", minimum=0),
            "as_of": Param(None, type=["null", "string"])},
    doc_md=__doc__,
)
def lamina_drift() -> None:
    @task
    def build_recent_window() -> dict[str, Any]:
        from lamina.orchestration import tasks

        context = get_current_context()
        p = context["params"]
        return tasks.build_recent_window(
            support.settings_file(), logical_date=support.run_moment(context),
            as_of=p["as_of"], days=p["days"], label_maturity_days=p["label_maturity_days"])

    @task
    def check_drift(recent: dict[str, Any]) -> dict[str, Any]:
        from lamina.orchestration import tasks

        return tasks.drift_check(support.settings_file(),
                                 backtest=recent["sets"]["recent"]["path"])

    @task(outlets=[DRIFT])
    def raise_drift_alert(report: dict[str, Any]) -> Any:
        from airflow.exceptions import AirflowSkipException

        if not report["alert"]:
            raise AirflowSkipException("no drift alert: " + "; ".join(report["reasons"]))
        yield Metadata(DRIFT, {"champion": report["champion"],
                               "drifted_features": report["drifted_features"],
                               "reasons": report["reasons"][:10]})
        return report

    raise_drift_alert(check_drift(build_recent_window()))


lamina_drift()
