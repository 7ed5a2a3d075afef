"""A training set that leaves transactions out as not yet mature says so,
with the --maturity-days or --end that would change it (pure: the message
from the written set's metadata)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lamina.batch.training_set import TrainingSetMetadata, maturity_warning

JAN_1 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE_MS = 60_000
DAY_MS = 86_400_000


def _written(**fields: object) -> TrainingSetMetadata:
    base = TrainingSetMetadata(
        master_uri="/m", snapshot=4, group="card_transactions", group_fingerprint="0" * 16,
        start_ms=JAN_1, end_ms=JAN_1 + 10 * DAY_MS, as_of_ms=JAN_1 + 14 * DAY_MS,
        label_maturity_ms=30 * DAY_MS, code_version="test", rows=292)
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def test_a_maturity_longer_than_the_data_is_explained_with_the_maturity_keeping_the_rows(
) -> None:
    # 14 days of data, a 30-day maturity: only the labelled rows are left.
    line = maturity_warning(_written(not_mature_rows=5_708,
                                     latest_not_mature_ms=JAN_1 + 10 * DAY_MS - MINUTE_MS))
    assert line is not None and "\n" not in line
    assert line.startswith("5,708 of 6,000 transactions in the window were left out as not "
                           "yet mature")
    assert "labels as of 2026-01-15T00:00:00Z minus the 30-day label maturity" in line
    assert "--maturity-days 4 or less keeps them" in line
    assert "--end" not in line  # no part of this window is mature at 30 days


def test_a_window_reaching_past_maturity_is_told_the_end_that_makes_it_mature() -> None:
    line = maturity_warning(_written(end_ms=JAN_1 + 14 * DAY_MS, label_maturity_ms=4 * DAY_MS,
                                     not_mature_rows=1_200,
                                     latest_not_mature_ms=JAN_1 + 14 * DAY_MS - 1_000))
    assert line is not None
    assert "--end 2026-01-11T00:00:00Z makes every row of the window mature" in line
    assert "--maturity-days" not in line  # the newest ones are a second old: none would do
    assert "4-day label maturity" in line


def test_nothing_to_say_when_every_row_was_mature() -> None:
    assert maturity_warning(_written(not_mature_rows=0)) is None
    assert maturity_warning(_written()) is None  # metadata of an older build: no count


def test_lamina_training_set_warns_in_one_line_and_in_its_json(
        capsys: pytest.CaptureFixture[str]) -> None:
    from lamina import cli

    written = _written(not_mature_rows=5_708,
                       latest_not_mature_ms=JAN_1 + 10 * DAY_MS - MINUTE_MS)
    cli.print_training_set("/sets/x", written)
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["not_mature_rows"] == 5_708 and result["rows"] == 292
    assert result["warning"] == maturity_warning(written)
    assert captured.err.splitlines() == [f"lamina training-set: warning: {result['warning']}"]

    cli.print_training_set("/sets/y", _written(not_mature_rows=0))
    captured = capsys.readouterr()
    assert json.loads(captured.out)["warning"] is None and captured.err == ""
