"""The synthetic event generator: deterministic, realistic, with a planted
fraud signal that drifts, and with the faults the pipeline must survive."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import re
import statistics
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from lamina.errors import ConfigError
from lamina.generator import (
    CHANNELS,
    DEFAULT_START_MS,
    KIND_DUPLICATE,
    KIND_MALFORMED,
    KIND_VALID,
    MERCHANT_CATEGORIES,
    MS_PER_HOUR,
    MS_PER_MINUTE,
    GeneratedRecord,
    GeneratorConfig,
    generate,
    iter_jsonl,
    write_files,
)

MAX_EVENT_BYTES = 64 * 1024
TX_FIELDS = {
    "event_id", "event_type", "schema_version", "event_time", "card_id", "merchant_id",
    "merchant_category", "amount", "currency", "country", "channel",
}
LABEL_FIELDS = {
    "event_id", "event_type", "schema_version", "event_time", "card_id",
    "transaction_id", "is_fraud", "label_source",
}

# Small but with enough fraud and faults to measure: 60 compromised cards,
# fault fractions ten times the defaults.
CONFIG = GeneratorConfig(
    seed=7, cards=1_000, merchants=200, transactions=30_000, fraud_card_rate=0.06,
    malformed_fraction=0.02, duplicate_fraction=0.01, late_fraction=0.02,
)


@pytest.fixture(scope="module")
def records() -> list[GeneratedRecord]:
    return list(generate(CONFIG))


@pytest.fixture(scope="module")
def events(records: list[GeneratedRecord]) -> list[dict[str, Any]]:
    """The valid events, parsed, in arrival order."""
    return [orjson.loads(r.value) for r in records if r.kind == KIND_VALID]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _conforms(value: bytes) -> bool:
    """A stand-alone reading of the transaction/label v1 contract."""
    if len(value) > MAX_EVENT_BYTES:
        return False
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(doc, dict):
        return False
    common = (
        isinstance(doc.get("event_id"), str) and 1 <= len(doc["event_id"]) <= 64
        and _is_int(doc.get("schema_version")) and doc["schema_version"] == 1
        and _is_int(doc.get("event_time"))
        and isinstance(doc.get("card_id"), str) and doc["card_id"] != ""
    )
    if not common:
        return False
    if doc.get("event_type") == "transaction":
        amount = doc.get("amount")
        return (
            set(doc) == TX_FIELDS
            and isinstance(doc["merchant_id"], str)
            and doc["merchant_category"] in MERCHANT_CATEGORIES
            and isinstance(amount, int | float) and not isinstance(amount, bool) and amount > 0
            and round(amount, 2) == amount
            and isinstance(doc["currency"], str)
            and re.fullmatch(r"[A-Z]{3}", doc["currency"]) is not None
            and isinstance(doc["country"], str)
            and re.fullmatch(r"[A-Z]{2}", doc["country"]) is not None
            and doc["channel"] in CHANNELS
        )
    if doc.get("event_type") == "label":
        return (
            set(doc) == LABEL_FIELDS
            and isinstance(doc["transaction_id"], str)
            and isinstance(doc["is_fraud"], bool)
            and doc["label_source"] == ("chargeback" if doc["is_fraud"] else "confirmed_genuine")
        )
    return False


def _signature(config: GeneratorConfig) -> list[tuple[bytes, bytes, str]]:
    return [(r.key, r.value, r.kind) for r in generate(config)]


def test_same_seed_gives_identical_bytes_and_another_seed_does_not() -> None:
    config = dataclasses.replace(CONFIG, transactions=5_000)
    first = _signature(config)
    assert first == _signature(config)
    assert first != _signature(dataclasses.replace(config, seed=8))


def test_fault_settings_never_change_the_valid_events() -> None:
    config = dataclasses.replace(CONFIG, transactions=5_000)
    clean = dataclasses.replace(
        config, malformed_fraction=0.0, duplicate_fraction=0.0, late_fraction=0.0
    )
    faulty_values = sorted(r.value for r in generate(config) if r.kind == KIND_VALID)
    clean_records = list(generate(clean))
    assert {r.kind for r in clean_records} == {KIND_VALID}
    assert sorted(r.value for r in clean_records) == faulty_values


def test_generation_streams_without_building_the_dataset_first() -> None:
    huge = GeneratorConfig(transactions=50_000_000, days=365.0)
    started = time.monotonic()
    first = list(itertools.islice(generate(huge), 1_000))
    assert len(first) == 1_000
    assert time.monotonic() - started < 10.0


def test_counts_by_kind_match_the_configured_fractions(
    records: list[GeneratedRecord], events: list[dict[str, Any]]
) -> None:
    kinds = collections.Counter(r.kind for r in records)
    transactions = sum(1 for e in events if e["event_type"] == "transaction")
    labels = sum(1 for e in events if e["event_type"] == "label")
    assert transactions == CONFIG.transactions
    assert kinds[KIND_VALID] == transactions + labels
    # Expected 0.02 and 0.01 per valid record: ~640 and ~320, so +-25 % is > 4 sigma.
    assert kinds[KIND_MALFORMED] == pytest.approx(CONFIG.malformed_fraction * kinds[KIND_VALID],
                                                  rel=0.25)
    assert kinds[KIND_DUPLICATE] == pytest.approx(CONFIG.duplicate_fraction * kinds[KIND_VALID],
                                                  rel=0.25)
    # Genuine confirmations: ~5 % of genuine transactions, minus those still pending at the end.
    genuine_labels = sum(1 for e in events if e["event_type"] == "label" and not e["is_fraud"])
    assert 0.03 * transactions < genuine_labels < 0.05 * transactions


def test_every_valid_record_is_a_conformant_event_keyed_by_its_card(
    records: list[GeneratedRecord],
) -> None:
    seen_ids: set[str] = set()
    for record in records:
        if record.kind != KIND_VALID:
            continue
        assert _conforms(record.value), record.value
        doc = orjson.loads(record.value)
        assert record.key == doc["card_id"].encode()
        assert record.event_id == doc["event_id"]
        assert record.event_time_ms == doc["event_time"]
        assert CONFIG.start <= doc["event_time"] < CONFIG.end_ms
        assert doc["event_id"] not in seen_ids
        seen_ids.add(doc["event_id"])
        assert b"\n" not in record.value


def test_valid_records_pass_the_projects_schema_validator(records: list[GeneratedRecord]) -> None:
    from lamina.schemas import validation

    validator = validation.EventValidator()
    for record in records:
        outcome = validator.validate(record.value)
        if record.kind == KIND_MALFORMED:
            assert isinstance(outcome, validation.Rejected), record.value[:200]
        else:
            assert isinstance(outcome, validation.ValidEvent), (outcome, record.value)


def test_duplicates_resend_the_exact_bytes_of_an_earlier_valid_record(
    records: list[GeneratedRecord],
) -> None:
    earlier: dict[bytes, GeneratedRecord] = {}
    duplicates = 0
    for record in records:
        if record.kind == KIND_VALID:
            earlier[record.value] = record
        elif record.kind == KIND_DUPLICATE:
            duplicates += 1
            original = earlier[record.value]
            assert (original.key, original.event_id, original.event_time_ms) == (
                record.key, record.event_id, record.event_time_ms)
    assert duplicates > 0


def _malformation(value: bytes) -> str:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return "garbage"
    if len(value) > MAX_EVENT_BYTES:
        return "oversized"
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "truncated"
    if "event_type" not in doc or "schema_version" not in doc:
        return "missing_field"
    if doc["event_type"] not in ("transaction", "label"):
        return "unknown_event_type"
    if doc["schema_version"] != 1:
        return "unknown_schema_version"
    required = TX_FIELDS if doc["event_type"] == "transaction" else LABEL_FIELDS
    if not required <= set(doc):
        return "missing_field"
    if isinstance(doc["event_time"], str) or isinstance(doc.get("amount"), str) \
            or isinstance(doc.get("is_fraud"), str):
        return "wrong_type"
    return "unexplained"


def test_malformed_records_cover_every_kind_of_breakage_and_all_fail_the_contract(
    records: list[GeneratedRecord],
) -> None:
    malformed = [r for r in records if r.kind == KIND_MALFORMED]
    kinds = collections.Counter(_malformation(r.value) for r in malformed)
    assert set(kinds) == {
        "garbage", "oversized", "truncated", "unknown_event_type",
        "unknown_schema_version", "missing_field", "wrong_type",
    }
    for record in malformed:
        assert not _conforms(record.value)
        assert b"\n" not in record.value
        assert record.event_id is None or record.event_id.startswith(f"bad-{CONFIG.seed}-")
    # Oversized ones are valid events apart from their size.
    oversized = [r.value for r in malformed if _malformation(r.value) == "oversized"]
    assert all(_conforms(orjson.dumps(orjson.loads(v))) for v in oversized)


def test_labels_follow_their_transactions_in_event_time_and_arrival(
    events: list[dict[str, Any]],
) -> None:
    arrived: dict[str, tuple[int, dict[str, Any]]] = {}
    labels = 0
    for position, event in enumerate(events):
        if event["event_type"] == "transaction":
            arrived[event["event_id"]] = (position, event)
            continue
        labels += 1
        tx_position, tx = arrived[event["transaction_id"]]  # arrived earlier
        assert tx_position < position
        assert tx["event_time"] < event["event_time"] < CONFIG.end_ms
        assert tx["card_id"] == event["card_id"]
    assert labels > 0


def test_some_events_arrive_late_but_never_beyond_max_lateness(
    events: list[dict[str, Any]],
) -> None:
    # How far behind the newest event time seen so far each event arrives.
    newest = 0
    lateness = []
    for event in events:
        newest = max(newest, event["event_time"])
        lateness.append(newest - event["event_time"])
    late = sum(1 for gap in lateness if gap > MS_PER_MINUTE)
    assert late > 0.002 * len(events)
    assert max(lateness) <= CONFIG.max_lateness_ms


def test_rate_follows_the_time_of_day(events: list[dict[str, Any]]) -> None:
    by_hour = collections.Counter(
        (e["event_time"] // MS_PER_HOUR) % 24 for e in events if e["event_type"] == "transaction"
    )
    assert max(by_hour.values()) > 3 * min(by_hour.values())


def _fraud_view(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Transactions split into labelled fraud / the rest, with each card's
    typical amount and home country estimated from its other transactions."""
    txs = {e["event_id"]: e for e in events if e["event_type"] == "transaction"}
    fraud_ids = {
        e["transaction_id"] for e in events if e["event_type"] == "label" and e["is_fraud"]
    }
    amounts: dict[str, list[float]] = collections.defaultdict(list)
    countries: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for tx_id, tx in txs.items():
        if tx_id not in fraud_ids:
            amounts[tx["card_id"]].append(tx["amount"])
            countries[tx["card_id"]][tx["country"]] += 1
    return {
        "txs": txs,
        "fraud": [txs[i] for i in fraud_ids],
        "typical": {card: statistics.median(a) for card, a in amounts.items()},
        "home": {card: c.most_common(1)[0][0] for card, c in countries.items()},
    }


