"""Micro-batch scoring without TensorFlow: the matrix is the contract's
vectors in order, the whole batch is scored in one call by one champion,
and an event whose features are not finite is refused, not dropped."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.schemas.card_views import CARD_FRAUD, FEATURES
from lamina.schemas.scores import decode_score, encode_score
from lamina.schemas.validation import ValidEvent
from lamina.speed.models import Champion
from lamina.speed.scoring import rows_matrix, score_batch

T0 = 1_767_225_600_000


def transaction(i: int) -> dict[str, Any]:
    return {"event_id": f"tx-{i}", "event_type": "transaction", "schema_version": 1,
            "event_time": T0 + i * 1000, "card_id": f"c{i % 3}", "merchant_id": f"m{i}",
            "merchant_category": "grocery", "amount": 5.0 + i, "currency": "EUR",
            "country": "FR" if i % 2 else "US", "channel": "online" if i % 2 else "pos"}


class CountingScorer:
    """A logistic model on fixed weights: a real scorer, counting its calls."""

    def __init__(self, n_features: int) -> None:
        self.weights = np.linspace(-0.01, 0.01, n_features, dtype=np.float32)
        self.calls: list[int] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        return 1.0 / (1.0 + np.exp(-(x @ self.weights).astype(np.float64)))


def champion(version: int, scorer: CountingScorer) -> Champion:
    return Champion(version=version, model=None, scorer=scorer, scorer_kind="numpy",
                    card={"features": list(FEATURES)}, features=tuple(FEATURES),
                    contract_fingerprint=CARD_FRAUD.fingerprint(), path=Path("unused"))


def test_a_micro_batch_is_one_matrix_scored_in_one_call_by_one_version() -> None:
    scorer = CountingScorer(len(FEATURES))
    events = [transaction(i) for i in range(7)]
    views = [{"txn_count_1h": i, "amount_mean_7d": 10.0 * i} for i in range(7)]
    items = [(ValidEvent(e["event_id"], "transaction", 1, e["event_time"], e["card_id"], e)
              if i % 2 else e, v) for i, (e, v) in enumerate(zip(events, views, strict=True))]
    produced = [e["event_time"] + 5 for e in events]
    batch = score_batch(items, contract=CARD_FRAUD, champion=champion(4, scorer),
                        produced_at_ms=produced, batch_version=12, batch_cutoff=T0,
                        clock_ms=lambda: T0 + 60_000)
    assert scorer.calls == [7]
    assert batch.model_version == 4 and batch.refused == []
    expected = np.array([list(CARD_FRAUD.vector(e, v).values())
                         for e, v in zip(events, views, strict=True)], dtype=np.float32)
    assert np.array_equal(batch.matrix, expected)
    assert [r.event_id for r in batch.records] == [e["event_id"] for e in events]
    reference = scorer(expected).tolist()  # the same matrix, the same one call
    for record, event, view, same, produced_ms in zip(
            batch.records, events, views, reference, produced, strict=True):
        assert record.model_version == 4
        assert (record.batch_version, record.batch_cutoff) == (12, T0)
        assert (record.entity_key, record.entity) == ("card_id", event["card_id"])
        assert record.features == CARD_FRAUD.vector(event, view)
        assert list(record.features) == list(FEATURES)
        assert record.score == same
        assert record.produce_to_score_ms == T0 + 60_000 - produced_ms
        assert decode_score(encode_score(record), features=FEATURES) == record


def test_an_event_with_features_that_are_not_finite_is_refused_and_the_rest_scored() -> None:
    scorer = CountingScorer(len(FEATURES))
    items = [(transaction(0), {}), (transaction(1), {"txn_count_1h": math.nan}),
             (transaction(2), {})]
    batch = score_batch(items, contract=CARD_FRAUD, champion=champion(1, scorer),
                        produced_at_ms=[T0, T0, T0])
    assert [r.event_id for r in batch.records] == ["tx-0", "tx-2"]
    assert batch.refused == [("tx-1", "features not finite: ['txn_count_1h']")]
    assert scorer.calls == [2] and batch.matrix.shape == (2, len(FEATURES))



def test_a_value_beyond_float32_is_refused_not_given_to_the_model_as_infinity() -> None:
    # 1e39 is a finite float64 but infinite as the float32 the model sees.
    scorer = CountingScorer(len(FEATURES))
    items = [(transaction(0), {"amount_sum_1h": 1e39}), (transaction(1), {})]
    batch = score_batch(items, contract=CARD_FRAUD, champion=champion(1, scorer),
                        produced_at_ms=[T0, T0])
    assert [r.event_id for r in batch.records] == ["tx-1"]
    assert batch.refused == [("tx-0", "features not finite: ['amount_sum_1h']")]
    assert np.isfinite(batch.matrix).all() and scorer.calls == [1]


def test_finite_values_whose_sum_overflows_float32_are_all_scored() -> None:
    # The batch's one-sum check overflows here; every row must still be
    # looked at and kept, none refused.
    scorer = CountingScorer(len(FEATURES))
    big = {"amount_sum_1h": 3e38, "amount_sum_24h": 3e38}
    items = [(transaction(i), big) for i in range(3)]
    batch = score_batch(items, contract=CARD_FRAUD, champion=champion(1, scorer),
                        produced_at_ms=[T0] * 3)
    assert batch.refused == [] and len(batch.records) == 3
    assert batch.records[0].features["amount_sum_1h"] == 3e38

def test_an_empty_batch_calls_no_scorer() -> None:
    scorer = CountingScorer(len(FEATURES))
    batch = score_batch([], contract=CARD_FRAUD, champion=champion(1, scorer), produced_at_ms=[])
    assert batch.records == [] and scorer.calls == []


def test_a_champion_verified_for_other_features_is_refused() -> None:
    other = champion(1, CountingScorer(len(FEATURES)))
    other = Champion(**{**other.__dict__, "features": tuple(reversed(FEATURES))})
    with pytest.raises(ValueError, match="not contract 'card_fraud'"):
        score_batch([(transaction(0), {})], contract=CARD_FRAUD, champion=other,
                    produced_at_ms=[T0])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 12).flatmap(lambda n: st.lists(
    st.tuples(*[st.floats(allow_nan=True, allow_infinity=True, width=64)] * 5),
    min_size=n, max_size=n)))
def test_the_rows_matrix_is_what_numpy_makes_of_the_same_floats(
        rows: list[tuple[float, ...]]) -> None:
    # Bit for bit, NaNs and values beyond float32's range included: the
    # model is given the matrix training's np.array(..., float32) would give.
    with np.errstate(over="ignore"):
        expected = np.array(rows, dtype=np.float32).reshape(len(rows), 5)
    got = rows_matrix(rows, 5)
    assert got.dtype == np.float32 and got.shape == (len(rows), 5)
    assert got.tobytes() == expected.tobytes()
