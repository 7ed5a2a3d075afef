"""The benchmark runner's suite table: the `--only` names, the help text and
the table agree, a bad `--only` is one error line and exit 2, and a report
renders exactly as it did before the table replaced the per-suite if-blocks
(the golden file was written by the old code from the same fake results;
its "CPU time" line was added with the fact). ``cpu_steal`` reads the
shares of /proc/stat's counters."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from benchmarks import run
from benchmarks.common import Timed
from benchmarks.dag_parse import DagParseResults
from benchmarks.landing import LanderRun, LoadedTopic
from benchmarks.report import Row
from master.lander import LanderStats

GOLDEN = Path(__file__).parent / "golden" / "bench_report_kafka_dag_parse.md"


def test_only_names_help_and_suite_table_agree(capsys: pytest.CaptureFixture[str]):
    table_names = [name for suite in run.SUITE_TABLE for name in suite.only_names]
    assert list(run.SUITES) == table_names and len(set(table_names)) == len(table_names)
    assert {"lander", "validation", "clients"} == run.KAFKA_SUITES <= set(table_names)
    for rank in ("measure_rank", "title_rank"):
        ranks = [getattr(suite, rank) for suite in run.SUITE_TABLE]
        assert sorted(ranks) == list(range(len(run.SUITE_TABLE))), rank
    assert run.parse_args([]).suites == set(table_names)
    for name in table_names:
        assert run.parse_args(["--only", name]).suites == {name}
    with pytest.raises(SystemExit):
        run.parse_args(["--help"])
    # argparse wraps the help (also at hyphens): compare without whitespace.
    help_text = "".join(capsys.readouterr().out.split())
    assert "comma-separatedsubsetof" + ",".join(table_names) + ";" in help_text


@pytest.mark.parametrize("only", ["nonsense", "views,nonsense", ","])
def test_an_unknown_only_name_is_one_error_line_and_exit_2(
        only: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        run.parse_args(["--only", only])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # argparse's usage line, then the one line naming the problem.
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert error_lines == [f"python -m benchmarks.run: error: --only takes names from "
                           f"{','.join(run.SUITES)}, got {only!r}"]


def _fixed_report_env(monkeypatch: pytest.MonkeyPatch) -> run.RunContext:
    monkeypatch.setattr(run, "describe_machine",
                        lambda: SimpleNamespace(describe=lambda: "MACHINE"))
    monkeypatch.setattr(run, "load_average", lambda: "LOAD")
    monkeypatch.setattr(run, "cpu_steal", lambda before: f"STEAL since {before}")
    monkeypatch.setattr(run, "versions", lambda training=False, views=False:
                        f"VERSIONS training={training} views={views}")
    monkeypatch.setattr(run, "time", SimpleNamespace(monotonic=lambda: 107.0))
    return run.RunContext(command="CMD", commit="abc1234",
                          started=datetime(2026, 12, 1, 23, 30, tzinfo=UTC),
                          load_before="LOAD0", events=1000, began=100.0,
                          cpu_before=(1, 2))


def _kafka_figures() -> run.KafkaFigures:
    loaded = LoadedTopic(values=[b"x"] * 1100,
                         kinds=Counter(valid=900, duplicate=100, malformed=100),
                         valid_ids=set(), seconds=1.5)
    results = run.Results(rounds=2)
    results.raw = [Timed(1100, 1.0, 0.9), Timed(1100, 1.1, 1.0)]
    results.raw_gc = [Timed(1100, 0.9, 0.8), Timed(1100, 0.95, 0.8)]
    results.confluent = [Timed(1100, 0.5, 0.4), Timed(1100, 0.6, 0.5)]
    results.lander_stalls = ["round 1, attempt 1: nothing"]
    stats = LanderStats(consumed=1100, landed=900, dead_lettered=100, duplicates_dropped=100,
                        commits=3, poll_s=0.5, validate_s=0.3, commit_s=0.6)
    results.lander = [LanderRun(seconds=2.0, stats=stats, dataset_uri="x", cpu_seconds=1.5,
                                commit_steps={"table load": 0.1, "Delta write": 0.2}),
                      LanderRun(seconds=2.5, stats=stats, dataset_uri="y", cpu_seconds=1.6)]
    results.validation = {"validate_envelope": [Timed(1100, 0.01, 0.01),
                                                Timed(1100, 0.02, None)]}
    return run.KafkaFigures(loaded, results, "PIN", frozenset(run.KAFKA_SUITES), 1000)


DAG_PARSE = DagParseResults(rounds=3, best_s={"reference": 0.1, "a.py": 0.3},
                            all_s={"reference": [0.1, 0.2], "a.py": [0.3, 0.4]},
                            dags={"a.py": 1})


def test_kafka_and_dag_parse_report_renders_as_before_the_suite_table(
        monkeypatch: pytest.MonkeyPatch):
    ctx = _fixed_report_env(monkeypatch)
    section = run.render_report(ctx, {"kafka": _kafka_figures(), "dag-parse": DAG_PARSE})
    assert section + "\n" == GOLDEN.read_text()


def test_every_suite_keeps_its_place_in_rows_notes_and_title(monkeypatch: pytest.MonkeyPatch):
    ctx = _fixed_report_env(monkeypatch)

    def fake(suite: run.Suite[Any]) -> run.Suite[Any]:
        return dataclasses.replace(suite, rows=lambda r: [Row(suite.name, "", "", "", "", "")],
                                   notes=lambda r: [f"{suite.name} note"])

    monkeypatch.setattr(run, "SUITE_TABLE",
                        tuple(fake(suite) for suite in run.SUITE_TABLE if suite.name != "kafka"))
    measured = {
        "views": SimpleNamespace(data=SimpleNamespace(rows=10_000)),
        "stores": SimpleNamespace(data=SimpleNamespace(transactions=2000)),
        "training-set": SimpleNamespace(lamina=[SimpleNamespace(rows=25)]),
        "training": SimpleNamespace(),
        "online-state": SimpleNamespace(data=SimpleNamespace(transactions=300)),
        "speed": SimpleNamespace(data=SimpleNamespace(stream=[0] * 50)),
        "dag-parse": DAG_PARSE,
        "serving": SimpleNamespace(data=SimpleNamespace(transactions=400)),
        "dag-run": SimpleNamespace(transactions=500),
        "speed-latency": SimpleNamespace(), "speed-recovery": SimpleNamespace(),
    }
    lines = run.render_report(ctx, measured).splitlines()
    # The title, Versions and row/note order the old if-blocks produced.
    assert lines[0] == (
        "## 2026-12-01 23:30 UTC · views over 10,000 transactions + tile stores over 2,000 "
        "transactions + training set of 25 rows + online state over 300 transactions + speed "
        "layer over 50 records + parse time of 1 DAG files + serving over 400 transactions + "
        "retraining DAG vs CLI on 500 transactions + speed latency at 50 % load + speed "
        "recovery after kill -9 · `abc1234`")
    assert "- Versions: VERSIONS training=True views=True" in lines
    order = ["views", "training-set", "training", "stores", "online-state", "speed",
             "dag-parse", "serving", "dag-run", "speed-latency", "speed-recovery"]
    assert [line.split(" |")[0][2:] for line in lines if line.startswith("| ")][1:] == order
    assert [line[2:-5] for line in lines if line.endswith(" note")] == order
    training_only = run.render_report(ctx, {"training": SimpleNamespace()}).splitlines()
    assert training_only[0] == "## 2026-12-01 23:30 UTC · training only · `abc1234`"
    assert "- Versions: VERSIONS training=True views=False" in training_only
    no_view_data = run.render_report(ctx, {"views": SimpleNamespace(data=None),
                                           "training-set": SimpleNamespace(lamina=[])})
    assert no_view_data.splitlines()[0] == "## 2026-12-01 23:30 UTC · training only · `abc1234`"
    assert "- Versions: VERSIONS training=False views=True" in no_view_data


def test_cpu_steal_gives_the_shares_of_the_time_between_two_readings():
    from benchmarks.machine import cpu_steal

    # user nice system idle iowait irq softirq steal, in ticks
    before = (100, 0, 50, 1000, 0, 0, 0, 10)
    after = (160, 0, 70, 1090, 10, 0, 10, 60)  # busy +60 +20 +10, idle +90 +10, stolen +50
    assert cpu_steal(before, after) == (
        "20.8 % stolen by the host; busy 37.5 %, idle 41.7 % (all cores, over the run)")
    assert cpu_steal((), after) == "not known (no /proc/stat)"
    assert cpu_steal(after, after) == "not known (no CPU time elapsed)"
