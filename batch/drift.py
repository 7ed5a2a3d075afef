"""Drift: is recent data still like the data a model was trained on?

Three signals, one report (:func:`check_drift` -> :class:`DriftReport`,
with ``alert`` and ``reasons``), thresholds in one typed object
(:class:`DriftThresholds`; the defaults and why are in docs/decisions.md):

* **feature drift** -- population stability index (PSI) per feature, counted
  only where the feature's window is fully covered (warm-up, below);
* **score drift** -- PSI of the model's scores on the recent window against
  its scores on its training data;
* **performance** -- ROC AUC on recent labelled rows against the model's
  training AUC.

Why all three: a drift of the *fraud pattern* changes the relation between
features and label in a few percent of the rows (the fraud); the inputs of
the other 95+ % do not move, so feature PSI barely sees it. The model's
scores see it where the model looked (the pre-drift fraud that scored high
is gone), and its AUC sees it fully once the labels arrive.

PSI
---
PSI compares how recent data spreads over bins with how a reference sample
(the training data) did:

    PSI = sum_b (recent_b - reference_b) * ln(recent_b / reference_b)

over proportions per bin. The bins are the reference's quantiles (10 by
default, so each holds about a tenth of the reference), with open ends, so
values outside the reference range still count; tied quantiles merge into
one bin; a feature with no more distinct values than bins (a flag, a small
count) gets one bin per value; missing values (NaN/None) get a bin of their
own. An empty bin's proportion is floored at 1e-4 so the log stays finite.
Scores get finer bins in the top tail (:data:`SCORE_QUANTILES`), where a
fraud model's positives are. Rule of thumb: < 0.1 stable, 0.1-0.25 moderate
shift, > 0.25 a major shift.

Warm-up: a feature is compared only where its window is covered
---------------------------------------------------------------
A feature of window ``W`` (hop ``h``) at time ``t`` covers ``floor((t - W) /
h) * h <= event_time < t`` (``lamina.schemas.view_definitions.window_range``). Over data
that starts at ``S`` it is truncated -- smaller counts, sums, distinct
counts -- until that start reaches ``S``: ``t >= ceil(S / h) * h + W``
(:meth:`FeatureWindow.eligible_from`). A 30-day count in the first ten days
of data is not comparable with one computed over a full month, and after a
change at ``D`` a feature still mixes data from before ``D`` until ``D +
W``. So, on both sides, a feature counts only rows whose window starts at or
after the *coverage start*: the start of the data the side spans (its
``span``; the training window for the reference, the recent window for the
recent data), unless the caller passes ``history_start_ms`` (the earliest
event the features were computed over, when it is known). A feature whose
window the recent span does not cover yet is reported as ``warming_up``
with the time it will be (``until_ms``), never as drift.

Which window a feature has comes from the feature contract's view
definitions (:func:`feature_windows`; default contract
``lamina.schemas.card_views.CARD_FRAUD``): a view feature has its own
window; a model feature (made by the contract's vectoriser) has the windows of
the view features it reads, found by probing the vectoriser one view at a
time; a feature that reads no view (amount, hour of day) needs no warm-up.
**Lifetime** windows are never covered by a finite span (a lifetime
feature's distribution moves with the age of the data: more cards have
history, gaps grow), so lifetime features are reported with their PSI for
information but never counted for the alert. A feature that is neither a
view feature nor made by the vectoriser is taken as instantaneous
(``kind="unknown"``).

The score depends on all the model's features, so it warms up with the
longest non-lifetime window among them. Performance needs no warm-up: it is
how the model actually does on those rows.

A :class:`DriftReference` (bins, windows, reference rows, score bins and
training AUC) is small and JSON-able: it is saved with a model (``format``
2) and read back with :meth:`DriftReference.from_dict`, which also reads the
earlier format (feature bins only, built from every training row: their
windowed features are reported ``no_reference``, since their bins mixed in
truncated windows).

The plain PSI helpers (:func:`psi`, :func:`psi_report`, :func:`psi_against`,
``ReferenceProfile``) stay as they were: no windows, no thresholds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from lamina.batch.model import TrainingError
from lamina.errors import ConfigError
from lamina.logs import get_logger
from lamina.models.scoring import to_pandas
from lamina.schemas.contract import FeatureContract, Vectoriser

log = get_logger(__name__)

DEFAULT_BINS = 10
PSI_MODERATE = 0.1
PSI_ALERT = 0.25
#: Quantiles of the training scores that cut the score bins: deciles, then a
#: finer top tail (a fraud model's positives sit in its top few percent).
SCORE_QUANTILES: Final = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
EVENT_TIME = "event_time"
LABEL = "label"
REFERENCE_FORMAT = 2
_FLOOR = 1e-4


# --- PSI -----------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureBins:
    """Cut points c_1 < ... < c_k: bins (-inf, c_1), [c_1, c_2), ..., [c_k, inf),
    then a missing-value bin. `reference` holds the reference proportions."""

    cuts: list[float]
    reference: list[float]

    def proportions(self, values: Any) -> np.ndarray:
        return _proportions(np.asarray(values, dtype=np.float64).reshape(-1),
                            np.asarray(self.cuts, dtype=np.float64))

    def psi(self, values: Any) -> float:
        """PSI of `values` against these reference proportions."""
        return psi_from_proportions(self.reference, self.proportions(values))


def _proportions(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Share of values per bin (len(cuts) + 1 value bins, then missing)."""
    missing = np.isnan(values)
    index = np.searchsorted(cuts, values[~missing], side="right")
    counts = np.bincount(index, minlength=len(cuts) + 1).astype(np.float64)
    counts = np.r_[counts, missing.sum()]
    total = max(len(values), 1)
    return counts / total


