"""Score records: what the speed layer writes to the topic ``scores.v1``.

One :class:`ScoreRecord` per scored query event: the event (id, entity key
name and value, event time), the score, the model version that made it, the
batch views used for its features (source version and cutoff), when it was
scored and the produce-to-score latency, and **the feature vector the model
was given** (feature name -> value, in the contract's order), so a scheduled
job can compare online features with the offline training-set builder's
for the same events (invariant 6) over all traffic.

Where the schema lives, and why there
-------------------------------------
The record's contract is a JSON Schema file, ``records/scores/v1.json``,
written in the same subset and with the same ``x-lamina-version`` keyword
as the event schemas (``lamina.schemas.event_schemas``), next to their
folder rather than in it: ``events/`` is the catalogue of what producers
may put on ``events.raw`` -- everything there must carry the event
envelope and would be accepted by the lander -- and a score is an output
of the platform, not an event. A reader in another language validates the
same bytes with any JSON Schema validator; here the file is compiled once
with fastjsonschema, as events are. A new version is a new file
(``v2.json``) and a new topic (``scores.v2``).

Wire format
-----------
UTF-8 JSON made by orjson (:func:`encode_score`): the fields of the schema,
``record_type`` = ``"scores"`` and ``schema_version`` = 1 included, the
``features`` object in vector order. Floats round-trip exactly (orjson
writes the shortest representation that reads back to the same double).
:func:`decode_score` parses, validates against the schema and the rules a
schema cannot say (integers are ints, not ``1.0``; ``batch_version`` and
``batch_cutoff`` are both null or both set; optionally the feature names
and their order), and raises :class:`ScoreRecordError` with one reason
otherwise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

import fastjsonschema
import orjson

from lamina.errors import LaminaError

#: The topic the speed layer writes score records to.
SCORES_TOPIC: Final = "scores.v1"
RECORD_TYPE: Final = "scores"
SCHEMA_VERSION: Final = 1
#: The record schema: the contract of every score on the topic.
SCHEMA_PATH: Final = Path(__file__).parent / "records" / RECORD_TYPE / f"v{SCHEMA_VERSION}.json"

_ENVELOPE: Final = {"record_type": RECORD_TYPE, "schema_version": SCHEMA_VERSION}
_MAX_REASON_CHARS: Final = 240
# Integer-typed fields: fastjsonschema follows JSON Schema and takes 1.0 for them.
_INTEGER_FIELDS: Final = ("schema_version", "event_time", "model_version", "batch_version",
                          "batch_cutoff", "scored_at", "produce_to_score_ms")


class ScoreRecordError(LaminaError):
    """A score record was refused (to encode or decode); ``reason`` says why
    in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ScoreRecord(NamedTuple):
    """One score for one query event (see the module docstring).

    A NamedTuple, not a dataclass: one is built per scored event on the hot
    path. ``features`` is the vector the model consumed, in the contract's
    order (a plain dict keeps that order through JSON). Times are
    milliseconds since the Unix epoch, UTC. ``batch_version`` /
    ``batch_cutoff`` are None (both) before any batch view was published.
    """

    event_id: str
    entity_key: str
    entity: str
    event_time: int
    score: float
    model_version: int
    batch_version: int | None
    batch_cutoff: int | None
    scored_at: int
    produce_to_score_ms: int
    features: dict[str, float]

    def to_json_dict(self) -> dict[str, Any]:
        """The record as the JSON object of the schema (envelope included)."""
        out = dict(_ENVELOPE)
        out.update(zip(self._fields, self, strict=True))
        return out


@functools.cache
def score_schema() -> dict[str, Any]:
    """The parsed ``scores.v1`` JSON Schema (checked once: its version
    keyword must agree with the file name)."""
    schema: dict[str, Any] = orjson.loads(SCHEMA_PATH.read_bytes())
    if schema.get("x-lamina-version") != SCHEMA_VERSION:
        raise ScoreRecordError(
            f"{SCHEMA_PATH}: x-lamina-version is {schema.get('x-lamina-version')!r}, "
            f"the file is for version {SCHEMA_VERSION}")
    return schema


