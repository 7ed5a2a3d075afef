"""The training-set builder: Lamina's point-in-time builder next to the same
point-in-time features and labels in DuckDB, on the same files, in the same
run.

The data (built once, cached, not a figure)
-------------------------------------------
`GeneratorConfig(seed=11, transactions=N, cards=N/25, days=14,
malformed_fraction=0, duplicate_fraction=0)` -- labels at the generator's
usual rates -- written with `write_files` and imported with `import_files`
into a master dataset cached under `.lamina/bench/` (keyed by N, the seed and
a hash of the generator and master-dataset code). The set: transactions from
day 4 to day 13 (N = 40k: 25,216 rows), history from day 0, labels as known
at the newest event (`as_of`, passed to both engines), label maturity 0 (so
every transaction of the window is a row).

Figures (rows/s = training rows per second of wall time)
--------------------------------------------------------
* DuckDB -- THE REFERENCE. One SQL statement (`training_set_sql`) over the
  snapshot's `transaction` and `label` Parquet files (listed from the Delta
  log by deltalake): parse the payloads, keep the first landed copy of each
  `event_id`, join each transaction of the window to its card's events of
  the 30 days before it (strictly before; sawtooth window starts) and
  aggregate every `CARD_VIEWS` feature with a FILTER per window (exact
  `count(DISTINCT)` for the distinct counts, float sums and means), the
  lifetime maximum with a window function, the model's derived features
  (ratios, seconds since the last transaction, the hour share), then the
  label rules; `COPY ... TO` one Parquet file.
  `tests/unit/test_bench_training_set.py` checks on a small set that its
  rows are the Python reference's rows.
* Lamina -- `build_training_set(...)` written to Spark's `noop` sink: the
  whole builder (Delta read, parsing, dedup, the per-card sweep, labels),
  `local[C]` with Lamina's local settings, the session started once and
  warmed by one untimed build.

The two engines alternate round by round; the better run of each is
reported. Both get the whole machine.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import BenchmarkError, best_of, fmt_ratio
from benchmarks.report import Row

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from lamina.schemas.view_definitions import Aggregate, GroupBy, Window

REPO = Path(__file__).resolve().parents[1]
CACHE_ROOT = REPO / ".lamina" / "bench"
DEFAULT_TRANSACTIONS = 40_000
SEED = 11
DAYS = 14
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY_MS = 86_400_000
WINDOW_DAYS = (4, 13)


def say_nothing(_: str) -> None:
    pass


# -- the data -------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingSetData:
    """The master dataset both engines read, and the set's parameters."""

    master_uri: str
    snapshot: int
    transactions: int  # generator setting
    start_ms: int
    end_ms: int
    as_of_ms: int
    transaction_files: tuple[str, ...]
    label_files: tuple[str, ...]
    built_s: float | None  # None: reused from the cache

    def describe(self) -> str:
        how = (f"built in {self.built_s:.0f} s" if self.built_s is not None
               else "reused from the cache")
        return (f"master snapshot {self.snapshot} of {self.transactions:,} generated "
                f"transactions (seed {SEED}, {self.transactions // 25:,} cards, {DAYS} days); "
                f"rows: transactions of days {WINDOW_DAYS[0]}-{WINDOW_DAYS[1]}, labels as of "
                f"{self.as_of_ms} (epoch ms), maturity 0; {how} (not a figure)")


