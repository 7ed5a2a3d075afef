"""Score records (``scores.v1``): what the encoder writes the decoder reads
back unchanged, and a malformed record is refused with a reason naming the
problem."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lamina.schemas.card_views import CARD_FRAUD
from lamina.schemas.scores import (
    SCHEMA_PATH,
    SCORES_TOPIC,
    ScoreRecord,
    ScoreRecordError,
    decode_score,
    encode_score,
    score_schema,
)

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=64)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
EVENT_TIME = st.integers(946_684_800_000, 4_102_444_800_000 - 1)
BATCH = st.one_of(st.just((None, None)),
                  st.tuples(st.integers(0, 2**62), st.integers(0, 2**62)))


@st.composite
def records(draw: st.DrawFn) -> ScoreRecord:
    batch_version, batch_cutoff = draw(BATCH)
    names = draw(st.lists(TEXT, min_size=1, max_size=12, unique=True))
    return ScoreRecord(
        event_id=draw(TEXT), entity_key=draw(TEXT), entity=draw(TEXT),
        event_time=draw(EVENT_TIME), score=draw(st.floats(0.0, 1.0)),
        model_version=draw(st.integers(1, 2**62)), batch_version=batch_version,
        batch_cutoff=batch_cutoff, scored_at=draw(st.integers(0, 2**62)),
        produce_to_score_ms=draw(st.integers(-2**40, 2**40)),
        features={n: draw(FINITE) for n in names})


def valid() -> dict[str, Any]:
    return {"record_type": "scores", "schema_version": 1, "event_id": "tx-1",
            "entity_key": "card_id", "entity": "c1", "event_time": 1_767_225_600_000,
            "score": 0.25, "model_version": 3, "batch_version": 12,
            "batch_cutoff": 1_767_222_000_000, "scored_at": 1_767_225_600_040,
            "produce_to_score_ms": 37, "features": {"amount": 20.0, "log_amount": 3.04}}


@given(records())
def test_a_score_record_round_trips_through_its_bytes_unchanged(record: ScoreRecord) -> None:
    decoded = decode_score(encode_score(record))
    assert decoded == record
    assert list(decoded.features) == list(record.features)  # the vector's order is kept
    # Bit for bit, -0.0 included (== alone would not see the sign).
    assert [math.copysign(1, v) for v in decoded.features.values()] == \
        [math.copysign(1, v) for v in record.features.values()]


@given(records())
def test_the_decoder_checks_feature_names_and_order_when_given(record: ScoreRecord) -> None:
    names = list(record.features)
    assert decode_score(encode_score(record), features=names) == record
    if len(names) > 1:
        with pytest.raises(ScoreRecordError, match="feature_mismatch"):
            decode_score(encode_score(record), features=names[::-1])


def test_the_card_contract_vector_fits_a_record() -> None:
    vector = CARD_FRAUD.vector({"event_id": "tx-1", "event_time": 1_767_225_600_000,
                                "card_id": "c1", "amount": 20.0, "currency": "EUR",
                                "country": "FR", "channel": "online"}, {})
    raw = orjson.dumps({**valid(), "features": vector})
    assert list(decode_score(raw, features=CARD_FRAUD.features).features) == \
        list(CARD_FRAUD.features)


def _without(field: str) -> dict[str, Any]:
    record = valid()
    del record[field]
    return record


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", "malformed_json"),
    (b"[1, 2]", "not_an_object: a score record is a JSON object, got list"),
    (orjson.dumps({**valid(), "schema_version": 2}), "unknown_schema_version"),
    (orjson.dumps({**valid(), "schema_version": True}), "unknown_schema_version"),
    (orjson.dumps(_without("model_version")), "data must contain"),
    (orjson.dumps({**valid(), "score": 1.5}), "data.score must be smaller than or equal to 1"),
    (orjson.dumps({**valid(), "score": "0.5"}), "data.score must be number"),
    (orjson.dumps({**valid(), "model_version": 0}), "data.model_version must be bigger"),
    (orjson.dumps({**valid(), "model_version": 3.0}), "data.model_version must be an integer"),
    (orjson.dumps({**valid(), "event_time": 5}), "data.event_time must be bigger"),
    (orjson.dumps({**valid(), "features": {}}), "data.features must contain at least 1"),
    (orjson.dumps({**valid(), "features": {"amount": None}}), "must be number"),
    (orjson.dumps({**valid(), "features": {"amount": True}}), "must be number"),
    (orjson.dumps({**valid(), "extra": 1}), "must not contain"),
    (orjson.dumps({**valid(), "batch_cutoff": None}), "both null"),
    (orjson.dumps({**valid(), "record_type": "events"}), "data.record_type must be"),
])
def test_a_malformed_record_is_refused_with_its_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ScoreRecordError) as refused:
        decode_score(raw)
    assert reason in refused.value.reason, refused.value.reason


def test_a_record_before_any_batch_view_carries_no_batch() -> None:
    record = decode_score(orjson.dumps({**valid(), "batch_version": None, "batch_cutoff": None}))
    assert (record.batch_version, record.batch_cutoff) == (None, None)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_the_encoder_refuses_a_score_or_feature_that_is_not_finite(bad: float) -> None:
    record = decode_score(orjson.dumps(valid()))
    with pytest.raises(ScoreRecordError, match="score is"):
        encode_score(record._replace(score=bad))
    with pytest.raises(ScoreRecordError, match="feature 'amount' is"):
        encode_score(record._replace(features={"amount": bad}))


def test_the_schema_file_is_the_versioned_contract_of_the_topic() -> None:
    schema = score_schema()
    assert SCHEMA_PATH.name == "v1.json" and SCORES_TOPIC == "scores.v1"
    assert schema["x-lamina-version"] == 1
    assert set(schema["required"]) == set(schema["properties"]) == \
        {"record_type", *ScoreRecord._fields, "schema_version"}


def test_finite_features_whose_sum_overflows_still_encode() -> None:
    record = decode_score(orjson.dumps(valid()))._replace(
        features={"a": 1.5e308, "b": 1.5e308, "c": -0.0})
    assert decode_score(encode_score(record)) == record
