"""Event schemas: the registry's rules, the validator's reason codes and its
never-raise contract (invariant 9), and the backward-compatibility check."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.errors import ConfigError
from lamina.schemas.compat import check_backward_compatible, check_command, check_registry
from lamina.schemas.event_schemas import SchemaError, SchemaRegistry, default_registry
from lamina.schemas.validation import (
    MALFORMED_JSON,
    MISSING_ENVELOPE,
    NOT_AN_OBJECT,
    OVERSIZED,
    REASON_CODES,
    SCHEMA_VIOLATION,
    UNKNOWN_EVENT_TYPE,
    UNKNOWN_SCHEMA_VERSION,
    EventValidator,
    Rejected,
    ValidEvent,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z, in ms


def transaction(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "tx-1",
        "event_type": "transaction",
        "schema_version": 1,
        "event_time": T0,
        "card_id": "card-7",
        "merchant_id": "m-42",
        "merchant_category": "grocery",
        "amount": 12.5,
        "currency": "EUR",
        "country": "FR",
        "channel": "pos",
    }
    event.update(changes)
    return event


def label(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "lb-1",
        "event_type": "label",
        "schema_version": 1,
        "event_time": T0 + 86_400_000,
        "card_id": "card-7",
        "transaction_id": "tx-1",
        "is_fraud": True,
        "label_source": "chargeback",
    }
    event.update(changes)
    return event


def without(event: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != name}


@pytest.fixture(scope="module")
def validator() -> EventValidator:
    return EventValidator()


def rejected(result: ValidEvent | Rejected) -> Rejected:
    assert isinstance(result, Rejected), f"expected a rejection, got {result!r}"
    return result


# --- valid events -----------------------------------------------------------


def test_valid_transaction_becomes_valid_event_with_envelope(validator: EventValidator) -> None:
    event = transaction()
    result = validator.validate(orjson.dumps(event))
    assert result == ValidEvent(
        event_id="tx-1",
        event_type="transaction",
        schema_version=1,
        event_time_ms=T0,
        entity_key="card-7",
        payload=event,
    )


def test_valid_label_becomes_valid_event_with_envelope(validator: EventValidator) -> None:
    event = label(is_fraud=False, label_source="confirmed_genuine")
    result = validator.validate(orjson.dumps(event))
    assert result == ValidEvent("lb-1", "label", 1, T0 + 86_400_000, "card-7", event)


def test_integer_amount_and_boundary_values_are_valid(validator: EventValidator) -> None:
    for event in (
        transaction(amount=1_000_000),
        transaction(amount=0.01),
        transaction(event_time=946_684_800_000),
        transaction(event_time=4_102_444_800_000 - 1),
        transaction(event_id="x" * 64, card_id="c" * 64),
    ):
        assert isinstance(validator.validate(orjson.dumps(event)), ValidEvent), event


def test_validator_accepts_bytearray_and_memoryview(validator: EventValidator) -> None:
    # Typed Any: the signature promises bytes, but Kafka clients may hand over views.
    raw: Any = orjson.dumps(transaction())
    assert isinstance(validator.validate(bytearray(raw)), ValidEvent)
    assert isinstance(validator.validate(memoryview(raw)), ValidEvent)


# --- each reason code from a specific bad input ------------------------------


def test_oversized_is_refused_before_parsing() -> None:
    small = EventValidator(max_event_bytes=100)
    raw = orjson.dumps(transaction())
    assert len(raw) > 100
    result = rejected(small.validate(raw))
    assert result.code == OVERSIZED
    assert result.reason == f"oversized: {len(raw)} bytes is over the limit of 100"
    # Not parsed: even garbage of that size is "oversized", not "malformed_json".
    assert rejected(small.validate(b"\xff" * 101)).code == OVERSIZED
    assert rejected(small.validate(b"\xff" * 100)).code == MALFORMED_JSON


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b'{"event_type": "transaction",}',
        b"\xff\xfe\x00garbage",
        b'{"event_id": "\xc3\x28"}',  # invalid UTF-8
        b'{"event_id": "\\ud800"}',  # lone surrogate
        b'{"amount": NaN}',
        b"[" * 2000,  # deeper than orjson's limit
        b'{"a": 1} {"b": 2}',
    ],
)
def test_malformed_json(validator: EventValidator, raw: bytes) -> None:
    result = rejected(validator.validate(raw))
    assert result.code == MALFORMED_JSON
    assert result.detail


@pytest.mark.parametrize(
    ("raw", "kind"),
    [(b"[]", "array"), (b'"transaction"', "string"), (b"42", "integer"), (b"null", "null"),
     (b"true", "boolean"), (b"1.5", "number")],
)
def test_not_an_object(validator: EventValidator, raw: bytes, kind: str) -> None:
    result = rejected(validator.validate(raw))
    assert result.code == NOT_AN_OBJECT
    assert result.reason == f"not_an_object: top-level value is {kind}, not object"


@pytest.mark.parametrize(
    ("event", "detail"),
    [
        (without(transaction(), "event_type"), "event_type is missing"),
        (without(transaction(), "schema_version"), "schema_version is missing"),
        (transaction(event_type=None), "event_type must be a string, got null"),
        (transaction(event_type=7), "event_type must be a string, got integer"),
        (transaction(schema_version="1"), "schema_version must be an integer, got string"),
        (transaction(schema_version=1.0), "schema_version must be an integer, got number"),
        (transaction(schema_version=True), "schema_version must be an integer, got boolean"),
        (transaction(schema_version=None), "schema_version must be an integer, got null"),
    ],
)
def test_missing_envelope(validator: EventValidator, event: dict[str, Any], detail: str) -> None:
    result = rejected(validator.validate(orjson.dumps(event)))
    assert (result.code, result.detail) == (MISSING_ENVELOPE, detail)


def test_unknown_event_type(validator: EventValidator) -> None:
    result = rejected(validator.validate(orjson.dumps(transaction(event_type="refund"))))
    assert result.reason == (
        "unknown_event_type: no schema for event_type 'refund'; known: ['label', 'transaction']"
    )


def test_unknown_schema_version(validator: EventValidator) -> None:
    result = rejected(validator.validate(orjson.dumps(transaction(schema_version=2))))
    assert result.code == UNKNOWN_SCHEMA_VERSION
    assert result.detail == "'transaction' has no schema_version 2; known: [1]"


@pytest.mark.parametrize(
    ("event", "detail"),
    [
        (transaction(amount=0), "data.amount must be bigger than 0"),
        (transaction(amount=-3.5), "data.amount must be bigger than 0"),
        (transaction(amount=1_000_000.01), "data.amount must be smaller than or equal to 1000000"),
        (transaction(amount="12.50"), "data.amount must be number"),
        (transaction(amount=True), "data.amount must be number"),
        (transaction(event_time=True), "data.event_time must be integer"),
        (transaction(event_time=float(T0)), "data.event_time must be integer"),
        (transaction(event_time=str(T0)), "data.event_time must be integer"),
        (transaction(event_time=T0 + 0.5), "data.event_time must be integer"),
        (transaction(event_time=T0 // 1000),  # seconds, not milliseconds
         "data.event_time must be bigger than or equal to 946684800000"),
        (transaction(event_time=4_102_444_800_000),  # 2100-01-01 itself is out
         "data.event_time must be smaller than 4102444800000"),
        (transaction(currency="eur"), "data.currency must match pattern ^[A-Z]{3}$"),
        (transaction(currency="EUR\n"), "data.currency must match pattern ^[A-Z]{3}$"),
        (transaction(country="FRA"), "data.country must match pattern ^[A-Z]{2}$"),
        (transaction(channel="phone"), "data.channel must be one of ['pos', 'online', 'atm']"),
        (transaction(event_id=""), "data.event_id must be longer than or equal to 1 characters"),
        (transaction(card_id="c" * 65),
         "data.card_id must be shorter than or equal to 64 characters"),
        (transaction(card_id=7), "data.card_id must be string"),
        (transaction(tip=1.0), "data must not contain {'tip'} properties"),
        (without(transaction(), "amount"), "data must contain ['amount'] properties"),
        (without(transaction(), "card_id"), "data must contain ['card_id'] properties"),
        (label(is_fraud=1), "data.is_fraud must be boolean"),
        (label(label_source="guess"),
         "data.label_source must be one of ['chargeback', 'confirmed_genuine']"),
        (without(label(), "transaction_id"), "data must contain ['transaction_id'] properties"),
    ],
)
def test_schema_violation_detail_names_the_field(
    validator: EventValidator, event: dict[str, Any], detail: str
) -> None:
    result = rejected(validator.validate(orjson.dumps(event)))
    assert (result.code, result.detail) == (SCHEMA_VIOLATION, detail)


def test_binary_garbage_is_malformed_json(validator: EventValidator) -> None:
    garbage = bytes(range(256)) * 4
    assert rejected(validator.validate(garbage)).code == MALFORMED_JSON


def test_long_details_are_cut_short(validator: EventValidator) -> None:
    event = transaction(**{"x" * 5000: 1})
    result = rejected(validator.validate(orjson.dumps(event)))
    assert result.code == SCHEMA_VIOLATION
    assert len(result.detail) < 300 and result.detail.endswith("...")
    long_type = rejected(validator.validate(orjson.dumps(transaction(event_type="y" * 5000))))
    assert long_type.code == UNKNOWN_EVENT_TYPE and len(long_type.detail) < 300


def test_max_event_bytes_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_event_bytes"):
        EventValidator(max_event_bytes=0)


# --- never raises -------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too: orjson reads those as floats
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def check_outcome(result: object) -> None:
    assert isinstance(result, ValidEvent | Rejected)
    if isinstance(result, Rejected):
        assert result.code in REASON_CODES
        assert isinstance(result.detail, str) and len(result.detail) < 300


@settings(max_examples=500)
@given(raw=st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(validator: EventValidator, raw: bytes) -> None:
    check_outcome(validator.validate(raw))


@settings(max_examples=500)
@given(value=json_values)
def test_arbitrary_json_values_never_raise(validator: EventValidator, value: Any) -> None:
    # The standard library writes integers of any size, which orjson.dumps refuses.
    check_outcome(validator.validate(json.dumps(value).encode()))


@settings(max_examples=500)
@given(
    base=st.sampled_from([transaction(), label()]),
    overrides=st.dictionaries(
        st.sampled_from(sorted(transaction().keys() | label().keys()) + ["extra"]),
        json_values,
        max_size=4,
    ),
)
def test_envelope_shaped_objects_never_raise(
    validator: EventValidator, base: dict[str, Any], overrides: dict[str, Any]
) -> None:
    check_outcome(validator.validate(json.dumps({**base, **overrides}).encode()))


# Values of every JSON type; a mutation picks one whose type differs from the field's.
_ANY_TYPE_VALUES: list[Any] = [
    None, True, False, 0, 1, -5, T0, 1.5, float(T0), "", "x", "1", [], [1], {}, {"a": 1},
]


def _other_type(original: Any, candidate: Any) -> bool:
    """True if ``candidate`` has a different JSON type from ``original``
    (integer and number count as one type unless the field wants an integer)."""
    def kind(v: Any) -> str:
        if isinstance(v, bool):
            return "boolean"
        if isinstance(v, int):
            return "integer"
        return type(v).__name__
    if kind(original) == "integer":
        return kind(candidate) != "integer"
    if kind(original) == "float":
        return kind(candidate) not in ("integer", "float")
    return kind(candidate) != kind(original)


@st.composite
def mutated_events(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    """A valid event with one field dropped or replaced by a value of another
    type; returns (event, field, mutation)."""
    event = draw(st.sampled_from([transaction(), label()]))
    name = draw(st.sampled_from(sorted(event)))
    if draw(st.booleans()):
        return without(event, name), name, "drop"
    candidates = [v for v in _ANY_TYPE_VALUES if _other_type(event[name], v)]
    event = {**event, name: copy.deepcopy(draw(st.sampled_from(candidates)))}
    return event, name, "retype"


@settings(max_examples=400)
@given(mutation=mutated_events())
def test_mutated_valid_events_are_rejected(
    validator: EventValidator, mutation: tuple[dict[str, Any], str, str]
) -> None:
    event, name, _ = mutation
    result = rejected(validator.validate(orjson.dumps(event)))
    expected = MISSING_ENVELOPE if name in ("event_type", "schema_version") else SCHEMA_VIOLATION
    assert result.code == expected, result.reason


card_ids = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1,
                   max_size=64)


@settings(max_examples=200)
@given(
    event_time=st.integers(946_684_800_000, 4_102_444_800_000 - 1),
    amount=st.floats(min_value=0, max_value=1_000_000, exclude_min=True) | st.integers(1, 10**6),
    card_id=card_ids,
    category=st.sampled_from(["grocery", "travel", "cash", "online_services"]),
    channel=st.sampled_from(["pos", "online", "atm"]),
    currency=st.from_regex(r"\A[A-Z]{3}\Z"),
)
def test_generated_valid_transactions_pass(
    validator: EventValidator, event_time: int, amount: float, card_id: str, category: str,
    channel: str, currency: str,
) -> None:
    event = transaction(event_time=event_time, amount=amount, card_id=card_id,
                        merchant_category=category, channel=channel, currency=currency)
    result = validator.validate(orjson.dumps(event))
    assert isinstance(result, ValidEvent), result
    assert (result.event_time_ms, result.entity_key) == (event_time, card_id)


# --- the registry ---------------------------------------------------------------


def test_shipped_registry_lists_types_versions_and_entity_keys() -> None:
    registry = default_registry()
    assert registry is default_registry()
    assert registry.event_types() == ["label", "transaction"]
    assert registry.versions("transaction") == [1]
    assert registry.latest("label") == 1
    assert registry.entity_key("transaction", 1) == "card_id"
    schema = registry.get("transaction", 1)
    assert schema["x-lamina-version"] == 1 and schema["additionalProperties"] is False
    schema["required"].clear()  # a copy: the registry is not changed
    assert registry.get("transaction", 1)["required"]


def test_registry_refuses_unknown_type_and_version() -> None:
    registry = default_registry()
    with pytest.raises(SchemaError, match="unknown event type 'refund'"):
        registry.versions("refund")
    with pytest.raises(SchemaError, match="unknown version 3 of 'label'; known: \\[1\\]"):
        registry.get("label", 3)


def write_schema(root: Path, event_type: str, file_name: str, schema: Any) -> Path:
    path = root / event_type / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(schema if isinstance(schema, bytes) else orjson.dumps(schema))
    return path


def shipped(event_type: str = "transaction", version: int = 1) -> dict[str, Any]:
    return default_registry().get(event_type, version)


def test_custom_registry_directory_loads(tmp_path: Path) -> None:
    write_schema(tmp_path, "transaction", "v1.json", shipped())
    write_schema(tmp_path, "transaction", "v2.json", transaction_v2(optional=True))
    (tmp_path / "transaction" / "README.md").write_text("ignored")
    registry = SchemaRegistry(tmp_path)
    assert registry.versions("transaction") == [1, 2]
    assert registry.latest("transaction") == 2
    assert registry.source("transaction", 2) == tmp_path / "transaction" / "v2.json"


def _set(schema: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``schema`` with the dotted ``path`` set (``...`` deletes it)."""
    schema = copy.deepcopy(schema)
    *parents, leaf = path.split(".")
    node = schema
    for part in parents:
        node = node[part]
    if value is ...:
        if isinstance(node, list):
            node.remove(leaf)
        else:
            del node[leaf]
    else:
        node[leaf] = value
    return schema


