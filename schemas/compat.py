"""Is a new schema version backward compatible with the previous one?

*Backward compatible* means: every event valid under the old schema (apart
from its ``schema_version`` const, which a new version changes by design) is
also valid under the new one. Then consumers that move to the new version
still read every event already in the master dataset and on the topic, and
producers can upgrade whenever they like.

The check understands the subset of JSON Schema that Lamina's event schemas
use (``type``, ``properties``, ``required``, ``additionalProperties`` as a
boolean, ``const``, ``enum``, ``minimum``/``maximum`` and their exclusive
forms, ``minLength``/``maxLength``, ``pattern``) and is conservative about
the rest: any other keyword whose value changed is reported for review by
hand. Annotations (``title``, ``description``, ...) are ignored. Problems
are plain sentences, one per incompatibility, in a stable order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lamina.schemas.event_schemas import (
    ENTITY_KEY_KEYWORD,
    SchemaError,
    SchemaRegistry,
    load_schema_file,
)

# Keywords that never change which events are valid.
_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "title", "description", "examples", "default",
     "deprecated", "readOnly", "writeOnly"}
)
_TOP_LEVEL_UNDERSTOOD = frozenset(
    {"type", "properties", "required", "additionalProperties", ENTITY_KEY_KEYWORD,
     "x-lamina-version"}
)
_PROPERTY_UNDERSTOOD = frozenset(
    {"type", "const", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
     "minLength", "maxLength", "pattern"}
)
# The envelope field whose const is expected to change between versions.
_VERSION_FIELD = "schema_version"

_Bound = tuple[float, bool]  # (limit, exclusive)


def _render(value: Any) -> str:
    """A JSON value as JSON text, for messages (true, not True)."""
    return json.dumps(value, sort_keys=True)


def _json_key(value: Any) -> str:
    # Python says True == 1 and 1 == 1.0; JSON Schema says true is not 1.
    # Comparing JSON text keeps true and 1 apart (1 and 1.0 stay apart too,
    # which at worst reports a harmless rewrite for review). The standard
    # library, unlike orjson, writes integers of any size.
    return json.dumps(value, sort_keys=True)


def _types(prop: dict[str, Any]) -> set[str] | None:
    """The set of JSON types a property allows, None for any."""
    declared = prop.get("type")
    if declared is None:
        return None
    return set(declared) if isinstance(declared, list) else {declared}


def _value_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), "null"
    )


def _type_problem(name: str, old: dict[str, Any], new: dict[str, Any]) -> str | None:
    old_types, new_types = _types(old), _types(new)
    if new_types is None:
        return None
    old_values = _allowed_values(old)
    if old_types is None and old_values is not None:
        # An enum without "type" still only admits its values' types, so
        # adding "type": "string" to a string enum narrows nothing.
        old_types = {_value_type(v) for v in old_values}
    if old_types is not None:
        # "number" includes every integer, so integer -> number widens.
        lost = {t for t in old_types if t not in new_types
                and not (t == "integer" and "number" in new_types)}
        if not lost:
            return None
    return (f"property '{name}' type changed from {_show_types(old_types)} "
            f"to {_show_types(new_types)}")


def _show_types(types: set[str] | None) -> str:
    return "any" if types is None else " or ".join(sorted(types))


def _allowed_values(prop: dict[str, Any]) -> list[Any] | None:
    """The values a const/enum restricts a property to, None if unrestricted."""
    if "const" in prop:
        return [prop["const"]]
    if "enum" in prop:
        return list(prop["enum"])
    return None


def _values_problem(name: str, old: dict[str, Any], new: dict[str, Any]) -> str | None:
    new_values = _allowed_values(new)
    if new_values is None:
        return None
    old_values = _allowed_values(old)
    if old_values is None:
        kind = "const" if "const" in new else "enum"
        return f"property '{name}' gained a {kind} restriction: {_render(new_values)}"
    if "const" in old and "const" in new:
        if _json_key(old["const"]) != _json_key(new["const"]):
            return (f"property '{name}' const changed from {_render(old['const'])} "
                    f"to {_render(new['const'])}")
        return None
    allowed = {_json_key(v) for v in new_values}
    removed = [v for v in old_values if _json_key(v) not in allowed]
    if not removed:
        return None
    return f"property '{name}' enum values removed: {', '.join(_render(v) for v in removed)}"


def _lower_bound(prop: dict[str, Any]) -> _Bound | None:
    candidates: list[_Bound] = []
    if "minimum" in prop:
        candidates.append((prop["minimum"], False))
    if "exclusiveMinimum" in prop:
        candidates.append((prop["exclusiveMinimum"], True))
    # The tightest bound wins: the larger limit, exclusive before inclusive at a tie.
    return max(candidates, default=None)


def _upper_bound(prop: dict[str, Any]) -> _Bound | None:
    candidates: list[_Bound] = []
    if "maximum" in prop:
        candidates.append((prop["maximum"], False))
    if "exclusiveMaximum" in prop:
        candidates.append((prop["exclusiveMaximum"], True))
    # The tightest bound wins: the smaller limit, exclusive before inclusive at a tie.
    return min(candidates, key=lambda b: (b[0], not b[1]), default=None)


def _bound_problems(name: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    problems = []
    old_low, new_low = _lower_bound(old), _lower_bound(new)
    if new_low is not None and (
        old_low is None
        or new_low[0] > old_low[0]
        or (new_low[0] == old_low[0] and new_low[1] and not old_low[1])
    ):
        problems.append(f"property '{name}' lower bound tightened from "
                        f"{_show_bound(old_low, '>')} to {_show_bound(new_low, '>')}")
    old_high, new_high = _upper_bound(old), _upper_bound(new)
    if new_high is not None and (
        old_high is None
        or new_high[0] < old_high[0]
        or (new_high[0] == old_high[0] and new_high[1] and not old_high[1])
    ):
        problems.append(f"property '{name}' upper bound tightened from "
                        f"{_show_bound(old_high, '<')} to {_show_bound(new_high, '<')}")
    return problems


def _show_bound(bound: _Bound | None, side: str) -> str:
    if bound is None:
        return "none"
    limit, exclusive = bound
    return f"{side} {_render(limit)}" if exclusive else f"{side}= {_render(limit)}"


def _length_problems(name: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    problems = []
    old_min, new_min = old.get("minLength", 0), new.get("minLength", 0)
    if new_min > old_min:
        problems.append(f"property '{name}' minLength tightened from {old_min} to {new_min}")
    old_max, new_max = old.get("maxLength"), new.get("maxLength")
    if new_max is not None and (old_max is None or new_max < old_max):
        shown = "none" if old_max is None else old_max
        problems.append(f"property '{name}' maxLength tightened from {shown} to {new_max}")
    return problems


def _property_problems(name: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    type_problem = _type_problem(name, old, new)
    if type_problem:
        problems.append(type_problem)
    if name != _VERSION_FIELD:
        values_problem = _values_problem(name, old, new)
        if values_problem:
            problems.append(values_problem)
    problems += _bound_problems(name, old, new)
    problems += _length_problems(name, old, new)
    if "pattern" in new and old.get("pattern") != new["pattern"]:
        shown = "none" if "pattern" not in old else repr(old["pattern"])
        problems.append(
            f"property '{name}' pattern changed from {shown} to {new['pattern']!r}"
        )
    for keyword in sorted((old.keys() | new.keys()) - _PROPERTY_UNDERSTOOD - _ANNOTATIONS):
        if old.get(keyword) != new.get(keyword):
            problems.append(f"property '{name}' keyword '{keyword}' changed; the check does "
                            "not understand it, review by hand")
    return problems


def check_backward_compatible(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Problems that make ``new`` reject some event ``old`` accepts; empty
    means compatible. Both are parsed schema documents of one event type.

    Reported: a new required property; a property removed while
    additionalProperties is false; a type changed or narrowed; enum values
    removed; a const changed (not ``schema_version``'s); bounds, minLength or
    maxLength tightened; a pattern changed or added; the entity key changed;
    additionalProperties turned from true to false; a constrained property
    added where the old schema allowed any extra property; and any change to
    a keyword the check does not understand. Adding an optional property and
    widening enums, types or bounds are fine.
    """
    problems: list[str] = []
    old_key, new_key = old.get(ENTITY_KEY_KEYWORD), new.get(ENTITY_KEY_KEYWORD)
    if old_key != new_key:
        problems.append(f"entity key changed from {old_key!r} to {new_key!r}")

    # JSON Schema's default for additionalProperties is true.
    old_open = old.get("additionalProperties", True)
    new_open = new.get("additionalProperties", True)
    if old_open is True and new_open is False:
        problems.append("additionalProperties changed from true to false: events with "
                        "extra properties would be rejected")

    old_props: dict[str, Any] = old.get("properties", {})
    new_props: dict[str, Any] = new.get("properties", {})
    old_required, new_required = set(old.get("required", [])), set(new.get("required", []))
    for name in sorted(new_required - old_required):
        if name in old_props:
            problems.append(f"property '{name}' became required")
        else:
            problems.append(f"new required property '{name}'")

    if new_open is False:
        for name in sorted(old_props.keys() - new_props.keys()):
            problems.append(
                f"property '{name}' removed while additionalProperties is false"
            )
    if old_open is not False:
        # Old events may carry any extra property with any value; a new
        # property with constraints would reject some of them.
        for name in sorted(new_props.keys() - old_props.keys()):
            constraints = new_props[name].keys() - _ANNOTATIONS
            if constraints:
                problems.append(f"property '{name}' added with constraints while the old "
                                "schema allowed any extra property")

    for name in sorted(old_props.keys() & new_props.keys()):
        problems += _property_problems(name, old_props[name], new_props[name])

    for keyword in sorted((old.keys() | new.keys()) - _TOP_LEVEL_UNDERSTOOD - _ANNOTATIONS):
        if old.get(keyword) != new.get(keyword):
            problems.append(f"keyword '{keyword}' changed; the check does not understand "
                            "it, review by hand")
    if (not isinstance(old_open, bool) or not isinstance(new_open, bool)) and old_open != new_open:
        problems.append("additionalProperties changed to or from a schema; the check does "
                            "not understand it, review by hand")
    return problems


