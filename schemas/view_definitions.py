"""View definitions: GroupBys of Aggregates over Windows, defined once.

A view is *data* (frozen dataclasses, validated when constructed; a bad
definition raises ``ConfigError`` naming the problem). The batch layer
(Spark), the speed layer and the serving layer all read the same objects, and
the reference evaluation below (pure Python) is the oracle they are tested
against.

Time: one definition for every layer (ARCHITECTURE.md, "Time, windows ...")
---------------------------------------------------------------------------
* A window has a hop ``h`` (``Window.hop_ms``), declared with it or, when
  not, the default: 5 min for windows up to 1 h, 1 h up to 7 d, 1 d beyond
  and for the lifetime window. A window's length is a multiple of its hop;
  a group's hops divide one another, and within an aggregate a longer
  window never has a finer hop.
* Tiles: per entity and hop, the partial of the events with
  ``tile_start <= event_time < tile_start + h``, ``tile_start =
  floor(event_time / h) * h`` (:func:`tile_start`).
* A window of length ``W`` queried at ``t`` covers ``floor((t - W) / h) * h
  <= event_time < t`` (:func:`window_range`): the ``W / h`` full tiles before
  the head tile, plus the partial head tile ``[floor(t / h) * h, t)``. It
  therefore spans between ``W`` (``t`` on a tile boundary) and ``W + h``
  (exclusive). The lifetime window covers every event before ``t``.
* "Before" is strict: an event at exactly ``t`` (or later) is never included,
  so an event's own features never include itself.
* Each ``event_id`` counts once: the reference evaluation drops repeats of an
  event id it has already seen (resends carry the same bytes).

Tiles, as stored (the contract with the Spark batch layer)
----------------------------------------------------------
One tile table per hop: columns ``<entity_key>`` (string), ``tile_start``
(int64 ms) and one column per aggregate that has a window with that hop, in
declaration order, typed by the aggregation's ``arrow_type``
(:func:`tile_schema`). A tile exists for every (entity, tile_start) with at
least one event of the view's event type -- filters only decide what the
event contributes, so a tile may hold zeros. An event contributes to an
aggregate only if it matches *all* of the aggregate's filters (SQL: a null
or missing field matches no comparison, not even ``!=``).

Fields: an aggregate or a filter names a payload field, or a derived field
from :data:`DERIVED_FIELDS` (each has a Python function and the Spark SQL
expression that computes the same value).

Batch cutoffs are multiples of :meth:`GroupBy.cutoff_alignment_ms` (the
largest hop; a group's hops divide one another), so a cutoff is a tile
boundary for every hop.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal, get_args

import pyarrow as pa

from lamina.errors import ConfigError
from lamina.schemas.aggregations import (
    OPS,
    SCALED_OPS,
    UNIT_LIMIT,
    Aggregation,
    FeatureValue,
    aggregation_for,
)

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_WINDOW_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


def _check_name(kind: str, name: Any, pattern: re.Pattern[str] = _NAME) -> None:
    if not isinstance(name, str) or not pattern.match(name):
        raise ConfigError(
            f"{kind} name {name!r} is not valid: use lower-case letters, digits and "
            f"underscores (it becomes a column or feature name)"
        )


# --- windows and time --------------------------------------------------------


def default_hop_ms(length_ms: int | None) -> int:
    """The hop a window gets when it declares none: 5 min up to 1 h, 1 h up
    to 7 d, 1 d beyond and for the lifetime window."""
    if length_ms is None:
        return DAY_MS
    if length_ms <= HOUR_MS:
        return 5 * MINUTE_MS
    if length_ms <= 7 * DAY_MS:
        return HOUR_MS
    return DAY_MS


@dataclass(frozen=True, repr=False)
class Window:
    """A window of ``length_ms`` milliseconds before the query time, or the
    whole history before it when ``length_ms`` is None (lifetime), stored as
    tiles of ``hop_ms``.

    ``hop_ms`` is part of the definition (and so of every fingerprint that
    holds the window): a positive whole number of milliseconds that divides
    the length. Not given (None), it is :func:`default_hop_ms` of the
    length; after construction it is always an int. A window whose hop is
    the default one prints -- and fingerprints -- as it did before hops were
    declared, so a definition that only spells out its default hops keeps
    its fingerprint (published views stay valid); any other hop shows.
    """

    name: str
    length_ms: int | None
    # None only until __post_init__ resolves it (callers may rely on an int).
    hop_ms: int = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        _check_name("window", self.name, _WINDOW_NAME)
        if self.length_ms is not None:
            if isinstance(self.length_ms, bool) or not isinstance(self.length_ms, int):
                raise ConfigError(
                    f"window {self.name!r}: length_ms must be an integer number of "
                    f"milliseconds or None (lifetime), got {self.length_ms!r}"
                )
            if self.length_ms <= 0:
                raise ConfigError(
                    f"window {self.name!r}: length_ms must be > 0, got {self.length_ms}")
        if self.hop_ms is None:
            object.__setattr__(self, "hop_ms", default_hop_ms(self.length_ms))
            declared = False
        else:
            declared = True
        hop = self.hop_ms
        if isinstance(hop, bool) or not isinstance(hop, int) or hop <= 0:
            raise ConfigError(
                f"window {self.name!r}: hop_ms must be a positive whole number of "
                f"milliseconds, got {hop!r}"
            )
        if self.length_ms is not None and self.length_ms % hop:
            rule = ("declared" if declared else
                    "the default: 5 min up to 1 h, 1 h up to 7 d, 1 d beyond; declare hop_ms "
                    "to choose another")
            raise ConfigError(
                f"window {self.name!r}: length {self.length_ms} ms is not a multiple of its "
                f"hop {hop} ms ({rule})"
            )

    def __repr__(self) -> str:
        # The dataclass repr, leaving out a default hop: fingerprints are
        # reprs, and the default hop was implicit before it was a field.
        text = f"Window(name={self.name!r}, length_ms={self.length_ms!r}"
        if self.hop_ms != default_hop_ms(self.length_ms):
            text += f", hop_ms={self.hop_ms!r}"
        return text + ")"

    @property
    def is_lifetime(self) -> bool:
        return self.length_ms is None


WINDOWS: Final[Mapping[str, Window]] = {
    w.name: w
    for w in (
        Window("10m", 10 * MINUTE_MS),
        Window("1h", HOUR_MS),
        Window("24h", 24 * HOUR_MS),
        Window("7d", 7 * DAY_MS),
        Window("30d", 30 * DAY_MS),
        Window("lifetime", None),
    )
}


def tile_start(event_time_ms: int, hop_ms: int) -> int:
    """Start of the tile of ``hop_ms`` holding ``event_time_ms`` (floor)."""
    return (event_time_ms // hop_ms) * hop_ms


def window_range(t_ms: int, window: Window) -> tuple[int | None, int]:
    """``(start, end)``: the window at ``t_ms`` covers ``start <= event_time <
    end`` with ``end == t_ms``; ``start`` is None for the lifetime window.

    ``start = floor((t - W) / h) * h``: the window spans ``W`` to ``W + h``.
    """
    if window.length_ms is None:
        return None, t_ms
    return tile_start(t_ms - window.length_ms, window.hop_ms), t_ms


# --- fields and filters ------------------------------------------------------


@dataclass(frozen=True)
class DerivedField:
    """A field computed from the payload, the same way in Python and Spark."""

    name: str
    compute: Callable[[Mapping[str, Any]], Any]
    #: The Spark SQL expression over the payload's columns giving the same value.
    spark_sql: str
    doc: str


def _hour_of_day(payload: Mapping[str, Any]) -> int | None:
    event_time = payload.get("event_time")
    return None if event_time is None else (int(event_time) // HOUR_MS) % 24


DERIVED_FIELDS: Final[Mapping[str, DerivedField]] = {
    "hour_of_day": DerivedField(
        "hour_of_day",
        _hour_of_day,
        "pmod(floor(event_time / 3600000), 24)",
        "UTC hour of event_time, 0..23",
    ),
}


def field_value(payload: Mapping[str, Any], field: str) -> Any:
    """The value of a payload or derived field; None when it is missing."""
    derived = DERIVED_FIELDS.get(field)
    return derived.compute(payload) if derived else payload.get(field)


FilterOp = Literal["==", "!=", "<", "<=", ">", ">=", "in"]
FILTER_OPS: Final[tuple[str, ...]] = get_args(FilterOp)
Scalar = str | int | float | bool


def value_kind(value: Any) -> str:
    """A filter value's kind: bool, number, string or other (the batch layer
    compares kinds the same way)."""
    # bool before int: JSON true is not the number 1 in a filter.
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "other"


@dataclass(frozen=True)
class Filter:
    """``payload[field] <op> value``; ``in`` takes a tuple of values.

    Comparisons only hold between values of one kind (string, number, bool);
    a missing or null field, or one of another kind, matches nothing --
    SQL's behaviour for null, and never an exception on odd input.
    """

    field: str
    op: FilterOp
    value: Any

    def __post_init__(self) -> None:
        if not isinstance(self.field, str) or not self.field:
            raise ConfigError(f"filter field must be a non-empty string, got {self.field!r}")
        if self.op not in FILTER_OPS:
            raise ConfigError(
                f"filter on {self.field!r}: unknown op {self.op!r}; known: {', '.join(FILTER_OPS)}"
            )
        if self.op == "in":
            if isinstance(self.value, str | bytes) or not isinstance(self.value, Iterable):
                raise ConfigError(
                    f"filter {self.field!r} in ...: value must be a tuple of values, "
                    f"got {self.value!r}"
                )
            values = tuple(self.value)
            if not values:
                raise ConfigError(f"filter {self.field!r} in ...: the tuple of values is empty")
            for item in values:
                self._check_scalar(item)
            object.__setattr__(self, "value", values)  # hashable, immutable
            return
        self._check_scalar(self.value)
        if self.op in ("<", "<=", ">", ">=") and value_kind(self.value) not in ("number", "string"):
            raise ConfigError(
                f"filter {self.field!r} {self.op} {self.value!r}: ordering compares "
                f"numbers or strings only"
            )

    def _check_scalar(self, value: Any) -> None:
        if value_kind(value) == "other":
            raise ConfigError(
                f"filter on {self.field!r}: value {value!r} is not a string, number or bool"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"filter on {self.field!r}: value {value!r} is not finite")

    def matches(self, payload: Mapping[str, Any]) -> bool:
        """Whether the event passes this filter (never raises)."""
        actual = field_value(payload, self.field)
        if actual is None:
            return False
        if self.op == "in":
            return any(value_kind(v) == value_kind(actual) and actual == v for v in self.value)
        if value_kind(actual) != value_kind(self.value):
            return False
        if self.op == "==":
            return bool(actual == self.value)
        if self.op == "!=":
            return bool(actual != self.value)
        if self.op == "<":
            return bool(actual < self.value)
        if self.op == "<=":
            return bool(actual <= self.value)
        if self.op == ">":
            return bool(actual > self.value)
        return bool(actual >= self.value)


# --- aggregates and group-bys -----------------------------------------------


def _as_tuple(owner: object, attribute: str) -> tuple[Any, ...]:
    value = getattr(owner, attribute)
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ConfigError(f"{attribute} must be a tuple, got {value!r}")
    as_tuple = tuple(value)
    object.__setattr__(owner, attribute, as_tuple)  # lists in, tuples stored
    return as_tuple


@dataclass(frozen=True)
class Aggregate:
    """One aggregation of one field, over one or more windows.

    ``name`` is the tile column; the features are ``f"{name}_{window.name}"``.
    ``field`` may be None only for ``count``. ``buckets`` are the histogram's
    upper bounds (histogram only). ``scale`` (sum and mean only, required
    there) is the number of decimal places kept exactly: partials are
    integer counts of ``10**-scale`` units, finer values are rounded half to
    even (``lamina.schemas.aggregations``, "Exact sums").
    """

    name: str
    op: str
    field: str | None
    windows: tuple[Window, ...]
    filters: tuple[Filter, ...] = ()
    buckets: tuple[float, ...] = ()
    scale: int | None = None

    def __post_init__(self) -> None:
        _check_name("aggregate", self.name)
        windows = _as_tuple(self, "windows")
        filters = _as_tuple(self, "filters")
        buckets = _as_tuple(self, "buckets")
        if self.field is None and self.op in OPS and self.op != "count":
            raise ConfigError(f"aggregate {self.name!r}: op {self.op!r} needs a field")
        try:
            aggregation_for(self.op, buckets, self.scale)
        except ConfigError as error:
            raise ConfigError(f"aggregate {self.name!r}: {error}") from None
        if self.field is not None and (not isinstance(self.field, str) or not self.field):
            raise ConfigError(f"aggregate {self.name!r}: field must be a non-empty string or None")
        if not windows:
            raise ConfigError(f"aggregate {self.name!r}: needs at least one window")
        names: set[str] = set()
        for window in windows:
            if not isinstance(window, Window):
                raise ConfigError(f"aggregate {self.name!r}: {window!r} is not a Window")
            if window.name in names:
                raise ConfigError(f"aggregate {self.name!r}: window {window.name!r} twice")
            names.add(window.name)
        for item in filters:
            if not isinstance(item, Filter):
                raise ConfigError(f"aggregate {self.name!r}: {item!r} is not a Filter")
        # A longer window never has a finer hop (and one of the same length
        # has the same hop): then the longest window always starts first,
        # which the point-in-time sweep (lamina.schemas.pit) relies on.
        by_length = sorted(windows, key=lambda w: (w.length_ms is None, w.length_ms or 0))
        for shorter, longer in zip(by_length, by_length[1:], strict=False):
            same_length = shorter.length_ms == longer.length_ms
            if longer.hop_ms < shorter.hop_ms or (same_length and longer.hop_ms != shorter.hop_ms):
                raise ConfigError(
                    f"aggregate {self.name!r}: window {longer.name!r} (hop {longer.hop_ms} ms) "
                    f"is not shorter than {shorter.name!r} but has a finer hop than its "
                    f"{shorter.hop_ms} ms; give a longer window the same or a coarser hop")

    @property
    def aggregation(self) -> Aggregation[Any]:
        """The monoid that computes this aggregate."""
        return aggregation_for(self.op, self.buckets, self.scale)

    def feature_name(self, window: Window) -> str:
        return f"{self.name}_{window.name}"

    def feature_names(self) -> tuple[str, ...]:
        return tuple(self.feature_name(w) for w in self.windows)

    def hops(self) -> tuple[int, ...]:
        return tuple(sorted({w.hop_ms for w in self.windows}))

    def accepts(self, payload: Mapping[str, Any]) -> bool:
        """Whether the event passes every filter."""
        return all(f.matches(payload) for f in self.filters)


@dataclass(frozen=True)
class GroupBy:
    """Aggregates of one event type, keyed by one payload field."""

    name: str
    event_type: str
    entity_key: str
    aggregates: tuple[Aggregate, ...]

    def __post_init__(self) -> None:
        _check_name("group-by", self.name)
        if not isinstance(self.event_type, str) or not self.event_type:
            raise ConfigError(f"group-by {self.name!r}: event_type must be a non-empty string")
        if not isinstance(self.entity_key, str) or not self.entity_key:
            raise ConfigError(f"group-by {self.name!r}: entity_key must be a non-empty string")
        aggregates = _as_tuple(self, "aggregates")
        if not aggregates:
            raise ConfigError(f"group-by {self.name!r}: needs at least one aggregate")
        names: set[str] = set()
        for aggregate in aggregates:
            if not isinstance(aggregate, Aggregate):
                raise ConfigError(f"group-by {self.name!r}: {aggregate!r} is not an Aggregate")
            if aggregate.name in names:
                raise ConfigError(f"group-by {self.name!r}: aggregate {aggregate.name!r} twice")
            if aggregate.name in (self.entity_key, "tile_start"):
                raise ConfigError(
                    f"group-by {self.name!r}: aggregate name {aggregate.name!r} collides "
                    f"with a tile key column"
                )
            names.add(aggregate.name)
        features = [f for a in aggregates for f in a.feature_names()]
        duplicated = sorted({f for f in features if features.count(f) > 1})
        if duplicated:
            raise ConfigError(f"group-by {self.name!r}: feature names collide: {duplicated}")
        # Each hop divides the next (so every hop divides the largest, the
        # cutoff alignment): coarser tiles are rolled up from the next finer
        # ones (lamina.batch.tiles), which needs them to nest.
        hops = self.hops()
        for finer, coarser in zip(hops, hops[1:], strict=False):
            if coarser % finer:
                offending = sorted({f"{a.name}_{w.name}" for a in aggregates for w in a.windows
                                    if w.hop_ms == coarser})
                raise ConfigError(
                    f"group-by {self.name!r}: window {', '.join(offending)} has hop {coarser} ms, "
                    f"not a multiple of the finer hop {finer} ms; a group's hops must divide "
                    f"one another (e.g. 5 min, 1 h, 1 d) so that tiles nest")

    def hops(self) -> tuple[int, ...]:
        """Sorted distinct tile sizes of all windows."""
        return tuple(sorted({h for a in self.aggregates for h in a.hops()}))

    def aggregates_for_hop(self, hop_ms: int) -> tuple[Aggregate, ...]:
        """The aggregates stored in the tiles of ``hop_ms`` (declaration order)."""
        return tuple(a for a in self.aggregates if hop_ms in a.hops())

    def feature_names(self) -> tuple[str, ...]:
        """Every feature, in declaration order (aggregates, then windows)."""
        return tuple(f for a in self.aggregates for f in a.feature_names())

    def cutoff_alignment_ms(self) -> int:
        """A batch cutoff must be a multiple of this (the largest hop)."""
        return max(self.hops())

    def fields(self) -> tuple[str, ...]:
        """Every field the definition reads (aggregates and filters), sorted."""
        names = {a.field for a in self.aggregates if a.field is not None}
        names |= {f.field for a in self.aggregates for f in a.filters}
        return tuple(sorted(names))


_NUMERIC_OPS: Final = frozenset({"sum", "min", "max", "mean", "last", "histogram"})


def check_against_schema(group: GroupBy, schema: Mapping[str, Any]) -> None:
    """Check a definition against its event's JSON Schema document.

    The entity key must be a required string property; every field must be a
    property (or a derived field); numeric ops need a number or integer
    field, ``approx_distinct`` a string or integer one. A ``sum`` or
    ``mean`` of a payload field (:func:`check_scale_against_schema`): the
    field must be bounded and its bounds representable at the scale, and a
    ``multipleOf`` must be a whole number of units. Raises ``ConfigError``
    naming the first problem.
    """
    properties: Mapping[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", ()))

    def types_of(field: str) -> set[str]:
        """JSON types a property may take: from ``type``, else ``const``/``enum``."""
        spec = properties[field]
        declared = spec.get("type")
        if declared is not None:
            return {declared} if isinstance(declared, str) else set(declared)
        values = [spec["const"]] if "const" in spec else list(spec.get("enum", ()))
        kinds = {"string" if isinstance(v, str) else
                 "number" if value_kind(v) == "number" else "other" for v in values}
        return kinds or {"other"}

    if group.entity_key not in properties or group.entity_key not in required:
        raise ConfigError(
            f"group-by {group.name!r}: entity key {group.entity_key!r} is not a required "
            f"property of {group.event_type!r} events"
        )
    if types_of(group.entity_key) != {"string"}:
        raise ConfigError(
            f"group-by {group.name!r}: entity key {group.entity_key!r} is not a string")
    for field in group.fields():
        if field not in properties and field not in DERIVED_FIELDS:
            raise ConfigError(
                f"group-by {group.name!r}: field {field!r} is not a property of "
                f"{group.event_type!r} events nor a derived field ({', '.join(DERIVED_FIELDS)})"
            )
    for aggregate in group.aggregates:
        if aggregate.field is None or aggregate.field in DERIVED_FIELDS:
            continue
        types = types_of(aggregate.field)
        if aggregate.op in _NUMERIC_OPS and not types <= {"number", "integer"}:
            raise ConfigError(
                f"aggregate {aggregate.name!r}: op {aggregate.op!r} needs a numeric field, "
                f"{aggregate.field!r} is {sorted(types)}"
            )
        if aggregate.op == "approx_distinct" and not types <= {"string", "integer"}:
            raise ConfigError(
                f"aggregate {aggregate.name!r}: approx_distinct counts strings or integers, "
                f"{aggregate.field!r} is {sorted(types)}"
            )
        if aggregate.op in SCALED_OPS:
            check_scale_against_schema(aggregate, properties[aggregate.field])


def _decimal(value: Any) -> Decimal:
    # repr: the decimal a JSON number in the schema file was written as.
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def check_scale_against_schema(aggregate: Aggregate, spec: Mapping[str, Any]) -> None:
    """Check a sum or mean's ``scale`` against the JSON Schema of its field.

    * Bounds: the field needs ``minimum`` / ``exclusiveMinimum`` and
      ``maximum`` / ``exclusiveMaximum``, with ``max(|bound|) * 10**scale``
      below ``UNIT_LIMIT`` (2**48): every valid value then lifts exactly, and
      the int64 headroom is stated by the bound (see "Exact sums").
    * ``multipleOf`` (if any) must be a whole number of units, so every valid
      value is at the scale and none is rounded. Without ``multipleOf`` a
      valid value may be finer than the scale; it is rounded half to even --
      the definition's choice, not an error.
    """
    assert aggregate.scale is not None  # Aggregate requires it for sum and mean
    scale = aggregate.scale
    where = f"aggregate {aggregate.name!r} ({aggregate.op} of {aggregate.field!r}, scale {scale})"
    low = spec.get("minimum", spec.get("exclusiveMinimum"))
    high = spec.get("maximum", spec.get("exclusiveMaximum"))
    bounds = [b for b in (low, high) if isinstance(b, int | float) and not isinstance(b, bool)]
    if len(bounds) < 2:
        raise ConfigError(
            f"{where}: the event schema must bound the field (minimum and maximum, or "
            f"their exclusive forms) so that exact sums cannot lose precision; add them "
            f"to the schema")
    largest = max(abs(_decimal(b)) for b in bounds)
    if largest.scaleb(scale) >= UNIT_LIMIT:
        raise ConfigError(
            f"{where}: values up to {largest} are {largest.scaleb(scale)} units, not below "
            f"2**48; use a smaller scale or a tighter bound in the schema")
    step = spec.get("multipleOf")
    if step is not None and _decimal(step).scaleb(scale) % 1 != 0:
        places = next((p for p in range(scale + 1, 40) if _decimal(step).scaleb(p) % 1 == 0), 40)
        raise ConfigError(
            f"{where}: the schema's multipleOf {step} is not a whole number of "
            f"10**-{scale} units; use scale={places} or more")


def tile_schema(group: GroupBy, hop_ms: int) -> pa.Schema:
    """The Arrow schema of the tile table of ``hop_ms``: entity key, tile
    start (ms), then one column per aggregate stored at that hop."""
    aggregates = group.aggregates_for_hop(hop_ms)
    if not aggregates:
        raise ConfigError(f"group-by {group.name!r} has no window with hop {hop_ms} ms")
    return pa.schema(
        [pa.field(group.entity_key, pa.string(), nullable=False),
         pa.field("tile_start", pa.int64(), nullable=False)]
        + [a.aggregation.arrow_field(a.name) for a in aggregates]
    )


# --- reference evaluation (pure Python): the oracle every layer must match ---

TileKey = tuple[str, int]
Partials = dict[str, Any]
Tiles = dict[TileKey, Partials]


def _events_of(group: GroupBy, events: Iterable[Mapping[str, Any]]
               ) -> Iterable[Mapping[str, Any]]:
    """Events of the group's type with an entity key, each event_id once."""
    seen: set[str] = set()
    for payload in events:
        if payload.get("event_type", group.event_type) != group.event_type:
            continue
        if payload.get(group.entity_key) is None:
            continue
        event_id = payload["event_id"]
        if event_id in seen:
            continue
        seen.add(event_id)
        yield payload


