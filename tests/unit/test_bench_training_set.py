"""The training-set benchmark's DuckDB reference computes the training set
Lamina defines: the same rows, labels and features (DuckDB adds floats and
counts distinct values exactly; the reference sums cents and uses HLL, exact
on these small sets), checked against the pure-Python reference without
Spark, so the benchmark's ratio compares like with like."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow.compute as pc
import pytest

from benchmarks.training_set import prepare_data, run_duckdb, training_set_sql
from lamina.batch import training_set as ts
from lamina.master.dataset import MasterDataset
from lamina.schemas.card_views import CARD_FRAUD, FEATURES

TRANSACTIONS = 3_000


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return prepare_data(TRANSACTIONS, cache_root=tmp_path_factory.mktemp("bench-cache"))


def _raw(master_uri: str, event_type: str) -> list[dict[str, Any]]:
    rows = MasterDataset(master_uri).read()
    rows = rows.filter(pc.equal(rows.column("event_type"), event_type)).sort_by(
        [("ingest_time", "ascending"), ("kafka_topic", "ascending"),
         ("kafka_partition", "ascending"), ("kafka_offset", "ascending")])
    seen: dict[str, dict[str, Any]] = {}
    for raw in rows.column("payload").to_pylist():
        event = orjson.loads(raw)
        seen.setdefault(event["event_id"], event)
    return list(seen.values())


def _expected(data: Any) -> dict[str, dict[str, Any]]:
    """The training rows by the Python reference: entity_rows per card, then
    the label rules of batch/training_set.py (maturity 0)."""
    by_card: dict[str, list[dict[str, Any]]] = {}
    for event in _raw(data.master_uri, "transaction"):
        if event["event_time"] < data.end_ms:
            by_card.setdefault(event["card_id"], []).append(event)
    fraud, genuine = set(), set()
    for label in _raw(data.master_uri, "label"):
        if label["event_time"] <= data.as_of_ms:
            (fraud if label["is_fraud"] else genuine).add(label["transaction_id"])
    out = {}
    for events in by_card.values():
        for row in ts.entity_rows(CARD_FRAUD, events, data.start_ms, data.end_ms):
            event_id = row["event_id"]
            label = 1 if event_id in fraud else 0 if (
                event_id in genuine or row["event_time"] < data.as_of_ms) else None
            if label is not None:
                out[event_id] = {**row, "label": label}
    return out


def test_duckdb_training_set_equals_the_python_reference(small_data: Any,
                                                         tmp_path: Path) -> None:
    run = run_duckdb(small_data, tmp_path / "rows.parquet")
    got = {r["event_id"]: r for r in duckdb.sql(
        f"SELECT * FROM read_parquet('{tmp_path / 'rows.parquet'}')").to_arrow_table().to_pylist()}
    expected = _expected(small_data)
    # as_of is build_training_set's default: the newest event of any type (ms).
    newest = max(e["event_time"] for kind in ("transaction", "label")
                 for e in _raw(small_data.master_uri, kind))
    assert small_data.as_of_ms == newest
    assert run.rows == len(got) == len(expected) > 1_000
    assert set(got) == set(expected)
    assert sum(r["label"] for r in expected.values()) > 0
    for event_id, want in expected.items():
        have = got[event_id]
        assert (have["card_id"], have["event_time"], have["label"]) == (
            want["card_id"], want["event_time"], want["label"]), event_id
        for name in FEATURES:
            assert math.isclose(have[name], want[name], rel_tol=1e-9, abs_tol=1e-9), (
                event_id, name, have[name], want[name])


def test_the_sql_is_for_the_card_views_only(small_data: Any) -> None:
    from benchmarks.common import BenchmarkError
    from tests.unit.test_views import ALL_OPS

    assert "count(DISTINCT h.merchant_id)" in training_set_sql(small_data)
    with pytest.raises(BenchmarkError, match="CARD_VIEWS"):
        training_set_sql(small_data, ALL_OPS)