@pytest.mark.parametrize(
    ("file_name", "schema", "problem"),
    [
        ("v1.json", b"{not json", "not valid JSON"),
        ("v1.json", b"[]", "a schema must be a JSON object"),
        ("version1.json", shipped(), "schema files must be named vN.json"),
        ("v1.json", _set(shipped(), "x-lamina-version", 2),
         '"x-lamina-version" is 2 but the file is for version 1; make them agree'),
        ("v1.json", _set(shipped(), "x-lamina-version", True),
         '"x-lamina-version" must be an integer, got True'),
        ("v1.json", _set(shipped(), "x-lamina-entity-key", "account_id"),
         "entity key 'account_id' must be a property of type string"),
        ("v1.json", _set(shipped(), "required.card_id", ...),
         "entity key 'card_id' must be listed in \"required\""),
        ("v1.json", _set(shipped(), "properties.card_id.type", "integer"),
         "entity key 'card_id' must be a property of type string"),
        ("v1.json", _set(shipped(), "required.event_time", ...),
         "envelope fields ['event_time'] must be declared and required"),
        ("v1.json", _set(shipped(), "properties.event_type.const", "label"),
         "envelope field 'event_type' must be const 'transaction'"),
        ("v1.json", _set(shipped(), "properties.schema_version.const", 2),
         "envelope field 'schema_version' must be const 1"),
        ("v1.json", _set(shipped(), "properties.amount.type", "money"),
         "not a valid JSON Schema"),
        ("v1.json", _set(shipped(), "properties.currency.pattern", "[A-Z"),
         "not a valid JSON Schema"),
    ],
)
def test_registry_refuses_bad_files_naming_file_and_problem(
    tmp_path: Path, file_name: str, schema: Any, problem: str
) -> None:
    path = write_schema(tmp_path, "transaction", file_name, schema)
    with pytest.raises(SchemaError) as caught:
        SchemaRegistry(tmp_path)
    assert str(caught.value).startswith(f"{path}: ")
    assert problem in str(caught.value)