def lift_event(group: GroupBy, payload: Mapping[str, Any],
               aggregates: Iterable[Aggregate] | None = None) -> Partials:
    """One event's partial per aggregate (``zero`` where a filter rejects it).

    Uses ``payload["event_time"]`` and ``payload["event_id"]``; the caller
    checks the event type. ``aggregates`` defaults to all of the group's.
    """
    event_time, event_id = int(payload["event_time"]), str(payload["event_id"])
    partials: Partials = {}
    for aggregate in group.aggregates if aggregates is None else aggregates:
        monoid = aggregate.aggregation
        if aggregate.accepts(payload):
            value = None if aggregate.field is None else field_value(payload, aggregate.field)
            partials[aggregate.name] = monoid.lift(value, event_time, event_id)
        else:
            partials[aggregate.name] = monoid.zero()
    return partials


def build_tiles(group: GroupBy, events: Iterable[Mapping[str, Any]], hop_ms: int) -> Tiles:
    """Tiles of ``hop_ms``: ``{(entity, tile_start): {aggregate name: partial}}``
    for the aggregates stored at that hop; a tile per (entity, tile) with at
    least one event of the group's type (each event_id counted once)."""
    aggregates = group.aggregates_for_hop(hop_ms)
    if not aggregates:
        raise ConfigError(f"group-by {group.name!r} has no window with hop {hop_ms} ms")
    monoids = {a.name: a.aggregation for a in aggregates}
    tiles: Tiles = {}
    for payload in _events_of(group, events):
        key = (str(payload[group.entity_key]), tile_start(int(payload["event_time"]), hop_ms))
        lifted = lift_event(group, payload, aggregates)
        tile = tiles.get(key)
        if tile is None:
            tiles[key] = lifted
        else:
            for name, partial in lifted.items():
                tile[name] = monoids[name].merge(tile[name], partial)
    return tiles


