"""The Lamina page from fixtures: the summary builders are pure functions of
what the stores hold, every section degrades to "not available: why", and
the HTML escapes what it shows. The request checks against a running
Airflow are in tests/integration/test_airflow_ui.py."""

from __future__ import annotations

import json

from lamina.config import load_settings
from lamina.orchestration import summary as s
from lamina.orchestration.page import render_page

VERSIONS = [
    {"version": 1, "metrics": {"roc_auc": 0.81}},
    {"version": 2, "metrics": {"roc_auc": 0.86}},
]
AUDIT = [
    {"action": "register", "version": 1, "previous": None, "reason": "registered", "time": "t0",
     "actor": "ci"},
    {"action": "promote", "version": 1, "previous": None, "reason": "gate passed: first model",
     "time": "t1", "actor": "ci"},
    {"action": "promote", "version": 2, "previous": 1, "reason": "gate passed: auc +0.05",
     "time": "t2", "actor": "ci"},
    {"action": "rollback", "version": 1, "previous": 2, "reason": "alerts <script>", "time": "t3",
     "actor": "ops"},
]
EVALUATIONS = {2: {"candidate": {"overall": {"roc_auc": 0.9, "n": 100}}, "champion_version": 1,
                   "champion": {"overall": {"roc_auc": 0.85, "n": 100}}}}


def test_promotion_history_is_newest_first_with_reasons_and_both_models_metrics():
    section = s.registry_section("fraud", 1, VERSIONS, AUDIT, EVALUATIONS)
    assert section["champion"] == 1 and section["champion_metrics"] == {"roc_auc": 0.81}
    moves = section["history"]
    assert [m["action"] for m in moves] == ["rollback", "promote", "promote"]  # no "register"
    promote2 = moves[1]
    assert promote2["reason"] == "gate passed: auc +0.05"
    assert promote2["metrics"] == {"roc_auc": 0.86}
    assert promote2["previous_metrics"] == {"roc_auc": 0.81}
    assert promote2["backtest"] == {"candidate": {"roc_auc": 0.9, "n": 100},
                                    "champion_version": 1,
                                    "champion": {"roc_auc": 0.85, "n": 100}}
    assert "backtest" not in moves[0]


def test_master_versions_carry_the_row_count_after_each_commit():
    section = s.master_section("/m", [
        {"version": 2, "timestamp_ms": 0, "operation": "WRITE", "rows_added": 30},
        {"version": 1, "timestamp_ms": 0, "operation": "WRITE", "rows_added": 70},
        {"version": 0, "timestamp_ms": 0, "operation": "CREATE TABLE", "rows_added": 0},
    ], rows=100, files=2)
    assert section["latest_version"] == 2
    assert [(v["version"], v["rows_total"]) for v in section["versions"]] == [
        (2, 100), (1, 70), (0, 0)]


def test_tile_store_shows_cutoff_and_version_or_that_nothing_is_published():
    section = s.tile_store_section("sqlite", {
        "card_views": {"batch_version": 7, "cutoff_ms": 1_767_225_600_000,
                       "horizon_ms": 1_767_398_400_000, "published_at_ms": 1_767_300_000_000,
                       "generation": 3},
        "other": None})
    assert section["groups"][0]["cutoff"] == "2026-01-01T00:00:00Z"
    assert section["groups"][0]["batch_version"] == 7
    assert section["groups"][1] == {"group": "other", "published": False}


def test_drift_features_are_most_drifted_first():
    report = {"alert": True, "reasons": ["ALERT: feature PSI"], "features": {
        "amount": {"psi": 0.05, "status": "checked", "drifted": False},
        "count_1h": {"psi": 0.4, "status": "checked", "drifted": True},
        "lifetime": {"psi": None, "status": "skipped", "drifted": False}}}
    section = s.drift_section(report, s.Path("/r/drift.json"))
    assert [f["feature"] for f in section["features"]] == ["count_1h", "amount", "lifetime"]
    assert section["alert"] is True


