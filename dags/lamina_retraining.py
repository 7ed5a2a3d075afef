"""Retraining: point-in-time training set and backtest -> train (Spark
barrier tasks on the [spark] master) -> backtest against the champion ->
the gate promotes the candidate or keeps the champion. Daily at 04:00 UTC,
and whenever new batch views are published or a drift alert is raised.
The decision and metrics go to the task log and the champion asset's
event metadata."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Asset, Metadata, Param, dag, get_current_context, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

from lamina.orchestration import dag_support as support

VIEWS = Asset(support.VIEWS_ASSET_URI)
DRIFT = Asset(support.DRIFT_ASSET_URI)
CHAMPION = Asset(support.CHAMPION_ASSET_URI)


@dag(
    dag_id="lamina_retraining",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 4 * * *", timezone="UTC"),
                                 assets=(VIEWS | DRIFT)),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    default_args=support.default_args(timeout=timedelta(hours=2)),
    tags=[*support.TAGS, "training"],
    params={
        "train_days": Param(14.0, type="number", exclusiveMinimum=0),
        "backtest_days": Param(3.0, type="number", exclusiveMinimum=0),
        "label_maturity_days": Param(30.0, type="number", minimum=0),
        # Labels as known at this time (ISO-8601 UTC); empty (null): the run's date.
        "as_of": Param(None, type=["null", "string"]),
        "workers": Param(1, type="integer", minimum=0),
        "seed": Param(42, type="integer"),
        "train_params": Param({}, type="object"),
        "gate_thresholds": Param({}, type="object"),
    },
    doc_md=__doc__,
)
def lamina_retraining() -> None:
    @task
    def build_training_sets() -> dict[str, Any]:
        from lamina.orchestration import tasks

        context = get_current_context()
        p = context["params"]
        return tasks.build_training_sets(
            support.settings_file(), logical_date=support.run_moment(context),
            as_of=p["as_of"], train_days=p["train_days"], backtest_days=p["backtest_days"],
            label_maturity_days=p["label_maturity_days"])

    @task
    def train(sets: dict[str, Any]) -> dict[str, Any]:
        from lamina.orchestration import tasks

        p = get_current_context()["params"]
        return tasks.train_model(support.settings_file(),
                                 training_set=sets["sets"]["train"]["path"],
                                 snapshot=sets["snapshot"], params=p["train_params"],
                                 seed=p["seed"], workers=p["workers"])

    @task(outlets=[CHAMPION])
    def evaluate_and_gate(sets: dict[str, Any], trained: dict[str, Any]) -> Any:
        from lamina.orchestration import tasks

        p = get_current_context()["params"]
        decision = tasks.evaluate_and_gate(support.settings_file(),
                                           candidate=trained["version"],
                                           backtest=sets["sets"]["backtest"]["path"],
                                           thresholds=p["gate_thresholds"])
        yield Metadata(CHAMPION, {
            "decision": decision["decision"], "candidate": decision["candidate"],
            "champion": decision["champion_after"], "snapshot": sets["snapshot"],
            "candidate_metrics": decision["candidate_metrics"],
            "champion_metrics": decision["champion_metrics"]})
        return decision

    sets = build_training_sets()
    evaluate_and_gate(sets, train(sets))


lamina_retraining()
