"""The feature contract: everything a model's input is made of, in one object.

Like Chronon's Join or Feast's FeatureService, a :class:`FeatureContract`
holds, as data:

* the **query events** that get a feature row (and a score online): an event
  type, keyed by the entity key of its view groups;
* the **view groups** (``lamina.schemas.view_definitions.GroupBy``) whose features are
  read as of just before each query event;
* the **request fields** of the query event itself the vectoriser reads, and
  the **context columns** kept beside the features (for slices);
* the **vectoriser**: ``(event payload, view features) -> {feature: float}``,
  the one function the training set, the speed layer and serving all call;
* the **feature list**: the model's input, in order;
* the **label rule** (:class:`LabelRule`) for training and backtests.

Training sets, evaluation, the speed layer and serving take a contract;
nothing else names an entity key or a feature list. Its
:meth:`FeatureContract.fingerprint` goes into every artefact's lineage, so a
model can be checked against the contract a scorer is about to feed it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from lamina.errors import ConfigError
from lamina.lineage import fingerprint
from lamina.schemas.view_definitions import DAY_MS, GroupBy

#: ``(event payload, view features) -> {feature name: value}``.
Vectoriser = Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, float]]

DEFAULT_LABEL_MATURITY_MS: Final = 30 * DAY_MS


@dataclass(frozen=True)
class LabelRule:
    """How a query event gets its label from later label events.

    A label event of ``event_type`` refers to a query event by its
    ``event_id`` in ``target_field``; ``positive_field`` (a boolean) says
    whether the outcome was positive (e.g. a chargeback). As known at a time
    ``as_of`` (label ``event_time <= as_of``), a query event is labelled

    * 1 when some label is positive (a positive wins over an earlier
      negative);
    * 0 when some label is negative;
    * 0 when unlabelled and *mature*: ``event_time < as_of - maturity_ms``
      (most negatives are never labelled; a positive is expected within the
      maturity period);
    * left out when unlabelled and recent: its outcome is not known yet.
    """

    event_type: str = "label"
    target_field: str = "transaction_id"
    positive_field: str = "is_fraud"
    maturity_ms: int = DEFAULT_LABEL_MATURITY_MS

    def __post_init__(self) -> None:
        for name in ("event_type", "target_field", "positive_field"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"label rule: {name} must be a non-empty string")
        if isinstance(self.maturity_ms, bool) or not isinstance(self.maturity_ms, int) \
                or self.maturity_ms < 0:
            raise ConfigError(
                f"label rule: maturity_ms must be a whole number of milliseconds >= 0, "
                f"got {self.maturity_ms!r}")


@dataclass(frozen=True)
class FeatureContract:
    """A model's input: query events, view groups, request fields, the
    vectoriser, the feature list and the label rule (see the module doc).
    Validated when built; immutable."""

    name: str
    query_event_type: str
    groups: tuple[GroupBy, ...]
    request_fields: tuple[str, ...]
    features: tuple[str, ...]
    vectoriser: Vectoriser
    label: LabelRule = LabelRule()
    context_columns: tuple[str, ...] = ()
    #: Context columns whose values make the evaluation's slices.
    slices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("feature contract: name must be a non-empty string")
        for attribute in ("groups", "request_fields", "features", "context_columns", "slices"):
            value = getattr(self, attribute)
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise ConfigError(f"contract {self.name!r}: {attribute} must be a tuple")
            object.__setattr__(self, attribute, tuple(value))
        if not self.groups:
            raise ConfigError(f"contract {self.name!r}: needs at least one view group")
        keys = {g.entity_key for g in self.groups}
        if len(keys) != 1:
            raise ConfigError(
                f"contract {self.name!r}: its view groups are keyed by {sorted(keys)}; "
                "one contract reads one entity's views")
        if not self.features or len(set(self.features)) != len(self.features):
            raise ConfigError(f"contract {self.name!r}: features must be distinct and not empty")
        names = [f for g in self.groups for f in g.feature_names()]
        clashes = sorted({f for f in names if names.count(f) > 1})
        if clashes:
            raise ConfigError(f"contract {self.name!r}: view features clash: {clashes}")
        unknown = sorted(set(self.slices) - set(self.context_columns))
        if unknown:
            raise ConfigError(
                f"contract {self.name!r}: slices {unknown} are not context columns")
        if not callable(self.vectoriser):
            raise ConfigError(f"contract {self.name!r}: vectoriser must be callable")

    @property
    def entity_key(self) -> str:
        """The payload field that keys the query events and every view."""
        return self.groups[0].entity_key

    def view_feature_names(self) -> tuple[str, ...]:
        return tuple(f for g in self.groups for f in g.feature_names())

    def payload_fields(self) -> tuple[str, ...]:
        """Every payload field a row needs: the views' inputs, the request
        fields and the context columns (without the envelope)."""
        fields = {f for g in self.groups for f in g.fields()}
        fields |= {*self.request_fields, *self.context_columns}
        return tuple(sorted(fields - {"event_id", "event_time", self.entity_key}))

    def row(self, event: Mapping[str, Any],
            view_features: Mapping[str, Any]) -> tuple[float, ...]:
        """The model's input for one query event as a matrix row: the values
        of :attr:`features`, in that order, as floats. ``view_features`` are
        the groups' features strictly before the event. Refuses (ConfigError)
        a vectoriser that does not give every feature."""
        values = self.vectoriser(event, view_features)
        try:
            return tuple([float(values[f]) for f in self.features])
        except KeyError:
            missing = [f for f in self.features if f not in values]
            if not missing:
                raise
            raise ConfigError(
                f"contract {self.name!r}: the vectoriser gave no value for {missing}") from None

    def vector(self, event: Mapping[str, Any],
               view_features: Mapping[str, Any]) -> dict[str, float]:
        """:meth:`row` as ``{feature: value}``, keys in :attr:`features`
        order (what a score record logs)."""
        return dict(zip(self.features, self.row(event, view_features), strict=True))

    def fingerprint(self) -> str:
        """Identifies the contract: groups, fields, features, label rule and
        the vectoriser's qualified name (its code is covered by the code
        version recorded beside it)."""
        vectoriser = f"{self.vectoriser.__module__}.{self.vectoriser.__qualname__}"
        return fingerprint((self.name, self.query_event_type, self.groups,
                            self.request_fields, self.features, vectoriser, self.label,
                            self.context_columns, self.slices))