def quantile_cuts(reference: Any, bins: int = DEFAULT_BINS,
                  quantiles: Sequence[float] | None = None) -> np.ndarray:
    """Interior quantile cut points of the reference's non-missing values:
    at ``1/bins, 2/bins, ...``, or at ``quantiles`` when given."""
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    values = np.asarray(reference, dtype=np.float64).reshape(-1)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return np.zeros(0)
    distinct = np.unique(values)
    probabilities = (np.linspace(0.0, 1.0, bins + 1)[1:-1] if quantiles is None
                     else np.asarray(quantiles, dtype=np.float64))
    if len(distinct) <= len(probabilities) + 1:
        # A discrete feature (a flag, a small count): one bin per value, so
        # a change in how often each value occurs is seen.
        return distinct
    return np.unique(np.quantile(values, probabilities))


def feature_bins(reference: Any, bins: int = DEFAULT_BINS,
                 quantiles: Sequence[float] | None = None) -> FeatureBins:
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    cuts = quantile_cuts(ref, bins, quantiles)
    return FeatureBins(cuts.tolist(), _proportions(ref, cuts).tolist())


def psi_from_proportions(reference: Any, recent: Any) -> float:
    e = np.maximum(np.asarray(reference, dtype=np.float64), _FLOOR)
    a = np.maximum(np.asarray(recent, dtype=np.float64), _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def psi(reference: Any, recent: Any, bins: int = DEFAULT_BINS) -> float:
    """PSI of one feature: `recent` values against `reference` values."""
    fb = feature_bins(reference, bins)
    return psi_from_proportions(fb.reference, fb.proportions(recent))


ReferenceProfile = dict[str, FeatureBins]


def _column(frame: Any, feature: str) -> np.ndarray:
    df = to_pandas(frame)
    if feature not in df.columns:
        raise TrainingError(f"feature column '{feature}' is missing from the data")
    return df[feature].to_numpy(dtype=np.float64, na_value=np.nan)


def reference_profile(reference: Any, features: Sequence[str],
                      bins: int = DEFAULT_BINS) -> ReferenceProfile:
    """Bins and proportions per feature from a reference (training) sample
    (every row; no warm-up: see :func:`build_reference`)."""
    return {f: feature_bins(_column(reference, f), bins) for f in features}


def psi_against(profile: ReferenceProfile, recent: Any) -> dict[str, float]:
    """PSI per feature of `recent` against a saved profile."""
    return {f: psi_from_proportions(fb.reference, fb.proportions(_column(recent, f)))
            for f, fb in profile.items()}


def psi_report(reference: Any, recent: Any, features: Sequence[str],
               bins: int = DEFAULT_BINS) -> dict[str, float]:
    """PSI per feature between a reference sample and recent data (pandas
    DataFrames or pyarrow Tables), with quantile bins from the reference."""
    return psi_against(reference_profile(reference, features, bins), recent)


def drifted_features(report: Mapping[str, float], threshold: float = PSI_ALERT) -> list[str]:
    """Features whose PSI exceeds `threshold`, most drifted first."""
    return sorted((f for f, v in report.items() if v > threshold),
                  key=lambda f: (-report[f], f))


def profile_to_dict(profile: ReferenceProfile) -> dict[str, Any]:
    return {f: {"cuts": fb.cuts, "reference": fb.reference} for f, fb in profile.items()}


def profile_from_dict(values: Mapping[str, Any]) -> ReferenceProfile:
    return {f: FeatureBins(list(v["cuts"]), list(v["reference"])) for f, v in values.items()}


# --- thresholds ------------------------------------------------------------------


@dataclass(frozen=True)
class DriftThresholds:
    """When the drift report alerts (the retraining trigger reads ``alert``).

    - ``feature_psi``: a checked feature (window covered, enough rows on
      both sides, not lifetime) with PSI above this has drifted;
    - ``feature_min_drifted``: the feature signal alerts when at least this
      many checked features have drifted -- one feature alone is more often
      a broken pipeline than a changed world (a data-quality page, not a
      reason to retrain);
    - ``score_psi``: the score signal alerts when the PSI of the model's
      scores exceeds this;
    - ``max_auc_drop``, ``auc_z``: the performance signal alerts when recent
      ROC AUC is more than ``max_auc_drop`` below the training AUC *and*
      more than ``auc_z`` standard errors below it (Hanley-McNeil standard
      error of the recent AUC, from its positive and negative counts): with
      a few dozen positives a weaker model's AUC wanders by several
      hundredths on its own;
    - ``min_rows``: fewest eligible rows, on each side, for a feature's or
      the score's PSI to count (fewer: ``too_few_rows`` / ``no_reference``),
      and fewest labelled rows for the performance signal;
    - ``min_positives``: fewest positive (and negative) labels for it.

    Every comparison is strict (a PSI equal to its threshold has not
    drifted); counts are inclusive (``min_rows`` rows are enough). Defaults
    and the measurements behind them: docs/decisions.md ("Drift").
    """

    feature_psi: float = PSI_MODERATE
    feature_min_drifted: int = 2
    score_psi: float = 0.05
    max_auc_drop: float = 0.05
    auc_z: float = 3.0
    min_rows: int = 1000
    min_positives: int = 20

    def __post_init__(self) -> None:
        for name in ("feature_psi", "score_psi", "auc_z"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value < math.inf:
                raise ConfigError(f"drift threshold {name} must be a number > 0, got {value!r}")
        value = self.max_auc_drop
        if not _is_number(value) or not 0 < value <= 1:
            raise ConfigError(f"drift threshold max_auc_drop must be in (0, 1], got {value!r}")
        for name in ("feature_min_drifted", "min_rows", "min_positives"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"drift threshold {name} must be an integer >= 1, "
                                  f"got {value!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | DriftThresholds | None) -> DriftThresholds:
        """From a dict of (some of) the fields; ConfigError names an unknown one."""
        if values is None:
            return cls()
        if isinstance(values, DriftThresholds):
            return values
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown drift threshold(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


# --- feature windows, from the view definitions ------------------------------------

WindowKind = Literal["request", "windowed", "lifetime", "unknown"]


@dataclass(frozen=True)
class FeatureWindow:
    """The time windows a feature's value depends on.

    ``windows``: ``(length_ms, hop_ms)`` pairs of the views it reads
    (``length_ms`` None for lifetime). ``kind``: ``request`` (reads no view:
    a property of the event itself), ``windowed``, ``lifetime`` (reads a
    lifetime view: never covered, never counted) or ``unknown`` (not a view
    nor vectoriser feature: taken as instantaneous). ``views``: the view
    features it reads (for the report)."""

    kind: WindowKind
    windows: tuple[tuple[int | None, int], ...] = ()
    views: tuple[str, ...] = ()

    @property
    def longest_ms(self) -> int | None:
        """The longest finite window (None: none)."""
        lengths = [w for w, _ in self.windows if w is not None]
        return max(lengths) if lengths else None

    def eligible_from(self, coverage_start_ms: int) -> int | None:
        """The first query time whose windows all start at or after
        ``coverage_start_ms`` (``floor((t - W) / h) * h >= S`` for each, i.e.
        ``t >= ceil(S / h) * h + W``); None for a lifetime feature (never).
        A feature without windows is eligible from ``coverage_start_ms``."""
        if self.kind == "lifetime":
            return None
        starts = [_ceil_to(coverage_start_ms, hop) + length
                  for length, hop in self.windows if length is not None]
        return max(starts, default=coverage_start_ms)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "windows": [list(w) for w in self.windows],
                "views": list(self.views)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FeatureWindow:
        windows = tuple((None if w is None else int(w), int(h)) for w, h in values["windows"])
        return cls(values["kind"], windows, tuple(values.get("views", ())))


def _ceil_to(value: int, step: int) -> int:
    return -((-value) // step) * step


def _sample_event(event_type: str) -> dict[str, Any]:
    """A payload valid in shape for the latest schema of ``event_type``, made
    from the schema itself (const, first enum value, a bound or 1, "x")."""
    from lamina.schemas.event_schemas import default_registry

    registry = default_registry()
    schema = registry.get(event_type, registry.latest(event_type))
    payload: dict[str, Any] = {}
    for name, spec in schema.get("properties", {}).items():
        kind = spec.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), None)
        if "const" in spec:
            payload[name] = spec["const"]
        elif spec.get("enum"):
            payload[name] = spec["enum"][0]
        elif kind == "integer":
            payload[name] = int(spec.get("minimum", 1))
        elif kind == "number":
            payload[name] = max(float(spec.get("minimum", 1.0)), 1.0)
        elif kind == "boolean":
            payload[name] = False
        else:
            payload[name] = "x"
    return payload


def feature_windows(features: Iterable[str], group: Any = None,
                    vectorise: Vectoriser | None = None, *,
                    contract: FeatureContract | None = None) -> dict[str, FeatureWindow]:
    """The window(s) of each feature, from the view definitions.

    The views (every group of ``contract``), the vectoriser (``(event, view
    features) -> model features``) and the query event type come from
    ``contract`` (default: ``lamina.schemas.card_views.CARD_FRAUD``);
    ``group`` (a ``GroupBy``: its views and event type) and ``vectorise``
    override them. A view feature has its own window. For a model feature,
    the vectoriser is called on a sample event (from the event schema) with
    every view present and then with one view removed, and with no view and
    then one added: the views whose presence changes the feature are the
    ones it reads. Deterministic; a few dozen vectoriser calls.
    """
    from lamina.schemas.card_views import CARD_FRAUD

    contract = CARD_FRAUD if contract is None else contract
    groups = contract.groups if group is None else (group,)
    event_type = contract.query_event_type if group is None else group.event_type
    vectorise = contract.vectoriser if vectorise is None else vectorise
    view_windows = {a.feature_name(w): (a, w)
                    for g in groups for a in g.aggregates for w in a.windows}
    dependencies = _probe(event_type, vectorise, view_windows)
    result: dict[str, FeatureWindow] = {}
    for name in features:
        if name in view_windows:
            reads: tuple[str, ...] = (name,)
        elif name in dependencies:
            reads = tuple(v for v in view_windows if v in dependencies[name])
        else:
            result[name] = FeatureWindow("unknown")
            continue
        windows = tuple(dict.fromkeys(
            (view_windows[v][1].length_ms, view_windows[v][1].hop_ms) for v in reads))
        if any(length is None for length, _ in windows):
            kind: WindowKind = "lifetime"
        else:
            kind = "windowed" if windows else "request"
        result[name] = FeatureWindow(kind, windows, reads)
    return result


def _probe(event_type: str, vectorise: Vectoriser,
           view_windows: Mapping[str, tuple[Any, Any]]) -> dict[str, set[str]]:
    """Model feature -> the view features it reads (see feature_windows)."""
    from lamina.schemas.view_definitions import field_value

    event = _sample_event(event_type)
    earlier = {**event, "event_id": "drift-probe", "event_time": int(event["event_time"]) - 1}
    present: dict[str, Any] = {}
    for name, (aggregate, _) in view_windows.items():
        monoid = aggregate.aggregation
        value = None if aggregate.field is None else field_value(earlier, aggregate.field)
        present[name] = monoid.present(monoid.lift(value, earlier["event_time"], "drift-probe"))
    absent: dict[str, Any] = dict.fromkeys(view_windows)
    try:
        with_all, with_none = vectorise(event, present), vectorise(event, absent)
        dependencies: dict[str, set[str]] = {f: set() for f in with_all}
        for name in view_windows:
            removed = vectorise(event, {**present, name: None})
            added = vectorise(event, {**absent, name: present[name]})
            for feature in dependencies:
                if (repr(removed[feature]) != repr(with_all[feature])
                        or repr(added[feature]) != repr(with_none[feature])):
                    dependencies[feature].add(name)
    except Exception as error:  # a vectoriser that refuses the sample: say which
        raise ConfigError(
            f"cannot tell the features' windows: the vectoriser failed on a sample "
            f"{event_type} event ({type(error).__name__}: {error}); pass "
            "windows= explicitly") from None
    return dependencies


@functools.cache
def _default_windows(features: tuple[str, ...],
                     contract: FeatureContract | None) -> dict[str, FeatureWindow]:
    return feature_windows(features, contract=contract)


def _windows_for(features: Sequence[str], windows: Mapping[str, FeatureWindow] | None,
                 contract: FeatureContract | None = None) -> dict[str, FeatureWindow]:
    derived = dict(_default_windows(tuple(features), contract))
    derived.update(windows or {})
    return derived


# --- the reference: saved with a model ---------------------------------------------


@dataclass(frozen=True)
class FeatureReference:
    """One feature's reference: its bins from the ``rows`` training rows
    whose windows were covered (all rows for request and lifetime
    features), and its window. ``rows`` is None for a format-1 profile
    (not recorded then)."""

    bins: FeatureBins | None
    window: FeatureWindow
    rows: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"cuts": None if self.bins is None else self.bins.cuts,
                "reference": None if self.bins is None else self.bins.reference,
                "window": self.window.to_dict(), "rows": self.rows}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FeatureReference:
        bins = (None if values.get("cuts") is None
                else FeatureBins(list(values["cuts"]), list(values["reference"])))
        rows = values.get("rows")
        return cls(bins, FeatureWindow.from_dict(values["window"]),
                   None if rows is None else int(rows))


@dataclass(frozen=True)
class DriftReference:
    """What the drift check compares recent data with: per feature, bins of
    its covered training rows; the training scores' bins (``score``, from
    ``score_rows`` rows whose every finite window was covered); the training
    ROC AUC (in-sample) with its row and positive counts; the training span
    ``[start, end)`` and the coverage start used. ``format`` 1 means a
    profile from before windows were known (see the module doc)."""

    features: dict[str, FeatureReference]
    span: tuple[int, int] | None = None
    coverage_start_ms: int | None = None
    score: FeatureBins | None = None
    score_rows: int = 0
    score_window: FeatureWindow | None = None
    auc: float | None = None
    auc_rows: int = 0
    auc_positives: int = 0
    format: int = REFERENCE_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "span": None if self.span is None else list(self.span),
            "coverage_start_ms": self.coverage_start_ms,
            "features": {f: r.to_dict() for f, r in self.features.items()},
            "score": None if self.score is None else {
                "cuts": self.score.cuts, "reference": self.score.reference,
                "rows": self.score_rows,
                "window": None if self.score_window is None else self.score_window.to_dict()},
            "performance": {"roc_auc": self.auc, "rows": self.auc_rows,
                            "positives": self.auc_positives},
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DriftReference:
        """Read a saved reference; a format-1 profile (``{feature: {cuts,
        reference}}``) gets its windows from the current view definitions and
        keeps bins only for features that need no warm-up."""
        if "format" not in values:
            names = list(values)
            windows = _windows_for(names, None)
            old = profile_from_dict(values)
            return cls({f: FeatureReference(old[f] if windows[f].kind in ("request", "unknown")
                                            else None, windows[f], None) for f in names},
                       format=1)
        score = values.get("score")
        performance = values.get("performance") or {}
        span = values.get("span")
        return cls(
            features={f: FeatureReference.from_dict(v) for f, v in values["features"].items()},
            span=None if span is None else (int(span[0]), int(span[1])),
            coverage_start_ms=values.get("coverage_start_ms"),
            score=None if not score or score.get("cuts") is None else
            FeatureBins(list(score["cuts"]), list(score["reference"])),
            score_rows=int(score["rows"]) if score else 0,
            score_window=(FeatureWindow.from_dict(score["window"])
                          if score and score.get("window") else None),
            auc=performance.get("roc_auc"),
            auc_rows=int(performance.get("rows", 0)),
            auc_positives=int(performance.get("positives", 0)),
            format=int(values["format"]),
        )


def _event_times(df: Any) -> np.ndarray | None:
    if EVENT_TIME not in df.columns:
        return None
    return df[EVENT_TIME].to_numpy(dtype=np.int64)


def _span_of(times: np.ndarray | None, span: tuple[int, int] | None) -> tuple[int, int] | None:
    if span is not None:
        start, end = int(span[0]), int(span[1])
        if start >= end:
            raise ConfigError(f"drift span start {start} must be before its end {end}")
        return start, end
    if times is None or len(times) == 0:
        return None
    return int(times.min()), int(times.max()) + 1


def _coverage(span: tuple[int, int] | None, history_start_ms: int | None) -> int | None:
    if span is None:
        return history_start_ms
    if history_start_ms is not None and history_start_ms > span[0]:
        raise ConfigError(
            f"history_start_ms {history_start_ms} is after the data's span start {span[0]}: "
            "features cannot have been computed over history that starts after their rows")
    return span[0] if history_start_ms is None else history_start_ms


def _covered(window: FeatureWindow, times: np.ndarray | None,
             coverage_start: int | None) -> np.ndarray | None:
    """Mask of the rows whose windows all start at or after the coverage
    start; None when that cannot be known (no event times) or never holds
    (lifetime)."""
    if times is None or coverage_start is None:
        return None
    first = window.eligible_from(coverage_start)
    return None if first is None else times >= first


def score_window(windows: Iterable[FeatureWindow]) -> FeatureWindow:
    """The warm-up of a score: every finite window of every feature it reads
    (lifetime windows left out: they never warm up, and waiting for them
    would mean never checking)."""
    pairs = tuple(dict.fromkeys(
        (w, h) for fw in windows for w, h in fw.windows if w is not None))
    return FeatureWindow("windowed" if pairs else "request", pairs)


def build_reference(frame: Any, features: Sequence[str], *, scores: Any = None,
                    span: tuple[int, int] | None = None,
                    history_start_ms: int | None = None,
                    windows: Mapping[str, FeatureWindow] | None = None,
                    bins: int = DEFAULT_BINS,
                    contract: FeatureContract | None = None) -> DriftReference:
    """The drift reference of a model's training data.

    ``frame``: the training rows (features, ``event_time``, optionally
    ``label``). ``scores``: the model's scores on those rows, same order
    (optional: no score or AUC reference without them). ``span``: the
    training window ``[start, end)`` (default: the rows' event-time range).
    ``history_start_ms``: the earliest event the features could see, if
    known and earlier than the span (default: the span start). A windowed
    feature's bins are built only from rows whose windows are covered (see
    the module doc); a feature with no such row gets ``bins=None``.
    ``windows`` overrides :func:`feature_windows` (of ``contract``, default
    the card-fraud one) for some features.
    """
    df = to_pandas(frame)
    times = _event_times(df)
    span = _span_of(times, span)
    coverage = _coverage(span, history_start_ms)
    windows = _windows_for(features, windows, contract)
    references: dict[str, FeatureReference] = {}
    for name in features:
        values = _column(df, name)
        window = windows[name]
        if window.kind in ("request", "unknown", "lifetime"):
            chosen = values  # lifetime: every row, for information only
        else:
            mask = _covered(window, times, coverage)
            chosen = values[mask] if mask is not None else values[:0]
        references[name] = FeatureReference(
            feature_bins(chosen, bins) if len(chosen) else None, window, int(len(chosen)))

    score_bins, score_rows, auc, auc_rows, auc_positives = None, 0, None, 0, 0
    warm = score_window(windows[f] for f in features)
    if scores is not None:
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(s) != len(df):
            raise TrainingError(f"{len(s)} scores for {len(df)} training rows")
        mask = _covered(warm, times, coverage)
        chosen = s if warm.kind == "request" else (s[mask] if mask is not None else s[:0])
        if len(chosen):
            score_bins = feature_bins(chosen, quantiles=SCORE_QUANTILES)
        score_rows = int(len(chosen))
        if LABEL in df.columns:
            from lamina.batch.evaluate import roc_auc

            y = df[LABEL].to_numpy(dtype=np.float64)
            auc = roc_auc(y, s)
            auc_rows, auc_positives = int(len(y)), int(y.sum())
    return DriftReference(references, span, coverage, score_bins, score_rows, warm,
                          auc, auc_rows, auc_positives)


# --- the report ----------------------------------------------------------------------

FeatureStatus = Literal["checked", "warming_up", "too_few_rows", "no_reference", "lifetime",
                        "no_event_time"]


@dataclass(frozen=True)
class FeatureDrift:
    """One feature in the report. ``status``: ``checked`` (PSI counted),
    ``warming_up`` (the recent span does not cover its window until
    ``until_ms``), ``too_few_rows`` (covered, but fewer than ``min_rows``
    eligible recent rows), ``no_reference`` (fewer than ``min_rows``
    covered training rows), ``lifetime`` (PSI for information, never
    counted) or ``no_event_time`` (the recent data has no event times, so
    coverage is unknown). ``psi`` is set for ``checked`` and ``lifetime``."""

    status: FeatureStatus
    kind: WindowKind
    psi: float | None = None
    drifted: bool = False
    rows: int = 0
    reference_rows: int | None = 0
    until_ms: int | None = None
    window_ms: int | None = None


@dataclass(frozen=True)
class SignalDrift:
    """The score or performance signal: ``status`` ``checked`` (``value``
    counted), or why not (``warming_up`` until ``until_ms``,
    ``too_few_rows``, ``no_reference``, ``no_scores``, ``no_labels``).
    ``value``: the score PSI, or the recent ROC AUC; ``reference``: the
    training AUC and ``error`` the recent AUC's standard error (performance
    only)."""

    status: str
    value: float | None = None
    reference: float | None = None
    error: float | None = None
    rows: int = 0
    reference_rows: int = 0
    positives: int = 0
    until_ms: int | None = None
    alert: bool = False


@dataclass(frozen=True)
class DriftReport:
    """Every drift signal of one recent window against one model's
    reference, and the verdict: ``alert`` is true when any signal alerts
    (:class:`DriftThresholds`); ``reasons`` says why, one line per signal
    (``ALERT:`` / ``ok:`` / ``skipped:``), alerts first."""

    alert: bool
    reasons: list[str]
    span: tuple[int, int] | None
    features: dict[str, FeatureDrift]
    score: SignalDrift
    performance: SignalDrift
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)

    def checked_features(self) -> list[str]:
        return [f for f, d in self.features.items() if d.status == "checked"]

    def drifted_features(self) -> list[str]:
        """Checked features over the PSI threshold, most drifted first."""
        return sorted((f for f, d in self.features.items() if d.drifted),
                      key=lambda f: (-(self.features[f].psi or 0.0), f))

    def psi(self) -> dict[str, float]:
        """PSI of the checked features."""
        return {f: d.psi for f, d in self.features.items()
                if d.status == "checked" and d.psi is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert": self.alert, "reasons": list(self.reasons),
            "span": None if self.span is None else list(self.span),
            "features": {f: asdict(d) for f, d in self.features.items()},
            "drifted_features": self.drifted_features(),
            "score": asdict(self.score), "performance": asdict(self.performance),
            "thresholds": self.thresholds.to_dict(),
        }


def _iso(ms: int | None) -> str:
    if ms is None:
        return "never"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M")


def _duration(ms: int | None) -> str:
    if ms is None:
        return "lifetime"
    if ms % 86_400_000 == 0 and ms >= 2 * 86_400_000:
        return f"{ms // 86_400_000}d"
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000}h"
    return f"{ms // 60_000}min" if ms % 60_000 == 0 else f"{ms}ms"


