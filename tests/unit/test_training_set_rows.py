"""The per-card rows of the training set (``entity_rows``, what each Spark
task runs) against the reference, without Spark: every feature of every row
equals ``model_features(event, features_from_events(events before t))`` to
the last bit, on generated cards with up to 35 days of history."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from lamina.batch import training_set as ts
from lamina.generator import GeneratorConfig, generate
from lamina.schemas.card_views import CARD_FRAUD, CARD_VIEWS, FEATURES, model_features
from lamina.schemas.contract import FeatureContract
from lamina.schemas.view_definitions import (
    DAY_MS,
    Aggregate,
    Filter,
    GroupBy,
    Window,
    features_from_events,
)

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
CONFIG = GeneratorConfig(seed=5, cards=25, merchants=40, transactions=1_500, start=START_MS,
                         days=35.0, late_fraction=0.05, malformed_fraction=0.0,
                         duplicate_fraction=0.0)
WINDOW = (START_MS + 20 * DAY_MS, START_MS + 34 * DAY_MS)


@pytest.fixture(scope="module")
def by_card() -> dict[str, list[dict[str, Any]]]:
    cards: dict[str, list[dict[str, Any]]] = {}
    for record in generate(CONFIG):
        event = orjson.loads(record.value)
        if record.kind == "valid" and event["event_type"] == "transaction":
            cards.setdefault(event["card_id"], []).append(event)
    return cards


def _expected(events: list[dict[str, Any]], event: dict[str, Any], query_ms: int
              ) -> dict[str, float]:
    ordered = sorted(events, key=lambda e: (e["event_time"], e["event_id"]))
    before = [e for e in ordered if e["event_time"] < query_ms]
    return model_features(event, features_from_events(CARD_VIEWS, before, event["card_id"],
                                                      query_ms))


@pytest.mark.parametrize("lookahead_ms", [0, 1], ids=["strictly-before", "planted-leak"])
def test_card_rows_equal_the_reference_bit_for_bit(
        by_card: dict[str, list[dict[str, Any]]], lookahead_ms: int) -> None:
    checked = 0
    for card, events in by_card.items():
        shuffled = events[::-1]  # any order in
        rows = ts.entity_rows(CARD_FRAUD, shuffled, *WINDOW, lookahead_ms=lookahead_ms)
        in_window = sorted((e for e in events if WINDOW[0] <= e["event_time"] < WINDOW[1]),
                           key=lambda e: (e["event_time"], e["event_id"]))
        assert [r["event_id"] for r in rows] == [e["event_id"] for e in in_window]
        for row, event in zip(rows, in_window, strict=True):
            assert (row["card_id"], row["event_time"]) == (card, event["event_time"])
            expected = _expected(events, event, event["event_time"] + lookahead_ms)
            got = {name: row[name] for name in FEATURES}
            assert repr(got) == repr(expected), (row["event_id"], {
                n: (got[n], expected[n]) for n in FEATURES if repr(got[n]) != repr(expected[n])})
            checked += 1
    assert checked > 300


def test_only_rows_with_a_query_value_are_made_and_history_still_counts(
        by_card: dict[str, list[dict[str, Any]]]) -> None:
    card, events = max(by_card.items(), key=lambda item: len(item[1]))
    marked = [{**e, "label": i % 3 if i % 2 else None} for i, e in enumerate(events)]
    rows = ts.entity_rows(CARD_FRAUD, marked, *WINDOW, query_column="label")
    expected = [e for e in sorted(marked, key=lambda e: (e["event_time"], e["event_id"]))
                if WINDOW[0] <= e["event_time"] < WINDOW[1] and e["label"] is not None]
    assert [(r["event_id"], r["label"]) for r in rows] == [
        (e["event_id"], e["label"]) for e in expected]
    assert rows
    for row, event in zip(rows, expected, strict=True):
        assert repr({n: row[n] for n in FEATURES}) == repr(
            _expected(marked, event, event["event_time"]))


def test_honest_rows_pass_the_leak_check_and_leaky_ones_fail_it(
        by_card: dict[str, list[dict[str, Any]]]) -> None:
    events = [e for card_events in by_card.values() for e in card_events]
    honest = [r for card_events in by_card.values()
              for r in ts.entity_rows(CARD_FRAUD, card_events, *WINDOW)]
    assert ts.check_point_in_time(honest, events, sample=None).ok
    leaky = [r for card_events in by_card.values()
             for r in ts.entity_rows(CARD_FRAUD, card_events, *WINDOW, lookahead_ms=1)]
    report = ts.check_point_in_time(leaky, events, sample=None)
    assert not report.ok
    assert len({m.event_id for m in report.mismatches}) == len(leaky)


def test_a_partition_streamed_in_arrow_batches_gives_each_cards_rows(
        by_card: dict[str, list[dict[str, Any]]]) -> None:
    # What each Spark task runs (mapInArrow): events grouped by card, cut
    # into batches anywhere -- a card's events may span batches.
    import pyarrow as pa

    events = [e for card in sorted(by_card) for e in by_card[card][::-1]]
    marked = [{**e, "label": i % 2} for i, e in enumerate(events)]
    table = pa.Table.from_pylist(marked)
    schema = ts._output_schema(CARD_FRAUD, "label")
    expected = [row for card in sorted(by_card)
                for row in ts.entity_rows(CARD_FRAUD, [e for e in marked if e["card_id"] == card],
                                        *WINDOW, query_column="label")]
    for size in (1, 7, 500, 100_000):
        batches = table.to_batches(max_chunksize=size)
        out = list(ts._partition_rows(iter(batches), CARD_FRAUD, *WINDOW, schema,
                                      query_column="label", lookahead_ms=0))
        assert all(batch.schema == schema for batch in out)
        got = [row for batch in out for row in batch.to_pylist()]
        assert repr(got) == repr(expected)
    assert list(ts._partition_rows(iter([]), CARD_FRAUD, *WINDOW, schema,
                                   query_column="label", lookahead_ms=0)) == []


def test_a_lineage_written_before_contracts_still_reads(tmp_path: Any) -> None:
    import json

    from lamina.errors import ConfigError

    # What write_training_set recorded before training sets took a contract.
    old = {"master_uri": "/m", "snapshot": 3, "group": "card_transactions",
           "group_fingerprint": "7655cd879be2248f", "start_ms": 0, "end_ms": 10,
           "as_of_ms": 10, "label_maturity_ms": 0, "code_version": "0.1.0+abc",
           "features": list(FEATURES), "rows": 2, "built_seconds": 1.0, "extra": {},
           "not_mature_rows": 0, "latest_not_mature_ms": None}
    (tmp_path / ts.LINEAGE_FILE).write_text(json.dumps(old))
    lineage = ts.read_lineage(str(tmp_path))
    assert (lineage.snapshot, lineage.features) == (3, FEATURES)
    assert (lineage.contract, lineage.contract_fingerprint) == (None, None)
    (tmp_path / ts.LINEAGE_FILE).write_text(json.dumps({**old, "from_the_future": 1}))
    with pytest.raises(ConfigError, match="rebuild it with `lamina training-set`"):
        ts.read_lineage(str(tmp_path))


# --- a contract with two view groups over two event types -----------------------

#: Chargebacks of the card known before the transaction: label events keyed
#: by card_id (the label's event_time is when the outcome became known).
CARD_LABELS = GroupBy(
    name="card_labels",
    event_type="label",
    entity_key="card_id",
    aggregates=(
        Aggregate("chargebacks", "count", None,
                  (Window("30d", 30 * DAY_MS), Window("lifetime", None)),
                  filters=(Filter("is_fraud", "==", True),)),
        Aggregate("labels", "count", None, (Window("7d", 7 * DAY_MS),)),
    ),
)


def with_chargebacks(event: Any, views: Any) -> dict[str, float]:
    """The card model's features plus the card's chargeback counts."""
    vector = model_features(event, views)
    for name in CARD_LABELS.feature_names():
        vector[name] = float(views.get(name) or 0)
    return vector


CARD_FRAUD_WITH_LABELS = FeatureContract(
    name="card_fraud_with_labels",
    query_event_type="transaction",
    groups=(CARD_VIEWS, CARD_LABELS),
    request_fields=CARD_FRAUD.request_fields,
    features=(*FEATURES, *CARD_LABELS.feature_names()),
    vectoriser=with_chargebacks,
    label=CARD_FRAUD.label,
    context_columns=CARD_FRAUD.context_columns,
)


def test_a_contract_with_a_second_group_over_labels_equals_the_reference() -> None:
    by_card: dict[str, list[dict[str, Any]]] = {}
    for record in generate(CONFIG):
        event = orjson.loads(record.value)
        if record.kind == "valid":
            by_card.setdefault(event["card_id"], []).append(event)
    assert ts.event_types(CARD_FRAUD_WITH_LABELS) == ("transaction", "label")
    checked = with_history = 0
    for card, events in by_card.items():
        rows = ts.entity_rows(CARD_FRAUD_WITH_LABELS, events[::-1], *WINDOW)
        queries = sorted((e for e in events if e["event_type"] == "transaction"
                          and WINDOW[0] <= e["event_time"] < WINDOW[1]),
                         key=lambda e: (e["event_time"], e["event_id"]))
        assert [r["event_id"] for r in rows] == [e["event_id"] for e in queries]
        for row, event in zip(rows, queries, strict=True):
            t = event["event_time"]
            before = [e for e in events if e["event_time"] < t]
            views = {**features_from_events(CARD_VIEWS, before, card, t),
                     **features_from_events(CARD_LABELS, before, card, t)}
            expected = with_chargebacks(event, views)
            assert repr([row[n] for n in CARD_FRAUD_WITH_LABELS.features]) == repr(
                [expected[n] for n in CARD_FRAUD_WITH_LABELS.features]), row["event_id"]
            checked += 1
            with_history += row["labels_7d"] > 0
    assert checked > 300 and with_history > 10
    events = [e for card_events in by_card.values() for e in card_events]
    honest = [r for card_events in by_card.values()
              for r in ts.entity_rows(CARD_FRAUD_WITH_LABELS, card_events, *WINDOW)]
    assert ts.check_point_in_time(honest, events, CARD_FRAUD_WITH_LABELS, sample=None).ok
