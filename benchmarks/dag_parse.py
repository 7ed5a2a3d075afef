"""DAG parse time: how long Airflow takes to parse each file in dags/.

    .venv/bin/python -m benchmarks.run --only dag-parse

What runs
---------
Each round is a fresh interpreter (a new AIRFLOW_HOME in a temporary
directory) that imports ``airflow.sdk`` and the DagBag first (a DAG
processor has them loaded), then parses, one file per ``DagBag(dag_folder=
FILE)``, the reference and every file in dags/, timing each parse (import
of the file, DAG construction and DagBag checks) on the wall clock. The
reference, THE REFERENCE of these rows, is a minimal TaskFlow DAG with one
task written to the temporary directory: what any DAG file costs at least.
It is parsed once before the timed parses (a warm-up of the DagBag's first
use) and then timed like the others. The best of the rounds is reported per
file; every round must parse each file without import errors, or the run
fails. Target: under a second per file (issue 15).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import BenchmarkError
from benchmarks.report import Row

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
TARGET_S = 1.0

REFERENCE_DAG = '''
from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="reference_minimal", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def reference_minimal():
    @task
    def one():
        return 1

    one()


reference_minimal()
'''

PROBE = '''
import json, sys, time
import airflow.sdk  # noqa: F401 - loaded in a DAG processor already
from airflow.dag_processing.dagbag import DagBag
paths = json.loads(sys.argv[1])
DagBag(dag_folder=paths[0])  # warm-up: the DagBag's first use
out = {}
for path in paths:
    began = time.perf_counter()
    bag = DagBag(dag_folder=path)
    out[path] = [time.perf_counter() - began, len(bag.import_errors), len(bag.dags)]
print("PARSE " + json.dumps(out))
'''


@dataclass(frozen=True)
class DagParseResults:
    rounds: int
    #: file name -> best seconds over the rounds; "reference" for the minimal DAG.
    best_s: dict[str, float]
    all_s: dict[str, list[float]]
    dags: dict[str, int]


def measure_dag_parse(rounds: int, say: object = print) -> DagParseResults:
    files = sorted(DAGS.glob("*.py"))
    if not files:
        raise BenchmarkError(f"no DAG files in {DAGS}")
    times: dict[str, list[float]] = {}
    dags: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="lamina-bench-dag-parse-") as scratch:
        reference = Path(scratch) / "reference_minimal.py"
        reference.write_text(REFERENCE_DAG)
        paths = [str(reference), *map(str, files)]
        for round_no in range(1, rounds + 1):
            home = Path(scratch) / f"airflow-{round_no}"
            env = {**os.environ, "AIRFLOW_HOME": str(home),
                   "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
            done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(paths)],
                                  capture_output=True, text=True, env=env, timeout=600,
                                  check=False)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("PARSE ")]
            if done.returncode != 0 or not lines:
                raise BenchmarkError(f"DAG parse probe failed: {done.stderr[-2000:]}")
            for path, (seconds, errors, count) in json.loads(lines[-1][6:]).items():
                name = "reference" if path == str(reference) else Path(path).name
                if errors:
                    raise BenchmarkError(f"{name} has import errors")
                times.setdefault(name, []).append(seconds)
                dags[name] = count
            if callable(say):
                say(f"dag-parse round {round_no}: "
                    + ", ".join(f"{n} {t[-1] * 1000:.0f} ms" for n, t in times.items()))
    return DagParseResults(rounds=rounds, best_s={n: min(t) for n, t in times.items()},
                           all_s=times, dags=dags)


def dag_parse_rows(results: DagParseResults) -> list[Row]:
    ref = results.best_s["reference"]
    rows = [Row("DAG parse, minimal one-task DAG (reference)", f"{ref * 1000:.0f} ms", "—",
                "1.00×", "—", f"best of {results.rounds}")]
    for name, best in sorted(results.best_s.items()):
        if name == "reference":
            continue
        runs = ", ".join(f"{t * 1000:.0f}" for t in results.all_s[name])
        rows.append(Row(f"DAG parse, dags/{name}", f"{best * 1000:.0f} ms",
                        f"minimal DAG {ref * 1000:.0f} ms", f"{best / ref:.2f}×",
                        f"< {TARGET_S:.0f} s", f"{results.dags[name]} DAG; runs (ms): {runs}"))
    return rows


def dag_parse_notes(results: DagParseResults) -> list[str]:
    return [f"DAG parse: one fresh interpreter per round ({results.rounds} rounds) with "
            "airflow.sdk and the DagBag imported first, then `DagBag(dag_folder=FILE)` per "
            "file, wall clock; the reference is a minimal TaskFlow DAG parsed the same way "
            "(see benchmarks/dag_parse.py)."]
