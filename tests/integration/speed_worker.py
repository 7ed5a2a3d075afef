"""A speed-layer process the kill -9 tests start, which kills itself at a
chosen point of the commit protocol.

    python -m tests.integration.speed_worker BOOTSTRAP TOPIC STORE KILL_AFTER

Runs ``SpeedLayer`` (the card views, consumer group ``speed-<TOPIC>``,
static membership so a restart takes the partitions back at once) on the
SQLite store at path ``STORE``, or the Redis store at ``STORE`` when it is
a ``redis://`` URL, until caught up and idle for 3 s. With ``KILL_AFTER``
= n > 0 it sends itself SIGKILL right after its n-th ``write_tiles``
committed: after the store write, before the group-offset commit and the
next poll -- the moment where a consumer that trusted the group's offsets
would read the batch again.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from lamina import kafkaio
from lamina.schemas.card_views import CARD_VIEWS
from lamina.schemas.validation import EventValidator
from lamina.speed.realtime import RealtimeTiles, SpeedLayer
from lamina.stores.redis import RedisTileStore
from lamina.stores.sqlite import SqliteTileStore

LATENESS_MS = 30 * 60_000


class _KillAfterWrite:
    """SIGKILL right after the ``kill_after``-th committed ``write_tiles``."""

    kill_after = 0
    writes = 0

    def write_tiles(self, rows: Any, *, consumer: str | None = None,
                    offsets: Any = None, scores: Any = None) -> int:
        written = super().write_tiles(  # type: ignore[misc]
            rows, consumer=consumer, offsets=offsets, scores=scores)
        self.writes += 1
        if self.writes == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return int(written)


class KillAfterWrite(_KillAfterWrite, SqliteTileStore):
    def __init__(self, path: str, kill_after: int) -> None:
        super().__init__(path)
        self.kill_after = kill_after


class RedisKillAfterWrite(_KillAfterWrite, RedisTileStore):
    def __init__(self, url: str, kill_after: int) -> None:
        super().__init__(url)
        self.kill_after = kill_after


def main(bootstrap: str, topic: str, db: str, kill_after: str) -> int:
    store: SqliteTileStore | RedisTileStore
    if db.startswith("redis://"):
        store = RedisKillAfterWrite(db, int(kill_after))
    else:
        store = KillAfterWrite(db, int(kill_after))
    group = f"speed-{topic}"
    tiles = RealtimeTiles(store, CARD_VIEWS, consumer=group, validator=EventValidator(),
                          allowed_lateness_ms=LATENESS_MS)
    consumer = kafkaio.make_consumer(bootstrap, group_id=group, group_instance_id="worker",
                                     session_timeout_ms=6000)
    layer = SpeedLayer(consumer=consumer, topic=topic, tiles=tiles, batch_max_events=700,
                       batch_max_wait_s=0.1)
    stats = layer.run(idle_exit_s=3.0)
    store.close()
    print(stats.applied, stats.duplicates, stats.invalid, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
