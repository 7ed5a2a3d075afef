"""Backtest metrics and the promotion gate (invariant 7).

Metrics are computed with NumPy only (no scikit-learn at runtime; the tests
cross-check against it when it is installed):

- `roc_auc`: the Mann-Whitney statistic with average ranks for ties (what
  `sklearn.metrics.roc_auc_score` returns).
- `pr_auc`: average precision, `sum_n (R_n - R_{n-1}) P_n` over distinct
  score thresholds (`sklearn.metrics.average_precision_score`).
- `log_loss`: mean binary cross-entropy, probabilities clipped to
  [1e-15, 1 - 1e-15].
- `brier`: mean squared error of the probabilities.
- `ece`: expected calibration error over 10 equal-width probability bins,
  `sum_b (n_b / n) |mean(p in b) - rate(y in b)|`, with the per-bin
  reliability table it comes from.

`evaluate` computes them overall and per slice (each value of each slice
column, e.g. `merchant_category`). A metric that is undefined on some rows
(AUC with one class present) is `None`, never a made-up number.

`gate(candidate, champion, thresholds)` decides a promotion. Both sets of
metrics must come from the *same* backtest window (the same rows): the gate
checks it, and `lamina.batch.commands.evaluate_command` scores both models on
one window to guarantee it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lamina.batch.model import LABEL, TrainingError
from lamina.models.scoring import to_pandas

EVENT_TIME = "event_time"
CALIBRATION_BINS = 10
_EPS = 1e-15


# --- times in messages -------------------------------------------------------------


def iso_utc(epoch_ms: int) -> str:
    """``epoch_ms`` as ISO-8601 UTC (``2026-01-10T00:00:00Z``, with
    milliseconds only when there are some), the form the CLI takes times in;
    "out of range" for a value no datetime holds."""
    from datetime import UTC, datetime

    try:
        moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return "out of range"
    moment = moment.replace(microsecond=(int(epoch_ms) % 1000) * 1000)
    spec = "milliseconds" if epoch_ms % 1000 else "seconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def iso_window(window: tuple[int, int] | None) -> str:
    """``[start, end)`` of event time as ``ISO to ISO`` for messages."""
    if window is None:
        return "no window"
    return f"{iso_utc(window[0])} to {iso_utc(window[1])}"


# --- metrics -------------------------------------------------------------------


def _check(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {p.shape[0]}")
    if len(y) and not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(p).all():
        raise ValueError("scores must be finite")
    return y, p


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values, and the run each item is in.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    run_rank = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    run_of = np.repeat(np.arange(len(starts)), ends - starts)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = run_rank[run_of]
    return ranks


def roc_auc(y_true: Any, y_score: Any) -> float | None:
    """Area under the ROC curve; None unless both classes are present."""
    y, p = _check(y_true, y_score)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(p)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(y_true: Any, y_score: Any) -> float | None:
    """Area under the precision-recall curve as average precision; None
    without positives."""
    y, p = _check(y_true, y_score)
    n_pos = y.sum()
    if n_pos == 0:
        return None
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    # The last index of each distinct score (descending): one threshold each.
    last = np.r_[np.flatnonzero(p_sorted[1:] != p_sorted[:-1]), len(p_sorted) - 1]
    tp = np.cumsum(y_sorted)[last]
    predicted = last + 1.0
    precision = tp / predicted
    recall = tp / n_pos
    recall_step = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_step * precision))


def log_loss(y_true: Any, y_score: Any) -> float | None:
    y, p = _check(y_true, y_score)
    if len(y) == 0:
        return None
    q = np.clip(p, _EPS, 1.0 - _EPS)
    return float(-np.mean(y * np.log(q) + (1.0 - y) * np.log1p(-q)))


def brier(y_true: Any, y_score: Any) -> float | None:
    y, p = _check(y_true, y_score)
    return float(np.mean((p - y) ** 2)) if len(y) else None


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of the reliability table: predictions in [lower, upper)."""

    lower: float
    upper: float
    count: int
    mean_predicted: float | None
    observed_rate: float | None


def reliability_table(y_true: Any, y_score: Any,
                      bins: int = CALIBRATION_BINS) -> list[ReliabilityBin]:
    """Equal-width bins over [0, 1] (the last one includes 1.0)."""
    y, p = _check(y_true, y_score)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    sum_p = np.bincount(index, weights=p, minlength=bins)
    sum_y = np.bincount(index, weights=y, minlength=bins)
    table = []
    for b in range(bins):
        n = int(counts[b])
        table.append(ReliabilityBin(
            lower=float(edges[b]), upper=float(edges[b + 1]), count=n,
            mean_predicted=float(sum_p[b] / n) if n else None,
            observed_rate=float(sum_y[b] / n) if n else None,
        ))
    return table