def generator_config(transactions: int) -> Any:
    from lamina.generator import GeneratorConfig

    return GeneratorConfig(seed=SEED, cards=max(50, transactions // 25),
                           transactions=transactions, start=START_MS, days=float(DAYS),
                           malformed_fraction=0.0, duplicate_fraction=0.0)


def _cache_key(transactions: int) -> str:
    from lamina import generator
    from lamina.master import dataset, importer

    digest = hashlib.sha256()
    for module in (generator, dataset, importer):
        digest.update(Path(str(module.__file__)).read_bytes())
    digest.update(repr(generator_config(transactions)).encode())
    return f"training-set-{transactions}-{SEED}-{digest.hexdigest()[:12]}"


def prepare_data(transactions: int, say: Callable[[str], None] = say_nothing,
                 cache_root: Path = CACHE_ROOT) -> TrainingSetData:
    """The cached master dataset for `transactions` (built if missing; other
    cached sizes or code versions of this benchmark are removed)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    from lamina.generator import write_files
    from lamina.master.dataset import MasterDataset
    from lamina.master.importer import import_files
    from lamina.schemas.validation import EventValidator

    home = cache_root / _cache_key(transactions)
    done = home / "complete.json"
    built_s: float | None = None
    if not done.exists():
        if cache_root.exists():
            for old in cache_root.glob("training-set-*"):
                shutil.rmtree(old, ignore_errors=True)
        home.mkdir(parents=True)
        say(f"building the training-set benchmark's master dataset ({transactions:,} "
            f"transactions) in {home}")
        began = time.monotonic()
        files = write_files(generator_config(transactions), home / "files",
                            events_per_file=10_000)
        import_files(MasterDataset(str(home / "master")), files, EventValidator(),
                     home / "dlq", progress=False)
        shutil.rmtree(home / "files", ignore_errors=True)
        built_s = time.monotonic() - began
        done.write_text(json.dumps({"built_s": built_s}))
    master_uri = str(home / "master")
    table = DeltaTable(master_uri)
    snapshot = int(table.version())
    # as_of: the newest event of any type (build_training_set's default).
    # Delta keeps timestamps in microseconds: read as ms before taking the integer.
    times = table.to_pyarrow_dataset().to_table(columns=["event_time"]).column("event_time")
    as_of = int(pc.max(times.cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())).as_py())
    by_type = {kind: tuple(sorted(table.file_uris(
        file_pruning_predicate=[("event_type", "=", kind)]))) for kind in ("transaction", "label")}
    if not by_type["transaction"]:
        raise BenchmarkError(f"{master_uri} holds no transactions; delete {home} and rerun")
    return TrainingSetData(master_uri, snapshot, transactions,
                           START_MS + WINDOW_DAYS[0] * DAY_MS, START_MS + WINDOW_DAYS[1] * DAY_MS,
                           as_of, by_type["transaction"], by_type["label"], built_s)


# -- the same training set as DuckDB SQL -------------------------------------------


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def _filters(aggregate: Aggregate, alias: str) -> list[str]:
    parts = []
    for flt in aggregate.filters:
        column = f"{alias}.{flt.field}"
        if flt.op == "in":
            parts.append(f"{column} IN ({', '.join(_literal(v) for v in flt.value)})")
        else:
            op = {"==": "=", "!=": "<>"}.get(flt.op, flt.op)
            parts.append(f"{column} {op} {_literal(flt.value)}")
    return parts


def _window_start(window: Window) -> str:
    assert window.length_ms is not None
    hop = window.hop_ms
    return f"((q.event_time - {window.length_ms}) // {hop}) * {hop}"


def _feature_sql(aggregate: Aggregate, window: Window) -> str:
    """One view feature over the joined history `h` of transaction `q`."""
    where = " AND ".join([f"h.event_time >= {_window_start(window)}",
                          *_filters(aggregate, "h")])
    value = f"h.{aggregate.field}"
    op = aggregate.op
    if op == "count":
        return f"count(h.event_id) FILTER (WHERE {where})"
    if op == "sum":
        return f"coalesce(sum({value}) FILTER (WHERE {where}), 0.0)"
    if op == "mean":
        return f"avg({value}) FILTER (WHERE {where})"
    if op in ("min", "max"):
        return f"{op}({value}::DOUBLE) FILTER (WHERE {where})"
    if op == "approx_distinct":  # exact: HLL is exact on these small sets
        return f"count(DISTINCT {value}) FILTER (WHERE {where} AND {value} <> '')"
    if op == "histogram":
        edges: list[float | None] = [None, *aggregate.buckets, None]
        items = []
        for low, high in zip(edges, edges[1:], strict=False):
            bounds = [where]
            if low is not None:
                bounds.append(f"{value} >= {low!r}")
            if high is not None:
                bounds.append(f"{value} < {high!r}")
            items.append(f"count(*) FILTER (WHERE {' AND '.join(bounds)})")
        return f"list_value({', '.join(items)})"
    raise BenchmarkError(f"no SQL for {op!r} of {aggregate.name!r}")


def _landed(files: tuple[str, ...], schema: dict[str, str]) -> str:
    listed = "[" + ", ".join(_literal(f) for f in files) + "]"
    return f"""
        SELECT event_id, epoch_ms(event_time) AS event_time,
               json_transform(decode(payload), '{json.dumps(schema)}') AS p
        FROM read_parquet({listed})
        QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY ingest_time, kafka_topic,
                                   kafka_partition, kafka_offset) = 1"""


def training_set_sql(data: TrainingSetData, group: GroupBy | None = None,
                     label_maturity_ms: int = 0) -> str:
    """One SELECT giving the training rows of `data` (columns: event_id,
    the entity key, event_time, the context columns, FEATURES, label) the
    way `build_training_set` defines them, for the card views."""
    from lamina.schemas.card_views import (
        CARD_FRAUD,
        CARD_VIEWS,
        CURRENCY_COUNTRIES,
        FEATURES,
        NO_HISTORY,
    )

    group = group or CARD_VIEWS
    if group is not CARD_VIEWS:
        raise BenchmarkError("the DuckDB training set is written for CARD_VIEWS' features")
    finite = [w for a in group.aggregates for w in a.windows if w.length_ms is not None]
    widest = max(finite, key=lambda w: w.length_ms or 0)
    views, lifetime = [], []
    for aggregate in group.aggregates:
        for window in aggregate.windows:
            name = aggregate.feature_name(window)
            if window.length_ms is not None:
                views.append(f"{_feature_sql(aggregate, window)} AS {name}")
            elif aggregate.op == "max" and not aggregate.filters:
                lifetime.append(
                    f"max({aggregate.field}) OVER (PARTITION BY card_id ORDER BY event_time "
                    f"RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS {name}")
            else:
                raise BenchmarkError(f"no SQL for a lifetime {aggregate.op} ({name})")
    pairs = ", ".join(f"({_literal(c)}, {_literal(k)})"
                      for c, ks in CURRENCY_COUNTRIES.items() for k in sorted(ks))
    known = ", ".join(_literal(c) for c in CURRENCY_COUNTRIES)
    view_names = [n for n in group.feature_names()
                  if n not in ("last_event_time_lifetime", "hour_histogram_30d")]
    no = repr(NO_HISTORY)
    derived = {
        "amount": "q.amount",
        "log_amount": "ln(1 + q.amount)",
        "hour_of_day": "q.hour_of_day::DOUBLE",
        "is_online": "CASE WHEN q.channel = 'online' THEN 1.0 ELSE 0.0 END",
        "is_foreign": (f"CASE WHEN q.currency NOT IN ({known}) THEN {no} "
                       "WHEN cc.country IS NOT NULL THEN 0.0 ELSE 1.0 END"),
        **{n: f"coalesce(v.{n}, 0)::DOUBLE" for n in view_names},
        "amount_over_mean_7d": (f"CASE WHEN coalesce(v.amount_mean_7d, 0) <= 0 THEN {no} "
                                "ELSE q.amount / v.amount_mean_7d END"),
        "amount_over_mean_30d": (f"CASE WHEN coalesce(v.amount_mean_30d, 0) <= 0 THEN {no} "
                                 "ELSE q.amount / v.amount_mean_30d END"),
        "seconds_since_last_txn": (
            f"CASE WHEN l.last_event_time_lifetime IS NULL THEN {no} ELSE "
            "greatest(0.0, (q.event_time - l.last_event_time_lifetime) / 1000.0) END"),
        "hour_share_30d": (
            f"CASE WHEN list_sum(v.hour_histogram_30d) = 0 THEN {no} ELSE "
            "(v.hour_histogram_30d[(q.hour_of_day + 23) % 24 + 1] "
            "+ v.hour_histogram_30d[q.hour_of_day + 1] "
            "+ v.hour_histogram_30d[(q.hour_of_day + 1) % 24 + 1])::DOUBLE "
            "/ list_sum(v.hour_histogram_30d) END"),
    }
    missing = set(FEATURES) - set(derived)
    if missing:
        raise BenchmarkError(f"no SQL for features {sorted(missing)}")
    transaction_schema = {"card_id": "VARCHAR", "merchant_id": "VARCHAR",
                          "merchant_category": "VARCHAR", "amount": "DOUBLE",
                          "currency": "VARCHAR", "country": "VARCHAR", "channel": "VARCHAR"}
    label_schema = {"transaction_id": "VARCHAR", "is_fraud": "BOOLEAN"}
    labels = (_landed(data.label_files, label_schema) if data.label_files else
              "SELECT NULL::VARCHAR AS event_id, NULL::BIGINT AS event_time, "
              "NULL::STRUCT(transaction_id VARCHAR, is_fraud BOOLEAN) AS p WHERE FALSE")
    context = ", ".join(f"q.{c}" for c in CARD_FRAUD.context_columns)
    return f"""
    WITH tx AS (
        SELECT event_id, event_time, p.card_id AS card_id, p.merchant_id AS merchant_id,
               p.merchant_category AS merchant_category, p.amount AS amount,
               p.currency AS currency, p.country AS country, p.channel AS channel,
               (event_time // 3600000) % 24 AS hour_of_day
        FROM ({_landed(data.transaction_files, transaction_schema)})
        WHERE event_time < {data.end_ms}),
    q AS (SELECT * FROM tx WHERE event_time >= {data.start_ms}),
    v AS (
        SELECT q.event_id, {', '.join(views)}
        FROM q LEFT JOIN tx h ON h.card_id = q.card_id AND h.event_time < q.event_time
             AND h.event_time >= {_window_start(widest)}
        GROUP BY q.event_id),
    l AS (SELECT event_id, {', '.join(lifetime)} FROM tx),
    cc(currency, country) AS (VALUES {pairs}),
    known AS (
        SELECT p.transaction_id AS transaction_id,
               max(CASE WHEN p.is_fraud THEN 1 ELSE 0 END) AS has_fraud,
               max(CASE WHEN NOT p.is_fraud THEN 1 ELSE 0 END) AS has_genuine
        FROM ({labels}) WHERE event_time <= {data.as_of_ms} GROUP BY 1),
    rows AS (
        SELECT q.event_id, q.card_id, q.event_time, {context},
               {', '.join(f'{derived[n]} AS {n}' for n in FEATURES)},
               CASE WHEN k.has_fraud = 1 THEN 1 WHEN k.has_genuine = 1 THEN 0
                    WHEN q.event_time < {data.as_of_ms - label_maturity_ms} THEN 0 END AS label
        FROM q JOIN v USING (event_id) JOIN l USING (event_id)
             LEFT JOIN cc ON cc.currency = q.currency AND cc.country = q.country
             LEFT JOIN known k ON k.transaction_id = q.event_id)
    SELECT * FROM rows WHERE label IS NOT NULL"""


# -- the runs --------------------------------------------------------------------


@dataclass(frozen=True)
class BuildRun:
    label: str
    rows: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def run_duckdb(data: TrainingSetData, out: Path) -> BuildRun:
    import duckdb

    if out.exists():
        out.unlink()
    began = time.perf_counter()
    with duckdb.connect() as con:
        con.execute(f"COPY ({training_set_sql(data)}) TO {_literal(str(out))} (FORMAT parquet)")
        seconds = time.perf_counter() - began
        counted = con.execute(f"SELECT count(*) FROM read_parquet({_literal(str(out))})").fetchone()
    return BuildRun("duckdb", int(counted[0]) if counted else 0, seconds)


def run_lamina(spark: SparkSession, data: TrainingSetData) -> BuildRun:
    from lamina.batch.training_set import build_training_set

    began = time.perf_counter()
    frame = build_training_set(spark, data.master_uri, snapshot=data.snapshot,
                               start_ms=data.start_ms, end_ms=data.end_ms,
                               label_maturity_ms=0, as_of_ms=data.as_of_ms).persist()
    try:
        frame.write.format("noop").mode("overwrite").save()
        seconds = time.perf_counter() - began
        rows = frame.count()
    finally:
        frame.unpersist()
    return BuildRun("lamina", rows, seconds)


@dataclass
class TrainingSetResults:
    data: TrainingSetData | None = None
    duckdb: list[BuildRun] = field(default_factory=list)
    lamina: list[BuildRun] = field(default_factory=list)
    warm_up: BuildRun | None = None
    slots: int = 0


def measure_training_set(transactions: int, cores: set[int], rounds: int,
                         say: Callable[[str], None], workdir: Path) -> TrainingSetResults:
    """One untimed warm-up build, then `rounds` interleaved rounds of DuckDB
    and Lamina on the same data; the Spark session is stopped at the end."""
    from benchmarks.training import restore_affinity
    from lamina.batch import spark as lamina_spark

    restore_affinity(cores)
    results = TrainingSetResults()
    results.data = data = prepare_data(transactions, say)
    say(f"training-set data: {data.describe()}")
    results.slots = max(2, len(cores))
    spark = lamina_spark.spark_session(f"local[{results.slots}]",
                                       app_name="lamina-bench-training-set",
                                       extra_conf={"spark.ui.enabled": "false"})
    try:
        results.warm_up = run_lamina(spark, data)
        say(f"warm-up: Lamina {results.warm_up.rate:,.0f} rows/s")
        for round_no in range(1, rounds + 1):
            for label, run, runs in (
                ("DuckDB", lambda: run_duckdb(data, workdir / "duckdb.parquet"),
                 results.duckdb),
                ("Lamina", lambda: run_lamina(spark, data), results.lamina),
            ):
                runs.append(run())
                say(f"round {round_no}: {label} {runs[-1].rate:,.0f} rows/s "
                    f"({runs[-1].seconds:.1f} s, {runs[-1].rows:,} rows)")
    finally:
        spark.stop()
    counts = {r.rows for r in results.duckdb + results.lamina}
    if len(counts) != 1:
        raise BenchmarkError(f"the engines disagree on the number of rows: {sorted(counts)}")
    return results


# -- the report --------------------------------------------------------------------


def _runs(runs: list[BuildRun]) -> str:
    return f"best of {len(runs)}: " + ", ".join(f"{r.seconds:.1f} s" for r in runs)


def training_set_rows(results: TrainingSetResults) -> list[Row]:
    ref = best_of(results.duckdb, lambda r: r.rate)
    lamina = best_of(results.lamina, lambda r: r.rate)
    reference = f"DuckDB {ref.rate:,.0f} rows/s"
    warm = results.warm_up
    return [
        Row("training set, DuckDB same features and labels (reference)",
            f"{ref.rate:,.0f} rows/s", "—", "1.00×", "—",
            f"{ref.rows:,} rows in {ref.seconds:.1f} s, one Parquet file; "
            f"{_runs(results.duckdb)}"),
        Row("training set, Lamina (build_training_set)", f"{lamina.rate:,.0f} rows/s",
            reference, fmt_ratio(lamina.rate / ref.rate), "—",
            f"`local[{results.slots}]`, warm session, noop sink; {_runs(results.lamina)}"
            + (f"; the session's first build {warm.rate:,.0f} rows/s" if warm else "")),
    ]


def training_set_notes(results: TrainingSetResults) -> list[str]:
    data = results.data
    assert data is not None
    return [
        f"Training-set data: {data.describe()}.",
        "Training set: DuckDB with its default threads; Lamina's builder on Spark "
        f"`local[{results.slots}]` after one untimed warm-up build; the rounds alternate and "
        "both produced the same number of rows (checked). DuckDB sums and averages floats "
        "and counts distinct values exactly; Lamina sums cents exactly and keeps HLL "
        "sketches (exact on these small sets) -- the same values, checked on a small set "
        "by tests/unit/test_bench_training_set.py. The target is ≥ 10× the builder before "
        "issue 12 (see batch/training_set.py), not a ratio to DuckDB.",
    ]
