"""The point-in-time training set (lamina.batch.training_set) against
independent oracles.

Test data: a generated master dataset (3000 transactions, 200 cards, ten
days, late arrivals), producer resends landed again at later offsets (some
with a changed amount, which must never count), and planted label events
for the label rules. The oracles read the raw master rows with pyarrow and
orjson (not Spark) and evaluate the pure-Python reference
(``features_from_events`` + ``model_features``) per transaction.

Run with ``-p tests.spark_fixtures`` (the session-scoped ``spark`` fixture).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow.compute as pc
import pytest
from pyspark import cloudpickle

from lamina.batch import training_set as ts
from lamina.generator import GeneratorConfig, write_files
from lamina.lineage import fingerprint
from lamina.master.dataset import MasterDataset
from lamina.master.importer import import_files
from lamina.schemas.card_views import CARD_FRAUD, CARD_VIEWS, FEATURES, model_features
from lamina.schemas.contract import FeatureContract
from lamina.schemas.validation import EventValidator
from lamina.schemas.view_definitions import (
    DAY_MS,
    HOUR_MS,
    Aggregate,
    GroupBy,
    Window,
    features_from_events,
)
from tests.master_helpers import append_resends

pytestmark = pytest.mark.integration

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAYS = 10
WINDOW = (START_MS + 2 * DAY_MS, START_MS + 9 * DAY_MS)
AS_OF = START_MS + 9 * DAY_MS
MATURITY = 3 * DAY_MS
#: Transactions older than this are mature at AS_OF.
MATURE_BEFORE = AS_OF - MATURITY


def _raw(dataset: MasterDataset, event_type: str) -> list[dict[str, Any]]:
    """Payloads of one type, first landed copy of each event_id, sorted by
    (event_time, event_id): read without Spark."""
    rows = dataset.read()
    rows = rows.filter(pc.equal(rows.column("event_type"), event_type)).sort_by(
        [("ingest_time", "ascending"), ("kafka_topic", "ascending"),
         ("kafka_partition", "ascending"), ("kafka_offset", "ascending")])
    seen: dict[str, dict[str, Any]] = {}
    for raw in rows.column("payload").to_pylist():
        event = orjson.loads(raw)
        seen.setdefault(event["event_id"], event)
    return sorted(seen.values(), key=lambda e: (e["event_time"], e["event_id"]))


def _label(n: int, tx: dict[str, Any], at: int, fraud: bool) -> dict[str, Any]:
    return {"event_id": f"planted-{n}", "event_type": "label", "schema_version": 1,
            "event_time": at, "card_id": tx["card_id"], "transaction_id": tx["event_id"],
            "is_fraud": fraud, "label_source": "chargeback" if fraud else "confirmed_genuine"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The master dataset plus the planted label cases (by name -> event_id)."""
    root = tmp_path_factory.mktemp("training-master")
    config = GeneratorConfig(seed=7, cards=200, merchants=60, transactions=3_000,
                             start=START_MS, days=float(DAYS), late_fraction=0.05,
                             fraud_card_rate=0.05, fraud_label_delay_days=(0.5, 4.0),
                             genuine_label_rate=0.1, duplicate_fraction=0.0,
                             malformed_fraction=0.0)
    files = write_files(config, root / "files", events_per_file=2_000)
    dataset = MasterDataset(str(root / "master"))
    import_files(dataset, files, EventValidator(), root / "dlq", progress=False)
    append_resends(dataset, 40, seed=3)

    # Planted labels on transactions the generator left unlabelled.
    labelled = {e["transaction_id"] for e in _raw(dataset, "label")}
    free = [t for t in _raw(dataset, "transaction")
            if t["event_id"] not in labelled and WINDOW[0] <= t["event_time"] < WINDOW[1]]
    mature = [t for t in free if t["event_time"] < MATURE_BEFORE]
    recent = [t for t in free if t["event_time"] >= MATURE_BEFORE]
    cases = {
        "mature_fraud": (mature[0], AS_OF - DAY_MS, True),             # -> 1
        "recent_fraud": (recent[0], AS_OF - HOUR_MS, True),            # -> 1
        "recent_genuine": (recent[1], AS_OF - 1, False),               # -> 0
        "mature_late_fraud": (mature[1], AS_OF + HOUR_MS, True),       # -> 0 (after as_of)
        "recent_late_fraud": (recent[2], AS_OF + 1, True),             # excluded
        "fraud_wins": (recent[3], AS_OF - 2 * HOUR_MS, True),          # -> 1 ...
        "fraud_wins_genuine": (recent[3], AS_OF - 3 * HOUR_MS, False),  # ... over genuine
    }
    labels = [_label(n, tx, at, fraud) for n, (tx, at, fraud) in enumerate(cases.values())]
    planted = root / "files" / "planted-labels.jsonl"
    planted.write_bytes(b"".join(orjson.dumps(label) + b"\n" for label in labels))
    import_files(dataset, [planted], EventValidator(), root / "dlq", progress=False)
    return {
        "dataset": dataset,
        "cases": {name: tx["event_id"] for name, (tx, _, _) in cases.items()},
        "mature_unlabelled": mature[2]["event_id"],
        "recent_unlabelled": recent[4]["event_id"],
        "transactions": _raw(dataset, "transaction"),
        "labels": _raw(dataset, "label"),
    }


