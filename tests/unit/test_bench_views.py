"""The batch-views benchmark's reference computes the same aggregation.

`benchmarks/views.py` times DuckDB on SQL it writes itself from
`CARD_VIEWS`; a ratio against it means something only if that SQL computes
the tiles Lamina computes. Here, on a small generated master dataset, every
DuckDB tile is checked against the Python reference (`build_tiles`): the same
(entity, hop, tile) keys, and the same counts, sums, means, maxima and
histograms (approximate distinct counts: HLL estimates of different sketches,
so only within the sketches' error).
"""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from benchmarks.views import (
    DUCKDB,
    SPARK,
    land_generated,
    prepare_data,
    round_order,
    run_duckdb,
    views_sql,
)
from lamina.schemas.card_views import CARD_VIEWS
from lamina.schemas.view_definitions import build_tiles

TRANSACTIONS = 3_000


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory):
    return prepare_data(TRANSACTIONS, cache_root=tmp_path_factory.mktemp("bench-cache"))


def _reference_events(master_uri: str, snapshot: int, cutoff_ms: int) -> list[dict]:
    """Landed transactions before the cutoff, first copy of each event_id,
    read with pyarrow (not the code under test)."""
    table = pa.table(DeltaTable(master_uri, version=snapshot).to_pyarrow_dataset().to_table(
        filter=pa.compute.field("event_type") == "transaction"))
    rows = sorted(table.select(["event_id", "ingest_time", "kafka_offset", "payload"])
                  .to_pylist(), key=lambda r: (r["ingest_time"], r["kafka_offset"]))
    seen: set[str] = set()
    events = []
    for row in rows:
        if row["event_id"] in seen:
            continue
        seen.add(row["event_id"])
        payload = orjson.loads(row["payload"])
        if payload["event_time"] < cutoff_ms:
            events.append(payload)
    return events


def test_duckdb_reference_equals_python_reference(small_data, tmp_path: Path) -> None:
    run = run_duckdb(small_data, tmp_path / "tiles.parquet")
    assert run.rows_in == small_data.rows > TRANSACTIONS * 0.95
    got = duckdb.sql(f"SELECT * FROM read_parquet('{tmp_path / 'tiles.parquet'}')").fetchall()
    columns = [a.name for a in CARD_VIEWS.aggregates]
    duck = {(r[0], r[1], r[2]): dict(zip(columns, r[3:], strict=True)) for r in got}
    assert len(duck) == run.tiles_out

    events = _reference_events(small_data.master_uri, small_data.snapshot,
                               small_data.cutoff_ms)
    expected_keys = set()
    for hop in CARD_VIEWS.hops():
        tiles = build_tiles(CARD_VIEWS, events, hop)
        for (entity, start), partials in tiles.items():
            expected_keys.add((entity, hop, start))
            row = duck[(entity, hop, start)]
            for aggregate in CARD_VIEWS.aggregates_for_hop(hop):
                value = aggregate.aggregation.present(partials[aggregate.name])
                mine = row[aggregate.name]
                if aggregate.op == "approx_distinct":
                    assert abs(mine - value) <= max(1, 0.05 * value), aggregate.name
                elif aggregate.op in ("sum", "mean", "max"):
                    if value is None:
                        assert mine is None or (aggregate.op == "sum" and mine == 0)
                    else:
                        assert math.isclose(mine or 0.0, value, rel_tol=1e-9), aggregate.name
                else:
                    assert (tuple(mine) if aggregate.op == "histogram" else mine) == value, \
                        aggregate.name
            for aggregate in CARD_VIEWS.aggregates:
                if hop not in aggregate.hops():
                    assert row[aggregate.name] is None  # not stored at this hop
    assert set(duck) == expected_keys


def test_spark_dialect_differs_only_in_dialect() -> None:
    duck = views_sql(CARD_VIEWS, "src", 86_400_000, DUCKDB)
    spark = views_sql(CARD_VIEWS, "src", 86_400_000, SPARK)
    assert "json_transform" in duck and "from_json" in spark
    assert duck.count("GROUP BY") == spark.count("GROUP BY") == len(CARD_VIEWS.hops())


def test_cached_data_is_reused(small_data, tmp_path: Path) -> None:
    cache = Path(small_data.master_uri).parents[1]
    again = prepare_data(TRANSACTIONS, cache_root=cache)
    assert again.built_s is None and again.rows == small_data.rows
    assert again.snapshot == small_data.snapshot


def test_land_generated_lands_valid_events_once(tmp_path: Path) -> None:
    uri = str(tmp_path / "master")
    land_generated(uri, 500, progress=False)
    ids = DeltaTable(uri).to_pyarrow_table(columns=["event_id"]).column("event_id")
    assert len(ids) == len(set(ids.to_pylist())) > 500


@pytest.mark.parametrize("spark_jobs", [["lamina", "best"], ["lamina", "best", "naive"]])
def test_spark_jobs_take_turns_at_going_first(spark_jobs: list[str]) -> None:
    # DuckDB (no JVM) always opens a round; over len(spark_jobs) rounds each
    # Spark job goes first exactly once and every round runs each figure once.
    figures = ["duckdb", *spark_jobs]
    rounds = [round_order(figures, n) for n in range(1, 2 * len(spark_jobs) + 1)]
    assert all(r[0] == "duckdb" and sorted(r) == sorted(figures) for r in rounds)
    firsts = [r[1] for r in rounds[:len(spark_jobs)]]
    assert sorted(firsts) == sorted(spark_jobs)
    assert rounds[len(spark_jobs):] == rounds[:len(spark_jobs)]
    assert round_order(["duckdb"], 3) == ["duckdb"]
    with pytest.raises(ValueError):
        round_order(figures, 0)
