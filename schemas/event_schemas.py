"""The versioned event schemas: where they live, how they are loaded, what
every file must promise.

Format decision
---------------
Event schemas are JSON Schema files (a draft 2020-12 subset: ``type``,
``properties``, ``required``, ``additionalProperties``, ``const``, ``enum``,
numeric bounds, string lengths and ``pattern``). Events travel as JSON on the
wire, so anyone can read ``events.raw`` with ``kcat`` and any language can
produce to it; a JSON Schema file describes exactly those bytes, and
every language has a validator for it. The one worry, speed, is answered by
compiling: ``orjson`` parsing plus a ``fastjsonschema`` compiled validator
ran at ~304k events/s on one core here, against ~22k/s for the interpreted
``jsonschema`` validator and ~70k msg/s for a raw kafka-python consume (see
ARCHITECTURE.md, "Validating events"), so validation does not cap the
lander. Typed-struct formats (msgspec, pydantic) are faster still but would
make the contract Python code instead of a language-neutral file.

Layout
------
``events/<event_type>/v<N>.json``, N = 1, 2, ... Two custom keywords, ignored
by validators, carry Lamina's metadata:

- ``x-lamina-version``: N, and it must agree with the file name;
- ``x-lamina-entity-key``: the property that keys the event in views and
  models (e.g. ``card_id``); it must be a required string property.

Every schema also declares the envelope that the lander stores as typed
columns: ``event_id`` (string), ``event_type`` (const = the folder name),
``schema_version`` (const = N), ``event_time`` (integer milliseconds since
the Unix epoch, UTC), all required. A file breaking any of these rules is
refused at load time with a ``SchemaError`` naming the file and the rule, so
the validator on the hot path can rely on them without checking again.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

from lamina.errors import LaminaError

EVENTS_DIR = Path(__file__).parent / "events"
ENTITY_KEY_KEYWORD = "x-lamina-entity-key"
VERSION_KEYWORD = "x-lamina-version"
# Fields every event carries, whatever its type: the lander's typed columns.
ENVELOPE_FIELDS = ("event_id", "event_type", "schema_version", "event_time")

_EVENT_TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_VERSION_FILE_NAME = re.compile(r"^v([1-9][0-9]*)\.json$")


class SchemaError(LaminaError):
    """A schema file is missing, malformed or breaks a registry rule, or a
    requested event type / version does not exist."""


def check_schema_document(
    schema: Any, *, event_type: str, version: int, source: str
) -> dict[str, Any]:
    """Check one parsed schema against the registry rules (see the module
    docstring) and that fastjsonschema can compile it.

    ``event_type`` and ``version`` are what the file's location says they
    are. Returns ``schema`` (typed as a dict) or raises ``SchemaError`` whose
    message starts with ``source`` and says what to fix.
    """

    def fail(problem: str) -> SchemaError:
        return SchemaError(f"{source}: {problem}")

    if not isinstance(schema, dict):
        raise fail("a schema must be a JSON object")
    if schema.get("type") != "object":
        raise fail('a schema must have "type": "object"')
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not all(
        isinstance(p, dict) for p in properties.values()
    ):
        raise fail('"properties" must be an object whose values are objects')
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise fail('"required" must be a list of property names')

    declared_version = schema.get(VERSION_KEYWORD)
    # bool is an int subclass; `true` must not pass as version 1.
    if type(declared_version) is not int:
        raise fail(f'"{VERSION_KEYWORD}" must be an integer, got {declared_version!r}')
    if declared_version != version:
        raise fail(
            f'"{VERSION_KEYWORD}" is {declared_version} but the file is for version '
            f"{version}; make them agree"
        )

    entity_key = schema.get(ENTITY_KEY_KEYWORD)
    if not isinstance(entity_key, str) or not entity_key:
        raise fail(f'"{ENTITY_KEY_KEYWORD}" must name a property, got {entity_key!r}')
    if entity_key not in properties or properties[entity_key].get("type") != "string":
        raise fail(f"entity key '{entity_key}' must be a property of type string")
    if entity_key not in required:
        raise fail(f"entity key '{entity_key}' must be listed in \"required\"")

    missing = [f for f in ENVELOPE_FIELDS if f not in properties or f not in required]
    if missing:
        raise fail(f"envelope fields {missing} must be declared and required")
    if properties["event_id"].get("type") != "string":
        raise fail("envelope field 'event_id' must have type string")
    if properties["event_time"].get("type") != "integer":
        raise fail("envelope field 'event_time' must have type integer (milliseconds, UTC)")
    if properties["event_type"].get("const") != event_type:
        raise fail(f"envelope field 'event_type' must be const {event_type!r}")
    schema_version_const = properties["schema_version"].get("const")
    if type(schema_version_const) is not int or schema_version_const != version:
        raise fail(f"envelope field 'schema_version' must be const {version}")

    try:
        fastjsonschema.compile(schema, use_default=False)
    except Exception as exc:  # any compile failure is a bad file, e.g. re.error
        raise fail(f"not a valid JSON Schema: {exc}") from exc
    return schema


def load_schema_file(
    path: Path, *, event_type: str | None = None, version: int | None = None
) -> tuple[str, int, dict[str, Any]]:
    """Read and check one schema file; returns ``(event_type, version, schema)``.

    For a file inside the registry the caller passes the event type and
    version its location implies. For a free-standing proposal (``lamina
    schemas check --new FILE``) they are taken from the document itself:
    ``event_type``'s const and ``x-lamina-version``; if the file is named
    ``vN.json`` the name must agree. Raises ``SchemaError``.
    """
    source = str(path)
    try:
        schema = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise SchemaError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise SchemaError(f"{source}: not valid JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise SchemaError(f"{source}: a schema must be a JSON object")
    if event_type is None:
        declared = schema.get("properties", {})
        declared = declared.get("event_type", {}) if isinstance(declared, dict) else {}
        event_type = declared.get("const") if isinstance(declared, dict) else None
        if not isinstance(event_type, str) or not _EVENT_TYPE_NAME.match(event_type):
            raise SchemaError(
                f"{source}: cannot tell the event type: properties.event_type.const must be "
                f"a lower-case name, got {event_type!r}"
            )
    if version is None:
        declared_version = schema.get(VERSION_KEYWORD)
        if type(declared_version) is not int or declared_version < 1:
            raise SchemaError(
                f'{source}: "{VERSION_KEYWORD}" must be a positive integer, '
                f"got {declared_version!r}"
            )
        version = declared_version
        name_match = _VERSION_FILE_NAME.match(path.name)
        if name_match and int(name_match.group(1)) != version:
            raise SchemaError(
                f'{source}: "{VERSION_KEYWORD}" is {version} but the file name says '
                f"v{name_match.group(1)}; make them agree"
            )
    return event_type, version, check_schema_document(
        schema, event_type=event_type, version=version, source=source
    )


class SchemaRegistry:
    """All event schemas under one directory, checked and loaded at once.

    Immutable after construction. ``get`` returns a copy, so a caller cannot
    change what the validator and the compatibility check see.
    """

    def __init__(self, directory: Path | None = None) -> None:
        """Load ``directory`` (default: the schemas shipped with Lamina).

        Every ``*.json`` file in an event-type folder must be named
        ``vN.json`` and pass ``check_schema_document``; other files are
        ignored, as are folders starting with ``_`` or ``.`` (``__pycache__``).
        Raises ``SchemaError`` naming the first bad file.
        """
        self._root = EVENTS_DIR if directory is None else Path(directory)
        if not self._root.is_dir():
            raise SchemaError(f"{self._root}: schema directory does not exist")
        self._schemas: dict[str, dict[int, dict[str, Any]]] = {}
        self._sources: dict[tuple[str, int], Path] = {}
        for entry in sorted(self._root.iterdir()):
            if entry.name.startswith(("_", ".")):
                continue
            if not entry.is_dir():
                if entry.suffix == ".json":
                    raise SchemaError(
                        f"{entry}: schema files belong in <event_type>/vN.json folders"
                    )
                continue
            self._load_event_type(entry)

    def _load_event_type(self, folder: Path) -> None:
        event_type = folder.name
        if not _EVENT_TYPE_NAME.match(event_type):
            raise SchemaError(
                f"{folder}: event type folders must be lower-case names "
                "(letters, digits, underscores)"
            )
        versions: dict[int, dict[str, Any]] = {}
        for path in sorted(folder.glob("*.json")):
            match = _VERSION_FILE_NAME.match(path.name)
            if match is None:
                raise SchemaError(f"{path}: schema files must be named vN.json (v1.json, ...)")
            version = int(match.group(1))
            _, _, schema = load_schema_file(path, event_type=event_type, version=version)
            versions[version] = schema
            self._sources[(event_type, version)] = path
        if versions:
            self._schemas[event_type] = dict(sorted(versions.items()))

    @property
    def root(self) -> Path:
        """The directory the schemas were loaded from."""
        return self._root

    def event_types(self) -> list[str]:
        """Event types with at least one schema, sorted."""
        return sorted(self._schemas)

    def versions(self, event_type: str) -> list[int]:
        """Versions of ``event_type``, ascending. Raises ``SchemaError`` if unknown."""
        return list(self._versions_of(event_type))

    def latest(self, event_type: str) -> int:
        """The highest version number of ``event_type`` (use ``get`` for the schema)."""
        return max(self._versions_of(event_type))

    def get(self, event_type: str, version: int) -> dict[str, Any]:
        """A deep copy of the schema of ``event_type`` version ``version``."""
        return copy.deepcopy(self._schema(event_type, version))

    def entity_key(self, event_type: str, version: int) -> str:
        """The name of the property that keys events of this type and version."""
        key: str = self._schema(event_type, version)[ENTITY_KEY_KEYWORD]
        return key

    def source(self, event_type: str, version: int) -> Path:
        """The file the schema was loaded from (for messages)."""
        self._schema(event_type, version)
        return self._sources[(event_type, version)]

    def _versions_of(self, event_type: str) -> dict[int, dict[str, Any]]:
        try:
            return self._schemas[event_type]
        except KeyError:
            raise SchemaError(
                f"unknown event type {event_type!r}; known: {self.event_types()}"
            ) from None

    def _schema(self, event_type: str, version: int) -> dict[str, Any]:
        versions = self._versions_of(event_type)
        try:
            return versions[version]
        except (KeyError, TypeError):
            raise SchemaError(
                f"unknown version {version!r} of {event_type!r}; known: {list(versions)}"
            ) from None

    def __repr__(self) -> str:
        listing = {t: list(v) for t, v in self._schemas.items()}
        return f"SchemaRegistry(root={str(self._root)!r}, schemas={listing})"


@functools.cache
def default_registry() -> SchemaRegistry:
    """The registry of the schemas shipped with Lamina, loaded once per process."""
    return SchemaRegistry()