def _build(spark: Any, world: dict[str, Any], **kwargs: Any) -> Any:
    return ts.build_training_set(spark, world["dataset"].uri, CARD_FRAUD, snapshot=None,
                                 start_ms=WINDOW[0], end_ms=WINDOW[1],
                                 label_maturity_ms=MATURITY, as_of_ms=AS_OF, **kwargs)


@pytest.fixture(scope="module")
def built(spark: Any, world: dict[str, Any]) -> Any:
    started = time.monotonic()
    frame = _build(spark, world).toPandas()
    seconds = time.monotonic() - started
    print(f"\ntraining set: {len(frame)} rows in {seconds:.1f} s, the first Spark job of the "
          f"session ({len(frame) / seconds:.0f} rows/s cold, incl. labels and collect)")
    return frame


def _expected_labels(world: dict[str, Any]) -> dict[str, int]:
    """The label rules, evaluated in plain Python over the raw events."""
    fraud: set[str] = set()
    genuine: set[str] = set()
    for label in world["labels"]:
        if label["event_time"] <= AS_OF:
            (fraud if label["is_fraud"] else genuine).add(label["transaction_id"])
    out = {}
    for tx in world["transactions"]:
        if not WINDOW[0] <= tx["event_time"] < WINDOW[1]:
            continue
        if tx["event_id"] in fraud:
            out[tx["event_id"]] = 1
        elif tx["event_id"] in genuine or tx["event_time"] < MATURE_BEFORE:
            out[tx["event_id"]] = 0
    return out


def test_features_equal_the_reference_computed_in_plain_python(
        built: Any, world: dict[str, Any]) -> None:
    """The skew check: offline features == the online definition, for every
    row, from raw events read without Spark (resends: first copy wins)."""
    by_card: dict[str, list[dict[str, Any]]] = {}
    for tx in world["transactions"]:
        by_card.setdefault(tx["card_id"], []).append(tx)
    by_id = {tx["event_id"]: tx for tx in world["transactions"]}
    assert list(built.columns) == ["event_id", "card_id", "event_time", "merchant_category",
                                   "channel", *FEATURES, "label"]
    assert built["event_id"].is_unique
    assert len(built) > 1_000
    for row in built.to_dict("records"):
        tx = by_id[row["event_id"]]
        t = tx["event_time"]
        assert (row["card_id"], row["event_time"], row["merchant_category"], row["channel"]) == (
            tx["card_id"], t, tx["merchant_category"], tx["channel"])
        before = [e for e in by_card[tx["card_id"]] if e["event_time"] < t]
        expected = model_features(tx, features_from_events(CARD_VIEWS, before, tx["card_id"], t))
        for name in FEATURES:
            # Bit for bit: sums are exact, so the offline builder and the
            # reference agree to the last bit (repr: -0.0 is not 0.0).
            assert repr(float(row[name])) == repr(expected[name]), (
                row["event_id"], name, row[name], expected[name])


