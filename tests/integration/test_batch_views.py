"""The Spark batch-views job against independent oracles (invariants 1, 3, 4, 10).

Test data: a generated master dataset (a few thousand card transactions over
four days, late and out-of-order arrivals) plus producer resends landed as
extra rows at later offsets -- some with a changed amount, which must never
count, because each event_id counts once and the first landed copy wins.

Oracles, none of them the code under test:
* DuckDB SQL over the raw master rows (its own Parquet and JSON readers,
  its own dedup and window arithmetic) for every feature;
* the pure-Python reference in lamina.schemas.view_definitions for the tiles;
* a fresh DataSketches HLL sketch of the exact id set DuckDB returns, for
  approx_distinct (see ``_expected_features``).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasketches
import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lamina.batch import events as batch_events
from lamina.batch import tiles as batch_tiles
from lamina.batch.published import BatchViewStore, ViewsError, latest_published, read_published
from lamina.batch.views import batch_run_command, run_batch_views
from lamina.config import MasterSettings, Settings
from lamina.generator import GeneratorConfig, write_files
from lamina.master.dataset import MasterDataset
from lamina.master.importer import import_files
from lamina.schemas.card_views import CARD_VIEWS
from lamina.schemas.validation import EventValidator
from lamina.schemas.view_definitions import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    WINDOWS,
    Aggregate,
    Filter,
    GroupBy,
    Window,
    build_tiles,
    features_at,
    tile_start,
)
from tests.master_helpers import append_resends
from tests.spark_fixtures import TEST_SPARK_CONF

pytestmark = pytest.mark.integration

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAYS = 4
_W = WINDOWS

#: Every op, filter kind and hop, on the transaction schema.
ALL_OPS = GroupBy(
    name="all_ops",
    event_type="transaction",
    entity_key="card_id",
    aggregates=(
        Aggregate("n", "count", None, (_W["10m"], _W["24h"], _W["lifetime"])),
        Aggregate("amount_total", "sum", "amount", (_W["1h"], _W["7d"]), scale=2),
        Aggregate("amount_low", "min", "amount", (_W["24h"],)),
        Aggregate("amount_high", "max", "amount", (_W["30d"],)),
        Aggregate("amount_avg", "mean", "amount", (_W["1h"], _W["7d"]), scale=2),
        Aggregate("amount_latest", "last", "amount", (_W["10m"], _W["24h"], _W["lifetime"])),
        Aggregate("merchants", "approx_distinct", "merchant_id",
                  (_W["1h"], _W["24h"], _W["lifetime"])),
        Aggregate("instants", "approx_distinct", "event_time", (_W["24h"],)),  # integers
        Aggregate("hours", "histogram", "hour_of_day", (_W["7d"],), buckets=(6, 12, 18)),
        Aggregate("big_online", "count", None, (_W["1h"], _W["24h"]),
                  filters=(Filter("channel", "==", "online"), Filter("amount", ">=", 50))),
        Aggregate("staples_not_pos", "sum", "amount", (_W["24h"],), scale=2,
                  filters=(Filter("channel", "!=", "pos"),
                           Filter("merchant_category", "in", ("grocery", "fuel", "restaurant")))),
        Aggregate("early_alphabet", "count", None, (_W["1h"],),
                  filters=(Filter("country", "<", "M"),)),
        # A value of another kind than the field never matches (no error).
        Aggregate("never", "count", None, (_W["24h"],), filters=(Filter("amount", "==", "x"),)),
    ),
)


# --- the test master dataset -------------------------------------------------


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> MasterDataset:
    root = tmp_path_factory.mktemp("batch-master")
    config = GeneratorConfig(seed=11, cards=12, merchants=40, transactions=3_000,
                             start=START_MS, days=float(DAYS), late_fraction=0.05,
                             max_lateness_ms=2 * HOUR_MS, duplicate_fraction=0.0,
                             malformed_fraction=0.0)
    files = write_files(config, root / "files", events_per_file=1_000)
    dataset = MasterDataset(str(root / "master"))
    import_files(dataset, files, EventValidator(), root / "dlq", batch_size=700, progress=False)
    append_resends(dataset, 60, seed=5)
    return dataset


@pytest.fixture(scope="module")
def raw_events(master: MasterDataset) -> list[dict[str, Any]]:
    """Transaction payloads, each event_id once (first landed copy), in
    (event_time, event_id) order -- what the Python reference reads."""
    rows = master.read()
    rows = rows.filter(pc.equal(rows.column("event_type"), "transaction")).sort_by(
        [("ingest_time", "ascending"), ("kafka_topic", "ascending"),
         ("kafka_partition", "ascending"), ("kafka_offset", "ascending")])
    seen: dict[str, dict[str, Any]] = {}
    for raw in rows.column("payload").to_pylist():
        event = orjson.loads(raw)
        seen.setdefault(event["event_id"], event)
    return sorted(seen.values(), key=lambda e: (e["event_time"], e["event_id"]))


def _publish(spark: Any, master: MasterDataset, views_uri: Path, group: GroupBy,
             cutoff_ms: int, **kwargs: Any) -> Any:
    return run_batch_views(spark, master.uri, str(views_uri), group, snapshot=None,
                           cutoff_ms=cutoff_ms, **kwargs)


@pytest.fixture(scope="module")
def published(spark: Any, master: MasterDataset, tmp_path_factory: pytest.TempPathFactory
              ) -> dict[tuple[str, int], str]:
    """Views published once per (group, cutoff) for the tests below."""
    root = tmp_path_factory.mktemp("batch-views")
    out: dict[tuple[str, int], str] = {}
    runs = [(ALL_OPS, START_MS + 1 * DAY_MS), (ALL_OPS, START_MS + 3 * DAY_MS),
            (CARD_VIEWS, START_MS + 2 * DAY_MS)]
    for group, cutoff in runs:
        uri = root / f"{group.name}-{cutoff}"
        started = time.monotonic()
        result = _publish(spark, master, uri, group, cutoff)
        print(f"\nbatch view {group.name} cutoff={cutoff}: {result.rows} tiles in "
              f"{time.monotonic() - started:.1f} s")
        assert result.status == "published"
        out[(group.name, cutoff)] = str(uri)
    return out


# --- pure transforms on tiny frames -------------------------------------------


def test_dedup_keeps_the_first_landed_copy_of_each_event_id(spark: Any) -> None:
    from pyspark.testing import assertDataFrameEqual

    columns = ["event_id", "ingest_time", "kafka_topic", "kafka_partition", "kafka_offset",
               "amount"]
    rows = spark.createDataFrame([
        ("a", 2, "t", 0, 7, 1.0),
        ("a", 1, "t", 0, 9, 2.0),  # landed first: ingest time wins over offset
        ("b", 5, "t", 1, 3, 3.0),
        ("b", 5, "t", 0, 4, 4.0),  # same ingest time: lower partition first
        ("c", 9, "t", 0, 1, 5.0),
    ], columns)
    expected = spark.createDataFrame(
        [("a", 1, "t", 0, 9, 2.0), ("b", 5, "t", 0, 4, 4.0), ("c", 9, "t", 0, 1, 5.0)], columns)
    assertDataFrameEqual(batch_events.first_of_each_event_id(rows), expected)


def test_filters_follow_python_semantics_for_nulls_and_kinds(spark: Any) -> None:
    from pyspark.testing import assertDataFrameEqual

    rows = spark.createDataFrame(
        [("x", 1.0), (None, 7.0), ("y", None)], "channel string, amount double")
    checks = [
        (Filter("channel", "!=", "x"), [False, False, True]),  # null matches nothing
        (Filter("amount", ">=", 1), [True, True, False]),
        (Filter("amount", "==", "1"), [False, False, False]),  # other kind
        (Filter("channel", "in", ("y", 3)), [False, False, True]),
    ]
    for flt, expected in checks:
        got = rows.select(batch_tiles.filter_condition(rows, flt).alias("ok"))
        assertDataFrameEqual(got, spark.createDataFrame([(v,) for v in expected], "ok boolean"),
                             checkRowOrder=True)


def test_tiles_of_tiny_events_match_the_python_reference(spark: Any) -> None:
    """Tie-breaks and edges: `last` on equal times (greater event_id wins),
    histogram values exactly on a bound, empty strings not counted, a tile
    whose events all fail a filter still exists with zeros."""
    group = GroupBy("tiny", "transaction", "card_id", (
        Aggregate("n", "count", None, (_W["1h"], _W["24h"])),
        Aggregate("latest", "last", "amount", (_W["1h"],)),
        Aggregate("hist", "histogram", "amount", (_W["24h"],), buckets=(1.0, 2.0)),
        Aggregate("merchants", "approx_distinct", "merchant_id", (_W["1h"],)),
        Aggregate("online", "sum", "amount", (_W["1h"],), scale=2,
                  filters=(Filter("channel", "==", "on"),)),
    ))
    t0 = START_MS
    events = [
        {"event_id": "e1", "event_time": t0, "card_id": "c", "amount": 1.0,
         "merchant_id": "m1", "channel": "on"},
        {"event_id": "e2", "event_time": t0, "card_id": "c", "amount": 2.0,
         "merchant_id": "", "channel": "off"},
        {"event_id": "e0", "event_time": t0, "card_id": "c", "amount": 3.0,
         "merchant_id": "m1", "channel": "off"},
        {"event_id": "e3", "event_time": t0 + 7 * MINUTE_MS, "card_id": "c", "amount": 0.5,
         "merchant_id": "", "channel": "off"},
    ]
    frame = spark.createDataFrame(
        [(e["event_id"], e["event_time"], e["card_id"], e["amount"], e["merchant_id"],
          e["channel"]) for e in events],
        "event_id string, event_time bigint, entity_key string, amount double, "
        "merchant_id string, channel string")
    got = _by_key(pa.Table.from_pylist(
        [r.asDict(recursive=True) for r in batch_tiles.tiles(frame, group, t0 + DAY_MS).collect()]))
    _assert_tiles_equal(group, got, events, cutoff_ms=t0 + DAY_MS)
    five_minutes = {k: v for k, v in got.items() if k[0] == 5 * MINUTE_MS}
    assert five_minutes[(5 * MINUTE_MS, "c", t0 + 5 * MINUTE_MS)]["merchants"] is None
    assert five_minutes[(5 * MINUTE_MS, "c", t0 + 5 * MINUTE_MS)]["online"] == 0.0
    assert five_minutes[(5 * MINUTE_MS, "c", t0)]["latest"]["event_id"] == "e2"


def _adversarial_values(scale: int) -> list[float]:
    """Values whose units are easy to get wrong: decimal ties at ``scale``
    places and their float neighbours, values finer than the scale, binary
    sums like 0.1 + 0.2, the schema's maximum, and random floats and
    decimals (all with ``|value| * 10**scale < 2**48``)."""
    from lamina.schemas.aggregations import UNIT_LIMIT

    rng = random.Random(7 + scale)
    values = [0.005, 0.015, 0.025, 2.675, 1.005, 1e6, 999_999.995, 999_999.985, 0.1 + 0.2,
              597_073.185, 5485.014999999999, 1e-9, 5e-324, -0.005, -0.015, -2.675, 0.0,
              -0.0, 0.29, 1.15, 4.35, 123_456.785, 0.0049999999999999, 0.0050000000000001]
    largest = min(10**6, UNIT_LIMIT // 10**scale)
    for _ in range(3_000):
        tie = (2 * rng.randrange(-largest * 10**scale, largest * 10**scale) + 1) / (
            2 * 10**scale)
        values += [tie, math.nextafter(tie, math.inf), math.nextafter(tie, -math.inf),
                   rng.uniform(-largest, largest),
                   round(rng.uniform(0, largest), rng.randrange(0, scale + 4))]
    return [v for v in values if abs(v) * 10**scale < UNIT_LIMIT]


@pytest.mark.parametrize("scale", [0, 2, 4, 9])
def test_spark_converts_values_to_the_same_units_as_python(spark: Any, scale: int) -> None:
    """Sums are exact only if Spark's per-event units equal Python's lift:
    the same float64 operations (units_column vs decimal_units), checked on
    values that break naive rounding."""
    from pyspark.sql import functions as F

    from lamina.schemas.aggregations import decimal_units

    values = _adversarial_values(scale)
    frame = spark.createDataFrame([(i, v) for i, v in enumerate(values)],
                                  "i bigint, amount double")
    got = dict(frame.select("i", batch_tiles.units_column(F.col("amount"), scale).alias("u"))
               .collect())
    wrong = [(v, got[i], decimal_units(v, scale)) for i, v in enumerate(values)
             if got[i] != decimal_units(v, scale)]
    assert not wrong, wrong[:10]
    assert len(values) > 10_000


def test_spark_refuses_a_value_too_large_for_exact_units(spark: Any) -> None:
    from pyspark.sql import functions as F

    frame = spark.createDataFrame([(1.0,), (3e12,)], "amount double")
    with pytest.raises(Exception, match="too large for an exact sum"):
        frame.select(batch_tiles.units_column(F.col("amount"), 2)).collect()
    nulls = spark.createDataFrame([(None,)], "amount double")
    assert nulls.select(batch_tiles.units_column(F.col("amount"), 2)).first()[0] is None


def test_cutoff_must_be_a_tile_boundary_of_every_hop(
        spark: Any, master: MasterDataset, tmp_path: Path) -> None:
    with pytest.raises(batch_tiles.CutoffError, match="not a multiple of 86400000"):
        _publish(spark, master, tmp_path / "v", ALL_OPS, START_MS + DAY_MS + HOUR_MS)
    assert not (tmp_path / "v").exists()


# --- Spark tiles == the Python reference's tiles -------------------------------


def _by_key(table: pa.Table) -> dict[tuple[int, str, int], dict[str, Any]]:
    return {(r["hop_ms"], r["entity_key"], r["tile_start"]): r for r in table.to_pylist()}


def _assert_tiles_equal(group: GroupBy, got: Mapping[tuple[int, str, int], Mapping[str, Any]],
                        events: Sequence[Mapping[str, Any]], cutoff_ms: int) -> None:
    """Spark's stored partials equal the reference's `to_storage` values
    byte for byte at every hop -- sums and means (int64 units) of rolled-up
    hops included -- and HLL images are the same canonical image, hence the
    same estimate."""
    before = [e for e in events if e["event_time"] < cutoff_ms]
    expected_keys: set[tuple[int, str, int]] = set()
    for hop in group.hops():
        reference = build_tiles(group, before, hop)
        for (entity, start), partials in reference.items():
            key = (hop, entity, start)
            expected_keys.add(key)
            row = got[key]
            for aggregate in group.aggregates:
                if hop not in aggregate.hops():
                    assert row[aggregate.name] is None, (key, aggregate.name)
                    continue
                monoid = aggregate.aggregation
                want = monoid.to_storage(partials[aggregate.name])
                have = row[aggregate.name]
                if aggregate.op == "approx_distinct" and want is not None:
                    assert monoid.present(have) == monoid.present(want)
                    have = bytes(have)
                assert have == want, (key, aggregate.name, have, want)
                assert type(have) is type(want), (key, aggregate.name)
    assert set(got) == expected_keys


@pytest.mark.parametrize("group, cutoff", [
    (ALL_OPS, START_MS + 3 * DAY_MS), (CARD_VIEWS, START_MS + 2 * DAY_MS)])
def test_spark_tiles_equal_the_python_reference_tiles(
        published: dict[tuple[str, int], str], raw_events: list[dict[str, Any]],
        group: GroupBy, cutoff: int) -> None:
    metadata, rows = read_published(published[(group.name, cutoff)])
    assert metadata.cutoff_ms == cutoff and metadata.group == group.name
    _assert_tiles_equal(group, _by_key(rows), raw_events, cutoff)


# --- the lambda equation against DuckDB ----------------------------------------


def _sql_literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    return repr(value)


_SQL_KIND = {"amount": "number", "event_time": "number", "hour_of_day": "number",
             "card_id": "string", "merchant_id": "string", "merchant_category": "string",
             "country": "string", "currency": "string", "channel": "string"}


def _sql_field(field: str) -> str:
    return "((e.event_time // 3600000) % 24)" if field == "hour_of_day" else f"e.{field}"


def _sql_filter(flt: Filter) -> str:
    kind = _SQL_KIND[flt.field]
    column = _sql_field(flt.field)

    def same_kind(value: Any) -> bool:
        return (kind == "string") == isinstance(value, str) and not isinstance(value, bool)

    if flt.op == "in":
        values = [v for v in flt.value if same_kind(v)]
        return f"{column} IN ({', '.join(map(_sql_literal, values))})" if values else "FALSE"
    if not same_kind(flt.value):
        return "FALSE"
    op = {"==": "=", "!=": "<>"}.get(flt.op, flt.op)
    return f"{column} {op} {_sql_literal(flt.value)}"


def _window_sql(window: Window, t_ms: int) -> str:
    if window.length_ms is None:
        return "TRUE"
    hop = window.hop_ms
    return f"e.event_time >= (({t_ms} - {window.length_ms}) // {hop}) * {hop}"


def _expected_features(con: duckdb.DuckDBPyConnection, group: GroupBy, t_ms: int
                       ) -> dict[str, dict[str, Any]]:
    """Every feature of every card just before `t_ms`, by DuckDB SQL over
    the deduplicated raw events. approx_distinct: the DataSketches estimate
    of the exact distinct set DuckDB returns (a fresh lg_k=12 HLL_8 sketch;
    every set here is below the sparse-mode limit, where the estimate does
    not depend on insertion order), which must also be within 2 % (at least
    1) of the exact count."""
    selects: list[str] = []
    plans: list[tuple[str, Aggregate]] = []
    for aggregate in group.aggregates:
        for window in aggregate.windows:
            conditions = [_window_sql(window, t_ms)] + [_sql_filter(f) for f in aggregate.filters]
            where = " AND ".join(conditions)
            value = _sql_field(aggregate.field) if aggregate.field else None
            name = aggregate.feature_name(window)
            op = aggregate.op
            if op == "count":
                expr = f"count(e.event_id) FILTER (WHERE {where})"
            elif op == "sum":
                expr = f"coalesce(sum({value}) FILTER (WHERE {where}), 0.0)"
            elif op in ("min", "max"):
                expr = f"{op}({value}::DOUBLE) FILTER (WHERE {where})"
            elif op == "mean":
                expr = f"avg({value}) FILTER (WHERE {where})"
            elif op == "last":
                expr = (f"first({value}::DOUBLE ORDER BY e.event_time DESC, e.event_id DESC) "
                        f"FILTER (WHERE {where} AND {value} IS NOT NULL)")
            elif op == "approx_distinct":
                expr = f"list(DISTINCT {value}) FILTER (WHERE {where} AND {value} <> '')" \
                    if _SQL_KIND[aggregate.field or ""] == "string" else \
                    f"list(DISTINCT {value}) FILTER (WHERE {where})"
            elif op == "histogram":
                edges = [-math.inf, *aggregate.buckets, math.inf]
                parts = []
                for low, high in zip(edges, edges[1:], strict=False):
                    bounds = []
                    if low != -math.inf:
                        bounds.append(f"{value} >= {low}")
                    if high != math.inf:
                        bounds.append(f"{value} < {high}")
                    parts.append(f"count(*) FILTER (WHERE {where} AND {' AND '.join(bounds)})")
                expr = f"[{', '.join(parts)}]"
            else:
                raise AssertionError(op)
            selects.append(f"{expr} AS {name}")
            plans.append((name, aggregate))
    sql = (f"SELECT c.card_id, {', '.join(selects)} FROM cards c "
           f"LEFT JOIN events e ON e.card_id = c.card_id AND e.event_time < {t_ms} "
           "GROUP BY c.card_id")
    result: dict[str, dict[str, Any]] = {}
    for row in con.sql(sql).fetchall():
        card, values = row[0], row[1:]
        features: dict[str, Any] = {}
        for (name, aggregate), value in zip(plans, values, strict=True):
            if aggregate.op == "approx_distinct":
                ids = value or []
                assert len(ids) < 385  # sparse mode, see the docstring
                sketch = datasketches.hll_sketch(12, datasketches.tgt_hll_type.HLL_8)
                for item in ids:
                    sketch.update(item)
                estimate = math.floor(sketch.get_estimate() + 0.5)
                assert abs(estimate - len(ids)) <= max(1, 0.02 * len(ids))
                value = estimate
            elif aggregate.op == "histogram":
                value = tuple(value)
            features[name] = value
        result[card] = features
    return result


@pytest.fixture(scope="module")
def duck(master: MasterDataset) -> duckdb.DuckDBPyConnection:
    """DuckDB over the master snapshot's Parquet files: its own dedup
    (first landed copy) and JSON parsing."""
    con = duckdb.connect()
    files = master.table().file_uris()
    con.execute(f"""
        CREATE TABLE events AS
        WITH landed AS (
            SELECT * FROM read_parquet({files!r}, hive_partitioning = true)
            WHERE event_type = 'transaction'
            QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY ingest_time,
                    kafka_topic, kafka_partition, kafka_offset) = 1)
        SELECT event_id,
               epoch_ms(event_time) AS event_time,
               json_extract_string(decode(payload), '$.card_id') AS card_id,
               json_extract(decode(payload), '$.amount')::DOUBLE AS amount,
               json_extract_string(decode(payload), '$.merchant_id') AS merchant_id,
               json_extract_string(decode(payload), '$.merchant_category')
                   AS merchant_category,
               json_extract_string(decode(payload), '$.country') AS country,
               json_extract_string(decode(payload), '$.channel') AS channel
        FROM landed""")
    con.execute("CREATE TABLE cards AS SELECT DISTINCT card_id FROM events")
    return con


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


@pytest.mark.parametrize("group, cutoff", [
    (ALL_OPS, START_MS + 1 * DAY_MS), (ALL_OPS, START_MS + 3 * DAY_MS),
    (CARD_VIEWS, START_MS + 2 * DAY_MS)])
def test_batch_tiles_plus_realtime_tiles_equal_a_direct_computation(
        published: dict[tuple[str, int], str], raw_events: list[dict[str, Any]],
        duck: duckdb.DuckDBPyConnection, group: GroupBy, cutoff: int) -> None:
    """Invariant 4: serve(batch(< T) + realtime([T, t))) == batch(< t), for
    query times t >= T on and off tile boundaries (t == T included)."""
    store = BatchViewStore(published[(group.name, cutoff)], group)
    assert store.cutoff_ms == cutoff
    rng = random.Random(cutoff)
    end = START_MS + DAYS * DAY_MS + HOUR_MS
    times = [cutoff, cutoff + 5 * MINUTE_MS, cutoff + DAY_MS] + [
        rng.randrange(cutoff, end) for _ in range(4)]
    cards = sorted({e["card_id"] for e in raw_events})
    checked = 0
    for t_ms in times:
        recent = [e for e in raw_events if cutoff <= e["event_time"] < t_ms]
        realtime = {hop: build_tiles(group, recent, hop) for hop in group.hops()}
        expected = _expected_features(duck, group, t_ms)
        for card in cards:
            tiles = store.partials_for(card)
            for hop, more in realtime.items():
                mine = {k: v for k, v in more.items() if k[0] == card}
                assert not set(mine) & set(tiles[hop])  # batch < T, realtime >= T
                tiles[hop].update(mine)
            served = features_at(group, tiles, recent, card, t_ms)
            for name, value in served.items():
                assert _close(value, expected[card][name]), (card, t_ms, name, value,
                                                            expected[card][name])
                checked += 1
    assert checked == len(times) * len(cards) * len(group.feature_names())


# --- publishing: lineage, idempotence, atomicity -------------------------------


def test_published_view_records_its_lineage_and_reads_without_spark(
        published: dict[tuple[str, int], str], master: MasterDataset) -> None:
    cutoff = START_MS + 2 * DAY_MS
    metadata, rows = read_published(published[("card_transactions", cutoff)])
    assert metadata.source_snapshot == master.table().version()
    assert metadata.cutoff_ms == cutoff and metadata.group == CARD_VIEWS.name
    assert metadata.code_version.startswith("0.1.0+") and len(metadata.definition) == 16
    assert rows.column_names[:3] == ["entity_key", "hop_ms", "tile_start"]
    assert pc.max(rows.column("tile_start")).as_py() < cutoff
    store = BatchViewStore(published[("card_transactions", cutoff)], CARD_VIEWS)
    card = rows.column("entity_key")[0].as_py()
    hourly = store.tiles_for(card, HOUR_MS)
    assert hourly.column_names == ["card_id", "tile_start"] + [
        a.name for a in CARD_VIEWS.aggregates_for_hop(HOUR_MS)]
    assert hourly.column("tile_start").to_pylist() == sorted(
        hourly.column("tile_start").to_pylist())
    with pytest.raises(ViewsError, match="computed for group"):
        BatchViewStore(published[("card_transactions", cutoff)], ALL_OPS)


def _sorted_rows(table: pa.Table) -> pa.Table:
    return table.sort_by([("hop_ms", "ascending"), ("entity_key", "ascending"),
                          ("tile_start", "ascending")])


def test_rerun_is_skipped_and_a_forced_rerun_writes_identical_rows(
        spark: Any, master: MasterDataset, tmp_path: Path) -> None:
    """Invariant 10. Byte-identical rows, float sums and HLL images included."""
    uri, cutoff = tmp_path / "views", START_MS + 2 * DAY_MS
    first = _publish(spark, master, uri, ALL_OPS, cutoff)
    again = _publish(spark, master, uri, ALL_OPS, cutoff)
    assert (again.status, again.version) == ("skipped", first.version)
    forced = _publish(spark, master, uri, ALL_OPS, cutoff, force=True)
    assert (forced.status, forced.version) == ("published", first.version + 1)
    _, rows_first = read_published(str(uri), first.version)
    _, rows_forced = read_published(str(uri), forced.version)
    assert _sorted_rows(rows_first).equals(_sorted_rows(rows_forced))
    older = _publish(spark, master, uri, ALL_OPS, cutoff - DAY_MS)
    assert (older.status, older.version) == ("superseded", forced.version)


_CHILD = """
import sys
from lamina.batch.spark import spark_session
from lamina.batch.views import run_batch_views
from tests.integration.test_batch_views import ALL_OPS
conf = {conf!r}
spark = spark_session("local[2]", app_name="lamina-kill-test", extra_conf=conf)
print("started", flush=True)
run_batch_views(spark, {master!r}, {views!r}, ALL_OPS, snapshot=None, cutoff_ms={cutoff})
print("published", flush=True)
"""


def _part_files(root: Path) -> set[str]:
    return {str(p) for p in root.glob("hop_ms=*/*.parquet")}


def test_kill_9_during_publish_leaves_the_previous_view_complete(
        spark: Any, master: MasterDataset, raw_events: list[dict[str, Any]],
        published: dict[tuple[str, int], str], tmp_path: Path) -> None:
    """Kill the driver (Python and its JVM) while Spark writes part files,
    before the commit: readers still see the previous version, whole; a
    rerun publishes the new one, whole."""
    import shutil

    uri = tmp_path / "views"
    old_cutoff, new_cutoff = START_MS + 1 * DAY_MS, START_MS + 3 * DAY_MS
    # The previous version: the module's publish of that cutoff, copied
    # (a Delta table's log holds relative paths), not computed again.
    shutil.copytree(published[(ALL_OPS.name, old_cutoff)], uri)
    before = latest_published(str(uri))
    assert before is not None and before[1].cutoff_ms == old_cutoff
    old_metadata, old_rows = read_published(str(uri))
    old_files = _part_files(uri)

    # Many small output tasks (no coalescing) keep the write stage long
    # enough to be caught between the first part file and the commit.
    conf = {**TEST_SPARK_CONF, "spark.sql.shuffle.partitions": "64",
            "spark.sql.adaptive.coalescePartitions.enabled": "false"}
    script = _CHILD.format(conf=conf, master=master.uri, views=str(uri), cutoff=new_cutoff)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[2],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (_part_files(uri) - old_files):
            assert child.poll() is None, "the job ended before writing any file"
            assert time.monotonic() < deadline, "the job wrote no file in time"
            time.sleep(0.005)
        os.killpg(child.pid, signal.SIGKILL)  # the driver: Python and its JVM
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    output = child.stdout.read().decode() if child.stdout else ""
    assert "published" not in output.splitlines()

    assert _part_files(uri) - old_files, "the kill left no partial output to ignore"
    latest = latest_published(str(uri))
    assert latest is not None and latest[0] == before[0]
    metadata, rows = read_published(str(uri))
    assert metadata == old_metadata
    assert _sorted_rows(rows).equals(_sorted_rows(old_rows))

    rerun = _publish(spark, master, uri, ALL_OPS, new_cutoff)
    assert (rerun.status, rerun.version) == ("published", before[0] + 1)
    metadata, rows = read_published(str(uri))
    assert metadata.cutoff_ms == new_cutoff
    before_new = [e for e in raw_events if e["event_time"] < new_cutoff]
    expected_rows = sum(len(build_tiles(ALL_OPS, before_new, hop)) for hop in ALL_OPS.hops())
    assert rows.num_rows == rerun.rows == expected_rows


def test_batch_run_command_publishes_under_the_lamina_home(
        spark: Any, master: MasterDataset, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", master=MasterSettings(uri=master.uri))
    result = batch_run_command(settings, snapshot=None, cutoff=None, master=None)
    views = (tmp_path / "home" / "views" / CARD_VIEWS.name).resolve()
    assert result["views_uri"] == str(views)
    assert result["status"] == "published" and result["snapshot"] == master.table().version()
    # Default cutoff: the latest transaction's event time floored to a day.
    rows = master.read()
    times = rows.filter(pc.equal(rows.column("event_type"), "transaction")).column("event_time")
    latest = pc.max(times).as_py()
    assert result["cutoff_ms"] == int(latest.timestamp() * 1000) // DAY_MS * DAY_MS
    assert json.loads(json.dumps(result)) == result
    assert spark.range(1).count() == 1  # the shared session still runs
    assert tile_start(result["cutoff_ms"], DAY_MS) == result["cutoff_ms"]