def check_registry(registry: SchemaRegistry) -> dict[str, list[str]]:
    """For every event type, the problems between each consecutive pair of
    its versions, each prefixed ``vN -> vM:``. An empty list means every
    version of that type reads all events of the one before it."""
    report: dict[str, list[str]] = {}
    for event_type in registry.event_types():
        versions = registry.versions(event_type)
        problems: list[str] = []
        for old_version, new_version in zip(versions, versions[1:], strict=False):
            for problem in check_backward_compatible(
                registry.get(event_type, old_version), registry.get(event_type, new_version)
            ):
                problems.append(f"v{old_version} -> v{new_version}: {problem}")
        report[event_type] = problems
    return report


def check_command(
    registry_dir: Path | None,
    new_file: Path | None,
    against: tuple[str, int] | None,
) -> dict[str, list[str]]:
    """What ``lamina schemas check`` runs: ``{subject: problems}``, where an
    empty list means that subject is compatible. Prints nothing.

    - no ``new_file``: ``check_registry`` of ``registry_dir`` (default: the
      shipped schemas); subjects are event types, problems are prefixed
      ``vN -> vM:``.
    - ``new_file``: a proposed schema, checked like a registry file, then
      against the latest version of its event type in the registry (or
      against ``against = (event_type, version)``); its version must be
      higher than the one it is compared with. One subject,
      ``<event_type> vN -> <file name> (vM)``. A brand-new event type has
      nothing to be compatible with: subject ``<event_type> (new)``, no
      problems.

    Raises ``SchemaError`` for an unreadable or invalid file or registry, an
    unknown ``against``, or ``against`` without ``new_file``.
    """
    registry = SchemaRegistry(registry_dir)
    if new_file is None:
        if against is not None:
            raise SchemaError("--against compares a new schema file with a version; give the file")
        return check_registry(registry)

    event_type, new_version, new_schema = load_schema_file(new_file)
    if against is None:
        if event_type not in registry.event_types():
            return {f"{event_type} (new)": []}
        base_type, base_version = event_type, registry.latest(event_type)
    else:
        base_type, base_version = against
        if base_type != event_type:
            raise SchemaError(f"{new_file}: is a schema for {event_type!r}, not {base_type!r}")
    base_schema = registry.get(base_type, base_version)  # SchemaError if unknown
    problems = []
    if new_version <= base_version:
        problems.append(f"version {new_version} must be higher than {base_version}")
    problems += check_backward_compatible(base_schema, new_schema)
    return {f"{event_type} v{base_version} -> {new_file.name} (v{new_version})": problems}
