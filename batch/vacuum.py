"""Vacuuming the batch-views table: removing the files of views no reader needs.

An overwrite leaves the replaced view's files on disk (readers of the
previous version may still use them). ``vacuum_views`` deletes those older
than a retention (the table's ``delta.deletedFileRetentionDuration``, 7 days
by default), always keeping the previous publish's files unless told that
less is safe; its ``VACUUM START``/``END`` commits change no rows, and the
readers in ``lamina.batch.published`` look through them to the last publish.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyarrow.fs import FileType

from lamina.batch.published import ViewsError, _metadata_of
from lamina.logs import get_logger
from lamina.schemas.view_definitions import GroupBy

if TYPE_CHECKING:
    from lamina.config import Settings

log = get_logger(__name__)

#: Delta's default for ``delta.deletedFileRetentionDuration``: one week.
DEFAULT_RETENTION_HOURS = 7 * 24


@dataclass(frozen=True)
class VacuumResult:
    """What ``vacuum_views`` removed (or, in a dry run, would remove)."""

    views_uri: str
    dry_run: bool
    retain_hours: int
    minimum_hours: int  # the table's safe minimum (delta.deletedFileRetentionDuration)
    published_version: int | None  # the view readers see (a vacuum changes no rows)
    kept_versions: tuple[int, ...]  # versions whose files are kept whatever their age
    files: tuple[str, ...]  # relative to views_uri
    bytes: int  # their total size

    def as_dict(self) -> dict[str, Any]:
        return {
            "views_uri": self.views_uri,
            "dry_run": self.dry_run,
            "retain_hours": self.retain_hours,
            "minimum_hours": self.minimum_hours,
            "published_version": self.published_version,
            "kept_versions": list(self.kept_versions),
            "would_remove" if self.dry_run else "removed": list(self.files),
            "files": len(self.files),
            "bytes": self.bytes,
        }


_HOURS_PER_UNIT: dict[str, float] = {
    "week": 168.0, "day": 24.0, "hour": 1.0, "minute": 1 / 60, "second": 1 / 3600,
    "millisecond": 1 / 3_600_000, "microsecond": 1 / 3_600_000_000,
}


def retention_minimum_hours(table: Any) -> int:
    """The table's ``delta.deletedFileRetentionDuration`` (e.g. ``interval 1
    week``) in whole hours, rounded up; Delta's default of 168 h if unset.
    ViewsError if it cannot be read (vacuuming would then be a guess)."""
    text = str(table.metadata().configuration.get("delta.deletedFileRetentionDuration") or "")
    if not text:
        return DEFAULT_RETENTION_HOURS
    words = text.lower().split()
    if words and words[0] == "interval":
        words = words[1:]
    hours = 0.0
    try:
        if not words or len(words) % 2:
            raise ValueError(text)
        for amount, unit in zip(words[::2], words[1::2], strict=True):
            hours += float(amount) * _HOURS_PER_UNIT[unit.rstrip("s")]
    except (ValueError, KeyError):
        raise ViewsError(
            f"cannot read delta.deletedFileRetentionDuration={text!r} of the views table; "
            "set it to e.g. 'interval 7 days'"
        ) from None
    return int(math.ceil(hours))


def _published_versions(table: Any) -> list[int]:
    """Versions of the views table made by a publish, newest first."""
    return sorted((int(e["version"]) for e in table.history() if _metadata_of(e) is not None),
                  reverse=True)


def _table_filesystem(views_uri: str) -> tuple[Any, str]:
    """A pyarrow filesystem and the table's root path on it."""
    from pyarrow import fs

    filesystem, root = fs.FileSystem.from_uri(
        views_uri if "://" in views_uri else str(Path(views_uri).resolve()))
    return filesystem, root.rstrip("/")


def _checksum_source(path: str) -> str | None:
    """``dir/NAME`` for Hadoop's checksum file ``dir/.NAME.crc``, else None."""
    folder, _, name = path.rpartition("/")
    if not (name.startswith(".") and name.endswith(".crc")):
        return None
    return f"{folder}/{name[1:-4]}" if folder else name[1:-4]


