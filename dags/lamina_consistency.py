"""Online/offline consistency report, daily at 04:30 UTC: the features the
speed layer logged with yesterday's scores against the training set's
offline features for the same events, per-feature mismatch rates, every
mismatch attributed (late arrival, beyond the allowed lateness, batch
cutoff); the report goes to ``<home>/reports/consistency.json`` (the
Lamina page shows it) and the task fails when a mismatch is unexplained."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from lamina.orchestration import dag_support as support


@dag(
    dag_id="lamina_consistency",
    schedule="30 4 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=3),
    default_args=support.default_args(timeout=timedelta(hours=1)),
    tags=[*support.TAGS, "speed", "consistency"],
    params={"days": Param(1.0, type="number", exclusiveMinimum=0)},
    doc_md=__doc__,
)
def lamina_consistency() -> None:
    @task
    def consistency_report() -> dict[str, Any]:
        from lamina.orchestration import tasks

        context = get_current_context()
        return tasks.consistency_report(support.settings_file(),
                                        logical_date=support.run_moment(context),
                                        days=context["params"]["days"])

    consistency_report()


lamina_consistency()