def expected_calibration_error(y_true: Any, y_score: Any,
                               bins: int = CALIBRATION_BINS) -> float | None:
    table = reliability_table(y_true, y_score, bins)
    total = sum(b.count for b in table)
    if total == 0:
        return None
    return float(sum(
        b.count / total * abs(b.mean_predicted - b.observed_rate)  # type: ignore[operator]
        for b in table if b.count
    ))


@dataclass(frozen=True)
class Metrics:
    """Metrics of one set of rows (the whole window or one slice)."""

    n: int
    positives: int
    roc_auc: float | None
    pr_auc: float | None
    log_loss: float | None
    brier: float | None
    ece: float | None
    reliability: list[ReliabilityBin] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flat(self) -> dict[str, float]:
        """The scalar metrics as `name -> value`; undefined ones are left out."""
        out = {"n": float(self.n), "positives": float(self.positives)}
        for name in ("roc_auc", "pr_auc", "log_loss", "brier", "ece"):
            value = getattr(self, name)
            if value is not None:
                out[name] = float(value)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Metrics:
        given = dict(values)
        given["reliability"] = [ReliabilityBin(**b) for b in given.get("reliability", [])]
        return cls(**given)


def compute_metrics(y_true: Any, y_score: Any, *, reliability: bool = True) -> Metrics:
    y, p = _check(y_true, y_score)
    return Metrics(
        n=len(y), positives=int(y.sum()), roc_auc=roc_auc(y, p),
        pr_auc=average_precision(y, p), log_loss=log_loss(y, p), brier=brier(y, p),
        ece=expected_calibration_error(y, p),
        reliability=reliability_table(y, p) if reliability else [],
    )


@dataclass(frozen=True)
class Evaluation:
    """A model's metrics on a backtest window, overall and per slice
    (`slices[column][value]`). `window` is [start_ms, end_ms) of event time."""

    overall: Metrics
    slices: dict[str, dict[str, Metrics]]
    window: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall.to_dict(),
            "slices": {c: {v: m.to_dict() for v, m in vs.items()} for c, vs in self.slices.items()},
            "window": list(self.window) if self.window else None,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Evaluation:
        window = values.get("window")
        return cls(
            overall=Metrics.from_dict(values["overall"]),
            slices={c: {v: Metrics.from_dict(m) for v, m in vs.items()}
                    for c, vs in values.get("slices", {}).items()},
            window=(int(window[0]), int(window[1])) if window else None,
        )

    def flat(self) -> dict[str, float]:
        """Overall scalar metrics as `name -> value` (for MLflow metrics)."""
        return self.overall.flat()


def evaluate(frame: Any, scores: Any, *, slice_columns: Sequence[str] = (),
             window: tuple[int, int] | None = None) -> Evaluation:
    """Metrics of `scores` (one per row) against `frame['label']`, overall and
    for each value of each slice column (reliability tables overall only)."""
    df = to_pandas(frame)
    if LABEL not in df.columns:
        raise TrainingError(f"the backtest data has no '{LABEL}' column")
    y = df[LABEL].to_numpy(dtype=np.float64)
    p = np.asarray(scores, dtype=np.float64).reshape(-1)
    overall = compute_metrics(y, p)
    slices: dict[str, dict[str, Metrics]] = {}
    for column in slice_columns:
        if column not in df.columns:
            raise TrainingError(f"slice column '{column}' is not in the backtest data")
        values = df[column].astype("string").fillna("<null>").to_numpy()
        per_value: dict[str, Metrics] = {}
        for value in sorted(set(values)):
            mask = values == value
            per_value[str(value)] = compute_metrics(y[mask], p[mask], reliability=False)
        slices[column] = per_value
    return Evaluation(overall, slices, window)


def evaluate_model(model: Any, frame: Any, features: Sequence[str], *,
                   slice_columns: Sequence[str] = (),
                   window: tuple[int, int] | None = None) -> Evaluation:
    """Score `frame` with a Keras model (see `lamina.models.scoring.score`) and
    evaluate the scores."""
    from lamina.models.scoring import score

    return evaluate(frame, score(model, frame, features=features),
                    slice_columns=slice_columns, window=window)


