"""The scheduler's overhead: one retraining DAG run next to the same steps
from the CLI, on the same data, in the same run.

    .venv/bin/python -m benchmarks.run --only dag-run

What runs
---------
Once, not timed: the generator writes ``TRANSACTIONS`` card transactions
(seed 11, 8 days from 2026-01-01, a tenth of the cards compromised, no
drift) as JSON Lines, ``lamina import`` lands them into a seed master
dataset, and ``airflow db migrate`` prepares one Airflow home (SQLite) in
a temporary directory whose dags folder is the repository's dags/.

Every round then runs both sides, interleaved (odd rounds the DAG first,
even rounds the CLI first), each on a fresh Lamina home holding a copy of
the seed master dataset, so both start from the same table, an empty
registry and no training sets or models (nothing is found already done):

* **DAG** (the figure): ``lamina_retraining`` with ``dag.test()`` in a
  fresh interpreter, as tests/integration/test_dags_end_to_end.py runs its DAGs:
  build_training_sets (one Spark driver process for the training set and
  the backtest) -> train (a Spark driver, one barrier worker) ->
  evaluate_and_gate (backtest against the champion, the gate promotes or
  keeps). Wall time from starting the interpreter to its exit; inside it,
  Airflow's import and the DAG file's parse, the ``dag.test()`` call, and
  each task instance's recorded duration.
* **CLI** (THE REFERENCE): the same steps as four ``python -m lamina.cli``
  processes in a row: ``training-set`` for the training window and for the
  backtest window (the windows ``tasks.retraining_windows`` gives the DAG),
  ``train --workers 1`` (same parameters and seed), ``evaluate --candidate
  V`` (the same gate, which promotes or keeps). Wall time of each and their
  sum.

Both sides use ``[spark] master = local[2]`` with the Spark UI off, the
embedded MLflow registry (SQLite) of their home, the gate's default
thresholds and the same training parameters. The better round of each side
is reported and the ratio is best over best; every round's figures are in
the note. A DAG run that fails, or a side whose gate decision or candidate
metrics differ from the other's, fails the benchmark.

Two differences are part of what is measured, not hidden: the DAG builds
both sets in one Spark driver while the CLI starts one per set, and the
CLI's ``training-set`` takes the labels as known at the snapshot's newest
event (it has no ``--as-of``) where the DAG is given the end of the data,
2026-01-09 (row counts of both are in the note).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import BenchmarkError
from benchmarks.report import Row

REPO = Path(__file__).resolve().parents[1]
DAG_FILE = REPO / "dags" / "lamina_retraining.py"
DAG_ID = "lamina_retraining"
TRANSACTIONS = 16_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY_MS = 86_400_000
AS_OF = "2026-01-09T00:00:00+00:00"
TRAIN_DAYS, BACKTEST_DAYS, MATURITY_DAYS = 4.0, 2.0, 1.0
SEED = 7
TRAIN_PARAMS = {"epochs": 2, "batch_size": 256, "hidden": [16]}
STEP_TIMEOUT_S = 1800
#: The DAG's tasks and the CLI commands that do the same work.
STEPS = (("build_training_sets", ("training-set train", "training-set backtest")),
         ("train", ("train",)),
         ("evaluate_and_gate", ("evaluate",)))

PROBE = '''
import json, sys, time
began = time.perf_counter()
from datetime import datetime
from airflow.dag_processing.dagbag import DagBag
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
from sqlalchemy import select
dag_file, dag_id, logical, conf = sys.argv[1:5]
bag = DagBag(dag_folder=dag_file)
if dag_id not in bag.dags:
    raise SystemExit(f"{dag_id} not parsed: {bag.import_errors}")
parsed = time.perf_counter()
run = bag.dags[dag_id].test(logical_date=datetime.fromisoformat(logical),
                            run_conf=json.loads(conf))
tested = time.perf_counter()
tasks = {}
with create_session() as session:
    for ti in session.scalars(select(TaskInstance).where(
            TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id)).all():
        xcom = session.scalars(select(XComModel).where(
            XComModel.dag_id == dag_id, XComModel.run_id == run.run_id,
            XComModel.task_id == ti.task_id, XComModel.key == "return_value")).first()
        duration = ti.duration
        if duration is None and ti.start_date and ti.end_date:
            duration = (ti.end_date - ti.start_date).total_seconds()
        tasks[ti.task_id] = {"state": str(ti.state), "duration": duration,
                             "xcom": None if xcom is None else XComModel.deserialize_value(xcom)}
print("DAG_RUN " + json.dumps({"state": str(run.state), "import_parse_s": parsed - began,
                               "test_s": tested - parsed, "tasks": tasks}, default=str))
'''


@dataclass(frozen=True)
class DagRound:
    """One DAG run: wall time of its interpreter, Airflow import + parse,
    the ``dag.test()`` call, and each task's recorded duration."""

    wall_s: float
    import_parse_s: float
    test_s: float
    task_s: dict[str, float]
    decision: str
    roc_auc: float | None
    rows: dict[str, int]


