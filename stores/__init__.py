"""Tile stores: realtime tiles, published batch views and consumer offsets
behind one small interface (``base.TileStore``), an embedded SQLite store
and a Redis one; the bounded per-entity lookup (``lookup``), the tile
encoding (``codec``) every layer shares, and the adapter between a store
snapshot and the online point-in-time state (``online``).

``open_store(name, **options)`` opens a store by its short name; the
implementation's module is imported only when it is chosen (the Redis
client is needed only for ``"redis"``). The options of each are in its
module's docstring (``lamina.stores.sqlite``, ``lamina.stores.redis``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any, Final

from lamina.errors import ConfigError
from lamina.stores.base import (
    AsOfOutOfRange,
    BatchRecord,
    BatchView,
    CutoffWentBackwards,
    EntitySnapshot,
    NoPublishedView,
    OffsetsWentBackwards,
    PublishedView,
    StoreError,
    StoreUnavailable,
    TileRow,
    TileStore,
)

#: Short name -> "module:class", imported when chosen.
STORES: Final[Mapping[str, str]] = {
    "sqlite": "lamina.stores.sqlite:SqliteTileStore",
    "redis": "lamina.stores.redis:RedisTileStore",
}

__all__ = [
    "STORES", "AsOfOutOfRange", "BatchRecord", "BatchView", "CutoffWentBackwards",
    "EntitySnapshot", "NoPublishedView", "OffsetsWentBackwards", "PublishedView", "StoreError",
    "StoreUnavailable", "TileRow", "TileStore", "open_store", "store_class",
]


def store_class(name: str) -> type[TileStore]:
    """The class behind a short store name (imports its module now).
    ConfigError for an unknown name or a missing client library."""
    target = STORES.get(name)
    if target is None:
        raise ConfigError(f"unknown tile store {name!r}; known: {', '.join(STORES)}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"tile store {name!r} needs a library that is not installed "
                          f"({error.name}); install it, e.g. `pip install {error.name}`") from None
    cls: type[TileStore] = getattr(module, class_name)
    return cls


def open_store(name: str, **options: Any) -> TileStore:
    """Open the tile store ``name`` ("sqlite" or "redis") with ``options``
    (keyword arguments of its class). ConfigError names a bad option;
    StoreUnavailable says the store cannot be reached."""
    cls = store_class(name)
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as error:
        raise ConfigError(f"tile store {name!r}: {error}; its options are in the docstring "
                          f"of {cls.__module__}") from None
    return cls(**options)