def check_drift(reference: DriftReference, recent: Any, *, scores: Any = None,
                span: tuple[int, int] | None = None, history_start_ms: int | None = None,
                labels_known_before_ms: int | None = None,
                thresholds: DriftThresholds | Mapping[str, Any] | None = None) -> DriftReport:
    """Drift of ``recent`` (rows with the reference's features and
    ``event_time``; ``label`` for the performance signal) against a model's
    ``reference``.

    ``scores``: the same model's scores on ``recent`` (same order; without
    them the score and performance signals are ``no_scores``). ``span``: the
    recent window ``[start, end)`` (default: the rows' event-time range);
    features whose windows it does not cover are ``warming_up``.
    ``history_start_ms``: the earliest event the recent features were
    computed over, if known (default: the span start -- the recent data
    alone must cover a window). ``labels_known_before_ms``: only rows before
    it count for performance (default: every row's label is taken as known,
    which is what the training-set builder's maturity rule gives).
    Never raises on a feature it cannot check: it says why in the report.
    """
    limits = DriftThresholds.from_dict(thresholds)
    df = to_pandas(recent)
    times = _event_times(df)
    span = _span_of(times, span)
    coverage = _coverage(span, history_start_ms)
    features: dict[str, FeatureDrift] = {}
    for name, ref in reference.features.items():
        features[name] = _feature_drift(ref, _column(df, name), times, span, coverage, limits)

    score = _score_drift(reference, scores, len(df), times, span, coverage, limits)
    performance = _performance(reference, df, scores, times, labels_known_before_ms, limits)
    reasons, alert = _reasons(features, score, performance, limits)
    report = DriftReport(alert, reasons, span, features, score, performance, limits)
    log.info("drift checked", alert=alert, span_start=None if span is None else span[0],
             span_end=None if span is None else span[1],
             checked=len(report.checked_features()), drifted=len(report.drifted_features()),
             score_status=score.status, score_psi=score.value,
             performance_status=performance.status, recent_auc=performance.value)
    return report


