"""The drift report on synthetic arrays: warm-up, thresholds, the three
signals and the alert rule (no JVM, no TensorFlow)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.batch.drift import (
    PSI_ALERT,
    DriftReference,
    DriftThresholds,
    FeatureBins,
    FeatureReference,
    FeatureWindow,
    auc_standard_error,
    build_reference,
    check_drift,
    drifted_features,
    feature_windows,
    profile_to_dict,
    psi_report,
    reference_profile,
)
from lamina.errors import ConfigError
from lamina.schemas.card_views import (
    CARD_FRAUD,
    CARD_VIEWS,
    DERIVED_FEATURES,
    FEATURES,
    REQUEST_FEATURES,
)
from lamina.schemas.view_definitions import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    WINDOWS,
    Aggregate,
    GroupBy,
    Window,
    window_range,
)

S = 1_767_225_600_000  # 2026-01-01T00:00:00Z
W1D = FeatureWindow("windowed", ((DAY_MS, HOUR_MS),))
W30D = FeatureWindow("windowed", ((30 * DAY_MS, DAY_MS),))
REQUEST = FeatureWindow("request")
SYNTHETIC = {"amount": REQUEST, "count_1d": W1D, "count_30d": W30D}


def _stream(rng: np.random.Generator, start: int, end: int, n: int, *, data_start: int,
            rate: float = 3.0, amount_shift: float = 0.0) -> pd.DataFrame:
    """Rows at uniform times in [start, end): ``count_W`` is a Poisson count
    of a card's transactions over the last W, truncated to the history
    available since ``data_start`` (what a real count does while its window
    fills in)."""
    t = np.sort(rng.integers(start, end, n))
    age = (t - data_start).astype(np.float64)
    return pd.DataFrame({
        "event_time": t,
        "amount": rng.lognormal(3.0 + amount_shift, 1.0, n),
        "count_1d": rng.poisson(rate * np.minimum(DAY_MS, age) / DAY_MS),
        "count_30d": rng.poisson(rate * np.minimum(30 * DAY_MS, age) / DAY_MS),
    })


def _reference(rng: np.random.Generator) -> DriftReference:
    """Training data: 45 days from the very start of the data (so its first
    30 days of 30-day counts are truncated)."""
    frame = _stream(rng, S, S + 45 * DAY_MS, 30_000, data_start=S)
    return build_reference(frame, list(SYNTHETIC), windows=SYNTHETIC)


# --- warm-up --------------------------------------------------------------------


def test_a_window_still_filling_in_is_warming_up_not_drift() -> None:
    rng = np.random.default_rng(0)
    reference = _reference(rng)
    # A fresh stream: its data starts at R, so its 30-day counts fill in
    # for 30 days. The same process otherwise.
    r = S + 50 * DAY_MS
    recent = _stream(rng, r, r + 10 * DAY_MS, 6_000, data_start=r)
    report = check_drift(reference, recent, span=(r, r + 10 * DAY_MS))

    assert report.alert is False, report.reasons
    filling = report.features["count_30d"]
    assert (filling.status, filling.until_ms, filling.psi) == ("warming_up", r + 30 * DAY_MS,
                                                              None)
    assert report.features["count_1d"].status == "checked"
    assert report.features["count_1d"].rows == int((recent["event_time"] >= r + DAY_MS).sum())
    assert report.features["amount"].rows == len(recent)
    assert not report.drifted_features()
    assert any("1 warming up (windows up to 30d; all covered from 2026-03-22T00:00)" in line
               for line in report.reasons), report.reasons
    # What the plain PSI said about the same data (the defect): the filling
    # window, and the 1-day one's first day, look like drift.
    plain = psi_report(pd.DataFrame(_stream(np.random.default_rng(1), S + 30 * DAY_MS,
                                            S + 45 * DAY_MS, 10_000, data_start=S)),
                       recent, list(SYNTHETIC))
    assert "count_30d" in drifted_features(plain, PSI_ALERT)


def test_a_real_shift_in_a_covered_window_is_flagged_while_a_filling_one_waits() -> None:
    rng = np.random.default_rng(6)
    reference = _reference(rng)
    r = S + 50 * DAY_MS
    # Twice the transaction rate and dearer purchases, in a fresh stream.
    recent = _stream(rng, r, r + 10 * DAY_MS, 6_000, data_start=r, rate=6.0, amount_shift=0.5)
    report = check_drift(reference, recent, span=(r, r + 10 * DAY_MS))
    assert report.alert is True
    assert report.drifted_features() == ["count_1d", "amount"]
    assert report.features["count_30d"].status == "warming_up"
    assert report.reasons[0].startswith("ALERT: feature drift: 2 of 2 checked features")


def test_the_reference_keeps_only_rows_whose_windows_its_span_covers() -> None:
    rng = np.random.default_rng(2)
    frame = _stream(rng, S, S + 45 * DAY_MS, 9_000, data_start=S)
    reference = build_reference(frame, list(SYNTHETIC), windows=SYNTHETIC)
    t = frame["event_time"]
    assert reference.span == (int(t.min()), int(t.max()) + 1)
    # Coverage starts at the first row; windows are covered from the next
    # hop boundary plus the window.
    first = reference.span[0]
    day_aligned = -(-first // DAY_MS) * DAY_MS
    hour_aligned = -(-first // HOUR_MS) * HOUR_MS
    assert reference.features["count_30d"].rows == int((t >= day_aligned + 30 * DAY_MS).sum())
    assert reference.features["count_1d"].rows == int((t >= hour_aligned + DAY_MS).sum())
    assert reference.features["amount"].rows == len(frame)
    # A training window shorter than a feature's window: no reference for it.
    short = build_reference(frame[t < S + 20 * DAY_MS], list(SYNTHETIC), windows=SYNTHETIC)
    assert (short.features["count_30d"].bins, short.features["count_30d"].rows) == (None, 0)
    report = check_drift(short, _stream(rng, S + 60 * DAY_MS, S + 100 * DAY_MS, 4_000,
                                        data_start=S))
    assert report.features["count_30d"].status == "no_reference"
    # With the history start given, every row whose window it covers counts.
    known = build_reference(frame, list(SYNTHETIC), windows=SYNTHETIC, history_start_ms=S)
    assert known.features["count_30d"].rows == int((t >= S + 30 * DAY_MS).sum())


def test_a_covered_window_is_checked_from_the_rows_it_covers_and_is_stable() -> None:
    rng = np.random.default_rng(3)
    reference = _reference(rng)
    r = S + 50 * DAY_MS
    recent = _stream(rng, r, r + 40 * DAY_MS, 8_000, data_start=r)
    report = check_drift(reference, recent)
    settled = report.features["count_30d"]
    assert settled.status == "checked"
    assert settled.until_ms == -(-int(recent["event_time"].min()) // DAY_MS) * DAY_MS \
        + 30 * DAY_MS
    assert settled.rows == int((recent["event_time"] >= settled.until_ms).sum())
    assert settled.psi is not None and settled.psi < 0.05
    assert report.alert is False, report.reasons


def test_a_feature_whose_history_is_known_is_checked_over_the_whole_span() -> None:
    rng = np.random.default_rng(4)
    reference = _reference(rng)
    r = S + 50 * DAY_MS
    recent = _stream(rng, r, r + 5 * DAY_MS, 5_000, data_start=S)  # full history behind it
    alone = check_drift(reference, recent, span=(r, r + 5 * DAY_MS))
    assert alone.features["count_30d"].status == "warming_up"
    known = check_drift(reference, recent, span=(r, r + 5 * DAY_MS), history_start_ms=S)
    assert known.features["count_30d"].status == "checked"
    assert known.features["count_30d"].rows == len(recent)
    assert known.alert is False, known.reasons
    with pytest.raises(ConfigError, match="history_start_ms .* is after the data's span start"):
        check_drift(reference, recent, span=(r, r + 5 * DAY_MS), history_start_ms=r + 1)


@settings(max_examples=300, deadline=None)
@given(window=st.sampled_from([w for w in WINDOWS.values() if not w.is_lifetime]),
       coverage=st.integers(S - 40 * DAY_MS, S + 40 * DAY_MS),
       offset=st.integers(-2 * DAY_MS, 40 * DAY_MS))
def test_eligible_from_is_exactly_where_the_window_starts_inside_the_coverage(
        window: Any, coverage: int, offset: int) -> None:
    assert window.length_ms is not None
    feature = FeatureWindow("windowed", ((window.length_ms, window.hop_ms),))
    first = feature.eligible_from(coverage)
    assert first is not None
    t = coverage + offset
    start, _ = window_range(t, window)
    assert start is not None
    assert (t >= first) == (start >= coverage)
    assert window_range(first, window)[0] == -(-coverage // window.hop_ms) * window.hop_ms


def test_a_lifetime_feature_is_reported_but_never_counted() -> None:
    rng = np.random.default_rng(5)
    lifetime = FeatureWindow("lifetime", ((None, DAY_MS),))
    assert lifetime.eligible_from(S) is None
    frame = pd.DataFrame({"event_time": np.arange(5_000) * MINUTE_MS + S,
                          "gap": rng.exponential(1.0, 5_000)})
    reference = build_reference(frame, ["gap"], windows={"gap": lifetime})
    moved = frame.assign(gap=frame["gap"] * 10, event_time=frame["event_time"] + 60 * DAY_MS)
    report = check_drift(reference, moved)
    gap = report.features["gap"]
    assert gap.status == "lifetime" and gap.psi is not None and gap.psi > 1.0
    assert gap.drifted is False and report.alert is False
    assert report.checked_features() == []


# --- the feature -> window mapping comes from the view definitions --------------


def test_every_view_feature_has_its_own_window_from_the_definitions() -> None:
    names = CARD_VIEWS.feature_names()
    windows = feature_windows(names)
    for aggregate in CARD_VIEWS.aggregates:
        for window in aggregate.windows:
            found = windows[aggregate.feature_name(window)]
            assert found.windows == ((window.length_ms, window.hop_ms),)
            assert found.kind == ("lifetime" if window.is_lifetime else "windowed")


def test_model_features_get_the_windows_of_the_views_they_read() -> None:
    windows = feature_windows(FEATURES)
    views = set(CARD_VIEWS.feature_names())
    for name in FEATURES:
        if name in views:
            assert windows[name].views == (name,)
    for name in REQUEST_FEATURES:
        assert (windows[name].kind, windows[name].windows) == ("request", ())
    assert set(DERIVED_FEATURES) <= set(windows)
    day30, day7 = WINDOWS["30d"], WINDOWS["7d"]
    assert windows["amount_over_mean_30d"].views == ("amount_mean_30d",)
    assert windows["amount_over_mean_30d"].windows == ((day30.length_ms, day30.hop_ms),)
    assert windows["amount_over_mean_7d"].windows == ((day7.length_ms, day7.hop_ms),)
    assert windows["hour_share_30d"].views == ("hour_histogram_30d",)
    assert windows["seconds_since_last_txn"].kind == "lifetime"
    assert feature_windows(["not_a_feature"])["not_a_feature"].kind == "unknown"


def test_a_feature_reading_two_views_warms_up_with_the_longer_one() -> None:
    group = GroupBy("probe_views", "transaction", "card_id", (
        Aggregate("n", "count", None, (WINDOWS["1h"],)),
        Aggregate("spent", "sum", "amount", (WINDOWS["7d"],), scale=2),
    ))

    def vectorise(event: Any, views: Any) -> dict[str, float]:
        n, spent = views.get("n_1h"), views.get("spent_7d")
        both = n is not None and spent is not None and spent > 0
        return {"per_txn": float(n) / spent if both else -1.0, "raw": float(event["amount"])}

    windows = feature_windows(["per_txn", "raw", "n_1h"], group, vectorise)
    per_txn = windows["per_txn"]
    assert per_txn.views == ("n_1h", "spent_7d") and per_txn.longest_ms == 7 * DAY_MS
    assert per_txn.eligible_from(S + 1) == S + HOUR_MS + 7 * DAY_MS
    assert windows["raw"].kind == "request"
    assert windows["n_1h"].windows == ((HOUR_MS, 5 * MINUTE_MS),)


def test_feature_windows_come_from_every_view_group_of_a_contract() -> None:
    from lamina.schemas.contract import FeatureContract

    counts = GroupBy("probe_counts", "transaction", "merchant_id",
                     (Aggregate("n", "count", None, (Window("2h", 2 * HOUR_MS, hop_ms=HOUR_MS),)),))
    sums = GroupBy("probe_sums", "transaction", "merchant_id",
                   (Aggregate("spent", "sum", "amount", (WINDOWS["7d"],), scale=2),))

    def vectorise(event: Any, views: Any) -> dict[str, float]:
        n, spent = views.get("n_2h"), views.get("spent_7d")
        return {"busy": -1.0 if n is None else float(n),
                "per_day": -1.0 if spent is None else float(spent) / 7,
                "raw": float(event["amount"])}

    contract = FeatureContract(
        name="merchant_probe", query_event_type="transaction", groups=(counts, sums),
        request_fields=("amount",), features=("busy", "per_day", "raw"), vectoriser=vectorise)
    windows = feature_windows(contract.features, contract=contract)
    assert windows["busy"].windows == ((2 * HOUR_MS, HOUR_MS),)  # the declared hop
    assert windows["per_day"].views == ("spent_7d",)
    assert windows["raw"].kind == "request"
    # The default contract is the card-fraud one.
    assert feature_windows(FEATURES) == feature_windows(FEATURES, contract=CARD_FRAUD)


# --- shifts, noise and the alert rule ---------------------------------------------


def _model_rows(rng: np.random.Generator, n: int, start: int, *, shift: float = 0.0,
                flip: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
    """Request-time features, a label from a logistic truth and the scores
    of a model that knows it (``flip``: the relation inverts, as after the
    planted drift; ``shift``: the inputs move)."""
    x = rng.normal(shift, 1.0, n)
    z = rng.normal(0.0, 1.0, n)
    truth = 1 / (1 + np.exp(-(-4.0 + (-2.0 if flip else 2.0) * x + z)))
    frame = pd.DataFrame({
        "event_time": start + np.sort(rng.integers(0, 5 * DAY_MS, n)),
        "x": x, "z": z, "channel": rng.integers(0, 3, n).astype(float),
        "amount": rng.lognormal(3.0 + shift, 1.0, n),
        "label": (rng.random(n) < truth).astype(int),
    })
    scores = 1 / (1 + np.exp(-(-4.0 + 2.0 * x + z)))
    return frame, scores


MODEL_FEATURES = ["x", "z", "channel", "amount"]


def _model_reference(seed: int) -> DriftReference:
    frame, scores = _model_rows(np.random.default_rng(seed), 20_000, S)
    return build_reference(frame, MODEL_FEATURES, scores=scores)


@pytest.mark.parametrize("seed", range(12))
def test_a_stationary_stream_with_noise_does_not_alert_at_the_defaults(seed: int) -> None:
    reference = _model_reference(1000 + seed)
    rng = np.random.default_rng(seed)
    for n in (1_000, 3_000, 10_000):
        frame, scores = _model_rows(rng, n, S + 30 * DAY_MS)
        report = check_drift(reference, frame, scores=scores)
        assert report.alert is False, (n, report.reasons)
        assert len(report.checked_features()) == len(MODEL_FEATURES)
        assert report.score.status == "checked" and report.performance.status in (
            "checked", "too_few_rows")


def test_a_shift_of_the_inputs_is_flagged_by_features_and_scores() -> None:
    reference = _model_reference(7)
    frame, scores = _model_rows(np.random.default_rng(8), 5_000, S + 30 * DAY_MS, shift=0.6)
    report = check_drift(reference, frame, scores=scores)
    assert report.alert is True
    assert set(report.drifted_features()) == {"x", "amount"}
    assert report.score.alert is True
    assert report.reasons[0].startswith("ALERT: feature drift: 2 of 4 checked features")
    assert any(r.startswith("ALERT: score drift") for r in report.reasons)


def test_a_changed_label_relation_is_invisible_to_features_but_not_to_performance() -> None:
    reference = _model_reference(9)
    frame, scores = _model_rows(np.random.default_rng(10), 5_000, S + 30 * DAY_MS, flip=True)
    report = check_drift(reference, frame, scores=scores)
    assert report.drifted_features() == [] and report.score.alert is False
    assert report.performance.status == "checked" and report.performance.alert is True
    assert report.alert is True
    assert [r for r in report.reasons if r.startswith("ALERT")] == [report.reasons[0]]
    assert report.reasons[0].startswith("ALERT: performance: ROC AUC")


def test_labels_known_before_limits_the_performance_rows() -> None:
    reference = _model_reference(11)
    frame, scores = _model_rows(np.random.default_rng(12), 5_000, S + 30 * DAY_MS)
    cut = int(frame["event_time"].iloc[2_500])
    report = check_drift(reference, frame, scores=scores, labels_known_before_ms=cut)
    assert report.performance.rows == int((frame["event_time"] < cut).sum())
    assert check_drift(reference, frame.drop(columns="label"),
                       scores=scores).performance.status == "no_labels"
    assert check_drift(reference, frame).performance.status == "no_scores"


# --- thresholds at their edges ------------------------------------------------------


def _two_bin_reference(features: list[str], *, rows: int = 10) -> DriftReference:
    bins = FeatureBins([0.0], [0.5, 0.5, 0.0])
    return DriftReference({f: FeatureReference(bins, REQUEST, rows) for f in features})


def _values(below: int, total: int) -> np.ndarray:
    return np.r_[np.full(below, -1.0), np.full(total - below, 1.0)]


def test_a_psi_equal_to_its_threshold_has_not_drifted() -> None:
    reference = _two_bin_reference(["a", "b"])
    recent = pd.DataFrame({"a": _values(3, 10), "b": _values(3, 10),
                           "event_time": np.arange(10)})
    exact = (0.3 - 0.5) * math.log(0.3 / 0.5) + (0.7 - 0.5) * math.log(0.7 / 0.5)
    value = check_drift(reference, recent, thresholds={"min_rows": 10}).features["a"].psi
    assert value == pytest.approx(exact)
    at = check_drift(reference, recent, thresholds={"min_rows": 10, "feature_psi": value})
    assert at.drifted_features() == [] and at.alert is False
    below = check_drift(reference, recent, thresholds={
        "min_rows": 10, "feature_psi": float(np.nextafter(value, 0.0))})
    assert below.drifted_features() == ["a", "b"] and below.alert is True


def test_feature_alert_needs_the_minimum_number_of_drifted_features() -> None:
    reference = _two_bin_reference(["a", "b", "c"])
    recent = pd.DataFrame({"a": _values(0, 10), "b": _values(0, 10), "c": _values(5, 10),
                           "event_time": np.arange(10)})
    limits = {"min_rows": 10}
    assert check_drift(reference, recent, thresholds={**limits, "feature_min_drifted": 2}).alert
    three = check_drift(reference, recent, thresholds={**limits, "feature_min_drifted": 3})
    assert three.drifted_features() == ["a", "b"] and three.alert is False
    assert three.reasons[0] == "ok: feature drift: 2 of 3 checked features have PSI > 0.1 " \
        "(a 4.604, b 4.604); alert from 3"


def test_min_rows_is_inclusive_on_both_sides() -> None:
    recent = pd.DataFrame({"a": _values(5, 10), "event_time": np.arange(10)})
    assert check_drift(_two_bin_reference(["a"]), recent,
                       thresholds={"min_rows": 10}).features["a"].status == "checked"
    assert check_drift(_two_bin_reference(["a"]), recent,
                       thresholds={"min_rows": 11}).features["a"].status == "no_reference"
    assert check_drift(_two_bin_reference(["a"], rows=11), recent,
                       thresholds={"min_rows": 11}).features["a"].status == "too_few_rows"


def test_a_window_is_covered_from_exactly_its_eligible_time() -> None:
    coverage = S + 30 * MINUTE_MS  # not on an hour: the 1-day window's hop is 1 h
    first = S + HOUR_MS + DAY_MS
    assert W1D.eligible_from(coverage) == first
    reference = DriftReference({"a": FeatureReference(FeatureBins([0.0], [0.5, 0.5, 0.0]),
                                                      W1D, 100)})
    recent = pd.DataFrame({"event_time": [coverage, first - 1, first, first, first + 1],
                           "a": [-1.0, -1.0, 1.0, 1.0, 1.0]})
    limits = {"min_rows": 3}
    covered = check_drift(reference, recent, span=(coverage, first + 2), thresholds=limits)
    assert (covered.features["a"].status, covered.features["a"].rows) == ("checked", 3)
    at_end = check_drift(reference, recent[recent["event_time"] < first],
                         span=(coverage, first), thresholds=limits)
    assert (at_end.features["a"].status, at_end.features["a"].until_ms) == ("warming_up", first)
    one_more = check_drift(reference, recent[recent["event_time"] <= first],
                           span=(coverage, first + 1), thresholds=limits)
    assert one_more.features["a"].status == "too_few_rows"
    assert one_more.features["a"].rows == 2


def test_score_and_auc_thresholds_are_strict() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.6, 0.4, 0.9])  # ROC AUC exactly 0.75
    recent = pd.DataFrame({"event_time": np.arange(4), "label": labels})
    reference = DriftReference({}, score=FeatureBins([0.5], [0.5, 0.5, 0.0]), score_rows=4,
                               score_window=REQUEST, auc=0.875, auc_rows=400, auc_positives=100)
    limits = {"min_rows": 4, "min_positives": 2, "auc_z": 1e-9}
    at = check_drift(reference, recent, scores=scores, thresholds={
        **limits, "max_auc_drop": 0.125, "score_psi": 1e-9})
    assert at.performance.value == 0.75 and at.performance.alert is False
    assert at.score.value == 0.0 and at.score.alert is False and at.alert is False
    over = check_drift(reference, recent, scores=scores,
                       thresholds={**limits, "max_auc_drop": 0.124})
    assert over.performance.alert is True and over.alert is True
    # The drop must also be beyond auc_z standard errors (0.276 here: 2 + 2 examples).
    error = auc_standard_error(0.75, 2, 2)
    assert over.performance.error == pytest.approx(error) and 0.27 < error < 0.28
    for z, alert in ((0.4, True), (0.5, False)):
        assert check_drift(reference, recent, scores=scores, thresholds={
            **limits, "max_auc_drop": 0.01, "auc_z": z}).performance.alert is alert
    few = check_drift(reference, recent, scores=scores,
                      thresholds={"min_rows": 4, "min_positives": 3})
    assert (few.performance.status, few.performance.positives) == ("too_few_rows", 2)
    assert check_drift(reference, recent, scores=scores, thresholds={
        "min_rows": 4, "min_positives": 101}).performance.status == "no_reference"


@pytest.mark.parametrize("bad, message", [
    ({"feature_psi": 0}, "feature_psi must be a number > 0"),
    ({"score_psi": float("nan")}, "score_psi must be a number > 0"),
    ({"max_auc_drop": 1.5}, r"max_auc_drop must be in \(0, 1\]"),
    ({"min_rows": 0}, "min_rows must be an integer >= 1"),
    ({"feature_min_drifted": 1.5}, "feature_min_drifted must be an integer >= 1"),
    ({"min_positives": True}, "min_positives must be an integer >= 1"),
    ({"feature_share": 0.3}, r"unknown drift threshold\(s\) \['feature_share'\]"),
])
def test_bad_thresholds_are_refused_with_the_name(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DriftThresholds.from_dict(bad)


def test_the_defaults_are_the_documented_ones() -> None:
    assert DriftThresholds().to_dict() == {
        "feature_psi": 0.1, "feature_min_drifted": 2, "score_psi": 0.05,
        "max_auc_drop": 0.05, "auc_z": 3.0, "min_rows": 1000, "min_positives": 20}


# --- the saved reference ------------------------------------------------------------


def test_the_reference_survives_json_and_gives_the_same_report() -> None:
    rng = np.random.default_rng(13)
    frame, scores = _model_rows(rng, 8_000, S)
    frame["count_1d"] = rng.poisson(3.0, len(frame))
    features = [*MODEL_FEATURES, "count_1d"]
    reference = build_reference(frame, features, scores=scores, windows={"count_1d": W1D})
    restored = DriftReference.from_dict(json.loads(json.dumps(reference.to_dict())))
    assert restored == reference
    recent, recent_scores = _model_rows(rng, 3_000, S + 20 * DAY_MS, shift=0.3)
    recent["count_1d"] = rng.poisson(3.0, len(recent))
    first = check_drift(reference, recent, scores=recent_scores)
    again = check_drift(restored, recent, scores=recent_scores)
    assert json.dumps(first.to_dict()) == json.dumps(again.to_dict())


def test_a_profile_saved_before_windows_were_known_checks_only_request_features() -> None:
    rng = np.random.default_rng(14)
    frame = _stream(rng, S, S + 45 * DAY_MS, 6_000, data_start=S)
    frame["amount_mean_30d"] = frame["count_30d"] * 1.0  # a real windowed view feature
    old = profile_to_dict(reference_profile(frame, ["amount", "amount_mean_30d"]))
    reference = DriftReference.from_dict(json.loads(json.dumps(old)))
    assert reference.format == 1
    assert reference.features["amount_mean_30d"].window.longest_ms == 30 * DAY_MS
    report = check_drift(reference, frame)
    assert report.features["amount"].status == "checked"
    assert report.features["amount_mean_30d"].status == "no_reference"
    assert report.score.status == "no_scores"


def test_the_auc_standard_error_is_the_spread_of_resampled_aucs_or_a_little_more() -> None:
    from lamina.batch.evaluate import roc_auc

    rng = np.random.default_rng(15)
    aucs = []
    for _ in range(400):
        y = np.r_[np.ones(40), np.zeros(960)]
        s = np.r_[rng.normal(1.5, 1.0, 40), rng.normal(0.0, 1.0, 960)]
        aucs.append(roc_auc(y, s))
    # Hanley-McNeil assumes exponential score distributions; for normal ones
    # it errs on the side of a wider error (fewer alerts), by about a quarter.
    ratio = auc_standard_error(float(np.mean(aucs)), 40, 960) / float(np.std(aucs))
    assert 1.0 <= ratio <= 1.4
