"""The master dataset: every valid raw event, kept forever, unchanged.

It is a Delta Lake table written with delta-rs (`deltalake`):

* a **snapshot** is a table version, made atomically by one commit;
* the table is created with `delta.appendOnly=true`, so no commit can delete
  or rewrite a landed row, and `delta.enableExpiredLogCleanup=false`, so time
  travel to any old snapshot keeps working;
* the lander stores the Kafka offsets it covered in the same commit as the
  rows (Delta transaction identifiers: app id per topic-partition, version =
  last offset), which is what makes landing exactly-once in effect;
* compaction writes new files in a new snapshot; old snapshots still read
  the same rows from the old files, which are never rewritten.

Rows hold the envelope as typed columns plus the original payload bytes, so
a later schema version can re-read history. The table is partitioned by
event type and event date (UTC).

The same class works for a local path and for an object-store URI that
delta-rs understands (pass `storage_options`); nothing else in Lamina needs
to know which one it has.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from lamina.errors import DatasetError
from lamina.logs import get_logger

log = get_logger(__name__)

MASTER_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("event_time", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("entity_key", pa.string(), nullable=False),
        # Where the event came from. For `lamina import` the topic is
        # "import:<file name>", the partition 0 and the offset the line number.
        pa.field("kafka_topic", pa.string(), nullable=False),
        pa.field("kafka_partition", pa.int32(), nullable=False),
        pa.field("kafka_offset", pa.int64(), nullable=False),
        pa.field("ingest_time", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("payload", pa.binary(), nullable=False),
        pa.field("event_date", pa.string(), nullable=False),  # YYYY-MM-DD, UTC
    ]
)
PARTITION_BY = ["event_type", "event_date"]
TABLE_CONFIGURATION = {
    "delta.appendOnly": "true",
    "delta.enableExpiredLogCleanup": "false",
}


class CommitConflict(DatasetError):
    """Another writer committed the same transaction id since we loaded the
    table: reload, re-filter, retry (see Lander)."""


def with_event_date(rows: pa.Table) -> pa.Table:
    """Add the `event_date` partition column (UTC date of event_time, as
    ``YYYY-MM-DD`` text). The timestamp is cast to a date (floor, so before
    1970 too) and the date to text: the same strings as ``strftime`` at a
    tenth of its cost (measured in docs/decisions.md, "The lander benchmark")."""
    dates = pc.cast(pc.cast(rows.column("event_time"), pa.date32()), pa.string())
    return rows.append_column("event_date", dates)


@dataclass(frozen=True)
class SnapshotInfo:
    version: int
    timestamp_ms: int
    operation: str
    rows_added: int
    metadata: dict[str, Any]


class MasterDataset:
    """The append-only Delta table of raw events at `uri`."""

    def __init__(self, uri: str, storage_options: dict[str, str] | None = None) -> None:
        self.uri = uri
        self.storage_options = storage_options

    # --- lifecycle -----------------------------------------------------------
    def exists(self) -> bool:
        return DeltaTable.is_deltatable(self.uri, storage_options=self.storage_options)

    def create_if_missing(self) -> None:
        """Create the empty table with the immutability settings; a no-op if
        it exists (and then its settings are checked)."""
        if not self.exists():
            DeltaTable.create(
                self.uri,
                schema=MASTER_SCHEMA,
                mode="ignore",
                partition_by=PARTITION_BY,
                name="lamina_master",
                description="Lamina master dataset: raw events, append-only",
                configuration=TABLE_CONFIGURATION,
                storage_options=self.storage_options,
            )
            log.info("master dataset created", uri=self.uri)
        config = self.table().metadata().configuration
        for key, value in TABLE_CONFIGURATION.items():
            if config.get(key) != value:
                raise DatasetError(
                    f"master dataset at {self.uri} has {key}={config.get(key)!r}, "
                    f"expected {value!r}; it was not created by Lamina"
                )

    def table(self, version: int | None = None) -> DeltaTable:
        """The table at a snapshot (the latest when version is None)."""
        try:
            return DeltaTable(self.uri, version=version, storage_options=self.storage_options)
        except TableNotFoundError:
            raise DatasetError(
                f"no master dataset at {self.uri}; land events first "
                "(`lamina land` or `lamina import FILE`)"
            ) from None
        except Exception as exc:
            if version is not None and "version" in str(exc).lower():
                raise DatasetError(
                    f"snapshot {version} of the master dataset does not exist: {exc}"
                ) from None
            raise

    # --- writing -------------------------------------------------------------
    def append(
        self,
        table: DeltaTable,
        rows: pa.Table,
        transactions: Mapping[str, int],
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Append `rows` (MASTER_SCHEMA without event_date) and record
        `transactions` (app id -> version) in the same commit, through the
        `table` object the caller read its transaction versions from, so a
        concurrent commit of the same app id fails as CommitConflict instead
        of duplicating. Returns the new snapshot version. An empty `rows`
        still commits, which advances the offsets past invalid events."""
        data = with_event_date(rows)
        custom = dict(metadata or {})
        custom[OFFSETS_METADATA_KEY] = json.dumps(sorted(transactions))
        props = CommitProperties(
            app_transactions=[Transaction(app_id, int(v)) for app_id, v in transactions.items()],
            custom_metadata=custom,
        )
        try:
            write_deltalake(
                table,
                data,
                mode="append",
                partition_by=PARTITION_BY,
                commit_properties=props,
                storage_options=self.storage_options,
            )
        except CommitFailedError as exc:
            raise CommitConflict(f"commit to {self.uri} conflicted: {exc}") from exc
        return table.version()

    def compact(self) -> dict[str, Any]:
        """Merge small files into a new snapshot; old snapshots are unchanged."""
        table = self.table()
        before = table.version()
        metrics: dict[str, Any] = dict(table.optimize.compact())
        after = self.table().version()
        log.info("master dataset compacted", uri=self.uri, from_version=before,
                 to_version=after, files_added=metrics.get("numFilesAdded"),
                 files_removed=metrics.get("numFilesRemoved"))
        metrics["from_version"], metrics["to_version"] = before, after
        return metrics

    # --- reading -------------------------------------------------------------
    def read(
        self,
        version: int | None = None,
        columns: Sequence[str] | None = None,
        filters: Any = None,
    ) -> pa.Table:
        """Rows as of snapshot `version` (latest if None)."""
        dataset = self.table(version).to_pyarrow_dataset()
        return dataset.to_table(columns=list(columns) if columns else None, filter=filters)

    def transaction_versions(self, app_ids: Sequence[str],
                             table: DeltaTable | None = None) -> dict[str, int | None]:
        table = table or self.table()
        return {app_id: table.transaction_version(app_id) for app_id in app_ids}

    def file_stats(self, version: int | None = None) -> pa.Table:
        """One row per live data file: path, size, rows, partition, stats."""
        return pa.table(self.table(version).get_add_actions(flatten=True))

    def snapshots(self, limit: int | None = None) -> list[SnapshotInfo]:
        out = []
        for entry in self.table().history(limit):
            metrics = entry.get("operationMetrics", {}) or {}
            known = {"timestamp", "operation", "operationParameters", "operationMetrics",
                     "engineInfo", "clientVersion", "version", "readVersion",
                     "isBlindAppend"}
            out.append(
                SnapshotInfo(
                    version=int(entry["version"]),
                    timestamp_ms=int(entry.get("timestamp", 0)),
                    operation=str(entry.get("operation", "")),
                    rows_added=int(metrics.get("num_added_rows", 0) or 0),
                    metadata={k: v for k, v in entry.items() if k not in known},
                )
            )
        return out

    def info(self) -> dict[str, Any]:
        """What `lamina dataset info` shows: latest snapshot, snapshot count,
        rows, bytes and files per partition, and the landers' offsets."""
        table = self.table()
        stats = self.file_stats()
        partitions: dict[tuple[str, str], dict[str, int]] = {}
        types = stats.column("partition.event_type").to_pylist()
        dates = stats.column("partition.event_date").to_pylist()
        sizes = stats.column("size_bytes").to_pylist()
        counts = stats.column("num_records").to_pylist()
        for event_type, date, size, count in zip(types, dates, sizes, counts, strict=True):
            p = partitions.setdefault((event_type, date), {"rows": 0, "bytes": 0, "files": 0})
            p["rows"] += int(count or 0)
            p["bytes"] += int(size or 0)
            p["files"] += 1
        offsets = _lander_offsets(table)
        return {
            "uri": self.uri,
            "snapshot": table.version(),
            "snapshots": table.version() + 1,
            "rows": sum(p["rows"] for p in partitions.values()),
            "bytes": sum(p["bytes"] for p in partitions.values()),
            "files": sum(p["files"] for p in partitions.values()),
            "partitions": [
                {"event_type": t, "event_date": d, **v} for (t, d), v in sorted(partitions.items())
            ],
            "offsets": offsets,
        }


OFFSETS_METADATA_KEY = "lamina.app_ids"


def _lander_offsets(table: DeltaTable) -> dict[str, int]:
    """Transaction versions of the app ids recent commits named in their
    metadata (delta-rs has no call listing every app id), read from the
    table's state so they are exact."""
    app_ids: set[str] = set()
    for entry in table.history(500):
        raw = entry.get(OFFSETS_METADATA_KEY)
        if raw:
            app_ids.update(json.loads(raw))
    versions = {a: table.transaction_version(a) for a in sorted(app_ids)}
    return {a: v for a, v in versions.items() if v is not None}
