"""The demo's pure parts: cutting the generated stream into legs, the label
rule as known at a time, and the live AUC per window and model version."""

from __future__ import annotations

from lamina import demo_loop
from lamina.generator import GeneratorConfig, generate

HOUR_MS = 3_600_000


def test_the_stream_is_cut_where_valid_event_times_reach_each_cut() -> None:
    config = GeneratorConfig(transactions=3000, cards=200, days=3.0)
    cuts = (config.start + 24 * HOUR_MS, config.start + 48 * HOUR_MS)
    facts = demo_loop.StreamFacts()
    records = list(generate(config))
    legs = demo_loop.cut_records(records, cuts, facts)
    assert [r for leg in legs for r in leg] == records  # nothing lost, order kept
    for n, leg in enumerate(legs):
        valid = [r for r in leg if r.kind == "valid"]
        assert valid
        # A leg's first valid event reaches its cut; late ones may come after.
        if n:
            assert valid[0].event_time_ms >= cuts[n - 1]
        if n < len(cuts):
            assert valid[0].event_time_ms < cuts[n]
    assert len(facts.tx_time) == config.transactions
    assert facts.labels and len(facts.cards) <= config.cards
    assert facts.cards_by_leg[-1] == len(facts.cards) and len(facts.cards_by_leg) == 3


def test_a_label_counts_only_once_it_has_arrived_and_maturity_makes_the_rest_genuine() -> None:
    maturity = 10
    fraud = [(False, 50), (True, 120)]
    assert demo_loop.label_as_of(fraud, 40, as_of=45, maturity_ms=maturity) is None
    assert demo_loop.label_as_of(fraud, 40, as_of=60, maturity_ms=maturity) == 0
    assert demo_loop.label_as_of(fraud, 40, as_of=120, maturity_ms=maturity) == 1
    assert demo_loop.label_as_of(None, 40, as_of=49, maturity_ms=maturity) is None
    assert demo_loop.label_as_of(None, 40, as_of=51, maturity_ms=maturity) == 0


def test_live_auc_is_per_window_and_model_version_with_known_labels_only() -> None:
    facts = demo_loop.StreamFacts()
    scores = []
    for n in range(40):
        event_id = f"tx-{n}"
        fraud = n % 4 == 0
        if fraud:
            facts.labels[event_id] = [(True, 1000 + n)]
        version = 1 if n < 20 else 2
        # v1 ranks perfectly, v2 inversely.
        score = (0.9 if fraud else 0.1) if version == 1 else (0.1 if fraud else 0.9)
        scores.append({"event_id": event_id, "event_time": n * 10, "score": score,
                       "model_version": version})
    windows = demo_loop.auc_windows(scores, facts, as_of=10_000, maturity_ms=100,
                                    width_ms=200, min_positives=2)
    assert [(w.start_ms, w.model_version, w.n, w.positives) for w in windows] == [
        (0, 1, 20, 5), (200, 2, 20, 5)]
    assert [w.roc_auc for w in windows] == [1.0, 0.0]
    # Before any label arrived and before maturity nothing is known.
    assert demo_loop.auc_windows(scores, facts, as_of=500, maturity_ms=10_000) == []