def _tiny_online(tx: dict[str, Any]) -> bool:
    return tx["amount"] < 5 and tx["channel"] == "online"


def _median_gap_ms(fraud: list[dict[str, Any]]) -> float:
    by_card: dict[str, list[int]] = collections.defaultdict(list)
    for tx in fraud:
        by_card[tx["card_id"]].append(tx["event_time"])
    gaps = [b - a for times in by_card.values()
            for a, b in itertools.pairwise(sorted(times))]
    return statistics.median(gaps)


def test_fraud_pattern_changes_at_the_drift(events: list[dict[str, Any]]) -> None:
    view = _fraud_view(events)
    drift = CONFIG.drift_at_ms
    assert drift is not None
    before = [t for t in view["fraud"] if t["event_time"] < drift]
    after = [t for t in view["fraud"] if t["event_time"] >= drift + MS_PER_HOUR]
    assert len(before) > 50 and len(after) > 30
    all_before = sum(1 for t in view["txs"].values() if t["event_time"] < drift)
    all_after = sum(1 for t in view["txs"].values() if t["event_time"] >= drift)
    assert 0 < len(before) / all_before < 0.05
    assert 0 < len(after) / all_after < 0.05

    def ratio(tx: dict[str, Any]) -> float:
        return float(tx["amount"] / view["typical"][tx["card_id"]])

    # Account takeover: several times the card's usual amount, often abroad.
    assert statistics.mean(ratio(t) for t in before) > 2.5
    assert sum(t["country"] != view["home"][t["card_id"]] for t in before) / len(before) > 0.3
    assert sum(map(_tiny_online, before)) / len(before) < 0.05
    # Card testing: mostly tiny online payments, at home.
    assert sum(map(_tiny_online, after)) / len(after) > 0.6
    assert statistics.mean(ratio(t) for t in after) < 1.0
    assert sum(t["country"] == view["home"][t["card_id"]] for t in after) / len(after) > 0.9
    # Bursts: minutes apart before, seconds apart after.
    assert _median_gap_ms(before) > 3 * MS_PER_MINUTE
    assert _median_gap_ms(after) < 3 * MS_PER_MINUTE
    # The genuine labelled transactions look like neither.
    genuine_ids = {e["transaction_id"] for e in events
                   if e["event_type"] == "label" and not e["is_fraud"]}
    genuine = [view["txs"][i] for i in genuine_ids]
    assert sum(map(_tiny_online, genuine)) / len(genuine) < 0.1
    assert statistics.median(ratio(t) for t in genuine) < 2.0


