"""Vacuuming the batch-views table (``lamina.batch.vacuum.vacuum_views``).

Real views tables, published by the real Spark job on a small generated
master dataset: each publish is an overwrite commit, so the files of the
view it replaced stay on disk until a vacuum removes them. What must hold:

* with the explicit unsafe flag and 0 h retention the replaced files are
  deleted, and the published view reads exactly as before (and a later
  publish, and "already published" detection, still work on a table whose
  latest commits are a vacuum's);
* without the flag, a retention below the table's safe minimum is refused,
  and the default keeps the previous view readable -- even when the table's
  minimum allows removing every replaced file.

Run with ``-p tests.spark_fixtures`` (registered in tests/conftest.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lamina.batch.published import BatchViewStore, ViewsError, latest_published, read_published
from lamina.batch.vacuum import DEFAULT_RETENTION_HOURS, vacuum_views
from lamina.batch.views import run_batch_views
from lamina.generator import GeneratorConfig, write_files
from lamina.master.dataset import MasterDataset
from lamina.master.importer import import_files
from lamina.schemas.validation import EventValidator
from lamina.schemas.view_definitions import DAY_MS, WINDOWS, Aggregate, GroupBy

pytestmark = pytest.mark.integration

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
#: Small and quick to publish: two aggregates, hops of 5 min and 1 h.
SMALL = GroupBy(
    name="vacuum_test",
    event_type="transaction",
    entity_key="card_id",
    aggregates=(
        Aggregate("n", "count", None, (WINDOWS["1h"], WINDOWS["24h"])),
        Aggregate("amount_total", "sum", "amount", (WINDOWS["24h"],), scale=2),
    ),
)
RETENTION_PROPERTY = "spark.databricks.delta.properties.defaults.deletedFileRetentionDuration"


@pytest.fixture(scope="module")
def master_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("vacuum-master")
    config = GeneratorConfig(seed=3, cards=20, merchants=30, transactions=1_500,
                             start=START_MS, days=4.0)
    files = write_files(config, root / "files")
    dataset = MasterDataset(str(root / "master"))
    import_files(dataset, files, EventValidator(), root / "dlq", progress=False)
    return dataset.uri


def _publish(spark: Any, master_uri: str, views_uri: str, day: int) -> int:
    result = run_batch_views(spark, master_uri, views_uri, SMALL, snapshot=None,
                             cutoff_ms=START_MS + day * DAY_MS)
    assert result.status == "published" and result.version is not None, result
    assert result.rows
    return result.version


def _files(views_uri: str, version: int) -> set[str]:
    """Data files of a version, relative to the table (as vacuum reports them)."""
    actions = pa.table(DeltaTable(views_uri, version=version).get_add_actions(flatten=True))
    return set(actions.column("path").to_pylist())


def _with_checksums(views_uri: str, files: set[str]) -> set[str]:
    """The files and the Hadoop checksum (``dir/.NAME.crc``) beside each."""
    checksums = {str(Path(f).parent / f".{Path(f).name}.crc").removeprefix("./") for f in files}
    return files | {c for c in checksums if (Path(views_uri) / c).exists()}


def _sorted_rows(table: pa.Table) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda r: (r["hop_ms"], r["entity_key"],
                                                     r["tile_start"]))


def test_vacuum_with_zero_retention_and_the_unsafe_flag_deletes_replaced_files_and_the_view_reads_the_same(  # noqa: E501
        spark: Any, master_uri: str, tmp_path: Path) -> None:
    views_uri = str(tmp_path / "views")
    old = _publish(spark, master_uri, views_uri, day=2)
    new = _publish(spark, master_uri, views_uri, day=3)
    replaced = _with_checksums(views_uri, _files(views_uri, old) - _files(views_uri, new))
    live = _with_checksums(views_uri, _files(views_uri, new))
    assert replaced, "an overwrite publish writes new files"
    metadata_before, rows_before = read_published(views_uri)

    with pytest.raises(ViewsError, match="below the safe minimum of 168 h"):
        vacuum_views(views_uri, 0)

    listed = vacuum_views(views_uri, 0, dry_run=True, unsafe_retention=True)
    assert set(listed.files) == replaced and listed.dry_run
    assert listed.bytes and listed.bytes > 0
    assert all((Path(views_uri) / f).exists() for f in replaced)  # a dry run deletes nothing

    done = vacuum_views(views_uri, 0, unsafe_retention=True)
    assert set(done.files) == replaced and not done.dry_run
    assert done.kept_versions == () and done.published_version == new
    assert not any((Path(views_uri) / f).exists() for f in replaced)
    assert all((Path(views_uri) / f).exists() for f in live)

    # The latest version is now a vacuum's commit; readers see the same view.
    vacuumed = DeltaTable(views_uri).version()
    assert vacuumed > new
    metadata_after, rows_after = read_published(views_uri)
    assert metadata_after == metadata_before
    assert _sorted_rows(rows_after) == _sorted_rows(rows_before)
    assert latest_published(views_uri) is not None
    assert latest_published(views_uri)[1] == metadata_before  # type: ignore[index]
    assert BatchViewStore(views_uri, SMALL).cutoff_ms == START_MS + 3 * DAY_MS
    with pytest.raises(OSError):  # the old version's files are gone
        DeltaTable(views_uri, version=old).to_pyarrow_table()

    # The job still recognises the published view, and publishes on top of the vacuum.
    again = run_batch_views(spark, master_uri, views_uri, SMALL, snapshot=None,
                            cutoff_ms=START_MS + 3 * DAY_MS)
    assert again.status == "skipped"
    assert _publish(spark, master_uri, views_uri, day=4) > vacuumed
    assert read_published(views_uri)[0].cutoff_ms == START_MS + 4 * DAY_MS


def test_default_vacuum_keeps_the_previous_view_readable(
        spark: Any, master_uri: str, tmp_path: Path) -> None:
    views_uri = str(tmp_path / "views")
    first = _publish(spark, master_uri, views_uri, day=2)
    second = _publish(spark, master_uri, views_uri, day=3)
    previous_rows = _sorted_rows(DeltaTable(views_uri, version=first).to_pyarrow_table())

    listed = vacuum_views(views_uri, dry_run=True)
    assert listed.retain_hours == DEFAULT_RETENTION_HOURS == listed.minimum_hours
    assert listed.kept_versions == (first,) and listed.files == ()
    done = vacuum_views(views_uri)
    assert done.files == ()
    assert _sorted_rows(DeltaTable(views_uri, version=first).to_pyarrow_table()) == previous_rows
    assert read_published(views_uri)[0].cutoff_ms == START_MS + 3 * DAY_MS
    assert second > first


def test_default_vacuum_keeps_the_previous_view_even_when_the_table_allows_zero_retention(
        spark: Any, master_uri: str, tmp_path: Path) -> None:
    """A table created with ``deletedFileRetentionDuration = 0 hours``: any
    replaced file is old enough, yet the previous publish's files stay and
    only older ones go."""
    views_uri = str(tmp_path / "views")
    spark.conf.set(RETENTION_PROPERTY, "interval 0 hours")
    try:
        v1 = _publish(spark, master_uri, views_uri, day=2)
    finally:
        spark.conf.unset(RETENTION_PROPERTY)
    v2 = _publish(spark, master_uri, views_uri, day=3)
    v3 = _publish(spark, master_uri, views_uri, day=4)
    v2_rows = _sorted_rows(DeltaTable(views_uri, version=v2).to_pyarrow_table())
    v1_only = _files(views_uri, v1) - _files(views_uri, v2) - _files(views_uri, v3)
    assert v1_only
    expected = _with_checksums(views_uri, v1_only)

    done = vacuum_views(views_uri)
    assert done.minimum_hours == 0 and done.retain_hours == 0
    assert done.kept_versions == (v2,) and done.published_version == v3
    assert set(done.files) == expected
    assert not any((Path(views_uri) / f).exists() for f in done.files)
    assert _sorted_rows(DeltaTable(views_uri, version=v2).to_pyarrow_table()) == v2_rows
    assert read_published(views_uri)[0].cutoff_ms == START_MS + 4 * DAY_MS


@pytest.fixture
def cli_logging() -> Iterator[None]:
    """`lamina.cli.main` adds a stderr log handler (pytest's captured stream
    here); take it off again, or py4j's shutdown logs hit a closed file."""
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_lamina", False)]:
        root.removeHandler(handler)


@pytest.mark.usefixtures("cli_logging")
def test_lamina_batch_vacuum_prints_the_files_and_refuses_a_short_retention_without_the_flag(
        spark: Any, master_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from lamina import cli

    home = tmp_path / "home"
    views_uri = str(home / "views" / "card_transactions")  # where the command looks
    old = _publish(spark, master_uri, views_uri, day=2)
    new = _publish(spark, master_uri, views_uri, day=3)
    replaced = _with_checksums(views_uri, _files(views_uri, old) - _files(views_uri, new))
    monkeypatch.setenv("LAMINA_HOME", str(home))

    assert cli.main(["batch", "vacuum", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["would_remove"] == [] and out["retain_hours"] == 168
    assert out["kept_versions"] == [old]

    assert cli.main(["batch", "vacuum", "--retain-hours", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lamina batch: error: a retention of 0 h")
    assert "--unsafe-retention" in err[0]

    assert cli.main(["batch", "vacuum", "--retain-hours", "0", "--unsafe-retention"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert set(out["removed"]) == replaced and out["files"] == len(replaced) and out["bytes"] > 0
    assert f"removed {len(replaced)} files" in captured.err
