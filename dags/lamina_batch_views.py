"""Batch views: compute the card views for the run's cutoff, then switch the
tile store to them; emits the views asset (version and cutoff) that
schedules retraining. Daily at 01:00 UTC."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Asset, Metadata, dag, get_current_context, task

from lamina.orchestration import dag_support as support

VIEWS = Asset(support.VIEWS_ASSET_URI)


@dag(
    dag_id="lamina_batch_views",
    schedule="0 1 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=4),
    default_args=support.default_args(timeout=timedelta(hours=2)),
    tags=[*support.TAGS, "batch"],
    doc_md=__doc__,
)
def lamina_batch_views() -> None:
    @task
    def compute_views() -> dict[str, Any]:
        from lamina.orchestration import tasks

        return tasks.batch_views(support.settings_file(),
                                 logical_date=support.run_moment(get_current_context()))

    @task(outlets=[VIEWS])
    def publish_to_tile_store(views: dict[str, Any]) -> Any:
        from airflow.exceptions import AirflowSkipException

        from lamina.orchestration import tasks

        if views["status"] != "published":
            raise AirflowSkipException(f"views version {views['version']} at cutoff "
                                       f"{views['cutoff']} is superseded: nothing to switch")
        published = tasks.publish_to_tile_store(support.settings_file(),
                                                views_version=views["version"])
        yield Metadata(VIEWS, {"version": views["version"], "cutoff_ms": views["cutoff_ms"],
                               "cutoff": views["cutoff"], "snapshot": views["snapshot"],
                               "store_status": published["status"]})
        return published

    publish_to_tile_store(compute_views())


lamina_batch_views()
