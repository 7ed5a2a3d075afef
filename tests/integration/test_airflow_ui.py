"""`lamina airflow up` for real, once for this module: health, the Lamina
page refusing anyone Airflow has not logged in, a browser (Debian's
chromium, headless, via Playwright) logging in and opening the page from
the nav, the retraining loop driven from the browser (trigger
``lamina_retraining`` from its trigger form, the run succeeds, the Lamina
page names the champion it promoted and why), and `down` leaving no
process behind.

The retraining run is also this suite's end-to-end run of the retraining
DAG (tests/integration/test_dags_end_to_end.py runs the views DAGs with
``dag.test()``; a second retraining there trained the same small model a
second time): its tasks' results (Airflow's XComs), the champion asset's
event, and each task function run again for the same run giving the same
result.

The Lamina home `up` uses holds a small landed master dataset (imported
from generated files before `up`: no Kafka, which the retraining tasks do
not read). Screenshots go to ``.lamina/test-artifacts/airflow-ui/``
(printed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lamina.config import load_settings
from lamina.orchestration import airflow_runner as runner
from tests.retraining_helpers import RETRAIN_CONF

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / ".lamina" / "test-artifacts" / "airflow-ui"
CHROMIUM = "/usr/bin/chromium"
RETRAINING = "lamina_retraining"
#: The history of tests/retraining_helpers: 8 days from 2026-01-01, ~4k
#: transactions, a tenth of the cards compromised once (enough fraud in a
#: 2-day backtest for the gate of RETRAIN_CONF, the run typed into the
#: trigger form).
HISTORY = {"seed": 11, "cards": 400, "merchants": 100, "transactions": 4_000,
           "start": 1_767_225_600_000, "days": 8.0, "fraud_card_rate": 0.12,
           "drift_at": None}
#: Generous: the machine is shared (no timing is asserted).
RUN_DEADLINE_S = 1500


def lamina(home: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LAMINA_HOME": str(home), "LAMINA_AIRFLOW_START_TIMEOUT_S": "800",
           # Inherited by Airflow's task processes and their spark-submit.
           "LAMINA_SPARK_CONF": json.dumps({"spark.ui.enabled": "false"})}
    return subprocess.run([sys.executable, "-m", "lamina.cli", *args], env=env, cwd=home,
                          capture_output=True, text=True, timeout=timeout)


def request(url: str, *, headers: dict[str, str] | None = None, data: Any = None
            ) -> tuple[int, dict[str, str], bytes]:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={
        **({"Content-Type": "application/json"} if body else {}), **(headers or {})})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def land_history(home: Path) -> int:
    """Generate HISTORY to files and import it into the master dataset of
    the Lamina home ``home`` (the importer validates like the lander);
    returns the rows landed."""
    from lamina.generator import GeneratorConfig, write_files
    from lamina.master.importer import import_files
    from lamina.runners import event_validator, master_dataset

    settings = load_settings(None, env={"LAMINA_HOME": str(home)})
    files = write_files(GeneratorConfig(**HISTORY), home / "generated")
    results = import_files(master_dataset(settings), files, event_validator(settings),
                           settings.home / "deadletters", progress=False)
    return sum(r.stats.landed for r in results)


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("airflow-home")
    # Before `up`: every run's logical date is after the snapshot then.
    assert land_history(home) > 0
    done = lamina(home, "airflow", "up")
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout)
    info["home"] = home
    info["stderr"] = done.stderr
    settings = load_settings(None, env={"LAMINA_HOME": str(home)})
    state = runner.read_state(settings)
    assert state is not None
    info["state"] = state
    info["settings"] = settings
    try:
        yield info
    finally:
        lamina(home, "airflow", "down")
        left = runner.group_members(state.pgid, state.pid)
        if left:  # never leave Airflow running for the next module
            for pid in left:
                os.kill(pid, 9)


def token(airflow: dict[str, Any]) -> str:
    password = json.loads(Path(airflow["password_file"]).read_text())["admin"]
    status, _, body = request(airflow["url"] + "/auth/token",
                              data={"username": "admin", "password": password})
    assert status in (200, 201), body
    return str(json.loads(body)["access_token"])


def api(airflow: dict[str, Any], bearer: str, path: str, *, method: str = "GET",
        data: Any = None) -> Any:
    """One call to Airflow's REST API as the logged-in admin; its JSON.

    A 5xx is tried again, up to 5 times, 2 s apart, as an operator would:
    Airflow's API server (on its SQLite database) answered a PATCH of a
    run with 500 once in CI, its reason not kept (every call here is
    idempotent). Each server error's body is printed; the last is raised."""
    body = None if data is None else json.dumps(data).encode()
    for attempt in range(5):
        req = urllib.request.Request(airflow["url"] + path, data=body, method=method, headers={
            "Authorization": f"Bearer {bearer}", "Accept": "application/json",
            **({"Content-Type": "application/json"} if body else {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                raise
            print(f"{method} {path}: HTTP {exc.code} (try {attempt + 1} of 5): "
                  f"{exc.read()[:2000]!r}")
            if attempt == 4:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


def run_path(dag_id: str, run_id: str) -> str:
    return f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"


def xcom(airflow: dict[str, Any], bearer: str, dag_id: str, run_id: str, task_id: str) -> Any:
    """The return value a task of a run pushed (Airflow's REST API)."""
    got = api(airflow, bearer, run_path(dag_id, run_id)
              + f"/taskInstances/{task_id}/xcomEntries/return_value")["value"]
    return json.loads(got) if isinstance(got, str) else got


def task_logs(airflow: dict[str, Any], bearer: str, dag_id: str, run_id: str) -> str:
    """Every task of the run that did not succeed, with its log (each try),
    fetched through the REST API: what a CI failure needs to be read."""
    out = []
    tasks = api(airflow, bearer, run_path(dag_id, run_id) + "/taskInstances")
    for ti in tasks["task_instances"]:
        out.append(f"--- {ti['task_id']}: {ti['state']} (try {ti['try_number']})")
        if ti["state"] == "success":
            continue
        for attempt in range(1, int(ti["try_number"] or 0) + 1):
            try:
                got = api(airflow, bearer, run_path(dag_id, run_id)
                          + f"/taskInstances/{ti['task_id']}/logs/{attempt}?full_content=true")
            except urllib.error.HTTPError as err:
                out.append(f"(log of try {attempt} not readable: {err})")
                continue
            lines = got.get("content") if isinstance(got, dict) else got
            for line in lines if isinstance(lines, list) else [lines]:
                out.append(line.get("event", json.dumps(line)) if isinstance(line, dict)
                           else str(line))
    return "\n".join(out)


def log_in(page: Any, airflow: dict[str, Any], screenshot: str | None = None) -> None:
    password = json.loads(Path(airflow["password_file"]).read_text())["admin"]
    page.goto(airflow["url"] + "/")
    page.wait_for_selector("input[name=username]")
    page.fill("input[name=username]", "admin")
    page.fill("input[type=password]", password)
    if screenshot:
        page.screenshot(path=str(ARTIFACTS / screenshot))
    page.click("button[type=submit]")
    page.wait_for_url(lambda u: "/auth/login" not in u)


@contextmanager
def logged_in_page(airflow: dict[str, Any], screenshot: str | None = None, *,
                   failure_screenshot: str | None = None) -> Iterator[Any]:
    """A page of Debian's chromium (headless, via Playwright) logged in to
    Airflow as admin (the login form saved as ``screenshot`` under
    ARTIFACTS if given); if the login or the block raises, the page is saved
    as ``failure_screenshot`` (if given) and the error goes on. The browser
    is closed when the block ends. Fails the test if chromium is missing."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: infra/bootstrap.sh installs Debian's chromium")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(90_000)
            try:
                log_in(page, airflow, screenshot)
                yield page
            except Exception:
                if failure_screenshot:
                    page.screenshot(path=str(ARTIFACTS / failure_screenshot), full_page=True)
                raise
        finally:
            browser.close()


def open_lamina_page_from_the_nav(page: Any) -> Any:
    page.get_by_role("button", name="Browse").first.click()
    page.get_by_role("menuitem", name="Lamina").first.click()
    page.wait_for_url(lambda u: u.rstrip("/").endswith("lamina"))
    return page.frame_locator("iframe").first


def test_up_is_healthy_prints_where_the_password_is_and_a_second_up_starts_nothing(airflow):
    assert airflow["healthy"] and not airflow["already_running"]
    assert airflow["url"].startswith("http://127.0.0.1:")
    assert Path(airflow["password_file"]).exists()
    assert airflow["password_file"] in airflow["stderr"]
    status, _, _ = request(airflow["url"] + runner.HEALTH_PATH)
    assert status == 200
    again = lamina(airflow["home"], "airflow", "up")
    assert again.returncode == 0 and json.loads(again.stdout)["already_running"] is True
    assert "already running" in again.stderr
    assert json.loads(again.stdout)["pid"] == airflow["pid"]
    status_cmd = lamina(airflow["home"], "airflow", "status")
    reported = json.loads(status_cmd.stdout)
    assert status_cmd.returncode == 0 and reported["running"] and reported["healthy"]


def test_the_lamina_page_refuses_anonymous_and_forged_tokens_and_accepts_a_real_login(airflow):
    url = airflow["url"]
    status, _, _ = request(url + "/lamina/api/summary")
    assert status == 401
    status, headers, _ = request(url + "/lamina/", headers={"Accept": "text/html"})
    assert status == 302 and "/auth/login" in headers["location"]
    real = token(airflow)
    header, payload, signature = real.split(".")
    forged_signature = f"{header}.{payload}.{signature[:-4]}AAAA"
    forged_claims = ".".join([header, payload[:-2] + "xx", signature])
    for forged in (forged_signature, forged_claims, "not-a-jwt"):
        status, _, _ = request(url + "/lamina/api/summary",
                               headers={"Authorization": f"Bearer {forged}"})
        assert status in (401, 403), forged
        status, _, _ = request(url + "/lamina/", headers={"Cookie": f"_token={forged}"})
        assert status in (401, 403), forged
    status, _, body = request(url + "/lamina/api/summary",
                              headers={"Authorization": f"Bearer {real}"})
    assert status == 200
    summary = json.loads(body)
    assert summary["user"] == "admin"
    assert summary["consistency"]["available"] is False
    assert "no report yet" in summary["consistency"]["reason"]
    status, _, body = request(url + "/lamina/", headers={"Cookie": f"_token={real}"})
    assert status == 200 and b"Champion and promotion history" in body


def test_a_browser_logs_in_sees_the_dags_and_opens_the_lamina_page_from_the_nav(airflow):
    url = airflow["url"]
    with logged_in_page(airflow, "01-login.png") as page:
        page.goto(url + "/dags")
        page.get_by_role("heading", name="Dags").first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "02-dags.png"))
        frame = open_lamina_page_from_the_nav(page)
        frame.get_by_text("Champion and promotion history").wait_for()
        frame.get_by_text("Consistency report").wait_for()
        page.screenshot(path=str(ARTIFACTS / "03-lamina-page.png"), full_page=True)
    print(f"screenshots in {ARTIFACTS}")


@pytest.mark.timeout(RUN_DEADLINE_S + 600)
def test_a_browser_triggers_retraining_sees_the_run_succeed_and_the_new_champion_on_the_page(
        airflow, monkeypatch):
    from lamina.batch.commands import open_registry

    registry = open_registry(airflow["settings"].registry_uri)
    assert registry.champion() is None
    bearer = token(airflow)
    url = airflow["url"]
    with logged_in_page(airflow, failure_screenshot="retraining-failure.png") as page:
        page.goto(url + "/dags")
        page.get_by_role("heading", name="Dags").first.wait_for()
        page.get_by_role("link", name=RETRAINING).first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "04-dags-before-the-run.png"))
        page.goto(url + f"/dags/{RETRAINING}")
        page.get_by_text("build_training_sets").first.wait_for()
        page.get_by_role("button", name="Trigger").first.click()
        form = page.get_by_role("dialog")
        form.get_by_text(f"Trigger Dag - {RETRAINING}").wait_for()
        form.get_by_text("Run Parameters").wait_for()
        submit = form.get_by_role("button", name="Trigger")
        # The DAG's own defaults make a valid form (as_of may be empty).
        assert submit.is_enabled()
        # The operator's run: the configuration JSON under Advanced
        # Options (a Monaco editor), which fills the parameters' fields.
        form.get_by_role("button", name="Advanced Options").click()
        editor = form.locator("[data-mode-id=json]").last
        editor.scroll_into_view_if_needed()
        editor.click()
        page.keyboard.press("Control+A")
        page.keyboard.press("Delete")
        page.keyboard.insert_text(json.dumps(RETRAIN_CONF))
        form.get_by_text("Run Parameters").click()  # leaves the editor: it syncs
        as_of = form.locator("input[name=element_as_of]")
        deadline = time.monotonic() + 60
        while as_of.input_value() != RETRAIN_CONF["as_of"] and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        assert as_of.input_value() == RETRAIN_CONF["as_of"]
        page.screenshot(path=str(ARTIFACTS / "05-trigger-form.png"), full_page=True)
        assert submit.is_enabled()
        submit.click()
        form.wait_for(state="hidden")
        # The DAG's page refreshes its runs and tasks every few seconds:
        # left open through the run, it keeps chromium and Airflow's API
        # server busy on a core the run's Spark and TensorFlow need. The
        # run is watched through the REST API; the page comes back after.
        page.goto("about:blank")

        # The manual run this trigger made (unpausing also makes
        # Airflow schedule the latest 04:00 slot, catchup=False; with
        # the defaults it cannot succeed on this history and, with
        # max_active_runs=1, it would hold the manual run back through
        # its retries: it is failed here, as an operator would).
        run_id, state, moment = None, None, None
        deadline = time.monotonic() + RUN_DEADLINE_S
        while time.monotonic() < deadline:
            runs = api(airflow, bearer, f"/api/v2/dags/{RETRAINING}/dagRuns")["dag_runs"]
            for run in runs:
                if run["run_type"] == "scheduled" and run["state"] in ("queued", "running"):
                    api(airflow, bearer, run_path(RETRAINING, run["dag_run_id"]),
                        method="PATCH", data={"state": "failed"})
            manual = [r for r in runs if r["run_type"] == "manual"]
            if manual:
                assert len(manual) == 1, manual
                run_id, state = manual[0]["dag_run_id"], manual[0]["state"]
                # What its tasks read as the run's moment (dag_support.run_moment).
                moment = manual[0]["logical_date"] or manual[0]["run_after"]
                assert manual[0]["conf"]["as_of"] == RETRAIN_CONF["as_of"]
                if state in ("success", "failed"):
                    break
            time.sleep(3)
        assert run_id is not None, "the trigger form made no manual run"
        if state != "success":
            print(task_logs(airflow, bearer, RETRAINING, run_id))
        assert state == "success", f"run {run_id} is {state}: the task logs are above"

        page.goto(url + f"/dags/{RETRAINING}/runs/{urllib.parse.quote(run_id, safe='')}")
        page.get_by_text("success").first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "06-run-succeeded.png"), full_page=True)

        # The champion that run promoted, by the registry and the run: the
        # training sets, the model trained on Spark, the gate's decision.
        champion = registry.champion()
        assert champion is not None
        sets = xcom(airflow, bearer, RETRAINING, run_id, "build_training_sets")
        trained = xcom(airflow, bearer, RETRAINING, run_id, "train")
        decision = xcom(airflow, bearer, RETRAINING, run_id, "evaluate_and_gate")
        assert sets["sets"]["train"]["rows"] > 0 and sets["sets"]["backtest"]["rows"] > 0
        assert trained["workers"] == 1 and trained["version"] is not None
        assert decision["candidate"] == trained["version"]
        assert decision["champion_before"] is None
        assert decision["decision"] == "promoted", decision["reasons"]
        assert decision["champion_after"] == champion == trained["version"]
        assert decision["candidate_metrics"]["roc_auc"] >= 0.6
        [promotion] = [e for e in registry.audit_log(champion) if e.action == "promote"]
        assert promotion.reason.strip()
        # The champion asset's event carries the decision.
        [event] = api(airflow, bearer, f"/api/v2/assets/events?source_dag_id={RETRAINING}"
                      f"&source_run_id={urllib.parse.quote(run_id, safe='')}")["asset_events"]
        assert event["uri"] == "lamina://models/champion"
        assert event["extra"]["decision"] == "promoted"
        assert event["extra"]["champion"] == trained["version"]
        assert event["extra"]["candidate_metrics"] == decision["candidate_metrics"]

        frame = open_lamina_page_from_the_nav(page)
        section = frame.locator("#registry")
        section.get_by_text("Champion and promotion history").wait_for()
        text = " ".join(section.inner_text().split())
        assert f"champion version {champion} " in text, text
        history = section.locator("tr", has_text="promote")
        assert history.count() == 1
        row = [" ".join(c.split()) for c in history.first.locator("td").all_inner_texts()]
        assert row[1:3] == ["promote", str(champion)], row
        assert " ".join(promotion.reason.split()) in row, row
        page.screenshot(path=str(ARTIFACTS / "07-lamina-new-champion.png"), full_page=True)
    print(f"screenshots in {ARTIFACTS}")

    # Clearing each task runs its function again for the same run (the
    # environment Airflow's tasks have): same results, and the gate reads
    # back the decision it recorded (the candidate is the champion now;
    # nothing is decided twice).
    monkeypatch.setenv("LAMINA_HOME", str(airflow["settings"].home.resolve()))
    monkeypatch.setenv("LAMINA_SPARK_CONF", json.dumps({"spark.ui.enabled": "false"}))
    from lamina.orchestration import tasks

    assert tasks.build_training_sets(
        None, logical_date=moment, as_of=RETRAIN_CONF["as_of"],
        train_days=RETRAIN_CONF["train_days"], backtest_days=RETRAIN_CONF["backtest_days"],
        label_maturity_days=RETRAIN_CONF["label_maturity_days"]) == sets
    assert tasks.train_model(None, training_set=sets["sets"]["train"]["path"],
                             snapshot=sets["snapshot"], params=RETRAIN_CONF["train_params"],
                             seed=RETRAIN_CONF["seed"], workers=1) == trained
    assert tasks.evaluate_and_gate(None, candidate=trained["version"],
                                   backtest=sets["sets"]["backtest"]["path"],
                                   thresholds=RETRAIN_CONF["gate_thresholds"]) == decision
    assert [e.action for e in registry.audit_log(champion)].count("promote") == 1


def test_down_stops_every_process_and_status_says_not_running(airflow):
    state = airflow["state"]
    running = runner.group_members(state.pgid, state.pid)
    assert state.pid in running and len(running) > 1
    done = lamina(airflow["home"], "airflow", "down")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["stopped"] is True
    assert not runner.group_members(state.pgid, state.pid)
    assert not [pid for pid in running if runner._alive(pid)]
    status = lamina(airflow["home"], "airflow", "status")
    assert status.returncode == 1 and json.loads(status.stdout)["running"] is False
