"""The demo's HTML report: a pure function of what the demo measured."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lamina.demo_report import ReportData, percentile, render_report

DAY = 86_400_000


def sample_data() -> ReportData:
    rng = np.random.default_rng(7)
    return ReportData(
        title="Lamina demo <seed 42>",
        summary={"champion": "version 2", "events scored": "12,345"},
        steps=[("kafka", 2.5), ("batch views", 40.0)],
        scores={"v1": rng.beta(1, 8, 500).tolist(), "v2": rng.beta(1, 9, 300).tolist()},
        auc=[(10 * DAY, 0.91, "v1"), (11 * DAY, 0.74, "v1"), (12 * DAY, 0.89, "v2")],
        marks={"drift": int(10.5 * DAY), "swap to v2": int(11.5 * DAY)},
        lag=[(0.0, 5000), (1.0, 1200), (2.0, 30)],
        score_latency_ms=rng.gamma(2, 5, 1000).tolist(),
        lookup_latency_ms=[0.0, 0.4, 0.5, 2.0],
    )


def test_the_report_is_one_page_with_every_plot_inline(tmp_path):
    out = render_report(sample_data(), tmp_path / "sub" / "report.html")
    page = out.read_text()
    assert out == tmp_path / "sub" / "report.html"
    assert list(tmp_path.rglob("*")) == [tmp_path / "sub", out]  # nothing beside it
    for ident in ("scores", "auc", "lag", "score-latency", "lookup-latency"):
        section = re.search(rf'<section id="{ident}">(.*?)</section>', page, re.S)
        assert section is not None, ident
        assert "<svg" in section.group(1), ident
    assert "<?xml" not in page  # inline SVG, not documents pasted in
    assert "Lamina demo &lt;seed 42&gt;" in page  # text is escaped
    assert "swap to v2" in page and "version 2" in page and "40.0 s" in page


def test_a_panel_with_no_data_says_so_instead_of_drawing_an_empty_axis(tmp_path):
    page = render_report(ReportData(title="empty"), tmp_path / "r.html").read_text()
    assert "<svg" not in page
    for reason in ("no scores were recorded", "no window had both fraud and legitimate",
                   "no lag was sampled", "no latency was measured", "nothing recorded"):
        assert reason in page


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200), st.floats(0, 100))
def test_percentile_is_the_nearest_rank(values, q):
    expected = float(np.percentile(np.array(values), q, method="inverted_cdf"))
    assert percentile(values, q) == expected


def test_percentile_of_nothing_is_none_and_q_is_checked():
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match="101"):
        percentile([1.0], 101)