def test_leak_detector_flags_leaky_builds_and_passes_the_real_one(
        spark: Any, built: Any, world: dict[str, Any]) -> None:
    events = world["transactions"]
    report = ts.check_point_in_time(built, events, sample=300, seed=1)
    assert report.ok, report.summary()
    assert report.checked == 300

    # The Spark builder with views that include the event itself (events at <= t):
    # every row's counts are one too high.
    leaky, _ = ts._build(spark, world["dataset"].uri, CARD_FRAUD, snapshot=None,
                         start_ms=WINDOW[0], end_ms=WINDOW[1], label_maturity_ms=MATURITY,
                         as_of_ms=AS_OF, lookahead_ms=1)
    itself = ts.check_point_in_time(leaky, events, sample=300, seed=1)
    assert not itself.ok
    assert len({m.event_id for m in itself.mismatches}) == 300, itself.summary()
    assert {m.feature for m in itself.mismatches} >= {"txn_count_10m", "amount_sum_1h"}
    # A look into the future (views queried an hour later), on the per-card
    # function the Spark job runs: caught too. So is a row whose event is unknown.
    by_card: dict[str, list[dict[str, Any]]] = {}
    for tx in events:
        by_card.setdefault(tx["card_id"], []).append(tx)
    future_rows = [row for card in sorted(by_card)[:40]
                   for row in ts.entity_rows(CARD_FRAUD, by_card[card], *WINDOW,
                                             lookahead_ms=HOUR_MS)]
    future = ts.check_point_in_time(future_rows, events, sample=None)
    assert not future.ok
    honest_rows = [row for card in sorted(by_card)[:40]
                   for row in ts.entity_rows(CARD_FRAUD, by_card[card], *WINDOW)]
    assert ts.check_point_in_time(honest_rows, events, sample=None).ok
    unknown = ts.check_point_in_time([{**honest_rows[0], "event_id": "nope"}], events)
    assert [m.feature for m in unknown.mismatches] == ["<event>"]


def test_label_rules(built: Any, world: dict[str, Any]) -> None:
    got = dict(zip(built["event_id"], built["label"], strict=True))
    assert got == _expected_labels(world)
    cases = world["cases"]
    assert got[cases["mature_fraud"]] == 1
    assert got[cases["recent_fraud"]] == 1
    assert got[cases["recent_genuine"]] == 0
    assert got[cases["fraud_wins"]] == 1
    assert got[world["mature_unlabelled"]] == 0
    assert world["recent_unlabelled"] not in got
    # A label arriving after as_of is not used: mature -> 0, recent -> excluded.
    assert got[cases["mature_late_fraud"]] == 0
    assert cases["recent_late_fraud"] not in got
    # Both outcomes occur beyond the planted ones, and rows were excluded.
    assert sum(got.values()) > 3
    in_window = [t for t in world["transactions"] if WINDOW[0] <= t["event_time"] < WINDOW[1]]
    assert len(got) < len(in_window)


