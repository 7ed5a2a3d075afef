"""Speed-layer watchdog, every 5 minutes: the speed layer's lag on the raw
topic (broker end offsets against the positions it stored with its tiles
in the tile store, else its consumer group's committed offsets); the task
fails, visibly, above ``max_lag``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from lamina.orchestration import dag_support as support


@dag(
    dag_id="lamina_speed_watchdog",
    schedule="*/5 * * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=10),
    # A watchdog that retries for an hour hides the alarm: one quick retry.
    default_args={**support.default_args(timeout=timedelta(minutes=3), retries=1),
                  "retry_delay": timedelta(seconds=30)},
    tags=[*support.TAGS, "speed", "health"],
    params={"max_lag": Param(100_000, type="integer", minimum=0)},
    doc_md=__doc__,
)
def lamina_speed_watchdog() -> None:
    @task
    def speed_lag() -> dict[str, Any]:
        from lamina.orchestration import tasks

        p = get_current_context()["params"]
        return tasks.speed_lag(support.settings_file(), max_lag=p["max_lag"])

    speed_lag()


lamina_speed_watchdog()
