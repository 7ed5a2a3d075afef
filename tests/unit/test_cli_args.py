"""The batch commands' arguments as `lamina` parses them (no Spark,
TensorFlow or MLflow: parsing only, and refusals that come before any)."""

from __future__ import annotations

import pytest

from lamina import cli


def _parse(*argv: str) -> object:
    return cli.build_parser().parse_args(list(argv))


def test_evaluate_needs_exactly_one_of_candidate_and_champion(
        capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse("evaluate", "bt.parquet", "--champion")
    assert args.champion is True and args.candidate is None  # type: ignore[attr-defined]
    args = _parse("evaluate", "bt.parquet", "--candidate", "3", "--dry-run")
    assert args.candidate == 3 and not args.champion  # type: ignore[attr-defined]
    for argv in (["evaluate", "bt.parquet"],
                 ["evaluate", "bt.parquet", "--candidate", "3", "--champion"],
                 ["evaluate", "bt.parquet", "--candidate", "0"]):
        with pytest.raises(SystemExit) as exited:
            _parse(*argv)
        assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "one of the arguments --candidate --champion is required" in err
    assert "not allowed with argument" in err


def test_generate_takes_the_fraud_rate_as_a_fraction(capsys: pytest.CaptureFixture[str]) -> None:
    from lamina.generator import GeneratorConfig

    config = cli._generator_config(_parse("generate", "--fraud-rate", "0.1", "--cards", "50",
                                          "--days", "3", "--start", "2026-02-01"))
    assert config.fraud_card_rate == 0.1
    assert (config.cards, config.days, config.start) == (50, 3.0, 1_769_904_000_000)
    assert cli._generator_config(_parse("generate")).fraud_card_rate == \
        GeneratorConfig().fraud_card_rate
    with pytest.raises(SystemExit):
        _parse("generate", "--help")
    shown = " ".join(capsys.readouterr().out.split())
    assert f"(default {GeneratorConfig().fraud_card_rate})" in shown
    for bad in ("1.5", "-0.1", "ten"):
        with pytest.raises(SystemExit) as exited:
            _parse("generate", "--fraud-rate", bad)
        assert exited.value.code == 2
    assert "--fraud-rate" in capsys.readouterr().err


def test_speed_run_takes_the_lands_stop_rules_and_refuses_a_too_long_lateness_in_one_line(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse("speed", "run", "--max-events", "10", "--idle-exit", "2.5", "--quiet")
    assert (args.max_events, args.idle_exit, args.quiet) == (10, 2.5, True)  # type: ignore[attr-defined]
    with pytest.raises(SystemExit) as exited:
        _parse("speed", "run", "--max-events", "0")
    assert exited.value.code == 2
    # Refused before any broker is contacted: one line, exit 2, no traceback.
    monkeypatch.setenv("LAMINA_HOME", str(tmp_path))
    monkeypatch.setenv("LAMINA_SPEED_ALLOWED_LATENESS_MS", str(2 * 3_600_000))
    capsys.readouterr()
    assert cli.main(["speed", "run", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "allowed_lateness_ms" in err[0] and "Traceback" not in err[0]


def test_consistency_report_refuses_a_bad_range_in_one_line_before_any_spark(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LAMINA_HOME", str(tmp_path))
    for argv, problem in (
            (["--since", "yesterday"], "'yesterday' is not an ISO-8601 time"),
            (["--since", "2026-01-02", "--until", "2026-01-01"], "must be before --until")):
        assert cli.main(["consistency", "report", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and problem in err and "Traceback" not in err
