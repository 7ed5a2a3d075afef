"""The typed decoder (msgspec structs generated from the schema files) gives
the same decision and the same reason as the reference validator
(orjson + fastjsonschema + Lamina's integer check, ``EventValidator(typed=False)``)
on valid, mutated and arbitrary records, for the shipped schemas and for a
registry that exercises every translated keyword, several versions of one
type, renamed fields and a schema the generator does not translate."""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina.generator import KIND_MALFORMED, GeneratorConfig, generate
from lamina.schemas.event_schemas import SchemaRegistry, default_registry
from lamina.schemas.structs import INT_MAX, INT_MIN, TypedDecoder, reference_pattern
from lamina.schemas.validation import (
    MISSING_ENVELOPE,
    SCHEMA_VIOLATION,
    Envelope,
    EventValidator,
    Rejected,
    ValidEvent,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z, in ms


# --- the registries -----------------------------------------------------------


def _envelope(event_type: str, version: int) -> dict[str, Any]:
    return {
        "event_id": {"type": "string", "minLength": 1, "maxLength": 64},
        "event_type": {"const": event_type},
        "schema_version": {"type": "integer", "const": version},
        "event_time": {"type": "integer", "minimum": 946684800000,
                       "exclusiveMaximum": 4102444800000},
    }


def _schema(event_type: str, version: int, properties: dict[str, Any], required: list[str],
            entity_key: str, **top: Any) -> dict[str, Any]:
    props = {**_envelope(event_type, version), **properties}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{event_type} v{version}",
        "type": "object",
        "x-lamina-entity-key": entity_key,
        "x-lamina-version": version,
        "additionalProperties": False,
        "required": ["event_id", "event_type", "schema_version", "event_time", *required],
        "properties": props,
        **top,
    }


def zoo_schemas() -> dict[tuple[str, int], dict[str, Any]]:
    """Every keyword the translation handles, and some it refuses."""
    shipped = default_registry()
    tx2 = shipped.get("transaction", 1)
    tx2["x-lamina-version"] = 2
    tx2["properties"]["schema_version"]["const"] = 2
    tx2["properties"]["terminal_id"] = {"type": "string", "maxLength": 32}
    tx2["properties"]["tip"] = {"type": "number"}  # no bounds: huge integers
    tx2["properties"]["items"] = {"type": "integer"}  # no bounds either
    gauge = _schema("gauge", 1, {
        "sensor": {"type": "string", "minLength": 2, "maxLength": 3},
        "level": {"enum": [1, 2, 3]},
        "code": {"type": "string", "pattern": "^x$|^y$"},
        "loose": {"type": "string", "pattern": "b"},  # unanchored: search, not match
        "dollar": {"type": "string", "pattern": "^a\\$"},  # an escaped $ stays a $
        "ratio": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "n": {"type": "integer", "minimum": 0.5, "exclusiveMaximum": 10.5},
        "f0": {"type": "boolean"},  # a property named like an attribute
        "a-b": {"type": "string", "enum": ["p", "q"]},
        "class": {"type": "integer", "exclusiveMinimum": -3, "maximum": 3},
        "kind": {"const": 7},
    }, ["sensor", "level", "code", "ratio", "n"], "sensor")
    # type lists are not translated: its events take the reference path only.
    opaque = _schema("opaque", 1, {"key": {"type": "string"},
                                   "maybe": {"type": ["string", "null"]}}, ["key"], "key")
    return {("transaction", 1): shipped.get("transaction", 1), ("transaction", 2): tx2,
            ("label", 1): shipped.get("label", 1), ("gauge", 1): gauge,
            ("opaque", 1): opaque}


@pytest.fixture(scope="module")
def zoo_registry(tmp_path_factory: pytest.TempPathFactory) -> SchemaRegistry:
    root = tmp_path_factory.mktemp("zoo")
    for (event_type, version), schema in zoo_schemas().items():
        path = root / event_type / f"v{version}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(schema))
    return SchemaRegistry(root)


