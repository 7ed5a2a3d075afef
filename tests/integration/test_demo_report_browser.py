"""The demo's report as a reader sees it: opened from disk in a real
headless Chromium, every plot drawn, a screenshot kept."""

from __future__ import annotations

import pytest

from lamina.demo_report import render_report
from tests.unit.test_demo_report import sample_data

pytestmark = pytest.mark.integration


def test_the_report_renders_every_plot_in_a_real_browser(tmp_path, browser, artifact_dir):
    report = render_report(sample_data(), tmp_path / "report.html")
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(report.as_uri())
        assert page.title() == "Lamina demo <seed 42>"
        for ident in ("scores", "auc", "lag", "score-latency", "lookup-latency"):
            plot = page.locator(f"section#{ident} svg")
            assert plot.count() == 1, ident
            box = plot.bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 100, (ident, box)
        page.screenshot(path=str(artifact_dir / "report.png"), full_page=True)
    finally:
        page.close()
    assert errors == []
    assert (artifact_dir / "report.png").stat().st_size > 10_000
