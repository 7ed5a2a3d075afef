"""`lamina import FILE...`: historical backfill through the same validation,
dedup and commit protocol as the lander.

Each file is a source of its own: its "topic" is `import:<name>@<sha12>`
(the first 12 hex digits of the file's SHA-256), partition 0, and the offset
of an event is its line number (0-based). So re-importing the same file, or
resuming an import killed half-way, lands every line exactly once. Invalid
lines go to a dead-letter file (JSON lines, original bytes in base64) so an
import needs no broker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lamina.errors import DatasetError
from lamina.logs import get_logger
from lamina.master.dataset import MasterDataset
from lamina.master.deadletters import FileDeadLetters
from lamina.master.dedup import LandedIds
from lamina.master.lander import LanderStats, PendingBatch, app_id, commit_batch
from lamina.schemas.validation import EventValidator

log = get_logger(__name__)


@dataclass
class ImportResult:
    path: Path
    source: str
    lines: int
    stats: LanderStats
    dead_letter_file: Path | None


def file_source(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"import:{path.name}@{digest.hexdigest()[:12]}"


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes without the newline); a blank line still
    counts as a line (and is dead-lettered as malformed)."""
    with path.open("rb") as f:
        for number, line in enumerate(f):
            if line.endswith(b"\n"):
                line = line[:-1]
                if line.endswith(b"\r"):
                    line = line[:-1]
            yield number, line


def import_files(
    dataset: MasterDataset,
    paths: list[Path],
    validator: EventValidator,
    dead_letter_dir: Path,
    *,
    batch_size: int = 50_000,
    dedup_cached_days: int = 3,
    progress: bool = True,
) -> list[ImportResult]:
    from tqdm import tqdm

    for path in paths:
        if not path.is_file():
            raise DatasetError(f"cannot import {path}: no such file")
    dataset.create_if_missing()
    landed = LandedIds(dataset, cached_days=dedup_cached_days)
    results = []
    for path in paths:
        source = file_source(path)
        already = dataset.table().transaction_version(app_id(source, 0))
        dead_letter_file = dead_letter_dir / f"{source.replace(':', '-').replace('@', '-')}.jsonl"
        sink = FileDeadLetters(dead_letter_file)
        stats = LanderStats()
        batch = PendingBatch()
        lines = 0
        with tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name,
                  disable=not progress) as bar:
            for number, raw in iter_lines(path):
                lines += 1
                bar.update(len(raw) + 1)
                if already is not None and number <= already:
                    continue  # landed by an earlier run of this import
                batch.add(source, 0, number, raw, validator)
                stats.consumed += 1
                if len(batch) >= batch_size:
                    commit_batch(dataset, batch, landed, sink, stats, writer="import")
                    batch = PendingBatch()
            if batch.last_offsets:
                commit_batch(dataset, batch, landed, sink, stats, writer="import")
        log.info("imported", file=str(path), source=source, lines=lines, landed=stats.landed,
                 dead_letters=stats.dead_lettered, duplicates=stats.duplicates_dropped,
                 skipped_already_landed=(already + 1) if already is not None else 0,
                 snapshot=stats.last_snapshot)
        results.append(ImportResult(path, source, lines, stats,
                                    dead_letter_file if stats.dead_lettered else None))
    return results