@pytest.fixture(scope="module")
def shipped_pair() -> tuple[EventValidator, EventValidator]:
    return EventValidator(), EventValidator(typed=False)


@pytest.fixture(scope="module")
def zoo_pair(zoo_registry: SchemaRegistry) -> tuple[EventValidator, EventValidator]:
    return EventValidator(zoo_registry), EventValidator(zoo_registry, typed=False)


# --- comparing outcomes ---------------------------------------------------------


def outcome(result: ValidEvent | Rejected) -> tuple[Any, ...]:
    """A strict form of a result: types count (12 is not 12.0, -0.0 not 0.0)."""
    if isinstance(result, Rejected):
        return ("rejected", result.code, result.detail)
    envelope = tuple(result[:5])
    return ("valid", envelope, tuple(type(v) for v in envelope),
            orjson.dumps(result.payload, option=orjson.OPT_SORT_KEYS))


def assert_same(pair: tuple[EventValidator, EventValidator], raw: bytes) -> None:
    typed, reference = pair
    expected = reference.validate(raw)
    got = typed.validate(raw)
    assert outcome(got) == outcome(expected), raw
    envelope = typed.validate_envelope(raw)
    if isinstance(expected, Rejected):
        assert envelope == expected, raw
    else:
        assert type(envelope) is Envelope and envelope == Envelope(*expected[:5]), raw


# --- values near and beyond every bound ------------------------------------------

_NASTY: list[Any] = [None, True, False, 0, -1, 1.0, 1.5, -0.0, "", "x", "1", [], [1], {},
                     {"a": 1}, 2**63, 2**64, -(2**63) - 1, 1e300]


def _ints_near(*points: int) -> st.SearchStrategy[int]:
    return st.one_of(*(st.integers(p - 2, p + 2) for p in points))