def _feature_drift(ref: FeatureReference, values: np.ndarray, times: np.ndarray | None,
                   span: tuple[int, int] | None, coverage: int | None,
                   limits: DriftThresholds) -> FeatureDrift:
    window = ref.window

    def result(status: FeatureStatus, rows: int, *, value: float | None = None,
               until: int | None = None) -> FeatureDrift:
        return FeatureDrift(status, window.kind, psi=value,
                            drifted=status == "checked" and value is not None
                            and value > limits.feature_psi,
                            rows=rows, reference_rows=ref.rows, until_ms=until,
                            window_ms=window.longest_ms)

    if window.kind == "lifetime":
        return result("lifetime", len(values),
                      value=None if ref.bins is None else ref.bins.psi(values))
    if ref.bins is None or (ref.rows is not None and ref.rows < limits.min_rows):
        return result("no_reference", len(values))
    chosen, until = values, None
    if window.kind == "windowed":
        if times is None or coverage is None:
            return result("no_event_time", len(values))
        until = window.eligible_from(coverage)
        if until is None:  # not reached: only lifetime windows never warm up
            return result("warming_up", 0)
        if span is not None and until >= span[1]:
            return result("warming_up", 0, until=until)
        chosen = values[times >= until]
    if len(chosen) < limits.min_rows:
        return result("too_few_rows", len(chosen), until=until)
    return result("checked", len(chosen), value=ref.bins.psi(chosen), until=until)


