"""Errors and reasons about event-time windows name the times in ISO-8601
UTC (what the CLI takes, e.g. `lamina training-set --start`), with the
epoch milliseconds beside them, never bare epoch ms."""

from __future__ import annotations

import pytest

from lamina.batch.commands import check_backtest_window
from lamina.batch.evaluate import Evaluation, Metrics, gate, iso_utc
from lamina.batch.model import TrainingError
from lamina.batch.training_set import _check_window
from lamina.errors import ConfigError

JAN_1 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def test_iso_utc_shows_milliseconds_only_when_there_are_some() -> None:
    assert iso_utc(JAN_1) == "2026-01-01T00:00:00Z"
    assert iso_utc(JAN_1 + 9 * DAY_MS + 1) == "2026-01-10T00:00:00.001Z"
    assert iso_utc(10**20) == "out of range"


def test_a_backtest_before_the_end_of_training_is_refused_with_iso_times() -> None:
    train_end = JAN_1 + 10 * DAY_MS + 1  # the training window ends just after its last row
    with pytest.raises(TrainingError) as caught:
        check_backtest_window((JAN_1 + 9 * DAY_MS, JAN_1 + 12 * DAY_MS), (JAN_1, train_end),
                              version=3)
    message = str(caught.value)
    assert "starts at 2026-01-10T00:00:00Z" in message
    assert f"({JAN_1 + 9 * DAY_MS} ms)" in message
    assert "version 3's training window" in message
    assert f"2026-01-11T00:00:00.001Z ({train_end} ms)" in message
    assert "later in time" in message


def test_a_backtest_after_training_passes() -> None:
    check_backtest_window((JAN_1 + 10 * DAY_MS, JAN_1 + 12 * DAY_MS), (JAN_1, JAN_1 + 10 * DAY_MS),
                          version=1)
    check_backtest_window(None, (JAN_1, JAN_1 + DAY_MS), version=1)


def test_an_empty_training_set_window_names_both_ends_in_iso() -> None:
    with pytest.raises(ConfigError) as caught:
        _check_window(JAN_1 + DAY_MS, JAN_1, 0)
    message = str(caught.value)
    assert "2026-01-02T00:00:00Z" in message and "2026-01-01T00:00:00Z" in message
    assert str(JAN_1) in message


def _evaluation(window: tuple[int, int]) -> Evaluation:
    metrics = Metrics(n=5000, positives=250, roc_auc=0.85, pr_auc=0.5, log_loss=0.2,
                      brier=0.05, ece=0.01)
    return Evaluation(metrics, {}, window)


def test_the_gate_names_differing_windows_in_iso() -> None:
    decision = gate(_evaluation((JAN_1 + DAY_MS, JAN_1 + 2 * DAY_MS)),
                    _evaluation((JAN_1, JAN_1 + DAY_MS)))
    failed = [r for r in decision.reasons if r.startswith("FAIL") and "same rows" in r]
    assert failed, decision.reasons
    assert "2026-01-02T00:00:00Z to 2026-01-03T00:00:00Z" in failed[0]
    assert "2026-01-01T00:00:00Z to 2026-01-02T00:00:00Z" in failed[0]