@dataclass(frozen=True)
class CliRound:
    """The same steps from the CLI: wall time of each command."""

    step_s: dict[str, float]
    decision: str
    roc_auc: float | None
    rows: dict[str, int]

    @property
    def wall_s(self) -> float:
        return sum(self.step_s.values())


@dataclass
class DagRunResults:
    rounds: int
    transactions: int
    dag: list[DagRound] = field(default_factory=list)
    cli: list[CliRound] = field(default_factory=list)

    def best_dag(self) -> DagRound:
        return min(self.dag, key=lambda r: r.wall_s)

    def best_cli(self) -> CliRound:
        return min(self.cli, key=lambda r: r.wall_s)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _run(command: list[str], env: dict[str, str], cwd: Path, what: str) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=STEP_TIMEOUT_S, check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise BenchmarkError(f"{what} failed (exit {done.returncode}): "
                             f"{(done.stderr or done.stdout)[-2500:]}")
    return seconds, done.stdout


def _lamina(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, Any]:
    seconds, out = _run([sys.executable, "-m", "lamina.cli", *args], env, cwd,
                        f"lamina {' '.join(args[:1])}")
    return seconds, json.loads(out)


def _side_env(base: dict[str, str], home: Path) -> dict[str, str]:
    return {**base, "LAMINA_HOME": str(home),
            "LAMINA_SPARK_MASTER": "local[2]",
            "LAMINA_SPARK_CONF": json.dumps({"spark.ui.enabled": "false"})}


def _fresh_home(scratch: Path, seed_master: Path, name: str) -> Path:
    home = scratch / name
    shutil.copytree(seed_master, home / "master")
    return home


def _prepare(scratch: Path, base: dict[str, str], say: Callable[[str], None]) -> Path:
    """Events imported into a seed master dataset; the Airflow home
    migrated. Returns the seed master dataset's folder."""
    from lamina.generator import GeneratorConfig, write_files

    config = GeneratorConfig(seed=11, cards=1_200, merchants=200, transactions=TRANSACTIONS,
                             start=START_MS, days=8.0, fraud_card_rate=0.12, drift_at=None)
    files = write_files(config, scratch / "events")
    seed_home = scratch / "seed"
    seconds, _ = _lamina(["import", *map(str, files), "--quiet"],
                         _side_env(base, seed_home), scratch)
    say(f"dag-run: {TRANSACTIONS:,} transactions imported in {seconds:.0f} s (not timed)")
    seconds, _ = _run([sys.executable, "-m", "airflow", "db", "migrate"], base, scratch,
                      "airflow db migrate")
    say(f"dag-run: Airflow home migrated in {seconds:.0f} s (not timed)")
    return seed_home / "master"