def _score_drift(reference: DriftReference, scores: Any, rows: int, times: np.ndarray | None,
                 span: tuple[int, int] | None, coverage: int | None,
                 limits: DriftThresholds) -> SignalDrift:
    if scores is None:
        return SignalDrift("no_scores")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != rows:
        raise TrainingError(f"{len(s)} scores for {rows} recent rows")
    if reference.score is None or reference.score_rows < limits.min_rows:
        return SignalDrift("no_reference", reference_rows=reference.score_rows)
    warm = reference.score_window or FeatureWindow("request")
    until = None
    if warm.kind != "request":
        if times is None or coverage is None:
            return SignalDrift("no_event_time", reference_rows=reference.score_rows)
        until = warm.eligible_from(coverage)
        if until is not None and span is not None and until >= span[1]:
            return SignalDrift("warming_up", until_ms=until, reference_rows=reference.score_rows)
        s = s[times >= until] if until is not None else s[:0]
    if len(s) < limits.min_rows:
        return SignalDrift("too_few_rows", rows=len(s), until_ms=until,
                           reference_rows=reference.score_rows)
    value = reference.score.psi(s)
    return SignalDrift("checked", value=value, rows=len(s), until_ms=until,
                       reference_rows=reference.score_rows, alert=value > limits.score_psi)