def values_for(prop: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Valid values of a property, values just outside it, and values of
    other JSON types."""
    nasty = st.sampled_from(_NASTY)
    kind = prop.get("type")
    if "const" in prop or "enum" in prop:
        values = [prop["const"]] if "const" in prop else prop["enum"]
        near = st.sampled_from(values)
        return st.one_of(near, near.map(lambda v: float(v) if type(v) is int else v + " "),
                         nasty)
    if kind == "string":
        pattern = prop.get("pattern")
        texts = st.text(max_size=70) | st.text(st.characters(codec="utf-8"), min_size=1,
                                               max_size=4)
        if pattern is not None:
            matching = st.from_regex(reference_pattern(pattern))
            texts = texts | matching | matching.map(lambda s: s + "\n")
        return texts | nasty
    if kind == "integer":
        lo = prop.get("minimum", prop.get("exclusiveMinimum", 0))
        hi = prop.get("maximum", prop.get("exclusiveMaximum", 100))
        near = _ints_near(int(lo), int(hi), 0, INT_MIN, INT_MAX)
        return st.one_of(near, near.map(float), st.integers(), nasty)
    if kind == "number":
        lo = prop.get("minimum", prop.get("exclusiveMinimum", 0))
        hi = prop.get("maximum", prop.get("exclusiveMaximum", 1e6))
        near = _ints_near(int(lo), int(hi), INT_MIN, INT_MAX)
        return st.one_of(near, near.map(float), st.floats(allow_nan=False, allow_infinity=False),
                         st.floats(lo - 1, hi + 1), nasty)
    if kind == "boolean":
        return st.booleans() | nasty
    return st.sampled_from(_NASTY) | st.text(max_size=4)


@st.composite
def events(draw: st.DrawFn, schemas: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    """An event of one of ``schemas``: every property usually present with a
    value from ``values_for``, sometimes one missing, one extra, or the
    envelope pointing at another type or version."""
    key = draw(st.sampled_from(sorted(schemas)))
    schema = schemas[key]
    required = set(schema["required"])
    event: dict[str, Any] = {}
    for name, prop in schema["properties"].items():
        if name == "event_type":
            event[name] = key[0]
        elif name == "schema_version":
            event[name] = key[1]
        elif draw(st.integers(0, 19)) > 0 if name in required else draw(st.booleans()):
            event[name] = draw(values_for(prop))
    if draw(st.integers(0, 9)) == 0:
        event[draw(st.sampled_from(["extra", "f1", "eventId"]))] = draw(st.sampled_from(_NASTY))
    if draw(st.integers(0, 9)) == 0:
        event["event_type"] = draw(st.sampled_from([k[0] for k in schemas] + ["refund", 1]))
    if draw(st.integers(0, 9)) == 0:
        event["schema_version"] = draw(st.sampled_from([1, 2, 3, 1.0, True, "1"]))
    return event


def render(event: dict[str, Any], style: int, duplicate: tuple[str, Any] | None) -> bytes:
    """JSON text of ``event`` in one of a few spellings; with ``duplicate``,
    that key appears a second time (first or last) with another value."""
    if style == 0:
        text = json.dumps(event)
    elif style == 1:
        text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    else:
        text = json.dumps(event, indent=1)
    if duplicate is not None:
        name, value = duplicate
        pair = f"{json.dumps(name)}: {json.dumps(value)}"
        text = (text[:-1] + ", " + pair + "}") if style % 2 else ("{" + pair + ", " + text[1:])
        if text.startswith("{, ") or text.endswith(", }"):  # the event was empty
            text = text.replace("{, ", "{").replace(", }", "}")
    return text.encode("utf-8", errors="surrogatepass")


@st.composite
def records(draw: st.DrawFn, schemas: dict[tuple[str, int], dict[str, Any]]) -> bytes:
    event = draw(events(schemas))
    duplicate = None
    if event and draw(st.integers(0, 5)) == 0:
        duplicate = (draw(st.sampled_from(sorted(event))), draw(st.sampled_from(_NASTY + [1])))
    raw = render(event, draw(st.integers(0, 2)), duplicate)
    if draw(st.integers(0, 7)) == 0:  # one byte changed, dropped or added
        at = draw(st.integers(0, len(raw)))
        byte = bytes([draw(st.integers(0, 255))])
        raw = draw(st.sampled_from([raw[:at] + byte + raw[at + 1:], raw[:at] + raw[at + 1:],
                                    raw[:at] + byte + raw[at:]]))
    return raw


SHIPPED = {k: default_registry().get(*k) for k in (("transaction", 1), ("label", 1))}
ZOO = zoo_schemas()
_MANY = settings(max_examples=1500, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- the property: same decision, same reason ---------------------------------------


@_MANY
@given(raw=records(SHIPPED))
def test_typed_path_decides_like_the_reference_on_shipped_schemas(
    shipped_pair: tuple[EventValidator, EventValidator], raw: bytes
) -> None:
    assert_same(shipped_pair, raw)


@_MANY
@given(raw=records(ZOO))
def test_typed_path_decides_like_the_reference_on_every_translated_keyword(
    zoo_pair: tuple[EventValidator, EventValidator], raw: bytes
) -> None:
    assert_same(zoo_pair, raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=500, deadline=None)
@given(raw=st.binary(max_size=600) | json_values.map(lambda v: json.dumps(v).encode()))
def test_typed_path_decides_like_the_reference_on_arbitrary_input(
    zoo_pair: tuple[EventValidator, EventValidator], raw: bytes
) -> None:
    assert_same(zoo_pair, raw)


# JSON number literals, and near misses, in the integer and number fields.
number_literals = st.from_regex(
    r"\A-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][+-]?[0-9]{1,3})?\Z"
) | st.sampled_from(["01", "+1", ".5", "5.", "1e", "-", "0x10", "1_0", "Infinity", "NaN",
                     "-0", "-0.0", "1E400", "1e-400", "18446744073709551615",
                     "18446744073709551616", "-9223372036854775808", "-9223372036854775809"])


@settings(max_examples=800, deadline=None)
@given(field=st.sampled_from(["amount", "event_time", "schema_version", "tip", "items"]),
       literal=number_literals, version=st.sampled_from([1, 2]))
def test_number_spellings_decide_like_the_reference(
    zoo_pair: tuple[EventValidator, EventValidator], field: str, literal: str, version: int
) -> None:
    event = {**_transaction(), "schema_version": version}
    if version == 1 and field in ("tip", "items"):
        version = 2
        event["schema_version"] = 2
    event[field] = "@@"
    assert_same(zoo_pair, json.dumps(event).replace('"@@"', literal).encode())


def _transaction(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "tx-1", "event_type": "transaction", "schema_version": 1,
        "event_time": T0, "card_id": "card-7", "merchant_id": "m-42",
        "merchant_category": "grocery", "amount": 12.5, "currency": "EUR",
        "country": "FR", "channel": "pos",
    }
    event.update(changes)
    return event


# --- cases worth naming -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "code"),
    [
        (_transaction(currency="EUR\n"), SCHEMA_VIOLATION),  # `$` is end of string
        (_transaction(event_time=float(T0)), SCHEMA_VIOLATION),  # integers must be integers
        (_transaction(schema_version=True), MISSING_ENVELOPE),
        (_transaction(schema_version=1.0), MISSING_ENVELOPE),
        (_transaction(amount=True), SCHEMA_VIOLATION),
        (_transaction(amount=0), SCHEMA_VIOLATION),
        (_transaction(extra=1), SCHEMA_VIOLATION),  # additionalProperties false
        (_transaction(card_id="c" * 65), SCHEMA_VIOLATION),
        (_transaction(card_id=""), SCHEMA_VIOLATION),
        (_transaction(merchant_category="Grocery"), SCHEMA_VIOLATION),
        ({**_transaction(), "event_type": "label"}, SCHEMA_VIOLATION),
        (_transaction(event_type="refund"), "unknown_event_type"),
        (_transaction(schema_version=2), "unknown_schema_version"),
    ],
)
def test_named_invalid_events_are_rejected_with_the_reference_reason(
    shipped_pair: tuple[EventValidator, EventValidator], event: dict[str, Any], code: str
) -> None:
    raw = orjson.dumps(event)
    result = shipped_pair[0].validate(raw)
    assert isinstance(result, Rejected) and result.code == code, result
    assert_same(shipped_pair, raw)


def test_a_number_field_keeps_integers_as_integers(
    shipped_pair: tuple[EventValidator, EventValidator]
) -> None:
    result = shipped_pair[0].validate(orjson.dumps(_transaction(amount=12)))
    assert isinstance(result, ValidEvent) and type(result.payload["amount"]) is int
    assert_same(shipped_pair, orjson.dumps(_transaction(amount=12)))
    assert_same(shipped_pair, b'{"amount": 1e2' + orjson.dumps(_transaction())[1:])


def test_integers_beyond_what_orjson_reads_as_integers_take_the_reference_path(
    zoo_pair: tuple[EventValidator, EventValidator]
) -> None:
    for value in (INT_MAX, INT_MAX + 1, 2**64 - 1, 2**64, INT_MIN, INT_MIN - 1, 10**30):
        for field in ("tip", "items"):
            raw = json.dumps(_transaction(schema_version=2, **{field: value})).encode()
            assert_same(zoo_pair, raw)


def test_duplicate_keys_count_the_last_like_orjson(
    shipped_pair: tuple[EventValidator, EventValidator]
) -> None:
    body = orjson.dumps(_transaction())[1:]
    for prefix in (b'{"amount": -1, ', b'{"amount": 7, ', b'{"event_type": "label", ',
                   b'{"schema_version": 2, '):
        assert_same(shipped_pair, prefix + body)
    assert_same(shipped_pair, orjson.dumps(_transaction())[:-1] + b', "event_type": "label"}')
    assert_same(shipped_pair, orjson.dumps(_transaction())[:-1] + b', "amount": 0}')


def test_input_types_and_byte_level_damage(
    shipped_pair: tuple[EventValidator, EventValidator]
) -> None:
    raw = orjson.dumps(_transaction())
    typed = shipped_pair[0]
    assert isinstance(typed.validate(bytearray(raw)), ValidEvent)
    assert isinstance(typed.validate(memoryview(raw)), ValidEvent)
    for bad in (raw.replace(b"card-7", b"card-\xc3\x28"), raw.replace(b"card-7", b"\xed\xa0\x80"),
                raw.replace(b"card-7", b"a\\ud800"), raw.replace(b"card-7", b"a\x01"),
                b"\xef\xbb\xbf" + raw, raw + b"\x00", raw + b" \n", b"", b"null"):
        assert_same(shipped_pair, bad)


# --- the typed path is actually taken ----------------------------------------------------


def test_every_valid_generator_record_takes_the_typed_path() -> None:
    """The speed-up only holds if the typed path accepts what producers send:
    every record of the generator that the reference accepts (valid events,
    labels, duplicates) must decode into a struct, and every malformed one
    must be refused by it."""
    typed = TypedDecoder(default_registry())
    reference = EventValidator(typed=False)
    for record in itertools.islice(generate(GeneratorConfig(seed=7, transactions=20_000)),
                                   20_000):
        accepted = isinstance(reference.validate(record.value), ValidEvent)
        try:
            typed.decode(record.value)
            decoded = True
        except Exception:  # noqa: BLE001 - any refusal counts
            decoded = False
        assert decoded == accepted, (record.kind, record.value[:200])
        assert accepted != (record.kind == KIND_MALFORMED)


def test_shipped_schemas_are_all_translated() -> None:
    assert TypedDecoder(default_registry()).untranslated == {}


def test_untranslatable_schemas_are_named_and_still_validated(
    zoo_registry: SchemaRegistry, zoo_pair: tuple[EventValidator, EventValidator]
) -> None:
    decoder = TypedDecoder(zoo_registry)
    assert list(decoder.untranslated) == [("opaque", 1)]
    assert "maybe" in decoder.untranslated[("opaque", 1)]
    base = {"event_id": "o-1", "event_type": "opaque", "schema_version": 1, "event_time": T0,
            "key": "k"}
    for event in (base, {**base, "maybe": None}, {**base, "maybe": 3}):
        assert_same(zoo_pair, orjson.dumps(event))
    assert isinstance(zoo_pair[0].validate(orjson.dumps(base)), ValidEvent)


def test_several_versions_of_one_type_each_decode_with_their_own_struct(
    zoo_registry: SchemaRegistry,
) -> None:
    decoder = TypedDecoder(zoo_registry)
    v1 = decoder.decode(orjson.dumps(_transaction()))
    v2 = decoder.decode(orjson.dumps(_transaction(schema_version=2, terminal_id="t-1")))
    assert decoder.shapes[type(v1)].schema_version == 1
    assert decoder.shapes[type(v2)].schema_version == 2
    assert decoder.payload(v2)["terminal_id"] == "t-1"
    assert "terminal_id" not in decoder.payload(v1)
    with pytest.raises(Exception):  # noqa: B017 - any refusal: v1 has no terminal_id
        decoder.decode(orjson.dumps(_transaction(terminal_id="t-1")))


def test_reference_pattern_reads_unescaped_dollar_as_end_of_string() -> None:
    assert reference_pattern("^[A-Z]{3}$") == "^[A-Z]{3}\\Z"
    assert reference_pattern("^a\\$|b$") == "^a\\$|b\\Z"


def test_validators_agree_on_a_shuffled_generator_stream() -> None:
    """The benchmark's own data, in a random order, through both paths."""
    pair = (EventValidator(), EventValidator(typed=False))
    values = [r.value for r in itertools.islice(
        generate(GeneratorConfig(seed=42, transactions=5_000)), 5_000)]
    random.Random(1).shuffle(values)
    for raw in values:
        assert_same(pair, raw)
    assert len(values) == 5_000
