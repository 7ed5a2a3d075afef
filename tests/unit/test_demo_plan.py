"""How `lamina demo` plans its batch loop (windows, label maturity), and
that it refuses clearly, before starting anything, when it cannot run it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina import cli, demo
from lamina.config import Settings
from lamina.errors import ConfigError
from lamina.generator import GeneratorConfig

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def _expected_rows(config: GeneratorConfig, window: tuple[int, int]) -> float:
    return config.transactions / config.days * (window[1] - window[0]) / DAY_MS


def test_the_default_demo_trains_and_backtests_on_mature_pre_drift_data() -> None:
    config = GeneratorConfig()  # what `lamina demo` generates by default
    plan = demo.demo_plan(config)
    (train_start, train_end), (back_start, back_end) = plan.train, plan.backtest
    assert plan.label_maturity_ms == demo.DEMO_LABEL_MATURITY_DAYS * DAY_MS
    assert config.start < train_start < train_end == back_start < back_end
    assert config.drift_at_ms is not None and back_end <= config.drift_at_ms
    # Labels are as of the end of the period: every row is past the maturity.
    assert back_end <= config.end_ms - plan.label_maturity_ms
    assert all(t % HOUR_MS == 0 for t in (train_start, train_end, back_start, back_end))
    # The default's two windows are each a third of the pre-drift period.
    assert train_end - train_start == back_end - back_start
    assert (back_end - back_start) >= 3 * DAY_MS
    assert config.drift_at_ms - back_end < HOUR_MS


def test_a_large_demo_keeps_its_training_sets_small() -> None:
    config = GeneratorConfig(transactions=1_000_000)
    plan = demo.demo_plan(config)
    for window in (plan.train, plan.backtest):
        assert _expected_rows(config, window) <= demo.DEMO_MAX_SET_ROWS
    assert plan.backtest[1] <= (config.drift_at_ms or 0)


def test_without_drift_the_windows_end_where_labels_are_mature() -> None:
    config = GeneratorConfig(drift_at=None)
    plan = demo.demo_plan(config)
    assert plan.drift_at_ms is None
    assert plan.backtest[1] == config.end_ms - demo.DEMO_LABEL_MATURITY_DAYS * DAY_MS


def test_a_period_too_short_for_the_batch_loop_is_refused_with_the_way_out() -> None:
    with pytest.raises(ConfigError, match="--no-batch"):
        demo.demo_plan(GeneratorConfig(days=4.0))


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