@functools.cache
def _compiled() -> Any:
    return fastjsonschema.compile(score_schema(), use_default=False)


def _short(text: str) -> str:
    return text if len(text) <= _MAX_REASON_CHARS else text[:_MAX_REASON_CHARS - 3] + "..."


def encode_score(record: ScoreRecord) -> bytes:
    """The record's bytes for ``scores.v1``. Refuses (ScoreRecordError) a
    score or feature that is not a finite number -- orjson would write NaN
    as null, which no reader could tell from a bug -- and text that is not
    valid Unicode. Does not run the full schema (the hot path builds records
    that satisfy it); :func:`decode_score` does."""
    if not math.isfinite(record.score):
        raise ScoreRecordError(f"event {record.event_id!r}: score is {record.score!r}, "
                               "not a finite number")
    # One C-level sum is finite when every value is (the common case);
    # only when it is not -- a NaN, an infinity, or finite values whose sum
    # overflows -- is each value looked at.
    if not math.isfinite(sum(record.features.values())):
        for name, value in record.features.items():
            if not math.isfinite(value):
                raise ScoreRecordError(
                    f"event {record.event_id!r}: feature {name!r} is {value!r}, "
                    "not a finite number")
    try:
        return orjson.dumps(record.to_json_dict())
    except TypeError as exc:  # orjson.JSONEncodeError: surrogates, odd types
        raise ScoreRecordError(f"event {record.event_id!r}: cannot encode: {exc}") from None


def encode_scores(records: Sequence[ScoreRecord]) -> list[bytes]:
    """:func:`encode_score` of each record, in order."""
    return [encode_score(r) for r in records]


def decode_score(raw: bytes, *, features: Sequence[str] | None = None) -> ScoreRecord:
    """Parse and validate one ``scores.v1`` record.

    Given ``features`` (e.g. a contract's), the record's feature names must
    be exactly those, in that order. Raises ScoreRecordError whose reason
    names the field and the problem (``malformed_json: ...``,
    ``schema_violation: data.score must be smaller than or equal to 1``,
    ...); returns the record otherwise.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ScoreRecordError(_short(f"malformed_json: {exc}")) from None
    if not isinstance(data, dict):
        raise ScoreRecordError(f"not_an_object: a score record is a JSON object, "
                               f"got {type(data).__name__}")
    if data.get("schema_version") != SCHEMA_VERSION or type(data.get("schema_version")) is not int:
        raise ScoreRecordError(
            f"unknown_schema_version: this reader reads {SCORES_TOPIC} (schema_version "
            f"{SCHEMA_VERSION}), got {_short(repr(data.get('schema_version')))}")
    try:
        _compiled()(data)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise ScoreRecordError(_short(f"schema_violation: {exc.message}")) from None
    for name in _INTEGER_FIELDS:
        value = data[name]
        if value is not None and type(value) is not int:
            raise ScoreRecordError(f"schema_violation: data.{name} must be an integer, "
                                   f"got {value!r}")
    if (data["batch_version"] is None) != (data["batch_cutoff"] is None):
        raise ScoreRecordError(
            "schema_violation: batch_version and batch_cutoff are both null (no batch view "
            f"yet) or both set, got {data['batch_version']!r} and {data['batch_cutoff']!r}")
    vector: dict[str, float] = data["features"]
    if features is not None and list(vector) != list(features):
        raise ScoreRecordError(_short(
            f"feature_mismatch: the record's features {list(vector)} are not the expected "
            f"{list(features)} in that order"))
    return ScoreRecord(
        event_id=data["event_id"], entity_key=data["entity_key"], entity=data["entity"],
        event_time=data["event_time"], score=float(data["score"]),
        model_version=data["model_version"], batch_version=data["batch_version"],
        batch_cutoff=data["batch_cutoff"], scored_at=data["scored_at"],
        produce_to_score_ms=data["produce_to_score_ms"],
        features={k: float(v) for k, v in vector.items()})

