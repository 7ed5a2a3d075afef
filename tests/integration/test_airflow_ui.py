"""`lamina airflow up` for real, once for this module: health, the Lamina
page refusing anyone Airflow has not logged in, a browser (Debian's
chromium, headless, via Playwright) logging in and opening the page from
the nav, and `down` leaving no process behind.

Screenshots go to ``.lamina/test-artifacts/airflow-ui/`` (printed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lamina.config import load_settings
from lamina.orchestration import airflow_runner as runner

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / ".lamina" / "test-artifacts" / "airflow-ui"
CHROMIUM = "/usr/bin/chromium"


def lamina(home: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LAMINA_HOME": str(home), "LAMINA_AIRFLOW_START_TIMEOUT_S": "800"}
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


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("airflow-home")
    done = lamina(home, "airflow", "up")
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout)
    info["home"] = home
    info["stderr"] = done.stderr
    settings = load_settings(None, env={"LAMINA_HOME": str(home)})
    state = runner.read_state(settings)
    assert state is not None
    info["state"] = state
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
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: infra/bootstrap.sh installs Debian's chromium")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    password = json.loads(Path(airflow["password_file"]).read_text())["admin"]
    url = airflow["url"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(90_000)
            page.goto(url + "/")
            page.wait_for_selector("input[name=username]")
            page.fill("input[name=username]", "admin")
            page.fill("input[type=password]", password)
            page.screenshot(path=str(ARTIFACTS / "01-login.png"))
            page.click("button[type=submit]")
            page.wait_for_url(lambda u: "/auth/login" not in u)
            page.goto(url + "/dags")
            page.get_by_role("heading", name="Dags").first.wait_for()
            page.screenshot(path=str(ARTIFACTS / "02-dags.png"))
            page.get_by_role("button", name="Browse").first.click()
            page.get_by_role("menuitem", name="Lamina").first.click()
            page.wait_for_url(lambda u: u.rstrip("/").endswith("lamina"))
            frame = page.frame_locator("iframe").first
            frame.get_by_text("Champion and promotion history").wait_for()
            frame.get_by_text("Consistency report").wait_for()
            page.screenshot(path=str(ARTIFACTS / "03-lamina-page.png"), full_page=True)
        finally:
            browser.close()
    print(f"screenshots in {ARTIFACTS}")


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
