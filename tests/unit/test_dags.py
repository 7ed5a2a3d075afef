"""The DAG files' integrity: every one loads through a DagBag without
import errors, every task has an owner, retries with backoff, a timeout and
the failure callback, every DAG has tags and catchup off; and parsing a DAG
file imports neither Spark nor TensorFlow (nothing heavy at parse time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
DAG_FILES = sorted(DAGS.glob("*.py"))
EXPECTED = {"lamina_batch_views", "lamina_retraining", "lamina_views_backfill",
            "lamina_landing_health", "lamina_maintenance", "lamina_speed_watchdog",
            "lamina_drift", "lamina_consistency"}
HEAVY = ("pyspark", "tensorflow", "mlflow", "delta", "deltalake", "pandas")


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("airflow_home")
    os.environ.setdefault("AIRFLOW_HOME", str(home))
    from airflow.dag_processing.dagbag import DagBag

    # Airflow 3.3's DagBag has no include_examples: it reads only the folder
    # given (the example DAGs are a bundle of their own).
    return DagBag(dag_folder=str(DAGS))


def test_every_dag_file_imports_without_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == EXPECTED


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_every_dag_has_tags_owner_retries_timeouts_and_a_failure_callback(
        dagbag: Any, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert "lamina" in dag.tags and len(dag.tags) >= 2
    assert dag.owner == "lamina"
    assert dag.dagrun_timeout is not None
    assert dag.catchup is False
    assert dag.tasks
    for t in dag.tasks:
        assert t.owner == "lamina", t.task_id
        assert t.retries >= 1, t.task_id
        assert t.retry_exponential_backoff, t.task_id
        assert t.execution_timeout is not None, t.task_id
        assert t.on_failure_callback, t.task_id


def test_the_batch_views_dag_emits_the_views_asset_the_retraining_dag_runs_on(
        dagbag: Any) -> None:
    views = dagbag.dags["lamina_batch_views"]
    outlets = [o.uri for t in views.tasks for o in t.outlets]
    assert outlets == ["lamina://views/card_transactions"]
    retraining = dagbag.dags["lamina_retraining"]
    scheduled_on = {a.uri for _, a in retraining.timetable.asset_condition.iter_assets()}
    assert scheduled_on == {"lamina://views/card_transactions", "lamina://alerts/drift"}
    assert [t.task_id for t in retraining.topological_sort()] == [
        "build_training_sets", "train", "evaluate_and_gate"]


def test_the_views_group_spelled_in_the_dags_is_the_card_views_group() -> None:
    from lamina.orchestration.dag_support import VIEWS_GROUP
    from lamina.schemas.card_views import CARD_VIEWS

    assert CARD_VIEWS.name == VIEWS_GROUP


def test_parsing_the_dag_files_imports_neither_spark_nor_tensorflow(tmp_path: Path) -> None:
    """All files in one fresh interpreter (one Airflow import, not seven):
    after each file, none of the heavy packages may be loaded."""
    probe = (
        "import importlib.util, json, sys\n"
        "found = {}\n"
        f"for path in {[str(p) for p in DAG_FILES]!r}:\n"
        "    spec = importlib.util.spec_from_file_location('dag_under_test', path)\n"
        "    module = importlib.util.module_from_spec(spec)\n"
        "    spec.loader.exec_module(module)\n"
        f"    found[path] = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print(json.dumps(found))\n")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(found) == len(DAG_FILES) >= len(EXPECTED)
    assert found == {str(p): [] for p in DAG_FILES}


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_every_param_left_at_its_default_makes_a_valid_trigger_form(
        dagbag: Any, dag_id: str) -> None:
    # Airflow's trigger form treats an empty field as missing and keeps the
    # Trigger button disabled while a field whose schema type does not
    # allow null is missing: an optional value must say so with "null".
    params = dagbag.dags[dag_id].params
    for name in params:
        param = params.get_param(name)
        if param.value in (None, ""):
            kinds = param.schema.get("type")
            kinds = kinds if isinstance(kinds, list) else [kinds]
            assert "null" in kinds, (dag_id, name, param.schema)