def test_without_drift_every_burst_is_an_account_takeover() -> None:
    config = dataclasses.replace(CONFIG, drift_at=None, transactions=15_000)
    assert config.drift_at_ms is None
    view = _fraud_view([orjson.loads(r.value) for r in generate(config) if r.kind == KIND_VALID])
    assert view["fraud"]
    assert sum(map(_tiny_online, view["fraud"])) / len(view["fraud"]) < 0.05


def test_write_files_round_trips_the_generated_bytes(tmp_path: Path) -> None:
    config = dataclasses.replace(CONFIG, transactions=8_000)
    expected = [r.value for r in generate(config)]
    paths = write_files(config, tmp_path, events_per_file=3_000)
    assert [p.name for p in paths] == [f"events-{i:05d}.jsonl" for i in range(len(paths))]
    assert len(paths) == -(-len(expected) // 3_000)
    assert [v for p in paths for v in iter_jsonl(p)] == expected
    # Rewriting with bigger files leaves no stale file from the first run.
    again = write_files(config, tmp_path, events_per_file=100_000)
    assert sorted(tmp_path.iterdir()) == again
    assert list(iter_jsonl(again[0])) == expected


def test_write_files_refuses_a_non_positive_file_size(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="events_per_file"):
        write_files(CONFIG, tmp_path, events_per_file=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", -1), ("seed", True), ("cards", 0), ("merchants", 5), ("transactions", 0),
        ("start", 1.5), ("days", 0), ("days", "14"), ("fraud_card_rate", 1.5),
        ("genuine_label_rate", -0.1), ("late_fraction", float("nan")), ("max_lateness_ms", -1),
        ("malformed_fraction", 1.0), ("duplicate_fraction", 2),
        ("fraud_label_delay_days", (30.0, 1.0)), ("genuine_label_delay_days", (0, 5)),
        ("drift_at", DEFAULT_START_MS - 1), ("drift_at", "later"),
    ],
)
def test_config_validation_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"GeneratorConfig\.{field}\b"):
        GeneratorConfig(**{field: value})


def test_default_config_is_valid_and_drifts_two_thirds_in() -> None:
    config = GeneratorConfig()
    assert config.end_ms - config.start == 14 * 24 * MS_PER_HOUR
    assert config.drift_at_ms == config.start + (config.end_ms - config.start) * 2 // 3