def _present_all(group: GroupBy, t_ms: int,
                 partial_for: Callable[[Aggregate, Window], Any]) -> dict[str, FeatureValue]:
    return {
        aggregate.feature_name(window):
            aggregate.aggregation.present(partial_for(aggregate, window))
        for aggregate in group.aggregates
        for window in aggregate.windows
    }


def features_at(group: GroupBy, tiles_by_hop: Mapping[int, Mapping[TileKey, Mapping[str, Any]]],
                head_events: Iterable[Mapping[str, Any]], entity: str,
                t_ms: int) -> dict[str, FeatureValue]:
    """Every feature of ``entity`` just before ``t_ms``, from tiles plus a head.

    For each window (hop ``h``): the full tiles ``tiles_by_hop[h]`` with
    ``window start <= tile_start < floor(t/h)*h`` (tiles at or after the head
    are ignored, absent ones are zero), merged in time order with the head
    ``[floor(t/h)*h, t)`` aggregated from ``head_events``. ``head_events``
    must hold every event of the entity from ``floor(t/H)*H`` (``H`` = the
    largest hop) up to ``t``; events of other entities or times are ignored.
    """
    heads: dict[int, list[Mapping[str, Any]]] = {h: [] for h in group.hops()}
    for payload in _events_of(group, head_events):
        if str(payload[group.entity_key]) != entity:
            continue
        event_time = int(payload["event_time"])
        for hop, bucket in heads.items():
            if tile_start(t_ms, hop) <= event_time < t_ms:
                bucket.append(payload)

    def partial_for(aggregate: Aggregate, window: Window) -> Any:
        monoid = aggregate.aggregation
        hop = window.hop_ms
        head_start = tile_start(t_ms, hop)
        start, _ = window_range(t_ms, window)
        tiles = tiles_by_hop.get(hop, {})
        if start is None:  # lifetime: every tile of the entity before the head
            starts = sorted(s for (e, s) in tiles if e == entity and s < head_start)
        else:
            starts = list(range(start, head_start, hop))
        parts = [tiles[(entity, s)][aggregate.name] for s in starts if (entity, s) in tiles]
        head = [lift_event(group, p, (aggregate,))[aggregate.name] for p in heads[hop]]
        return monoid.merge_all([*parts, *head])

    return _present_all(group, t_ms, partial_for)


def _within(event_time: int, start: int | None, end: int) -> bool:
    return (start is None or start <= event_time) and event_time < end


def features_from_events(group: GroupBy, events: Iterable[Mapping[str, Any]], entity: str,
                         t_ms: int) -> dict[str, FeatureValue]:
    """Every feature of ``entity`` just before ``t_ms``, straight from raw
    events (no tiles): the oracle :func:`features_at` must agree with."""
    mine = [p for p in _events_of(group, events) if str(p[group.entity_key]) == entity]

    def partial_for(aggregate: Aggregate, window: Window) -> Any:
        start, end = window_range(t_ms, window)
        inside = [p for p in mine if _within(int(p["event_time"]), start, end)]
        return aggregate.aggregation.merge_all(
            lift_event(group, p, (aggregate,))[aggregate.name] for p in inside
        )

    return _present_all(group, t_ms, partial_for)
