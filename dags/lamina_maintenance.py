"""Maintenance, daily at 02:00 UTC: compact the master dataset's small files
(a new snapshot; old ones read the same), then vacuum the files of batch
views replaced longer ago than the table's retention."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import dag, get_current_context, task

from lamina.orchestration import dag_support as support


@dag(
    dag_id="lamina_maintenance",
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=3),
    default_args=support.default_args(timeout=timedelta(hours=1)),
    tags=[*support.TAGS, "maintenance"],
    doc_md=__doc__,
)
def lamina_maintenance() -> None:
    @task
    def compact_master() -> dict[str, Any]:
        from lamina.orchestration import tasks

        return tasks.compact_master(support.settings_file(),
                                    logical_date=support.run_moment(get_current_context()))

    @task
    def vacuum_views() -> dict[str, Any]:
        from lamina.orchestration import tasks

        return tasks.vacuum_views(support.settings_file(),
                                  logical_date=support.run_moment(get_current_context()))

    compact_master() >> vacuum_views()


lamina_maintenance()