def test_written_training_set_keeps_its_lineage(
        spark: Any, world: dict[str, Any], tmp_path: Path) -> None:
    window = (START_MS + 5 * DAY_MS, START_MS + 6 * DAY_MS)  # one day: keeps the test quick
    for fmt in ("parquet", "delta"):
        out = str(tmp_path / f"training-{fmt}")
        metadata = ts.write_training_set(
            spark, world["dataset"].uri, out, CARD_FRAUD, snapshot=None, start_ms=window[0],
            end_ms=window[1], label_maturity_ms=MATURITY, as_of_ms=None, fmt=fmt)
        assert metadata.snapshot == world["dataset"].table().version()
        newest = max(e["event_time"] for e in world["transactions"] + world["labels"])
        assert metadata.as_of_ms == newest  # default: the snapshot's newest event
        assert metadata.group_fingerprint == fingerprint(CARD_VIEWS)
        assert (metadata.contract, metadata.contract_fingerprint) == (
            CARD_FRAUD.name, CARD_FRAUD.fingerprint())
        assert ts.read_lineage(out) == metadata
        assert json.loads(metadata.to_json())["start_ms"] == window[0]
        assert metadata.rows and metadata.rows > 100
        from lamina.batch.commands import read_table

        frame = read_table(out)
        assert len(frame) == metadata.rows
        assert list(frame.columns) == ["event_id", "card_id", "event_time", "merchant_category",
                                       "channel", *FEATURES, "label"]


def test_a_written_training_set_counts_the_rows_left_out_as_not_yet_mature(
        spark: Any, world: dict[str, Any], tmp_path: Path) -> None:
    out = str(tmp_path / "training")
    metadata = ts.write_training_set(
        spark, world["dataset"].uri, out, CARD_FRAUD, snapshot=None, start_ms=WINDOW[0],
        end_ms=WINDOW[1], label_maturity_ms=MATURITY, as_of_ms=AS_OF)
    kept = _expected_labels(world)
    left_out = [t for t in world["transactions"]
                if WINDOW[0] <= t["event_time"] < WINDOW[1] and t["event_id"] not in kept]
    assert left_out and all(t["event_time"] >= MATURE_BEFORE for t in left_out)
    assert metadata.rows == len(kept)
    assert metadata.not_mature_rows == len(left_out)
    assert metadata.latest_not_mature_ms == max(t["event_time"] for t in left_out)
    assert ts.read_lineage(out) == metadata
    line = ts.maturity_warning(metadata)
    assert line is not None
    assert line.startswith(f"{len(left_out):,} of {len(kept) + len(left_out):,} transactions")
    assert "--end 2026-01-07T00:00:00Z" in line  # AS_OF - MATURITY


# --- nothing hard-codes the card: a contract keyed by merchant ----------------

#: Test-only views per merchant (the generator's transactions carry
#: ``merchant_id``), one window with a declared, non-default hop (7 d in 1 d tiles).
MERCHANT_VIEWS = GroupBy(
    name="merchant_transactions",
    event_type="transaction",
    entity_key="merchant_id",
    aggregates=(
        Aggregate("txn_count", "count", None, (Window("1h", HOUR_MS), Window("24h", DAY_MS))),
        Aggregate("amount_sum", "sum", "amount", (Window("24h", DAY_MS),), scale=2),
        Aggregate("card_distinct", "approx_distinct", "card_id", (Window("24h", DAY_MS),)),
        Aggregate("amount_max", "max", "amount", (Window("7d", 7 * DAY_MS, hop_ms=DAY_MS),)),
    ),
)


