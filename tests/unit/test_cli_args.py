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
