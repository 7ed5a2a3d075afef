"""Backfill of the batch views over a date range (params ``start`` and
``end``, ISO dates, both included): one views run per daily cutoff, oldest
first, all from the snapshot this run pins. A cutoff older than the
published one is reported as superseded and changes nothing, so the range
ends with its newest cutoff published. Triggered by hand."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from lamina.orchestration import dag_support as support


@dag(
    dag_id="lamina_views_backfill",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    # Manual: the date range is in the params, so Airflow's catchup (which
    # replays schedule intervals) has nothing to replay.
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=24),
    default_args=support.default_args(timeout=timedelta(hours=2)),
    tags=[*support.TAGS, "batch", "backfill"],
    params={"start": Param("2026-01-01", type="string", format="date"),
            "end": Param("2026-01-07", type="string", format="date")},
    doc_md=__doc__,
)
def lamina_views_backfill() -> None:
    @task
    def cutoffs() -> list[int]:
        from lamina.orchestration import tasks

        p = get_current_context()["params"]
        return tasks.backfill_cutoffs(p["start"], p["end"])

    # One at a time, in map-index (cutoff) order: each publish must see the
    # previous one.
    @task(max_active_tis_per_dagrun=1)
    def views_at(cutoff_ms: int) -> dict[str, Any]:
        from lamina.orchestration import tasks

        return tasks.backfill_views(support.settings_file(), cutoff_ms=cutoff_ms,
                                    logical_date=support.run_moment(get_current_context()))

    views_at.expand(cutoff_ms=cutoffs())


lamina_views_backfill()
