"""`lamina train` takes the master snapshot from the training set's own
lineage, refuses a --snapshot that contradicts it, and records it as an
int. The refusals come before any training (no TensorFlow, no MLflow)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from lamina import cli
from lamina.batch.commands import training_set_snapshot
from lamina.batch.model import TrainingError
from lamina.batch.training_set import LINEAGE_FILE, TrainingSetMetadata
from lamina.models.registry import Lineage


def _training_set(folder: Path, snapshot: int | None) -> Path:
    """A Parquet training-set folder, with a lineage file when `snapshot`."""
    folder.mkdir(parents=True)
    pd.DataFrame({"event_id": ["a", "b"], "event_time": [1, 2], "label": [0, 1]}).to_parquet(
        folder / "part-0.parquet")
    if snapshot is not None:
        meta = TrainingSetMetadata(
            master_uri="/tmp/master", snapshot=snapshot, group="card_transactions",
            group_fingerprint="f" * 16, start_ms=0, end_ms=10, as_of_ms=10,
            label_maturity_ms=0, code_version="test", rows=2)
        (folder / LINEAGE_FILE).write_text(meta.to_json())
    return folder


@pytest.fixture
def cli_logging() -> Iterator[None]:
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_lamina", False)]:
        root.removeHandler(handler)


def test_the_snapshot_defaults_to_the_training_sets_lineage(tmp_path: Path) -> None:
    built = _training_set(tmp_path / "set", snapshot=4)
    assert training_set_snapshot(built, None) == 4
    assert training_set_snapshot(str(built), 4) == 4


def test_a_snapshot_that_contradicts_the_lineage_is_refused_naming_both(tmp_path: Path) -> None:
    built = _training_set(tmp_path / "set", snapshot=4)
    with pytest.raises(TrainingError) as refused:
        training_set_snapshot(built, 999)
    message = str(refused.value)
    assert "snapshot 999 was given" in message and "master snapshot 4" in message


def test_a_set_without_lineage_needs_the_snapshot(tmp_path: Path) -> None:
    bare = _training_set(tmp_path / "set", snapshot=None)
    with pytest.raises(TrainingError, match="no training-set lineage.*--snapshot"):
        training_set_snapshot(bare, None)
    assert training_set_snapshot(bare, 7) == 7
    with pytest.raises(TrainingError, match="--snapshot"):
        training_set_snapshot(pd.DataFrame({"label": [0]}), None)
    with pytest.raises(TrainingError, match="integer >= 0"):
        training_set_snapshot(bare, "7")  # type: ignore[arg-type]


@pytest.mark.usefixtures("cli_logging")
def test_lamina_train_refuses_a_contradicting_snapshot_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LAMINA_HOME", str(tmp_path / "home"))
    built = _training_set(tmp_path / "set", snapshot=4)
    assert cli.main(["train", str(built), "--snapshot", "999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lamina train: error: snapshot 999 was given")
    assert "master snapshot 4" in err[-1]
    bare = _training_set(tmp_path / "bare", snapshot=None)
    assert cli.main(["train", str(bare)]) == 2
    assert "give it with --snapshot N" in capsys.readouterr().err
    assert not (tmp_path / "home" / "models").exists()  # refused before training


@pytest.mark.parametrize("bad", ["-1", "four", "4.0"])
def test_train_snapshot_must_be_a_non_negative_integer(bad: str) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["train", "set", "--snapshot", bad])
    assert exited.value.code == 2
    args = cli.build_parser().parse_args(["train", "set", "--snapshot", "4"])
    assert args.snapshot == 4


def test_lineage_keeps_the_snapshot_as_an_int() -> None:
    values = {"snapshot_id": "4", "code_version": "test", "params": {}, "metrics": {},
              "training_window": [0, 10], "features": ["amount"]}
    # What an older `lamina train --snapshot 4` stored: read back as the int.
    assert Lineage.from_dict(values).snapshot_id == 4
    assert Lineage.from_dict({**values, "snapshot_id": 4}).to_dict()["snapshot_id"] == 4