def test_prometheus_text_is_parsed_and_lag_and_dead_letters_are_kept():
    text = ("# HELP lamina_speed_lag_records lag\n# TYPE lamina_speed_lag_records gauge\n"
            'lamina_speed_lag_records{partition="0"} 12\n'
            "lamina_speed_dead_letters_total 3\nlamina_speed_scored_total 1e3\nbroken line x\n")
    samples = s.parse_prometheus(text)
    assert samples['lamina_speed_lag_records{partition="0"}'] == 12.0
    assert samples["lamina_speed_scored_total"] == 1000.0
    section = s.speed_section(samples, s.Path("/m.prom"), "events.dlq", 5, "")
    assert section["metrics"] == {'lamina_speed_lag_records{partition="0"}': 12.0,
                                  "lamina_speed_dead_letters_total": 3.0}
    assert section["dlq_messages"] == 5


def test_an_empty_home_gives_every_section_a_reason_and_the_page_still_renders(tmp_path):
    settings = load_settings(None, env={"LAMINA_HOME": str(tmp_path),
                                        "LAMINA_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    summary = s.collect_summary(settings)
    for name in ("master", "tile_store", "registry", "drift", "consistency"):
        assert summary[name]["available"] is False and summary[name]["reason"], name
    assert "no report yet" in summary["consistency"]["reason"]
    assert summary["speed"]["dlq_messages"] is None
    assert "not reachable" in summary["speed"]["dlq_reason"]
    json.dumps(summary)  # the API returns it as is
    page = render_page(summary)
    assert page.count("not available:") >= 6
    assert not (tmp_path / "tiles.db").exists()  # reading never creates a store
    assert not (tmp_path / "mlflow.db").exists()


def test_a_section_whose_reader_raises_says_why_instead_of_failing(tmp_path, monkeypatch):
    def broken(settings):
        raise OSError("disk on fire")

    monkeypatch.setitem(s.READERS, "drift", broken)  # type: ignore[index]
    settings = load_settings(None, env={"LAMINA_HOME": str(tmp_path)})
    summary = s.collect_summary(settings, ["drift"])
    assert summary["drift"] == {"available": False, "reason": "OSError: disk on fire"}


def test_the_page_shows_every_section_and_escapes_what_it_shows(tmp_path):
    consistency = {"written_at": "t", "events": 10, "features": {
        "amount_sum_1h": {"mismatch_rate": 0.1, "mismatches": 1,
                          "attributed": {"late_arrival": 1}}}}
    summary = {
        "home": "/h", "generated_at": "now",
        "master": s.master_section("/m", [{"version": 0, "timestamp_ms": 0,
                                           "operation": "WRITE", "rows_added": 5}], 5, 1),
        "tile_store": s.tile_store_section("sqlite", {"card_views": None}),
        "registry": s.registry_section("fraud", 1, VERSIONS, AUDIT, EVALUATIONS),
        "drift": s.drift_section(None, s.Path("/r/drift.json")),
        "consistency": s.consistency_section(consistency, s.Path("/r/c.json")),
        "speed": s.speed_section(None, s.Path("/m.prom"), "events.dlq", None, "no broker"),
    }
    page = render_page(summary, user="admin")
    assert "alerts &lt;script&gt;" in page and "<script>" not in page
    assert "gate passed: auc +0.05" in page
    assert "nothing published yet" in page
    assert "not available: no drift report yet" in page
    assert "amount_sum_1h" in page and "late_arrival=1" in page
    assert "unexplained" not in page  # a report without the field says nothing of it
    assert "not available: no broker" in page
    for section_id in ("master", "tile_store", "registry", "drift", "consistency", "speed"):
        assert f"id='{section_id}'" in page


def test_the_consistency_section_shows_the_unexplained_total() -> None:
    report = {"written_at": "t", "events": 4, "unexplained": 2, "since": "a", "until": "b",
              "features": {"amount": {"mismatch_rate": 0.5, "mismatches": 2,
                                      "attributed": {"unexplained": 2}}}}
    section = s.consistency_section(report, s.Path("/r/c.json"))
    assert (section["unexplained"], section["since"], section["until"]) == (2, "a", "b")
    from lamina.orchestration.page import render_consistency

    assert '<b class="alert">2 unexplained</b>' in render_consistency(section)
    assert "0 unexplained" in render_consistency({**section, "unexplained": 0})