def test_registry_refuses_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="schema directory does not exist"):
        SchemaRegistry(tmp_path / "nowhere")


# --- compatibility ----------------------------------------------------------------


def transaction_v2(optional: bool = False) -> dict[str, Any]:
    """transaction v1 renumbered as v2, optionally with an optional field."""
    schema = _set(shipped(), "x-lamina-version", 2)
    schema = _set(schema, "properties.schema_version.const", 2)
    schema["title"] = "transaction v2"
    if optional:
        schema["properties"]["terminal_id"] = {"type": "string", "maxLength": 32}
    return schema


def test_adding_an_optional_property_is_compatible() -> None:
    assert check_backward_compatible(shipped(), transaction_v2(optional=True)) == []


def test_widening_enums_bounds_and_types_is_compatible() -> None:
    new = transaction_v2()
    props = new["properties"]
    props["channel"]["enum"].append("phone")
    props["amount"]["maximum"] = 10_000_000
    props["amount"]["exclusiveMinimum"] = -1
    props["event_id"]["maxLength"] = 128
    props["event_time"]["type"] = "number"
    del props["currency"]["pattern"]
    props["merchant_category"]["type"] = "string"  # the enum was all strings already
    new["properties"] = props
    assert check_backward_compatible(shipped(), new) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda s: (s["properties"].update(terminal_id={"type": "string"}),
                    s["required"].append("terminal_id")),
         "new required property 'terminal_id'"),
        (lambda s: (s["properties"].pop("country"), s["required"].remove("country")),
         "property 'country' removed while additionalProperties is false"),
        (lambda s: s["properties"]["amount"].update(type="integer"),
         "property 'amount' type changed from number to integer"),
        (lambda s: s["properties"]["card_id"].update(type="integer"),
         "property 'card_id' type changed from string to integer"),
        (lambda s: s["properties"]["channel"].update(type="integer"),
         "property 'channel' type changed from string to integer"),
        (lambda s: s["properties"]["channel"].update(enum=["pos", "online"]),
         "property 'channel' enum values removed: \"atm\""),
        (lambda s: s["properties"]["amount"].update(maximum=5000),
         "property 'amount' upper bound tightened from <= 1000000 to <= 5000"),
        (lambda s: s["properties"]["amount"].update(exclusiveMaximum=1_000_000),
         "property 'amount' upper bound tightened from <= 1000000 to < 1000000"),
        (lambda s: (s["properties"]["amount"].pop("exclusiveMinimum"),
                    s["properties"]["amount"].update(minimum=1)),
         "property 'amount' lower bound tightened from > 0 to >= 1"),
        (lambda s: s["properties"]["event_id"].update(maxLength=32),
         "property 'event_id' maxLength tightened from 64 to 32"),
        (lambda s: s["properties"]["merchant_id"].update(minLength=3),
         "property 'merchant_id' minLength tightened from 1 to 3"),
        (lambda s: s["properties"]["currency"].update(pattern="^[A-Z]{3,4}$"),
         "property 'currency' pattern changed from '^[A-Z]{3}$' to '^[A-Z]{3,4}$'"),
        (lambda s: s["properties"]["event_type"].update(const="payment"),
         "property 'event_type' const changed from \"transaction\" to \"payment\""),
        (lambda s: s.update({"x-lamina-entity-key": "merchant_id"}),
         "entity key changed from 'card_id' to 'merchant_id'"),
        (lambda s: s["properties"]["amount"].update(format="decimal"),
         "property 'amount' keyword 'format' changed; the check does not understand it, "
         "review by hand"),
    ],
)
def test_each_incompatible_change_is_named(change: Any, problem: str) -> None:
    new = transaction_v2()
    change(new)
    assert check_backward_compatible(shipped(), new) == [problem]