def time_split(frame: Any, train_end_ms: int, backtest_end_ms: int | None = None,
               *, train_start_ms: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split by event time: training rows `[train_start, train_end)` and
    backtest rows `[train_end, backtest_end)`, so a model is always judged on
    data later than anything it learned from."""
    df = to_pandas(frame)
    if EVENT_TIME not in df.columns:
        raise TrainingError(f"the data has no '{EVENT_TIME}' column to split on")
    t = df[EVENT_TIME].to_numpy()
    train = t < train_end_ms
    if train_start_ms is not None:
        train &= t >= train_start_ms
    backtest = t >= train_end_ms
    if backtest_end_ms is not None:
        backtest &= t < backtest_end_ms
    return df[train].reset_index(drop=True), df[backtest].reset_index(drop=True)


# --- the promotion gate ------------------------------------------------------------


@dataclass(frozen=True)
class GateThresholds:
    """When a candidate may replace the champion.

    Relative to the champion (on the same backtest window):
    - ROC AUC must improve by at least `min_roc_auc_gain` (and strictly:
      "beats" means better, not equal);
    - log loss may worsen by at most `max_log_loss_increase`;
    - no slice with at least `min_slice_examples` rows and
      `min_slice_positives` positives may lose more than `max_slice_auc_drop`
      of ROC AUC.
    Absolute, with or without a champion: ROC AUC at least `min_roc_auc`,
    ECE at most `max_ece`, at least `min_examples` rows and
    `min_positives` positives in the window.
    """

    min_roc_auc_gain: float = 0.002
    max_log_loss_increase: float = 0.005
    max_slice_auc_drop: float = 0.02
    min_slice_examples: int = 200
    min_slice_positives: int = 10
    min_roc_auc: float = 0.70
    max_ece: float = 0.05
    min_examples: int = 1000
    min_positives: int = 20

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    """The gate's verdict and every reason behind it (passes and failures)."""

    promote: bool
    reasons: list[str]

    def summary(self) -> str:
        failed = [r for r in self.reasons if r.startswith("FAIL")]
        verdict = "promote" if self.promote else "keep champion"
        return f"{verdict}: " + "; ".join(failed or self.reasons)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def gate(candidate: Evaluation, champion: Evaluation | None,
         thresholds: GateThresholds | None = None) -> Decision:
    """Decide whether `candidate` replaces `champion` (None: there is none).
    Every check adds a reason starting with "ok" or "FAIL"; the candidate is
    promoted only if none failed."""
    t = thresholds or GateThresholds()
    reasons: list[str] = []

    def check(passed: bool, text: str) -> None:
        reasons.append(("ok: " if passed else "FAIL: ") + text)

    c = candidate.overall
    check(c.n >= t.min_examples and c.positives >= t.min_positives,
          f"backtest has {c.n} rows / {c.positives} positives "
          f"(need {t.min_examples} / {t.min_positives})")
    check(c.roc_auc is not None and c.roc_auc >= t.min_roc_auc,
          f"ROC AUC {_fmt(c.roc_auc)} vs minimum {t.min_roc_auc:.4f}")
    check(c.ece is not None and c.ece <= t.max_ece,
          f"ECE {_fmt(c.ece)} vs maximum {t.max_ece:.4f}")

    if champion is None:
        reasons.append("ok: no champion; absolute minimums decide")
        return Decision(not any(r.startswith("FAIL") for r in reasons), reasons)

    h = champion.overall
    same_window = (candidate.window == champion.window and c.n == h.n
                   and c.positives == h.positives)
    check(same_window,
          f"candidate and champion evaluated on the same rows "
          f"(window {iso_window(candidate.window)} vs {iso_window(champion.window)}, "
          f"n {c.n} vs {h.n})")
    if c.roc_auc is not None and h.roc_auc is not None:
        gain = c.roc_auc - h.roc_auc
        check(gain > 0 and gain >= t.min_roc_auc_gain,
              f"ROC AUC {_fmt(c.roc_auc)} vs champion {_fmt(h.roc_auc)} "
              f"(gain {gain:+.4f}, need >= {t.min_roc_auc_gain:+.4f})")
    else:
        check(False, "ROC AUC undefined on the backtest window")
    if c.log_loss is not None and h.log_loss is not None:
        worse = c.log_loss - h.log_loss
        check(worse <= t.max_log_loss_increase,
              f"log loss {_fmt(c.log_loss)} vs champion {_fmt(h.log_loss)} "
              f"(change {worse:+.4f}, allowed <= {t.max_log_loss_increase:+.4f})")
    for column, values in sorted(candidate.slices.items()):
        for value, cm in sorted(values.items()):
            hm = champion.slices.get(column, {}).get(value)
            if hm is None or cm.roc_auc is None or hm.roc_auc is None:
                continue
            if cm.n < t.min_slice_examples or cm.positives < t.min_slice_positives:
                continue  # too few rows for the AUC to mean much
            drop = hm.roc_auc - cm.roc_auc
            if drop > t.max_slice_auc_drop:
                check(False, f"slice {column}={value} ROC AUC {_fmt(cm.roc_auc)} vs champion "
                             f"{_fmt(hm.roc_auc)} (drop {drop:.4f} > {t.max_slice_auc_drop:.4f}, "
                             f"n={cm.n})")
    if not any(r.startswith("FAIL: slice") for r in reasons):
        reasons.append(f"ok: no slice with >= {t.min_slice_examples} rows drops more than "
                       f"{t.max_slice_auc_drop:.4f} ROC AUC")
    return Decision(not any(r.startswith("FAIL") for r in reasons), reasons)


def json_safe(value: Any) -> Any:
    """NaN/inf -> None, recursively (JSON and MLflow tags refuse them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
