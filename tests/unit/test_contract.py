"""The feature contract: one object holds a model's input, validated when
built, and fingerprinted for lineage."""

from __future__ import annotations

import dataclasses

import pytest

from lamina.errors import ConfigError
from lamina.lineage import code_version, fingerprint
from lamina.schemas.card_views import CARD_FRAUD, CARD_VIEWS, FEATURES, model_features
from lamina.schemas.contract import LabelRule
from lamina.schemas.view_definitions import WINDOWS, Aggregate, GroupBy

TX = {"event_id": "tx-1", "event_time": 1_767_225_600_000, "card_id": "c1", "amount": 20.0,
      "currency": "EUR", "country": "FR", "channel": "online", "merchant_id": "m1",
      "merchant_category": "grocery"}


def test_the_card_contract_vector_is_the_model_features_in_order():
    views = {"txn_count_1h": 3, "amount_mean_7d": 10.0}
    vector = CARD_FRAUD.vector(TX, views)
    assert list(vector) == list(FEATURES)
    assert vector == {f: float(v) for f, v in model_features(TX, views).items()}
    assert CARD_FRAUD.entity_key == "card_id"
    assert set(CARD_FRAUD.view_feature_names()) == set(CARD_VIEWS.feature_names())


def test_the_row_is_the_vectors_values_as_floats_in_feature_order():
    views = {"txn_count_1h": 3, "amount_mean_7d": 10.0}
    row = CARD_FRAUD.row(TX, views)
    assert type(row) is tuple and all(type(v) is float for v in row)
    assert row == tuple(model_features(TX, views)[f] for f in FEATURES)
    assert row == tuple(CARD_FRAUD.vector(TX, views).values())


def test_a_vectoriser_that_misses_a_feature_is_refused():
    broken = dataclasses.replace(CARD_FRAUD, vectoriser=lambda event, views: {"amount": 1.0})
    with pytest.raises(ConfigError, match="no value for"):
        broken.vector(TX, {})
    with pytest.raises(ConfigError, match=r"no value for \['log_amount'"):
        broken.row(TX, {})


@pytest.mark.parametrize(("changes", "message"), [
    ({"groups": ()}, "at least one view group"),
    ({"features": ("a", "a")}, "distinct"),
    ({"slices": ("country",)}, "not context columns"),
    ({"groups": (CARD_VIEWS, GroupBy("other", "transaction", "merchant_id",
                                     (Aggregate("n", "count", None, (WINDOWS["1h"],)),)))},
     "keyed by"),
    ({"request_fields": "amount"}, "must be a tuple"),
])
def test_an_inconsistent_contract_is_refused_when_built(changes, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(CARD_FRAUD, **changes)


def test_a_label_rule_with_a_negative_maturity_is_refused():
    with pytest.raises(ConfigError, match="maturity_ms"):
        LabelRule(maturity_ms=-1)


def test_the_fingerprint_changes_with_the_definition_and_only_then():
    assert CARD_FRAUD.fingerprint() == dataclasses.replace(CARD_FRAUD).fingerprint()
    shorter = dataclasses.replace(CARD_FRAUD, features=FEATURES[:-1],
                                  vectoriser=model_features)
    assert shorter.fingerprint() != CARD_FRAUD.fingerprint()
    later = dataclasses.replace(CARD_FRAUD, label=LabelRule(maturity_ms=1))
    assert later.fingerprint() != CARD_FRAUD.fingerprint()
    assert fingerprint(CARD_VIEWS) == fingerprint(dataclasses.replace(CARD_VIEWS))


def test_the_code_version_covers_the_named_modules():
    whole = code_version()
    views_only = code_version(("lamina.schemas.view_definitions", "lamina.schemas.aggregations"))
    assert whole.startswith("0.") and views_only != whole
    definitions = ("lamina.schemas.view_definitions",)
    assert code_version(definitions) == code_version(definitions)
