"""How `lamina demo` cuts its period (history, windows, label maturity), and
that it refuses clearly, before starting anything, when it cannot run it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina import cli, demo, demo_loop
from lamina.config import Settings
from lamina.errors import ConfigError
from lamina.generator import GeneratorConfig

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def _expected_rows(config: GeneratorConfig, window: tuple[int, int]) -> float:
    return config.transactions / config.days * (window[1] - window[0]) / DAY_MS


def _demo_config(**fields: object) -> GeneratorConfig:
    return demo_loop.demo_generator_config(GeneratorConfig(**fields),  # type: ignore[arg-type]
                                           fraud_rate_given=False)


def test_the_default_demo_cuts_a_history_before_the_drift_and_retrains_after_it() -> None:
    config = _demo_config()  # what `lamina demo` generates by default
    t = demo_loop.demo_timeline(config)
    drift = config.drift_at_ms
    assert drift is not None and t.drift_at_ms == drift
    # The first champion: trained and backtested before the history ends,
    # every row mature (labels as of the history's end).
    (train_start, train_end), (back_start, back_end) = t.first_train, t.first_backtest
    assert config.start < train_start < train_end == back_start < back_end
    assert back_end <= t.history_end_ms - t.label_maturity_ms
    assert t.history_end_ms < drift
    # The second model: both windows after the drift, mature at the
    # retraining point, which leaves room for the new champion to stream.
    (train2_start, train2_end), (back2_start, back2_end) = t.second_train, t.second_backtest
    assert drift <= train2_start < train2_end == back2_start < back2_end
    assert back2_end <= t.retrain_at_ms - t.label_maturity_ms
    assert t.retrain_at_ms + DAY_MS <= config.end_ms
    # The demo's labels arrive within its maturity.
    assert max(config.fraud_label_delay_days) * DAY_MS <= t.label_maturity_ms
    assert max(config.genuine_label_delay_days) * DAY_MS <= t.label_maturity_ms
    cuts = (train_start, train_end, back_start, back_end, train2_start, train2_end,
            back2_start, back2_end, t.history_end_ms, t.retrain_at_ms)
    assert all(c % HOUR_MS == 0 for c in cuts)
    # The post-drift backtest expects more rows than the gate's minimum (1000).
    assert _expected_rows(config, t.second_backtest) >= 1500


def test_a_large_demo_keeps_its_training_sets_small() -> None:
    config = _demo_config(transactions=1_000_000)
    t = demo_loop.demo_timeline(config)
    for window in (t.first_train, t.first_backtest, t.second_train, t.second_backtest):
        assert _expected_rows(config, window) <= demo_loop.DEMO_MAX_SET_ROWS


def test_the_full_demo_needs_a_drift() -> None:
    with pytest.raises(ConfigError, match="--no-batch"):
        demo_loop.demo_timeline(_demo_config(drift_at=None))


def test_a_period_too_short_for_the_batch_loop_is_refused_with_the_way_out() -> None:
    with pytest.raises(ConfigError, match="--no-batch"):
        demo_loop.demo_timeline(_demo_config(days=4.0))


def test_the_demo_keeps_a_fraud_rate_the_user_chose() -> None:
    args = cli.build_parser().parse_args(["demo", "--fraud-rate", "0.03"])
    config = demo_loop.demo_generator_config(cli._generator_config(args),
                                             fraud_rate_given=True)
    assert config.fraud_card_rate == 0.03
    assert config.fraud_label_delay_days == demo_loop.DEMO_LABEL_DELAY_DAYS


def test_the_demo_names_missing_batch_packages_before_starting_kafka(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorflow" else real_find_spec(name))
    args = cli.build_parser().parse_args(["demo", "--quiet"])
    with pytest.raises(ConfigError) as refused:
        cli.cmd_demo(args, Settings(home=tmp_path))
    message = str(refused.value)
    assert "tensorflow" in message and "--no-batch" in message and ".[batch]" in message
    assert not (tmp_path / "demo").exists()  # nothing started, nothing written



def test_an_unexpected_failure_in_a_demo_step_becomes_one_line_naming_the_step(
        capsys: pytest.CaptureFixture[str]) -> None:
    from lamina.errors import LaminaError

    step = demo._DemoStep(total=2)
    with pytest.raises(LaminaError) as failed, step("training", "training"):
        raise RuntimeError("Py4JJavaError: boom\n\tat org.apache.spark.Something(...)")
    assert str(failed.value).startswith(
        "the training step failed: RuntimeError: Py4JJavaError: boom (the traceback:")
    assert "\n" not in str(failed.value)
    assert capsys.readouterr().out == "[1/2] training\n"
    # A Lamina error already says what to do: it passes through unchanged.
    refused = ConfigError("no room")
    with pytest.raises(ConfigError) as passed, step("views", "views"):
        raise refused
    assert passed.value is refused
