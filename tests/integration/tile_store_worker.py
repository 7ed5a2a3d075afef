"""Processes the tile-store contract tests start (and kill).

    python -m tests.integration.tile_store_worker writer STORE OPTIONS_JSON WORKDIR [--pause-at K R]
    python -m tests.integration.tile_store_worker reader STORE OPTIONS_JSON WORKDIR

writer -- a consumer: resumes from its stored offset k (0 if none) and
writes batch k+1, k+2, ...: every batch rewrites the tiles of ENTITIES
entities with the batch number as their partials, with offset = the batch
number, in one ``write_tiles``. After each commit it appends the number
to ``WORKDIR/committed``. With ``--pause-at K R`` it stops inside batch K
after R rows have gone into the transaction, writes ``WORKDIR/paused`` and
sleeps (the test kills it there).

reader -- a server: until ``WORKDIR/stop`` exists, reads random entities of
the view ``published`` (``read_entity``) and checks each snapshot: the
record is the marker of the snapshot's own batch version, the realtime
tiles are exactly those written at or after the snapshot's cutoff (none
before it, none missing), and batch versions seen never go back. Writes
``WORKDIR/reader.json`` with its counts when it stops,
``WORKDIR/reading`` once it has read a first snapshot and
``WORKDIR/version`` with the newest batch version it has read.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from lamina.stores import AsOfOutOfRange, NoPublishedView, TileRow, open_store

ENTITIES = 200
PUBLISHED_ENTITIES = 12  # few and small publishes: many switches for the reader to cross
HOP = 300_000
CONSUMER = "writer"
TOPIC = "events.raw"
GROUP = "published"
DAY = 86_400_000
C0 = 1_767_225_600_000  # 2026-01-01T00:00Z
#: The realtime tiles of the published view (hop 1 day) the test writes:
#: C0 + k days for k in this range, each holding its own marker.
TILE_DAYS = range(-3, 70)
SPANS = {DAY: None}


def batch_rows(batch: int, pause_after: int | None, workdir: Path) -> Iterator[TileRow]:
    for i in range(ENTITIES):
        if pause_after is not None and i == pause_after:
            (workdir / "paused").write_text(str(batch))
            time.sleep(3600)
        yield TileRow("writes", f"e{i:04d}", HOP, 0, str(batch).encode())


def record_marker(batch_version: int, entity: str) -> bytes:
    return f"v{batch_version}:{entity}".encode()


def tile_marker(start: int) -> bytes:
    return f"t{start}".encode()


def writer(store_name: str, options: dict[str, object], workdir: Path,
           pause: tuple[int, int] | None) -> None:
    store = open_store(store_name, **options)
    batch = store.read_offsets(CONSUMER).get((TOPIC, 0), 0)
    with (workdir / "committed").open("a") as committed:
        while True:
            batch += 1
            pause_after = pause[1] if pause is not None and pause[0] == batch else None
            store.write_tiles(batch_rows(batch, pause_after, workdir), consumer=CONSUMER,
                              offsets={(TOPIC, 0): batch})
            committed.write(f"{batch}\n")
            committed.flush()


def reader(store_name: str, options: dict[str, object], workdir: Path) -> None:
    store = open_store(store_name, **options)
    rng = random.Random(7)
    reads = violations = 0
    versions: set[int] = set()
    last_version = -1
    problems: list[str] = []
    while not (workdir / "stop").exists():
        view = store.current_view(GROUP)
        if view is None:
            time.sleep(0.01)
            continue
        entity = f"e{rng.randrange(PUBLISHED_ENTITIES):04d}"
        try:
            # Read just before the newest horizon: always inside the view read.
            snapshot = store.read_entity(GROUP, entity, view.horizon_ms - 1, SPANS)
        except (NoPublishedView, AsOfOutOfRange):
            continue  # a newer view moved the cutoff past this time: read again
        reads += 1
        if reads == 1:
            (workdir / "reading").write_text("1")
        seen = snapshot.view
        versions.add(seen.batch_version)
        bad = []
        if snapshot.batch_record != record_marker(seen.batch_version, entity):
            bad.append(f"record {snapshot.batch_record!r} with view {seen.batch_version}")
        for (_, start), partials in snapshot.tiles.items():
            if start < seen.cutoff_ms or partials != tile_marker(start):
                bad.append(f"tile {start} ({partials!r}) with cutoff {seen.cutoff_ms}")
        # ... and none missing: every tile from the cutoff on still counts.
        expected = {(DAY, C0 + k * DAY) for k in TILE_DAYS
                    if seen.cutoff_ms <= C0 + k * DAY < snapshot.as_of_ms}
        if set(snapshot.tiles) != expected:
            bad.append(f"tiles {sorted(s for _, s in snapshot.tiles)} with cutoff "
                       f"{seen.cutoff_ms}: missing {sorted(expected - set(snapshot.tiles))}")
        if seen.batch_version < last_version:
            bad.append(f"version {seen.batch_version} after {last_version}")
        if seen.batch_version > last_version:
            (workdir / "version.tmp").write_text(str(seen.batch_version))
            (workdir / "version.tmp").replace(workdir / "version")
        last_version = max(last_version, seen.batch_version)
        if bad:
            violations += 1
            problems.extend(bad[:3])
    (workdir / "reader.json").write_text(json.dumps(
        {"reads": reads, "violations": violations, "versions": sorted(versions),
         "problems": problems[:20]}))


def main(argv: list[str]) -> None:
    role, store_name, options_json, workdir = argv[:4]
    options = json.loads(options_json)
    pause = (int(argv[5]), int(argv[6])) if len(argv) > 4 and argv[4] == "--pause-at" else None
    if role == "writer":
        writer(store_name, options, Path(workdir), pause)
    else:
        reader(store_name, options, Path(workdir))


if __name__ == "__main__":
    main(sys.argv[1:])
