"""`lamina airflow`: its settings, the environment Airflow runs with, and the
bookkeeping `up`/`down`/`status` rely on -- without starting Airflow (the
integration tier, tests/integration/test_airflow_ui.py, does)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lamina import cli
from lamina.config import load_settings
from lamina.orchestration import airflow_runner as runner


def test_airflow_settings_default_to_a_free_port_under_the_lamina_home():
    settings = load_settings(None, env={"LAMINA_HOME": "/tmp/lh"})
    assert settings.airflow.port == 0
    assert settings.airflow_home == Path("/tmp/lh/airflow")
    assert settings.reports_dir == Path("/tmp/lh/reports")
    settings = load_settings(None, env={"LAMINA_HOME": "/tmp/lh", "LAMINA_AIRFLOW_PORT": "8099",
                                        "LAMINA_AIRFLOW_HOME": "/srv/af"})
    assert settings.airflow.port == 8099 and settings.airflow_home == Path("/srv/af")


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("LAMINA_AIRFLOW_PORT", "70000", "must be at most 65535"),
    ("LAMINA_AIRFLOW_PORT", "-1", "must be at least 0"),
    ("LAMINA_AIRFLOW_PORT", "http", "must be int"),
    ("LAMINA_AIRFLOW_PARALLELISM", "0", "must be at least 1"),
])
def test_a_bad_airflow_setting_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path,
                                                      variable, value, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LAMINA_HOME", str(tmp_path))
    monkeypatch.setenv(variable, value)
    assert cli.main(["airflow", "status"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and variable in err[0] and message in err[0], err


def test_the_environment_pins_every_port_to_loopback_and_drops_the_callers_airflow_settings(
        tmp_path):
    settings = load_settings(None, env={"LAMINA_HOME": str(tmp_path)})
    env = runner.airflow_environment(
        settings, port=41000, worker_log_port=41001, trigger_log_port=41002,
        dags=tmp_path / "dags",
        base={"PATH": "/bin", "AIRFLOW__CORE__LOAD_EXAMPLES": "True", "AIRFLOW_HOME": "/x"})
    assert env["AIRFLOW_HOME"] == str((tmp_path / "airflow").resolve())
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1" and env["AIRFLOW__API__PORT"] == "41000"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:41000/execution/"
    assert env["AIRFLOW__API__WORKERS"] == "1"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__PARALLELISM"] == "4"
    assert env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == "41001"
    assert env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] == "41002"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(tmp_path / "dags")
    assert env["LAMINA_HOME"] == str(tmp_path.resolve())
    assert env["PATH"] == "/bin"


def test_a_dags_folder_that_does_not_exist_is_refused_naming_the_setting(tmp_path):
    settings = load_settings(None, env={"LAMINA_HOME": str(tmp_path),
                                        "LAMINA_AIRFLOW_DAGS_FOLDER": str(tmp_path / "nope")})
    with pytest.raises(runner.ConfigError, match="dags_folder"):
        runner.dags_folder(settings)


def test_status_and_down_without_an_airflow_say_so(tmp_path):
    settings = load_settings(None, env={"LAMINA_HOME": str(tmp_path)})
    assert runner.airflow_status(settings)["running"] is False
    assert runner.airflow_down(settings)["stopped"] is False


def test_stop_group_ends_a_whole_session_including_a_child_that_ignores_sigint(tmp_path):
    # A parent in its own session with a child that ignores SIGINT: the
    # group is stopped by the SIGTERM that follows, and nothing is left.
    script = ("import signal, subprocess, sys, time\n"
              "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
              "subprocess.Popen([sys.executable, '-c', 'import signal,time;"
              "signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(600)'])\n"
              "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        for _ in range(100):
            if len(runner.group_members(proc.pid, proc.pid)) == 2:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        members = runner.group_members(proc.pid, proc.pid)
        assert len(members) == 2 and proc.pid in members
        state = runner.AirflowState(pid=proc.pid, pgid=proc.pid, port=1, url="http://x",
                                    airflow_home=str(tmp_path), log_file="", password_file="",
                                    dags_folder="", started_at=0.0)
        stopped = runner.stop_group(state, grace_s=2.0)
        proc.wait(timeout=10)
        assert sorted(stopped) == sorted(members)
        assert not runner.group_members(proc.pid, proc.pid)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)


def test_status_reads_the_state_file_of_a_dead_airflow_as_not_running(tmp_path):
    settings = load_settings(None, env={"LAMINA_HOME": str(tmp_path)})
    settings.airflow_home.mkdir(parents=True)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(done.stdout)
    (settings.airflow_home / runner.STATE_FILE).write_text(json.dumps({
        "pid": pid, "pgid": pid, "port": 1, "url": "http://127.0.0.1:1",
        "airflow_home": str(settings.airflow_home), "log_file": "", "password_file": "",
        "dags_folder": "", "started_at": 0.0}))
    status = runner.airflow_status(settings)
    assert status["running"] is False and status["healthy"] is False


def test_an_earlier_starts_shutdown_line_in_the_appended_log_does_not_end_a_new_start(tmp_path):
    # `up` appends to standalone.log: a second `up` after a failed one
    # must judge only what its own standalone wrote.
    log_file = tmp_path / runner.LOG_FILE
    log_file.write_text("standalone | Starting components\n"
                        "standalone | Shutting down components\n")
    this_start = log_file.stat().st_size
    with open(log_file, "a") as out:
        out.write("standalone | Starting components\nscheduler | starting\n")
    assert not runner._gave_up(log_file, since=this_start)
    with open(log_file, "a") as out:
        out.write("standalone | Shutting down components\n")
    assert runner._gave_up(log_file, since=this_start)