def _dag_round(scratch: Path, base: dict[str, str], home: Path, logical: datetime) -> DagRound:
    conf = {"as_of": AS_OF, "label_maturity_days": MATURITY_DAYS,
            "backtest_days": BACKTEST_DAYS, "train_days": TRAIN_DAYS, "workers": 1,
            "seed": SEED, "train_params": TRAIN_PARAMS, "gate_thresholds": {}}
    wall, out = _run([sys.executable, "-c", PROBE, str(DAG_FILE), DAG_ID, logical.isoformat(),
                      json.dumps(conf)], _side_env(base, home), scratch, "the DAG run")
    lines = [ln for ln in out.splitlines() if ln.startswith("DAG_RUN ")]
    if not lines:
        raise BenchmarkError(f"the DAG run printed no result: {out[-2000:]}")
    result = json.loads(lines[-1].removeprefix("DAG_RUN "))
    tasks = result["tasks"]
    if result["state"] != "success" or any(t["state"] != "success" for t in tasks.values()):
        raise BenchmarkError(f"the DAG run did not succeed: {result['state']}, "
                             + ", ".join(f"{n} {t['state']}" for n, t in tasks.items()))
    decision = tasks["evaluate_and_gate"]["xcom"]
    sets = tasks["build_training_sets"]["xcom"]["sets"]
    return DagRound(wall_s=wall, import_parse_s=result["import_parse_s"],
                    test_s=result["test_s"],
                    task_s={n: float(t["duration"]) for n, t in tasks.items()
                            if t["duration"] is not None},
                    decision=decision["decision"],
                    roc_auc=decision["candidate_metrics"].get("roc_auc"),
                    rows={name: int(s["rows"]) for name, s in sets.items()})


def _cli_round(scratch: Path, base: dict[str, str], home: Path) -> CliRound:
    from lamina.orchestration.tasks import retraining_windows, to_ms

    env = _side_env(base, home)
    windows = retraining_windows(to_ms(AS_OF), train_days=TRAIN_DAYS,
                                 backtest_days=BACKTEST_DAYS, label_maturity_days=MATURITY_DAYS)
    step_s: dict[str, float] = {}
    rows: dict[str, int] = {}
    paths: dict[str, str] = {}
    for name, (start, end) in windows.items():
        paths[name] = str(home / "training_sets" / name)
        seconds, meta = _lamina(["training-set", "--start", _iso(start), "--end", _iso(end),
                                 "--maturity-days", str(MATURITY_DAYS), "--out", paths[name]],
                                env, scratch)
        step_s[f"training-set {name}"], rows[name] = seconds, int(meta["rows"])
    seconds, trained = _lamina(["train", paths["train"], "--workers", "1", "--seed", str(SEED),
                                "--params", json.dumps(TRAIN_PARAMS)], env, scratch)
    step_s["train"] = seconds
    seconds, evaluated = _lamina(["evaluate", paths["backtest"], "--candidate",
                                  str(trained["version"])], env, scratch)
    step_s["evaluate"] = seconds
    metrics = evaluated.get("candidate_metrics") or {}
    return CliRound(step_s=step_s, decision="promoted" if evaluated["promote"] else "kept",
                    roc_auc=metrics.get("roc_auc"), rows=rows)


