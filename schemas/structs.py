"""Typed decoders generated from the event schema files: validation's fast path.

``TypedDecoder(registry)`` turns every schema of the registry into a msgspec
``Struct`` when it is constructed (no generated source is checked in: the
JSON Schema files stay the contract, and a custom registry directory gets
its own structs). Decoding a record's bytes straight into those structs
parses and checks an event in one C call, 5-7x faster than orjson plus the
compiled fastjsonschema check (measured in docs/benchmarks.md).

The contract that makes this safe: **the typed path accepts an event only if
the reference validator (orjson + fastjsonschema + Lamina's integer check,
``EventValidator(typed=False)``) accepts it, and then yields the same parsed
event.** It may refuse more than the reference; whatever it refuses goes to
the reference, which decides and gives the reason code. So every decision
and every reason is the reference's, and a tests/unit/test_typed_decoder.py
property test checks the two agree on arbitrary valid and broken records.

To keep that promise the translation is narrow, and a schema using anything
else is not translated at all (its events take the reference path, slower
but correct; ``TypedDecoder.untranslated`` says which and why):

- top level: ``"type": "object"``, ``properties``, ``required``,
  ``"additionalProperties": false`` (unknown fields are refused);
- properties: ``type`` string (``minLength``, ``maxLength``, ``pattern``),
  integer, number (``minimum``, ``maximum``, ``exclusiveMinimum``,
  ``exclusiveMaximum``; not both bounds of one side), boolean; ``const`` or
  ``enum`` whose values are all strings or all integers; annotations
  (``description``, ``title``, ...) are ignored;
- ``event_type`` is the struct's tag: one decode picks the schema by it.
  An event type with several versions is first read for its
  ``schema_version`` (a second, cheap decode), then decoded with that
  version's struct.

Where the reference's parser or checker differ from msgspec's defaults, the
structs follow the reference: integers are limited to int64, within the
range orjson reads as integers (larger ones it reads as floats, which an
integer field refuses);
a number field decodes JSON integers as ``int`` and the rest as ``float``,
as orjson does; an unescaped ``$`` in a pattern means end of string
(fastjsonschema's reading, not Python's "end or before a final newline").
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, NamedTuple, Union

import msgspec

from lamina.schemas.event_schemas import ENTITY_KEY_KEYWORD, SchemaRegistry

# orjson reads integer literals from -2**63 to 2**64 - 1 as int and anything
# beyond as float; msgspec's bounds must fit an int64. Integer fields take
# the int64 range: the rest of orjson's (2**63 .. 2**64 - 1) goes to the
# reference path, which is allowed (the typed path may refuse more).
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1

_ANNOTATIONS = frozenset(
    {"title", "description", "$comment", "examples", "default", "deprecated", "readOnly",
     "writeOnly"}
)
_TOP_LEVEL = frozenset(
    {"$schema", "$id", "$comment", "title", "description", "type", "properties", "required",
     "additionalProperties"}
)
_STRING_KEYWORDS = frozenset({"type", "minLength", "maxLength", "pattern"})
_NUMBER_KEYWORDS = frozenset(
    {"type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
)
# fastjsonschema rewrites every `$` not preceded by a backslash to `\Z`.
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


class Untranslatable(Exception):
    """A schema uses something this module does not translate into a struct;
    its events are validated by the reference path only."""


class Shape(NamedTuple):
    """What a decoded struct is: its event type and version, and a getter
    returning ``(event_id, event_time, entity_key)`` from an instance."""

    event_type: str
    schema_version: int
    envelope: Callable[[Any], tuple[str, int, str]]


def reference_pattern(pattern: str) -> str:
    """``pattern`` as the reference validator compiles it (``$`` -> ``\\Z``),
    to be applied with ``re.search`` like the reference does."""
    return _UNESCAPED_DOLLAR.sub(r"\\Z", pattern)


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _string_type(name: str, prop: dict[str, Any]) -> Any:
    meta: dict[str, Any] = {}
    for keyword, option in (("minLength", "min_length"), ("maxLength", "max_length")):
        if keyword in prop:
            bound = prop[keyword]
            if type(bound) is not int or bound < 0:
                raise Untranslatable(f"property {name!r}: {keyword} {bound!r}")
            meta[option] = bound
    if "pattern" in prop:
        pattern = prop["pattern"]
        if type(pattern) is not str:
            raise Untranslatable(f"property {name!r}: pattern {pattern!r}")
        meta["pattern"] = reference_pattern(pattern)
    if not meta:
        return str
    try:
        return Annotated[str, msgspec.Meta(**meta)]
    except (re.error, ValueError, TypeError) as exc:
        raise Untranslatable(f"property {name!r}: {exc}") from exc


def _numeric_type(name: str, prop: dict[str, Any], kind: str) -> Any:
    for inclusive, exclusive in (("minimum", "exclusiveMinimum"),
                                 ("maximum", "exclusiveMaximum")):
        # fastjsonschema reads `minimum` next to `exclusiveMinimum` the
        # draft-04 way (the latter as a flag): not worth mirroring.
        if inclusive in prop and exclusive in prop:
            raise Untranslatable(f"property {name!r}: both {inclusive} and {exclusive}")
    bounds = {k: prop[k] for k in _NUMBER_KEYWORDS - {"type"} if k in prop}
    for keyword, bound in bounds.items():
        if not _number(bound):
            raise Untranslatable(f"property {name!r}: {keyword} {bound!r}")
    # Integers: every bound as an inclusive integer bound (exact for any
    # finite float), within what orjson reads as an integer.
    low, high = INT_MIN, INT_MAX
    if "minimum" in bounds:
        low = max(low, math.ceil(bounds["minimum"]))
    if "exclusiveMinimum" in bounds:
        low = max(low, math.floor(bounds["exclusiveMinimum"]) + 1)
    if "maximum" in bounds:
        high = min(high, math.floor(bounds["maximum"]))
    if "exclusiveMaximum" in bounds:
        high = min(high, math.ceil(bounds["exclusiveMaximum"]) - 1)
    if low > high:
        raise Untranslatable(f"property {name!r}: no integer is within its bounds")
    integers = Annotated[int, msgspec.Meta(ge=low, le=high)]
    if kind == "integer":
        return integers
    # Floats: msgspec compares as doubles, so a bound must be one exactly.
    options = {"minimum": "ge", "exclusiveMinimum": "gt", "maximum": "le",
               "exclusiveMaximum": "lt"}
    meta: dict[str, Any] = {}
    for keyword, bound in bounds.items():
        if float(bound) != bound:
            raise Untranslatable(f"property {name!r}: {keyword} {bound!r} is not a double")
        meta[options[keyword]] = float(bound)
    floats = Annotated[float, msgspec.Meta(**meta)] if meta else float
    return Union[integers, floats]  # noqa: UP007 - a runtime type for msgspec


def field_type(name: str, prop: dict[str, Any]) -> Any:
    """The msgspec type of one property; raises ``Untranslatable``."""
    keywords = set(prop) - _ANNOTATIONS
    kind = prop.get("type")
    if "const" in prop or "enum" in prop:
        if keywords - {"const", "enum", "type"} or {"const", "enum"} <= keywords:
            raise Untranslatable(f"property {name!r}: const/enum with other keywords")
        values = [prop["const"]] if "const" in prop else prop["enum"]
        if not isinstance(values, list) or not values:
            raise Untranslatable(f"property {name!r}: enum {values!r}")
        if all(type(v) is str for v in values):
            allowed: tuple[Any, ...] = (None, "string")
        elif all(type(v) is int for v in values):
            allowed = (None, "integer", "number")
        else:
            raise Untranslatable(f"property {name!r}: values are not all strings or all integers")
        if kind not in allowed:
            raise Untranslatable(f"property {name!r}: type {kind!r} with these values")
        return Literal.__getitem__(tuple(values))
    if kind == "string" and keywords <= _STRING_KEYWORDS:
        return _string_type(name, prop)
    if kind in ("integer", "number") and keywords <= _NUMBER_KEYWORDS:
        return _numeric_type(name, prop, kind)
    if kind == "boolean" and keywords == {"type"}:
        return bool
    raise Untranslatable(f"property {name!r}: {sorted(keywords)} with type {kind!r}")


def struct_for(schema: dict[str, Any], event_type: str, version: int) -> tuple[type, Shape]:
    """A Struct class accepting what ``schema`` accepts (a subset where the
    translation is narrower; see the module docstring), tagged with
    ``event_type``, and its ``Shape``. Raises ``Untranslatable``."""
    extra = {k for k in schema if k not in _TOP_LEVEL and not k.startswith("x-lamina-")}
    if extra:
        raise Untranslatable(f"keywords {sorted(extra)}")
    if schema.get("additionalProperties") is not False:
        raise Untranslatable("additionalProperties is not false")
    properties: dict[str, Any] = schema["properties"]
    required = set(schema.get("required", []))
    if required - set(properties):
        raise Untranslatable(f"required but not declared: {sorted(required - set(properties))}")
    tag = properties["event_type"]
    if set(tag) - _ANNOTATIONS - {"type"} != {"const"} or tag.get("type", "string") != "string":
        raise Untranslatable("event_type is more than its const")
    # Attributes are f0, f1, ... and every field is renamed to its property:
    # any string may be a property name, not every string an attribute.
    fields: list[tuple[str, Any, Any]] = []
    attrs: dict[str, str] = {}
    for i, (name, prop) in enumerate(properties.items()):
        if name == "event_type":
            continue  # the tag
        attr = attrs[name] = f"f{i}"
        annotation = field_type(name, prop)
        if name in required:
            fields.append((attr, annotation, msgspec.field(name=name)))
        else:
            fields.append((attr, Union[annotation, msgspec.UnsetType],  # noqa: UP007
                           msgspec.field(name=name, default=msgspec.UNSET)))
    struct = msgspec.defstruct(
        f"{event_type}_v{version}", fields, kw_only=True, forbid_unknown_fields=True,
        tag_field="event_type", tag=event_type,
    )
    try:  # msgspec checks the field types when a decoder is made
        msgspec.json.Decoder(struct)
    except (TypeError, ValueError) as exc:
        raise Untranslatable(f"msgspec refuses the struct: {exc}") from exc
    envelope = operator.attrgetter(attrs["event_id"], attrs["event_time"],
                                   attrs[schema[ENTITY_KEY_KEYWORD]])
    return struct, Shape(event_type, version, envelope)


def _nothing_translated(raw: Any) -> Any:
    raise Untranslatable("no schema of the registry was translated")


class TypedDecoder:
    """The registry's schemas as msgspec structs behind one decoder.

    ``decode(raw)`` returns the event as a struct when the typed path
    accepts it and raises otherwise (any exception: msgspec's errors, a
    ``KeyError`` for a version without a struct); ``shapes[type(event)]``
    says what it is and ``payload(event)`` gives the parsed event as the
    reference parses it. Stateless after construction; safe to share.
    """

    def __init__(self, registry: SchemaRegistry) -> None:
        self.shapes: dict[type, Shape] = {}
        self.untranslated: dict[tuple[str, int], str] = {}
        members: list[type] = []
        # Version-peek struct -> {version: that version's decode function}.
        self._by_version: dict[type, dict[int, Callable[[Any], Any]]] = {}
        for event_type in registry.event_types():
            structs: dict[int, type] = {}
            for version in registry.versions(event_type):
                try:
                    struct, shape = struct_for(registry.get(event_type, version),
                                               event_type, version)
                except Untranslatable as exc:
                    self.untranslated[(event_type, version)] = str(exc)
                    continue
                structs[version] = struct
                self.shapes[struct] = shape
            if len(registry.versions(event_type)) == 1:
                members.extend(structs.values())
                continue
            peek = msgspec.defstruct(
                f"{event_type}_version", [("version", int, msgspec.field(name="schema_version"))],
                tag_field="event_type", tag=event_type,
            )
            members.append(peek)
            self._by_version[peek] = {v: msgspec.json.Decoder(s).decode
                                      for v, s in structs.items()}
        self._union_decode: Callable[[Any], Any] = _nothing_translated
        if members:
            union: Any = Union.__getitem__(tuple(members))
            self._union_decode = msgspec.json.Decoder(union).decode
        # The event as its struct; raises if the typed path does not accept
        # the bytes (the caller then asks the reference validator). With one
        # version per event type this is msgspec's decode itself: no Python
        # frame on the hot path.
        self.decode: Callable[[Any], Any] = (
            self._decode_versioned if self._by_version else self._union_decode
        )

    def _decode_versioned(self, raw: Any) -> Any:
        event = self._union_decode(raw)
        by_version = self._by_version.get(type(event))
        if by_version is not None:
            event = by_version[event.version](raw)
        return event

    @staticmethod
    def payload(event: Any) -> dict[str, Any]:
        """The event as a dict, as orjson parses it: property names as sent,
        absent optional properties absent, the event type included."""
        result: dict[str, Any] = msgspec.to_builtins(event)
        return result