def test_closing_additional_properties_is_incompatible() -> None:
    old = _set(shipped(), "additionalProperties", True)
    new = transaction_v2()
    assert check_backward_compatible(old, new) == [
        "additionalProperties changed from true to false: events with extra properties "
        "would be rejected"
    ]


def test_making_an_optional_property_required_is_incompatible() -> None:
    old = transaction_v2(optional=True)
    new = copy.deepcopy(old)
    new["required"].append("terminal_id")
    assert check_backward_compatible(old, new) == ["property 'terminal_id' became required"]


def test_schema_version_const_may_change_between_versions() -> None:
    old, new = shipped(), transaction_v2()
    assert old["properties"]["schema_version"] != new["properties"]["schema_version"]
    assert check_backward_compatible(old, new) == []


def test_shipped_registry_is_backward_compatible() -> None:
    report = check_registry(default_registry())
    assert report == {"label": [], "transaction": []}


def test_check_registry_reports_each_consecutive_pair(tmp_path: Path) -> None:
    write_schema(tmp_path, "transaction", "v1.json", shipped())
    write_schema(tmp_path, "transaction", "v2.json", transaction_v2(optional=True))
    v3 = _set(transaction_v2(optional=True), "x-lamina-version", 3)
    v3 = _set(v3, "properties.schema_version.const", 3)
    v3["required"].append("terminal_id")
    write_schema(tmp_path, "transaction", "v3.json", v3)
    assert check_registry(SchemaRegistry(tmp_path)) == {
        "transaction": ["v2 -> v3: property 'terminal_id' became required"]
    }


