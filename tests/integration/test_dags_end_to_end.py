"""The batch-views DAG runs end to end with ``dag.test()`` on small data,
against a real Kafka broker (events produced, then landed by the real
lander) and Spark (local, each step in its own driver process); and its
tasks are idempotent: re-running a task for the same run gives the same
result, also after its process was killed with SIGKILL mid-run.

The retraining DAG's end-to-end run (Spark, TensorFlow, the MLflow
registry, the gate, the champion asset, every task run again) is the one
tests/integration/test_airflow_ui.py triggers from a browser in a real
Airflow: running it here as well trained the same small model twice.

One Airflow home for the module (``airflow db migrate`` on SQLite), with
the repository's dags/ as its dags folder; each DAG runs in a subprocess
(tests/integration/airflow_dag_runner.py) so Airflow's configuration is
that home's whatever the test process imported before.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lamina.broker import KafkaCluster
from lamina.config import load_settings
from lamina.generator import GeneratorConfig, produce
from lamina.runners import run_lander
from lamina.schemas.topics import default_topics

#: The machine is shared: a generous per-test limit (no timing is asserted).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("airflow_dag_runner.py")
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY_MS = 86_400_000
#: 8 days, a tenth of the cards compromised once: ~4k transactions.
EVENTS = GeneratorConfig(seed=11, cards=400, merchants=100, transactions=4_000,
                         start=START_MS, days=8.0, fraud_card_rate=0.12, drift_at=None)
#: Landed later, in the kill test: a new snapshot with a day of events.
LATER_EVENTS = GeneratorConfig(seed=12, cards=60, merchants=30, transactions=300,
                               start=START_MS + 7 * DAY_MS, days=1.0, drift_at=None)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def platform(kafka: KafkaCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Events produced to a fresh topic and landed into a master dataset;
    an Airflow home with its metadata database migrated; the environment
    that points both at them."""
    base = tmp_path_factory.mktemp("dags_e2e")
    suffix = uuid.uuid4().hex[:8]
    raw, dlq, scores = f"dags.{suffix}.raw", f"dags.{suffix}.dlq", f"dags.{suffix}.scores"
    kafka.create_topics(default_topics(raw, dlq, 3, scores))
    env = {
        "LAMINA_HOME": str(base / "lamina"),
        "LAMINA_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "LAMINA_KAFKA_RAW_TOPIC": raw, "LAMINA_KAFKA_DLQ_TOPIC": dlq,
        "LAMINA_KAFKA_SCORES_TOPIC": scores,
        "LAMINA_LANDER_GROUP": f"lander-{suffix}",
        "LAMINA_SPARK_CONF": json.dumps({"spark.ui.enabled": "false"}),
    }
    settings = load_settings(env=env)
    counts = produce(EVENTS, kafka.bootstrap_servers, raw, progress=False)
    stats = run_lander(settings, idle_exit_s=3.0, progress=False)
    assert stats.landed == counts["valid"]
    airflow_home = base / "airflow"
    env |= {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
    full = {**os.environ, **env}
    migrated = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"],
                              env=full, capture_output=True, text=True, timeout=300, check=False)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    return {"env": env, "settings": settings, "landed": stats.landed}


def run_dag(platform: dict[str, Any], dag_id: str, logical: datetime,
            conf: dict[str, Any] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(RUNNER), dag_id, logical.isoformat(), json.dumps(conf or {})],
        env={**os.environ, **platform["env"]}, capture_output=True, text=True, timeout=900,
        check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("DAG_RESULT ")]
    assert done.returncode == 0 and lines, (done.stdout[-3000:], done.stderr[-5000:])
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("DAG_RESULT "))
    return result


def run_task(platform: dict[str, Any], call: str) -> subprocess.Popen[str]:
    """A task function in a process of its own: ``call`` is an expression
    on ``tasks`` (lamina.orchestration.tasks); its JSON result is the last
    stdout line."""
    code = ("import json\nfrom lamina.orchestration import tasks\n"
            f"print('TASK_RESULT ' + json.dumps({call}))\n")
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **platform["env"]},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def task_result(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=600)
    lines = [line for line in out.splitlines() if line.startswith("TASK_RESULT ")]
    assert process.returncode == 0 and lines, err[-4000:]
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("TASK_RESULT "))
    return result


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def test_the_batch_views_dag_publishes_the_views_switches_the_store_and_emits_the_asset(
        platform: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    logical = _now()
    run = run_dag(platform, "lamina_batch_views", logical)
    assert run["state"] == "success", run
    views = run["tasks"]["compute_views"]["xcom"]
    store = run["tasks"]["publish_to_tile_store"]["xcom"]
    assert views["status"] == "published" and views["rows"] > 0
    assert store["status"] == "published"
    assert store["batch_version"] == views["version"] and store["cutoff_ms"] == views["cutoff_ms"]
    # The newest event is on day 8: the cutoff is that day's midnight (the
    # run's date is far later, so the data bounds it).
    assert START_MS < views["cutoff_ms"] <= START_MS + 8 * DAY_MS
    assert run["asset_events"] == [{
        "uri": "lamina://views/card_transactions",
        "extra": {"version": views["version"], "cutoff_ms": views["cutoff_ms"],
                  "cutoff": views["cutoff"], "snapshot": views["snapshot"],
                  "store_status": "published"}}]

    # The tile store serves that version.
    from lamina.stores import open_store

    settings = platform["settings"]
    with open_store(settings.tile_store.kind, **settings.tile_store_options()) as opened:
        current = opened.current_view("card_transactions")
    assert current is not None and current.batch_version == views["version"]

    # Clearing a task runs its function again with the same run: same result.
    for name, value in platform["env"].items():
        monkeypatch.setenv(name, value)
    from lamina.orchestration import tasks

    assert tasks.batch_views(None, logical_date=logical) == views
    assert tasks.publish_to_tile_store(None, views_version=views["version"]) == store


def test_a_views_task_killed_mid_run_gives_the_same_result_when_run_again(
        platform: dict[str, Any]) -> None:
    # More events landed make a new snapshot: the views task has real work.
    from lamina.master.dataset import MasterDataset

    settings = platform["settings"]
    produce(LATER_EVENTS, settings.kafka.bootstrap_servers, settings.kafka.raw_topic,
            progress=False)
    assert run_lander(settings, idle_exit_s=3.0, progress=False).landed > 0
    snapshot = MasterDataset(settings.master_uri).table().version()
    time.sleep(1.5)  # the run's logical date must be after that commit
    logical = _now().isoformat()
    call = f"tasks.batch_views(None, logical_date={logical!r})"

    victim = run_task(platform, call)
    deadline = time.monotonic() + 120
    while not _children(victim.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    driver = _children(victim.pid)
    assert driver, "the views task never started its Spark driver"
    time.sleep(6)  # inside Spark's start or the job itself
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    # The driver dies with the task (no orphan may commit later).
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in driver) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in driver)

    first = task_result(run_task(platform, call))
    again = task_result(run_task(platform, call))
    assert first == again
    assert first["status"] == "published"
    assert first["snapshot"] == snapshot
