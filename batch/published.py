"""Published batch views, read without Spark: their metadata and their tiles.

A published view is one version of a Delta table written by
``lamina.batch.views.run_batch_views``: its commit's ``userMetadata`` is a
:class:`ViewMetadata` (what it was computed from), its rows are the tiles.
Readers here use delta-rs and take metadata and rows from one table version,
so they always belong together; a vacuum's commits change no rows and are
looked through to the publish before them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lamina.errors import DatasetError
from lamina.schemas.view_definitions import GroupBy, TileKey, tile_schema
from lamina.stores.lookup import definition_fingerprint

METADATA_FORMAT = "lamina.batch_view/1"
#: Commits that change no rows: a vacuum is logged as two of them (delta-rs
#: and Spark alike). A reader at such a version sees the last publish.
ROWLESS_OPERATIONS = frozenset({"VACUUM START", "VACUUM END"})


class ViewsError(DatasetError):
    """No published view where one was expected, or a view that was not
    written by this job."""


@dataclass(frozen=True)
class ViewMetadata:
    """What a published batch view was computed from (its commit's
    ``userMetadata``): enough to rebuild it exactly."""

    group: str
    cutoff_ms: int
    source_snapshot: int
    master_uri: str
    #: The GroupBy's fingerprint: ``lamina.stores.lookup.definition_fingerprint``
    #: (``lamina.lineage.fingerprint``), the one every layer records and checks.
    definition: str
    code_version: str
    format: str = METADATA_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ViewMetadata:
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("format") != METADATA_FORMAT:
            raise ViewsError(f"commit metadata {text[:200]!r} is not a Lamina batch view's")
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})

    def same_inputs(self, other: ViewMetadata) -> bool:
        return (self.group, self.cutoff_ms, self.source_snapshot, self.definition,
                self.code_version) == (other.group, other.cutoff_ms, other.source_snapshot,
                                       other.definition, other.code_version)


def _metadata_of(entry: Mapping[str, Any]) -> ViewMetadata | None:
    text = entry.get("userMetadata")
    if not text:
        return None
    try:
        return ViewMetadata.from_json(str(text))
    except (ViewsError, ValueError, TypeError, KeyError):
        return None


def latest_published(views_uri: str) -> tuple[int, ViewMetadata] | None:
    """(version, metadata) of the latest version of the views table, or None
    when there is no table yet. ViewsError if the table was not written by
    this job."""
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(views_uri):
        return None
    table = DeltaTable(views_uri)
    return table.version(), _metadata_at(table, views_uri)


def published_rows(views_uri: str, version: int) -> int:
    """Tile rows of a version of the views table, from the Delta log."""
    from deltalake import DeltaTable

    actions = pa.table(DeltaTable(views_uri, version=version).get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return 0
    return int(pc.sum(actions.column("num_records")).as_py() or 0)


def _metadata_at(table: Any, views_uri: str) -> ViewMetadata:
    """The metadata of the view a reader of ``table``'s version sees: that of
    the version's own commit, or -- if the version is a vacuum's commit,
    which changes no rows -- of the publish before it."""
    version = table.version()
    history = sorted(table.history(), key=lambda e: -int(e.get("version", -1)))
    for entry in history:
        if int(entry.get("version", -1)) > version:
            continue
        if entry.get("operation") in ROWLESS_OPERATIONS:
            continue
        metadata = _metadata_of(entry)
        if metadata is not None:
            return metadata
        break
    raise ViewsError(
        f"version {version} of {views_uri} carries no Lamina batch-view metadata; "
        "it was not published by `lamina batch run`"
    )


def read_published(views_uri: str, version: int | None = None
                   ) -> tuple[ViewMetadata, pa.Table]:
    """The metadata and every tile row of a published view (the latest
    version, or ``version``), read with delta-rs: no Spark needed. Both come
    from one table version, so they always belong together."""
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(views_uri):
        raise ViewsError(f"no batch view published at {views_uri}; run `lamina batch run`")
    table = DeltaTable(views_uri, version=version)
    return _metadata_at(table, views_uri), table.to_pyarrow_table()


class BatchViewStore:
    """Read API over one published version of a batch view (delta-rs).

    ``refresh()`` loads the latest published version (atomically: metadata
    and rows of one Delta version); reads between refreshes see that version.
    ``tiles_for(entity, hop_ms)`` returns the entity's tiles of one hop in the
    contract of ``lamina.schemas.view_definitions.tile_schema`` (entity column named
    after the group's entity key, only the aggregates stored at that hop),
    sorted by tile_start.
    """

    def __init__(self, views_uri: str, group: GroupBy, version: int | None = None) -> None:
        self.views_uri = views_uri
        self.group = group
        self.metadata: ViewMetadata
        self._rows: pa.Table
        self._index: dict[tuple[int, str], tuple[int, int]] = {}
        self.refresh(version)

    def refresh(self, version: int | None = None) -> ViewMetadata:
        metadata, rows = read_published(self.views_uri, version)
        if metadata.group != self.group.name or \
                metadata.definition != definition_fingerprint(self.group):
            raise ViewsError(
                f"the view at {self.views_uri} was computed for group {metadata.group!r} "
                f"(definition {metadata.definition}), not this definition of "
                f"{self.group.name!r}; rerun `lamina batch run`"
            )
        rows = rows.sort_by([("hop_ms", "ascending"), ("entity_key", "ascending"),
                             ("tile_start", "ascending")])
        index: dict[tuple[int, str], tuple[int, int]] = {}
        hops = rows.column("hop_ms").to_pylist()
        entities = rows.column("entity_key").to_pylist()
        start = 0
        for i in range(1, len(hops) + 1):
            if i == len(hops) or hops[i] != hops[start] or entities[i] != entities[start]:
                index[(hops[start], entities[start])] = (start, i - start)
                start = i
        self.metadata, self._rows, self._index = metadata, rows, index
        return metadata

    @property
    def cutoff_ms(self) -> int:
        return self.metadata.cutoff_ms

    def tiles_for(self, entity: str, hop_ms: int) -> pa.Table:
        schema = tile_schema(self.group, hop_ms)  # ConfigError for an unknown hop
        where = self._index.get((hop_ms, entity))
        rows = self._rows.slice(*where) if where else self._rows.slice(0, 0)
        columns = [rows.column("entity_key"), rows.column("tile_start")] + [
            rows.column(field.name) for field in list(schema)[2:]]
        return pa.Table.from_arrays(
            [c.cast(f.type) for c, f in zip(columns, schema, strict=True)], schema=schema)

    def partials_for(self, entity: str) -> dict[int, dict[TileKey, dict[str, Any]]]:
        """The entity's tiles as the Python reference takes them
        (``lamina.schemas.view_definitions.features_at``): ``{hop: {(entity, tile_start):
        {aggregate: partial}}}``, partials read with ``from_storage``."""
        out: dict[int, dict[TileKey, dict[str, Any]]] = {}
        for hop in self.group.hops():
            aggregates = self.group.aggregates_for_hop(hop)
            table = self.tiles_for(entity, hop)
            starts = table.column("tile_start").to_pylist()
            stored = {a.name: table.column(a.name).to_pylist() for a in aggregates}
            out[hop] = {
                (entity, s): {a.name: a.aggregation.from_storage(stored[a.name][i])
                              for a in aggregates}
                for i, s in enumerate(starts)
            }
        return out