def test_check_command_checks_whole_registry_or_a_proposed_file(tmp_path: Path) -> None:
    assert check_command(None, None, None) == {"label": [], "transaction": []}

    good = write_schema(tmp_path, "proposals", "v2.json", transaction_v2(optional=True))
    assert check_command(None, good, None) == {"transaction v1 -> v2.json (v2)": []}

    bad_schema = transaction_v2()
    bad_schema["properties"]["channel"]["enum"] = ["pos"]
    bad = write_schema(tmp_path, "proposals", "bad.json", bad_schema)
    assert check_command(None, bad, ("transaction", 1)) == {
        "transaction v1 -> bad.json (v2)": [
            "property 'channel' enum values removed: \"online\", \"atm\""
        ]
    }

    same_version = write_schema(tmp_path, "proposals", "again.json", shipped())
    assert check_command(None, same_version, None) == {
        "transaction v1 -> again.json (v1)": ["version 1 must be higher than 1"]
    }


def test_check_command_refuses_bad_requests(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="give the file"):
        check_command(None, None, ("transaction", 1))
    proposal = write_schema(tmp_path, "p", "v2.json", transaction_v2())
    with pytest.raises(SchemaError, match="is a schema for 'transaction', not 'label'"):
        check_command(None, proposal, ("label", 1))
    with pytest.raises(SchemaError, match="unknown version 7"):
        check_command(None, proposal, ("transaction", 7))
    misnamed = write_schema(tmp_path, "p", "v3.json", transaction_v2())
    with pytest.raises(SchemaError, match="file name says v3"):
        check_command(None, misnamed, None)
    with pytest.raises(SchemaError, match="cannot read"):
        check_command(None, tmp_path / "missing.json", None)
