"""`lamina airflow up | down | status`: Airflow standalone on this machine.

Embedded defaults (ARCHITECTURE.md, "Airflow 3"): ``airflow standalone``
with SQLite metadata under ``Settings.airflow_home``, its UI and API on
127.0.0.1 (a free port unless ``[airflow] port`` is set), one API worker,
low parallelism, the execution API URL pointing at that port (tasks fail
with "connection refused" otherwise), the two log servers on free ports
instead of 8793/8794, no example DAGs, the DAG folder from the settings and
the Lamina page (``lamina.orchestration.plugin``) loaded through the
``airflow.plugins`` entry point.

The process runs in its own session (``start_new_session``), detached from
the caller; ``<airflow home>/lamina-airflow.json`` records its process
group, port and log file. Stopping is SIGINT to the group, then SIGTERM to
the group (the standalone parent otherwise lingers), then SIGKILL to
whatever is left, including descendants that left the group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lamina.config import Settings
from lamina.errors import ConfigError, InfraError
from lamina.logs import get_logger

log = get_logger(__name__)

HOST = "127.0.0.1"
STATE_FILE = "lamina-airflow.json"
LOG_FILE = "standalone.log"
PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"
HEALTH_PATH = "/api/v2/monitor/health"
LAMINA_PAGE = "/lamina/"


@dataclass(frozen=True)
class AirflowState:
    """What `up` recorded about the Airflow it started."""

    pid: int
    pgid: int
    port: int
    url: str
    airflow_home: str
    log_file: str
    password_file: str
    dags_folder: str
    started_at: float


def repo_dags_folder() -> Path | None:
    """The repository's ``dags/`` beside the installed source (an editable
    install: orchestration/ and dags/ are siblings), or None."""
    candidate = Path(__file__).resolve().parents[1] / "dags"
    return candidate if candidate.is_dir() else None


def dags_folder(settings: Settings) -> Path:
    if settings.airflow.dags_folder:
        folder = Path(settings.airflow.dags_folder).expanduser().resolve()
        if not folder.is_dir():
            raise ConfigError(f"[airflow] dags_folder {folder} is not a folder: create it or "
                              "point LAMINA_AIRFLOW_DAGS_FOLDER at the DAG files")
        return folder
    return repo_dags_folder() or settings.airflow_home.resolve() / "dags"


def _free_ports(count: int) -> list[int]:
    # Hold every socket until all are bound so the ports are distinct.
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind((HOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def airflow_environment(settings: Settings, *, port: int, worker_log_port: int,
                        trigger_log_port: int, dags: Path,
                        base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment `airflow standalone` runs with: ``base`` (default
    os.environ) without any AIRFLOW__* the caller had, plus Lamina's."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith("AIRFLOW__") and k != "AIRFLOW_HOME"}
    home = settings.airflow_home.resolve()
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": str(settings.airflow.parallelism),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{HOST}:{port}/execution/",
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__BASE_URL": f"http://{HOST}:{port}/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker_log_port),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_log_port),
        # The Lamina page reads the same settings as the CLI that started it.
        "LAMINA_HOME": str(settings.home.resolve()),
    })
    return env


def _state_path(settings: Settings) -> Path:
    return settings.airflow_home / STATE_FILE


def read_state(settings: Settings) -> AirflowState | None:
    path = _state_path(settings)
    try:
        return AirflowState(**json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def _live_processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process that is not a
    zombie (a zombie is dead; it only waits for a parent to reap it)."""
    out: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parens.
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] in ("Z", "X"):
            continue
        out[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return out


def group_members(pgid: int, root: int | None = None) -> set[int]:
    """Live processes of process group ``pgid``, and every live descendant
    of ``root`` (one that started its own group or session counts too)."""
    procs = _live_processes()
    members = {pid for pid, (_, group) in procs.items() if group == pgid}
    if root is not None:
        frontier = {root} | members
        while frontier:
            children = {pid for pid, (parent, _) in procs.items()
                        if parent in frontier and pid not in members}
            members |= children
            frontier = children
    return members


def health(url: str, timeout_s: float = 3.0) -> dict[str, Any] | None:
    """Airflow's health report (metadatabase, scheduler, ... statuses), or
    None if it does not answer 200."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + HEALTH_PATH, timeout=timeout_s) as resp:
            if resp.status != 200:
                return None
            return dict(json.loads(resp.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass(frozen=True)
class AirflowUp:
    state: AirflowState
    already_running: bool
    health: dict[str, Any] | None


def airflow_up(settings: Settings) -> AirflowUp:
    """Start Airflow standalone (or find the one running) and wait until its
    health endpoint answers 200. InfraError if it exits or does not get
    healthy within ``[airflow] start_timeout_s`` (it is stopped then)."""
    current = read_state(settings)
    if current is not None and group_members(current.pgid, current.pid):
        return AirflowUp(current, True, health(current.url))

    home = settings.airflow_home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    (home / "plugins").mkdir(exist_ok=True)
    dags = dags_folder(settings)
    dags.mkdir(parents=True, exist_ok=True)
    port = settings.airflow.port
    worker_log_port, trigger_log_port, free = _free_ports(3)
    if port == 0:
        port = free
    else:
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                raise InfraError(
                    f"port {port} on {HOST} is in use: stop what listens there, or set "
                    "[airflow] port = 0 (LAMINA_AIRFLOW_PORT=0) to pick a free one") from None
    env = airflow_environment(settings, port=port, worker_log_port=worker_log_port,
                              trigger_log_port=trigger_log_port, dags=dags)
    # standalone starts its components as `airflow ...` from PATH: make that
    # this interpreter's Airflow (a venv may have no `airflow` script).
    env["PATH"] = f"{_launcher(home)}{os.pathsep}{env.get('PATH', '')}"
    log_file = home / LOG_FILE
    url = f"http://{HOST}:{port}"
    # The log is appended to: only what this start writes says whether it
    # gave up (an earlier start's shutdown line must not end this one).
    log_start = log_file.stat().st_size if log_file.exists() else 0
    with open(log_file, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "airflow", "standalone"], cwd=home,
                                env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    state = AirflowState(pid=proc.pid, pgid=proc.pid, port=port, url=url,
                         airflow_home=str(home), log_file=str(log_file),
                         password_file=str(home / PASSWORD_FILE), dags_folder=str(dags),
                         started_at=time.time())
    _state_path(settings).write_text(json.dumps(asdict(state), indent=2))
    log.info("airflow starting", pid=proc.pid, url=url, airflow_home=str(home))

    deadline = time.monotonic() + settings.airflow.start_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _state_path(settings).unlink(missing_ok=True)
            stop_group(state)
            raise InfraError(f"airflow standalone exited with code {proc.returncode} before it "
                             f"was healthy; the end of {log_file}:\n{_tail(log_file)}")
        report = health(url)
        if report is not None:
            return AirflowUp(state, False, report)
        if _gave_up(log_file, since=log_start):
            # The standalone parent stays alive after its components died.
            airflow_down(settings)
            raise InfraError(f"airflow standalone's components stopped before it was healthy; "
                             f"the end of {log_file}:\n{_tail(log_file)}")
        time.sleep(1.0)
    airflow_down(settings)
    raise InfraError(f"airflow was not healthy at {url}{HEALTH_PATH} after "
                     f"{settings.airflow.start_timeout_s:.0f} s (stopped it); raise [airflow] "
                     f"start_timeout_s on a busy machine, or read {log_file}")


def _launcher(home: Path) -> Path:
    """A folder holding an ``airflow`` script that runs this interpreter's
    ``python -m airflow``."""
    folder = home / "bin"
    folder.mkdir(exist_ok=True)
    script = folder / "airflow"
    text = f'#!/bin/sh\nexec "{sys.executable}" -m airflow "$@"\n'
    if not script.exists() or script.read_text() != text:
        script.write_text(text)
        script.chmod(0o755)
    return folder


def _gave_up(log_file: Path, *, since: int = 0) -> bool:
    """Whether standalone logged that it shuts its components down after
    byte offset ``since`` of its log."""
    try:
        with open(log_file, "rb") as log_text:
            log_text.seek(since)
            written = log_text.read().decode(errors="replace")
    except OSError:
        return False
    return "standalone | Shutting down components" in "\n".join(written.splitlines()[-40:])


def _signal_all(pgid: int, pids: set[int], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(pgid: int, root: int, timeout_s: float) -> set[int]:
    deadline = time.monotonic() + timeout_s
    left = group_members(pgid, root)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = group_members(pgid, root)
    return left


def stop_group(state: AirflowState, *, grace_s: float = 10.0) -> list[int]:
    """SIGINT the group, then SIGTERM, then SIGKILL what is left; returns
    the pids that were running when it started."""
    running = group_members(state.pgid, state.pid)
    if not running:
        return []
    # The descendants are known only while their parents live: collect them
    # now and signal them by pid too.
    known = set(running)
    for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGTERM, grace_s),
                      (signal.SIGKILL, 5.0)):
        left = group_members(state.pgid, state.pid) | {p for p in known if _alive(p)}
        if not left:
            break
        known |= left
        log.info("stopping airflow", signal=sig.name, processes=len(left))
        _signal_all(state.pgid, left, sig)
        left = _wait_gone(state.pgid, state.pid, wait)
        left |= {p for p in known if _alive(p)}
        if not left:
            break
    return sorted(running)


def _alive(pid: int) -> bool:
    return pid in _live_processes()


def airflow_down(settings: Settings) -> dict[str, Any]:
    """Stop the Airflow `up` started (nothing if none runs)."""
    state = read_state(settings)
    if state is None:
        return {"stopped": False, "reason": "no Airflow started by lamina under "
                                            f"{settings.airflow_home}"}
    stopped = stop_group(state)
    left = sorted(group_members(state.pgid, state.pid) | {p for p in stopped if _alive(p)})
    if left:
        raise InfraError(f"airflow processes {left} are still running after SIGKILL; "
                         "check them with `ps -o pid,stat,cmd -p ...`")
    _state_path(settings).unlink(missing_ok=True)
    return {"stopped": bool(stopped), "pids": stopped, "url": state.url}


def airflow_status(settings: Settings) -> dict[str, Any]:
    """Running or not, the address, and the health report."""
    state = read_state(settings)
    if state is None:
        return {"running": False, "airflow_home": str(settings.airflow_home.resolve())}
    members = group_members(state.pgid, state.pid)
    report = health(state.url) if members else None
    return {"running": bool(members), "url": state.url, "pid": state.pid,
            "processes": len(members), "healthy": report is not None, "health": report,
            "airflow_home": state.airflow_home, "password_file": state.password_file,
            "log_file": state.log_file, "dags_folder": state.dags_folder,
            "lamina_page": state.url + LAMINA_PAGE}
