"""A headless browser for the tests that look at a page as a user would.

Debian's chromium (``infra/bootstrap.sh`` installs it) driven by
Playwright's sync API; Playwright downloads no browser of its own
(ARCHITECTURE.md, "Airflow 3"). Screenshots go to ``artifact_dir``, a
folder per test under ``.lamina/test-artifacts/`` that outlives the run
(CI keeps it), its path printed in the terminal summary.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / ".lamina" / "test-artifacts"
_kept: list[Path] = []


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium (Playwright ``Browser``), one per session."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: run infra/bootstrap.sh as root, or "
                    "apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: Chromium refuses to start its sandbox as root.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def artifact_dir(request: pytest.FixtureRequest) -> Path:
    """An empty folder kept after the run for this test's screenshots."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-150:]
    folder = ARTIFACTS / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    _kept.append(folder)
    return folder


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _kept:
        terminalreporter.write_line(f"browser screenshots kept under {ARTIFACTS}")
