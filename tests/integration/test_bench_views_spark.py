"""The batch-views benchmark's Spark reference computes Lamina's tiles.

`benchmarks/views.py` times Lamina's job against the best bare-Spark plan
it writes itself from `CARD_VIEWS` (`best_spark_tiles`); the ratio means
something only if that plan computes the same tiles. Here, on a small
generated master dataset, every tile of the plan's Parquet output is
compared with the tile Lamina's `run_batch_views` published: the same
(entity, hop, tile) keys and the same value in every column -- HLL sketches
included, once Spark's image is canonicalised (`from_storage`), since the
canonical image is a function of the set of hashed values only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
from deltalake import DeltaTable

from benchmarks.views import prepare_data, run_best_spark, run_lamina
from lamina.schemas.card_views import CARD_VIEWS

pytestmark = pytest.mark.integration

TRANSACTIONS = 3_000


def _by_key(rows: list[dict[str, Any]]) -> dict[tuple[str, int, int], dict[str, Any]]:
    return {(r["entity_key"], int(r["hop_ms"]), int(r["tile_start"])): r for r in rows}


def test_best_spark_plan_computes_lamina_tiles(spark: Any, tmp_path: Path) -> None:
    data = prepare_data(TRANSACTIONS, cache_root=tmp_path / "cache")
    lamina_run = run_lamina(spark, data, tmp_path / "views")
    best_run = run_best_spark(spark, data, tmp_path / "best")
    assert best_run.tiles_out == lamina_run.tiles_out > TRANSACTIONS

    lamina = _by_key(DeltaTable(str(tmp_path / "views")).to_pyarrow_table().to_pylist())
    best = _by_key(ds.dataset(str(tmp_path / "best"), format="parquet", partitioning="hive")
                   .to_table().to_pylist())
    assert set(best) == set(lamina)
    for key, want in lamina.items():
        have = best[key]
        for aggregate in CARD_VIEWS.aggregates:
            mine, theirs = have[aggregate.name], want[aggregate.name]
            if aggregate.op == "approx_distinct" and mine is not None:
                mine = aggregate.aggregation.from_storage(mine)
            assert mine == theirs, (key, aggregate.name)
