"""Partials as bytes: how tiles and batch records are encoded in a store.

A stored partial is the aggregation's own storage value
(``Aggregation.to_storage``: a Python value of its ``arrow_type``, the
same the Delta tiles hold) written as JSON with orjson. JSON has no bytes,
so wherever the arrow type is binary (an HLL image) the value is base64
text; the conversion follows the arrow type, so whatever storage types the
aggregations declare (floats today, fixed-point integers tomorrow), the
codec keeps them as they are: ``from_storage(decode(encode(to_storage(p))))
== p``. orjson writes floats in their shortest round-tripping form, so a
float comes back bit for bit.

A tile is ``{"<aggregate name>": <stored value>, ...}`` for the aggregates
stored at its hop; an aggregate missing from a tile reads as ``zero()``
(so a tile written before an aggregate was added still decodes).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import pyarrow as pa

from lamina.schemas.aggregations import Aggregation
from lamina.schemas.view_definitions import GroupBy

Convert = Callable[[Any], Any]


def _identity(value: Any) -> Any:
    return value


def _has_binary(arrow_type: pa.DataType) -> bool:
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type) \
            or pa.types.is_fixed_size_binary(arrow_type):
        return True
    return any(_has_binary(arrow_type.field(i).type) for i in range(arrow_type.num_fields))


def json_converters(arrow_type: pa.DataType) -> tuple[Convert, Convert]:
    """``(to_json, from_json)`` for storage values of ``arrow_type``: bytes
    to base64 text and back wherever the type is binary, else as is."""
    if not _has_binary(arrow_type):
        return _identity, _identity
    if pa.types.is_struct(arrow_type):
        children = {arrow_type.field(i).name: json_converters(arrow_type.field(i).type)
                    for i in range(arrow_type.num_fields)}

        def struct_to(value: Any) -> Any:
            if value is None:
                return None
            return {k: children[k][0](v) if k in children else v for k, v in value.items()}

        def struct_from(value: Any) -> Any:
            if value is None:
                return None
            return {k: children[k][1](v) if k in children else v for k, v in value.items()}

        return struct_to, struct_from
    if arrow_type.num_fields == 1:  # list-like
        item_to, item_from = json_converters(arrow_type.field(0).type)

        def list_to(value: Any) -> Any:
            return None if value is None else [item_to(v) for v in value]

        def list_from(value: Any) -> Any:
            return None if value is None else [item_from(v) for v in value]

        return list_to, list_from

    def binary_to(value: Any) -> Any:
        return None if value is None else base64.b64encode(bytes(value)).decode("ascii")

    def binary_from(value: Any) -> Any:
        return None if value is None else base64.b64decode(value)

    return binary_to, binary_from


class PartialCodec:
    """One aggregation's partials to JSON-ready values and back."""

    __slots__ = ("aggregation", "_from_json", "_to_json")

    def __init__(self, aggregation: Aggregation[Any]) -> None:
        self.aggregation = aggregation
        self._to_json, self._from_json = json_converters(aggregation.arrow_type)

    def dump(self, partial: Any) -> Any:
        """A JSON-ready value holding ``partial``."""
        return self._to_json(self.aggregation.to_storage(partial))

    def load(self, value: Any) -> Any:
        """The partial ``dump`` was given (None reads as ``zero()``)."""
        return self.aggregation.from_storage(self._from_json(value))


class TileCodec:
    """Tiles of one view to bytes and back (the ``partials`` of a
    ``TileRow``). Build it once per view: it caches a codec per aggregate."""

    def __init__(self, group: GroupBy) -> None:
        self.group = group
        self.partials: dict[str, PartialCodec] = {
            a.name: PartialCodec(a.aggregation) for a in group.aggregates}
        self._names_by_hop = {hop: tuple(a.name for a in group.aggregates_for_hop(hop))
                              for hop in group.hops()}

    def aggregates_at(self, hop_ms: int) -> tuple[str, ...]:
        """Names of the aggregates a tile of ``hop_ms`` holds; ValueError for
        a hop the view does not have."""
        try:
            return self._names_by_hop[hop_ms]
        except KeyError:
            raise ValueError(f"view {self.group.name!r} has no window with hop {hop_ms} ms; "
                             f"its hops: {sorted(self._names_by_hop)}") from None

    def encode(self, hop_ms: int, partials: Mapping[str, Any]) -> bytes:
        """A tile of ``hop_ms``: ``partials`` maps each aggregate stored at
        that hop to its partial (a missing one is stored as ``zero()``;
        one the hop does not store is a ValueError)."""
        names = self.aggregates_at(hop_ms)
        unknown = set(partials) - set(names)
        if unknown:
            raise ValueError(f"view {self.group.name!r}: hop {hop_ms} ms stores no "
                             f"{sorted(unknown)}")
        out = {}
        for name in names:
            codec = self.partials[name]
            partial = partials[name] if name in partials else codec.aggregation.zero()
            out[name] = codec.dump(partial)
        return orjson.dumps(out)

    def decode(self, hop_ms: int, data: bytes) -> dict[str, Any]:
        """The partials of a tile ``encode`` wrote (every aggregate of the
        hop; one the tile lacks is ``zero()``)."""
        stored = orjson.loads(data)
        return {name: self.partials[name].load(stored.get(name))
                for name in self.aggregates_at(hop_ms)}

    def decode_one(self, stored: Mapping[str, Any], name: str) -> Any:
        """One aggregate's partial from a tile already parsed with orjson."""
        return self.partials[name].load(stored.get(name))