def measure_dag_run(rounds: int, say: Callable[[str], None] = print) -> DagRunResults:
    """``rounds`` interleaved rounds of the DAG run and the CLI steps (see
    the module docstring). BenchmarkError if a side fails or the two sides
    disagree on the gate's decision."""
    results = DagRunResults(rounds=rounds, transactions=TRANSACTIONS)
    with tempfile.TemporaryDirectory(prefix="lamina-bench-dag-run-") as tmp:
        scratch = Path(tmp)
        base = {**{k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")},
                "AIRFLOW_HOME": str(scratch / "airflow"),
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False"}
        seed_master = _prepare(scratch, base, say)
        logical = datetime.now(UTC).replace(microsecond=0)
        for round_no in range(1, rounds + 1):
            order = ("dag", "cli") if round_no % 2 else ("cli", "dag")
            for side in order:
                home = _fresh_home(scratch, seed_master, f"{side}-{round_no}")
                if side == "dag":
                    dag = _dag_round(scratch, base, home,
                                     logical + timedelta(minutes=round_no))
                    results.dag.append(dag)
                    say(f"dag-run round {round_no}: DAG {dag.wall_s:.1f} s "
                        f"(dag.test {dag.test_s:.1f} s), gate {dag.decision}; "
                        f"{json.dumps(asdict(dag))}")
                else:
                    cli = _cli_round(scratch, base, home)
                    results.cli.append(cli)
                    say(f"dag-run round {round_no}: CLI {cli.wall_s:.1f} s, "
                        f"gate {cli.decision}; {json.dumps(asdict(cli))}")
                shutil.rmtree(home, ignore_errors=True)
            if results.dag[-1].decision != results.cli[-1].decision:
                raise BenchmarkError(
                    f"round {round_no}: the DAG's gate said {results.dag[-1].decision}, the "
                    f"CLI's {results.cli[-1].decision}: the two sides did not do the same work")
    return results


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


def dag_run_rows(results: DagRunResults) -> list[Row]:
    dag, cli = results.best_dag(), results.best_cli()
    rows = [
        Row("Retraining from the CLI, 4 commands (reference)", f"{cli.wall_s:.1f} s", "—",
            "1.00×", "—", f"best of {results.rounds}; runs (s): "
            f"{_runs([r.wall_s for r in results.cli])}"),
        Row("Retraining DAG run, `dag.test()` in a fresh interpreter", f"{dag.wall_s:.1f} s",
            f"CLI {cli.wall_s:.1f} s", f"{dag.wall_s / cli.wall_s:.2f}×", "—",
            f"best of {results.rounds}; runs (s): {_runs([r.wall_s for r in results.dag])}; "
            f"overhead {dag.wall_s - cli.wall_s:+.1f} s"),
        Row("  of which Airflow import + DAG file parse", f"{dag.import_parse_s:.1f} s",
            f"DAG run {dag.wall_s:.1f} s", f"{dag.import_parse_s / dag.wall_s:.0%}", "—",
            "before `dag.test()` (best DAG round)"),
    ]
    outside = dag.test_s - sum(dag.task_s.values())
    rows.append(Row("  of which `dag.test()` outside the tasks", f"{outside:.1f} s",
                    f"DAG run {dag.wall_s:.1f} s", f"{outside / dag.wall_s:.0%}", "—",
                    "run creation, scheduling loop, XCom, asset events (best DAG round)"))
    for task, commands in STEPS:
        task_s = dag.task_s.get(task, float("nan"))
        cli_s = sum(cli.step_s[c] for c in commands)
        rows.append(Row(f"  task {task}", f"{task_s:.1f} s",
                        f"CLI {' + '.join(commands)} {cli_s:.1f} s", f"{task_s / cli_s:.2f}×",
                        "—", f"task instance duration vs the commands' wall time; "
                        f"{task_s - cli_s:+.1f} s"))
    return rows


def dag_run_notes(results: DagRunResults) -> list[str]:
    dag, cli = results.best_dag(), results.best_cli()
    return [
        f"DAG run: `lamina_retraining` with `dag.test()` next to the same steps as `python -m "
        f"lamina.cli` commands, {results.rounds} interleaved rounds, each side on a fresh copy of "
        f"the same master dataset ({results.transactions:,} generated transactions over 8 days) "
        "with an empty registry; Spark local[2], one barrier worker, the gate's default "
        "thresholds (see benchmarks/dag_run.py).",
        f"Gate decisions: DAG {[r.decision for r in results.dag]}, CLI "
        f"{[r.decision for r in results.cli]}; candidate ROC AUC DAG {dag.roc_auc}, CLI "
        f"{cli.roc_auc}. Rows (train, backtest): DAG {dag.rows}, CLI {cli.rows} (the CLI takes "
        "labels as known at the snapshot's newest event, the DAG at 2026-01-09).",
        "CLI step times of the best round (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in cli.step_s.items())
        + "; DAG task durations of the best round (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in dag.task_s.items()) + ".",
    ]
