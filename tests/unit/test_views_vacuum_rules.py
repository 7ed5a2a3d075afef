"""The pure rules behind ``vacuum_views``: reading the table's retention
property, and which file a Hadoop checksum belongs to."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from lamina.batch.published import ViewsError
from lamina.batch.vacuum import DEFAULT_RETENTION_HOURS, _checksum_source, retention_minimum_hours


def _table(configuration: dict[str, str]) -> Any:
    return SimpleNamespace(metadata=lambda: SimpleNamespace(configuration=configuration))


@pytest.mark.parametrize(("value", "hours"), [
    ("interval 1 week", 168), ("interval 7 days", 168), ("interval 168 hours", 168),
    ("interval 0 hours", 0), ("interval 2 days 6 hours", 54), ("INTERVAL 90 minutes", 2),
    ("interval 1 hour", 1),
])
def test_the_retention_minimum_is_the_tables_deleted_file_retention_in_whole_hours(
        value: str, hours: int) -> None:
    assert retention_minimum_hours(
        _table({"delta.deletedFileRetentionDuration": value})) == hours


def test_the_retention_minimum_is_a_week_when_the_table_does_not_set_it() -> None:
    assert retention_minimum_hours(_table({})) == DEFAULT_RETENTION_HOURS == 168


@pytest.mark.parametrize("value", ["a week", "interval", "interval 3 fortnights",
                                   "interval x days"])
def test_an_unreadable_retention_property_is_refused_not_guessed(value: str) -> None:
    with pytest.raises(ViewsError, match="deletedFileRetentionDuration"):
        retention_minimum_hours(_table({"delta.deletedFileRetentionDuration": value}))


def test_a_hadoop_checksum_file_names_the_file_it_checks() -> None:
    assert _checksum_source("hop_ms=300000/.part-0.parquet.crc") == "hop_ms=300000/part-0.parquet"
    assert _checksum_source(".part-0.parquet.crc") == "part-0.parquet"
    assert _checksum_source("hop_ms=300000/part-0.parquet") is None
    assert _checksum_source("hop_ms=300000/.hidden") is None