def _performance(reference: DriftReference, df: Any, scores: Any, times: np.ndarray | None,
                 known_before: int | None, limits: DriftThresholds) -> SignalDrift:
    if scores is None:
        return SignalDrift("no_scores")
    if LABEL not in df.columns:
        return SignalDrift("no_labels")
    if reference.auc is None or reference.auc_positives < limits.min_positives:
        return SignalDrift("no_reference", reference=reference.auc,
                           reference_rows=reference.auc_rows)
    y = df[LABEL].to_numpy(dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    known = ~np.isnan(y)
    if known_before is not None:
        if times is None:
            return SignalDrift("no_event_time", reference=reference.auc)
        known &= times < known_before
    y, s = y[known], s[known]
    positives = int(y.sum())
    if len(y) < limits.min_rows or positives < limits.min_positives \
            or len(y) - positives < limits.min_positives:
        return SignalDrift("too_few_rows", rows=len(y), positives=positives,
                           reference=reference.auc, reference_rows=reference.auc_rows)
    from lamina.batch.evaluate import roc_auc

    value = roc_auc(y, s)
    assert value is not None  # both classes are present (checked above)
    error = auc_standard_error(value, positives, len(y) - positives)
    drop = reference.auc - value
    return SignalDrift("checked", value=value, reference=reference.auc, error=error,
                       rows=len(y), positives=positives, reference_rows=reference.auc_rows,
                       alert=drop > limits.max_auc_drop and drop > limits.auc_z * error)


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley and McNeil's (1982) standard error of a ROC AUC estimated from
    ``positives`` and ``negatives`` examples."""
    q1 = auc / (2.0 - auc)
    q2 = 2.0 * auc * auc / (1.0 + auc)
    variance = (auc * (1.0 - auc) + (positives - 1) * (q1 - auc * auc)
                + (negatives - 1) * (q2 - auc * auc)) / (positives * negatives)
    return math.sqrt(max(variance, 0.0))


def _reasons(features: Mapping[str, FeatureDrift], score: SignalDrift,
             performance: SignalDrift, limits: DriftThresholds) -> tuple[list[str], bool]:
    """One line per signal, ``ALERT:`` lines first, then ``ok:`` and
    ``skipped:`` ones; and whether any signal alerts."""
    alerts: list[str] = []
    others: list[str] = []

    def add(alert: bool, text: str) -> None:
        (alerts if alert else others).append(("ALERT: " if alert else "ok: ") + text)

    checked = [f for f, d in features.items() if d.status == "checked"]
    drifted = sorted((f for f in checked if features[f].drifted),
                     key=lambda f: (-(features[f].psi or 0.0), f))
    if checked:
        listed = ", ".join(f"{f} {features[f].psi:.3f}" for f in drifted[:5])
        more = f" and {len(drifted) - 5} more" if len(drifted) > 5 else ""
        add(len(drifted) >= limits.feature_min_drifted,
            f"feature drift: {len(drifted)} of {len(checked)} checked features have PSI > "
            f"{limits.feature_psi:g}" + (f" ({listed}{more})" if drifted else "")
            + f"; alert from {limits.feature_min_drifted}")
    else:
        others.append("skipped: feature drift: no feature could be checked")
    by_status: dict[str, list[str]] = {}
    for name, d in features.items():
        if d.status != "checked":
            by_status.setdefault(d.status, []).append(name)
    parts = []
    for status, names in by_status.items():
        if status == "warming_up":
            until = max((features[n].until_ms or 0 for n in names), default=0)
            longest = max((features[n].window_ms or 0 for n in names), default=0)
            parts.append(f"{len(names)} warming up (windows up to {_duration(longest)}; all "
                         f"covered from {_iso(until)})")
        elif status == "too_few_rows":
            parts.append(f"{len(names)} with fewer than {limits.min_rows} covered recent rows")
        elif status == "no_reference":
            parts.append(f"{len(names)} with fewer than {limits.min_rows} covered training "
                         "rows (training window shorter than the feature window?)")
        elif status == "lifetime":
            psis = ", ".join(f"{n} {features[n].psi:.3f}" for n in names
                             if features[n].psi is not None)
            parts.append(f"{len(names)} lifetime, never counted" + (f" ({psis})" if psis else ""))
        else:
            parts.append(f"{len(names)} {status.replace('_', ' ')}")
    if parts:
        others.append("skipped: features not counted: " + "; ".join(parts))

    if score.status == "checked":
        add(score.alert, f"score drift: PSI {score.value:.3f} of the model's scores on "
                         f"{score.rows} covered rows (alert above {limits.score_psi:g})")
    elif score.status == "warming_up":
        others.append("skipped: score drift: the recent span does not cover the model's "
                      f"windows; covered from {_iso(score.until_ms)}")
    elif score.status == "too_few_rows":
        others.append(f"skipped: score drift: {score.rows} covered recent rows, fewer than "
                      f"{limits.min_rows}; covered from {_iso(score.until_ms)}")
    elif score.status == "no_reference":
        others.append(f"skipped: score drift: {score.reference_rows} training rows cover the "
                      f"model's windows, fewer than {limits.min_rows}")
    else:
        others.append(f"skipped: score drift: {score.status.replace('_', ' ')}")

    if performance.status == "checked":
        assert performance.value is not None and performance.reference is not None
        drop = performance.reference - performance.value
        add(performance.alert,
            f"performance: ROC AUC {performance.value:.3f} on {performance.rows} labelled rows "
            f"({performance.positives} positives, standard error {performance.error:.3f}) vs "
            f"{performance.reference:.3f} on the training data, a drop of {drop:.3f} (alert "
            f"above {limits.max_auc_drop:g} and {limits.auc_z:g} standard errors)")
    elif performance.status == "too_few_rows":
        others.append(f"skipped: performance: {performance.rows} labelled rows with "
                      f"{performance.positives} positives; at least {limits.min_rows} rows and "
                      f"{limits.min_positives} of each class needed")
    elif performance.status == "no_reference":
        others.append("skipped: performance: the reference has no training AUC with "
                      f"{limits.min_positives} positives")
    else:
        others.append(f"skipped: performance: {performance.status.replace('_', ' ')}")
    return alerts + others, bool(alerts)


# --- with a saved model -------------------------------------------------------------

REFERENCE_FILE = "drift_profile.json"


def save_model_reference(model_dir: str | Path, frame: Any, features: Sequence[str], *,
                         span: tuple[int, int] | None = None,
                         contract: FeatureContract | None = None) -> DriftReference:
    """Score the training rows with the model saved in ``model_dir``, build
    its :class:`DriftReference` (windows from ``contract``, default the
    card-fraud one) and write it next to the model (``drift_profile.json``).
    Returns the reference."""
    import json

    from lamina.models.saved_model import load_model
    from lamina.models.scoring import score

    scores = score(load_model(model_dir), frame, features=features)
    reference = build_reference(frame, features, scores=scores, span=span, contract=contract)
    (Path(model_dir) / REFERENCE_FILE).write_text(json.dumps(reference.to_dict()))
    return reference


def model_drift(model_dir: str | Path, recent: Any, features: Sequence[str], *,
                span: tuple[int, int] | None = None,
                thresholds: DriftThresholds | Mapping[str, Any] | None = None,
                model: Any = None) -> DriftReport | None:
    """The drift of ``recent`` against the reference saved with the model in
    ``model_dir`` (scored with ``model``, or the model loaded from there);
    None when the model has no reference file."""
    import json

    path = Path(model_dir) / REFERENCE_FILE
    if not path.exists():
        return None
    reference = DriftReference.from_dict(json.loads(path.read_text()))
    from lamina.models.saved_model import load_model
    from lamina.models.scoring import score

    scores = score(model if model is not None else load_model(model_dir), recent,
                   features=features)
    return check_drift(reference, recent, scores=scores, span=span, thresholds=thresholds)
