"""What every Lamina DAG shares: default task arguments, the failure
callback, the asset names and where the settings come from.

Imported by the DAG files at parse time, so it imports nothing heavy (no
Airflow, no Spark): the standard library and ``lamina.logs`` only.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from lamina.logs import get_logger

log = get_logger("lamina.orchestration.dags")

OWNER = "lamina"
#: The card views' group (``lamina.schemas.card_views.CARD_VIEWS.name``),
#: spelled out so parsing a DAG file does not import the schemas.
VIEWS_GROUP = "card_transactions"
#: Emitted by the batch-views DAG after the tile store's switch.
VIEWS_ASSET_URI = f"lamina://views/{VIEWS_GROUP}"
#: Emitted by the drift DAG when the champion's drift report alerts.
DRIFT_ASSET_URI = "lamina://alerts/drift"
#: Emitted by the retraining DAG with the gate's decision.
CHAMPION_ASSET_URI = "lamina://models/champion"
#: Common tags; each DAG adds its own.
TAGS = ["lamina"]


def settings_file() -> str | None:
    """The Lamina settings file the tasks load (``LAMINA_CONFIG`` in the
    Airflow workers' environment); None: ``./lamina.toml`` or the
    ``LAMINA_*`` variables, as for the CLI."""
    return os.environ.get("LAMINA_CONFIG") or None


def task_failed(context: Any) -> None:
    """on_failure_callback: one line that says which task of which run
    failed, on which try, why, and where to look."""
    ti = context.get("ti") or context.get("task_instance")
    error = context.get("exception")
    log.error("lamina task failed",
              dag=getattr(ti, "dag_id", "?"), task=getattr(ti, "task_id", "?"),
              run=getattr(ti, "run_id", "?"), attempt=getattr(ti, "try_number", "?"),
              error=f"{type(error).__name__}: {error}" if error else "unknown",
              next="read this task's log; fix the cause, then clear the task (it is "
                   "idempotent)")


def default_args(*, timeout: timedelta, retries: int = 2) -> dict[str, Any]:
    """Task defaults: owner, retries with exponential backoff (1 min, then
    doubling up to 30 min), an execution timeout, the failure callback."""
    return {
        "owner": OWNER,
        "retries": retries,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": timeout,
        "on_failure_callback": task_failed,
    }


def run_moment(context: Any) -> Any:
    """The moment a run stands for: its logical date, or, for a manual run
    without one (Airflow 3 allows it), when it was due to run."""
    logical = context.get("logical_date")
    if logical is not None:
        return logical
    return context["dag_run"].run_after