def merchant_vector(event: Any, views: Any) -> dict[str, float]:
    """The test contract's vectoriser: the amount, the hour and each view
    feature (0.0 for none)."""
    vector = {"amount": float(event["amount"]),
              "hour_of_day": float(event["event_time"] // HOUR_MS % 24)}
    vector.update({name: 0.0 if value is None else float(value)
                   for name, value in views.items()})
    return vector


# Spark's Python workers cannot import this test module by its pytest name:
# ship the vectoriser by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

MERCHANT_RISK = FeatureContract(
    name="merchant_risk",
    query_event_type="transaction",
    groups=(MERCHANT_VIEWS,),
    request_fields=("amount", "event_time"),
    features=("amount", "hour_of_day", *MERCHANT_VIEWS.feature_names()),
    vectoriser=merchant_vector,
    context_columns=("channel", "country"),
    slices=("channel",),
)


def test_a_contract_keyed_by_merchant_builds_a_point_in_time_training_set(
        spark: Any, world: dict[str, Any], tmp_path: Path) -> None:
    """The builder takes everything from the contract: rows keyed by
    merchant_id, its context columns, its features by its vectoriser --
    each equal to the reference for that merchant strictly before the
    transaction -- and the label rule's labels; the lineage names it."""
    out = str(tmp_path / "merchant")
    metadata = ts.write_training_set(
        spark, world["dataset"].uri, out, MERCHANT_RISK, snapshot=None, start_ms=WINDOW[0],
        end_ms=WINDOW[1], label_maturity_ms=MATURITY, as_of_ms=AS_OF)
    from lamina.batch.commands import read_table

    frame = read_table(out)
    assert list(frame.columns) == ["event_id", "merchant_id", "event_time", "channel",
                                   "country", *MERCHANT_RISK.features, "label"]
    assert (metadata.contract, metadata.contract_fingerprint, metadata.group) == (
        "merchant_risk", MERCHANT_RISK.fingerprint(), "merchant_transactions")
    assert metadata.group_fingerprint == fingerprint(MERCHANT_VIEWS)
    assert metadata.features == MERCHANT_RISK.features
    assert ts.read_lineage(out) == metadata
    by_merchant: dict[str, list[dict[str, Any]]] = {}
    for tx in world["transactions"]:
        by_merchant.setdefault(tx["merchant_id"], []).append(tx)
    by_id = {tx["event_id"]: tx for tx in world["transactions"]}
    rows = frame.to_dict("records")
    assert dict((r["event_id"], r["label"]) for r in rows) == _expected_labels(world)
    assert len(rows) > 1_000
    busy = 0
    for row in rows:
        tx = by_id[row["event_id"]]
        t = tx["event_time"]
        assert (row["merchant_id"], row["event_time"], row["channel"], row["country"]) == (
            tx["merchant_id"], t, tx["channel"], tx["country"])
        before = [e for e in by_merchant[tx["merchant_id"]] if e["event_time"] < t]
        expected = merchant_vector(tx, features_from_events(MERCHANT_VIEWS, before,
                                                            tx["merchant_id"], t))
        for name in MERCHANT_RISK.features:
            assert repr(float(row[name])) == repr(expected[name]), (
                row["event_id"], name, row[name], expected[name])
        busy += row["card_distinct_24h"] > 1
    assert busy > 100  # merchant histories span several cards: not the card views by accident
    assert ts.check_point_in_time(frame, world["transactions"], MERCHANT_RISK, sample=200).ok



def test_a_contract_with_a_second_group_over_label_events_builds_in_spark(
        spark: Any, world: dict[str, Any]) -> None:
    """Two view groups over two event types (the card views over
    transactions, the card's chargebacks over label events): rows only for
    transactions, each group's features strictly before them."""
    from tests.unit import test_training_set_rows as rows_module

    cloudpickle.register_pickle_by_value(rows_module)
    contract = rows_module.CARD_FRAUD_WITH_LABELS
    built = ts.build_training_set(spark, world["dataset"].uri, contract, snapshot=None,
                                  start_ms=WINDOW[0], end_ms=WINDOW[1],
                                  label_maturity_ms=MATURITY, as_of_ms=AS_OF).toPandas()
    assert list(built.columns) == ["event_id", "card_id", "event_time", "merchant_category",
                                   "channel", *contract.features, "label"]
    assert dict(zip(built["event_id"], built["label"], strict=True)) == _expected_labels(world)
    history = world["transactions"] + world["labels"]
    report = ts.check_point_in_time(built, history, contract, sample=None)
    assert report.ok, report.summary()
    # Not all zeros: labels known before the transaction (chargebacks are
    # rare before a card's later transactions, confirmations less so).
    assert (built["labels_7d"] > 0).sum() > 10
    assert (built["chargebacks_lifetime"] > 0).sum() >= 1