def vacuum_views(
    views_uri: str,
    retain_hours: int | None = None,
    *,
    dry_run: bool = False,
    unsafe_retention: bool = False,
) -> VacuumResult:
    """Delete the files of the views table at ``views_uri`` that no version
    newer than ``retain_hours`` ago needs: files the publishes replaced more
    than ``retain_hours`` ago, files in no commit at all (a killed run's
    leftovers) older than that, and the Hadoop ``.crc`` checksums of both.
    The published view never changes; time travel to a version whose files
    are gone stops working. Delta's vacuum (delta-rs) deletes what the log
    tombstoned; the rest (no commit lists them) is deleted here.

    ``retain_hours`` defaults to the table's safe minimum,
    ``delta.deletedFileRetentionDuration`` (Delta's default: 168 h). A
    shorter retention is refused (ViewsError) unless ``unsafe_retention``:
    a reader still on an older view, or a publish still writing its files,
    could lose them. Without ``unsafe_retention`` the files of the previous
    publish are kept whatever their age, so a reader that loaded the view
    before the latest publish keeps working. ``dry_run`` lists and deletes
    nothing. A real vacuum adds two commits that change no rows (``VACUUM
    START``/``END``); readers here see the last publish through them.
    """
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(views_uri):
        raise ViewsError(f"no batch view published at {views_uri}; run `lamina batch run`")
    table = DeltaTable(views_uri)
    minimum = retention_minimum_hours(table)
    hours = minimum if retain_hours is None else int(retain_hours)
    if hours < 0:
        raise ViewsError(f"the retention must be 0 hours or more, got {hours}")
    if hours < minimum and not unsafe_retention:
        raise ViewsError(
            f"a retention of {hours} h is below the safe minimum of {minimum} h for "
            f"{views_uri} (delta.deletedFileRetentionDuration): a reader still on an older "
            "view, or a publish still writing its files, could lose them; pass "
            "--unsafe-retention to vacuum anyway"
        )
    publishes = _published_versions(table)
    kept = () if unsafe_retention else tuple(publishes[1:2])
    options: dict[str, Any] = {
        "retention_hours": hours,
        "enforce_retention_duration": not unsafe_retention,
        "keep_versions": list(kept) or None,
    }
    from deltalake.exceptions import DeltaError

    try:
        # Every file no kept version lists and older than the retention:
        # what publishes replaced, a killed run's files, and the `.NAME.crc`
        # checksums Spark's Hadoop writer puts beside each file (no commit
        # lists those) -- except the checksum of a file that stays.
        unreferenced = set(table.vacuum(dry_run=True, full=True, **options))
        filesystem, root = _table_filesystem(views_uri)
        sources = {f: _checksum_source(f) for f in unreferenced}
        staying = {src for src in sources.values() if src and src not in unreferenced}
        staying_infos = filesystem.get_file_info([f"{root}/{src}" for src in sorted(staying)])
        present = {src for src, info in zip(sorted(staying), staying_infos, strict=True)
                   if info.type != FileType.NotFound}
        doomed = sorted(f for f, src in sources.items() if src not in present)
        infos = filesystem.get_file_info([f"{root}/{f}" for f in doomed])
        size = sum(int(info.size or 0) for info in infos)
        if not dry_run and doomed:
            # Delta's own vacuum for the files the log tombstoned (it records
            # two VACUUM commits), then the ones no commit ever listed.
            table.vacuum(dry_run=False, full=False, **options)
            for path, info in zip(doomed, filesystem.get_file_info(
                    [f"{root}/{f}" for f in doomed]), strict=True):
                if info.type != FileType.NotFound:
                    filesystem.delete_file(f"{root}/{path}")
    except (DeltaError, OSError) as exc:
        raise ViewsError(f"vacuum of {views_uri} failed: {exc}") from exc
    result = VacuumResult(views_uri, dry_run, hours, minimum,
                          publishes[0] if publishes else None, kept, tuple(doomed), size)
    log.info("batch views vacuum (dry run)" if dry_run else "batch views vacuumed",
             views_uri=views_uri, retain_hours=hours, kept_versions=list(kept),
             files=len(doomed), bytes=size, published_version=result.published_version)
    return result


def batch_vacuum_command(settings: Settings, retain_hours: int | None, *, dry_run: bool = False,
                         unsafe_retention: bool = False,
                         group: GroupBy | None = None) -> dict[str, Any]:
    """`lamina batch vacuum`: ``vacuum_views`` on the card views (or
    ``group``) at ``settings.view_uri(group.name)``. Returns the result as a
    dict (see ``VacuumResult.as_dict``)."""
    from lamina.schemas.card_views import CARD_VIEWS

    group = group or CARD_VIEWS
    views_uri = settings.view_uri(group.name)
    if "://" not in views_uri:
        views_uri = str(Path(views_uri).resolve())
    return vacuum_views(views_uri, retain_hours, dry_run=dry_run,
                        unsafe_retention=unsafe_retention).as_dict()
