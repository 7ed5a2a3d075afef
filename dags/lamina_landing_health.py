"""Landing health, hourly: the lander's lag on the raw topic (broker end
offsets against the offsets the master dataset records) and the growth of
the dead-letter topic since the last check; each fails above its limit."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from lamina.orchestration import dag_support as support


@dag(
    dag_id="lamina_landing_health",
    schedule="0 * * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    default_args=support.default_args(timeout=timedelta(minutes=10)),
    tags=[*support.TAGS, "landing", "health"],
    params={"max_lag": Param(500_000, type="integer", minimum=0),
            "max_dead_letter_growth": Param(1_000, type="integer", minimum=0)},
    doc_md=__doc__,
)
def lamina_landing_health() -> None:
    @task
    def landing_lag() -> dict[str, Any]:
        from lamina.orchestration import tasks

        p = get_current_context()["params"]
        return tasks.landing_lag(support.settings_file(), max_lag=p["max_lag"])

    @task
    def dead_letter_growth() -> dict[str, Any]:
        from lamina.orchestration import tasks

        context = get_current_context()
        return tasks.dead_letter_growth(support.settings_file(),
                                        logical_date=support.run_moment(context),
                                        max_growth=context["params"]["max_dead_letter_growth"])

    landing_lag()
    dead_letter_growth()


lamina_landing_health()
