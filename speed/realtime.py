"""The speed layer's realtime tiles: Kafka ``events.raw`` -> the tile store,
exactly-once in effect.

One micro-batch, in the order it happens (``RealtimeTiles.process``):

1. Read the published batch view. If it changed since the last batch (a new
   cutoff T'), forget every entity state (they are seeded again from the
   store, whose switch already made tiles before T' stop counting) and drop
   the realtime tiles before T'.
2. Validate each record with the same ``EventValidator`` as the lander.
   Invalid ones are counted (by reason) and skipped: the lander owns the
   dead-letter topic. Events of other types are counted and skipped.
3. Seed the state of each entity touched for the first time: its ids row
   (``lamina.speed.seen``: the ids within the allowed lateness and the
   entity's newest event time), then the store's snapshot of the entity as
   of just after that newest event (``read_entity`` -> ``online_seed``).
4. Apply each event in arrival order: refused when its time is more than
   ``max_future_ms`` ahead of the wall clock (future), before the entity's
   cutoff (before_cutoff), an id the entity already took (duplicate), or
   more than the allowed lateness older than the entity's newest event time
   (late: ``OnlineState.add`` says so). The rest update the state.
5. Write the tiles the batch changed (each once, however many events it
   took: ``OnlineState.drain_changed_tiles``), the touched entities' ids
   rows and the batch's consumer offsets in one ``write_tiles``
   transaction. The store refuses offsets that go backwards.
6. Only then tell Kafka the group offsets (lag metrics; never read back).

On start and on every partition assignment the consumer seeks each
partition to the position the store holds for this consumer (never the
group's committed offsets), and entity states are dropped, so a state is
always the store's state plus the events read since. A crash anywhere
loses at most the batch not yet written, which is read again from the
store's offsets onto states seeded from the same store: the same events,
the same decisions (the ids row restores the newest event time, so late
stays late), the same tiles. A failed write resets the same way.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lamina.consumer import ConsumerLoop, consumer_gc
from lamina.errors import ConfigError
from lamina.logs import get_logger
from lamina.schemas.online import OnlineSeed, OnlineState
from lamina.schemas.validation import EventValidator, ValidEvent
from lamina.schemas.view_definitions import GroupBy, tile_start
from lamina.speed.microbatch import MicroBatch
from lamina.speed.seen import SEEN_SLOT, SeenIds, seen_group
from lamina.stores.base import OffsetsWentBackwards, PublishedView, StoreError, TileStore, now_ms
from lamina.stores.codec import TileCodec
from lamina.stores.lookup import realtime_spans
from lamina.stores.online import changed_tile_rows, online_seed

log = get_logger(__name__)


@dataclass
class SpeedStats:
    """Counters of one speed-layer process. Every consumed record ends in
    exactly one of applied, late, before_cutoff, duplicates, invalid,
    future, other_types -- or is read again after a reset or revocation."""

    consumed: int = 0
    applied: int = 0
    late: int = 0
    before_cutoff: int = 0
    duplicates: int = 0
    invalid: int = 0
    future: int = 0
    other_types: int = 0
    commits: int = 0
    tiles_written: int = 0
    seeds: int = 0
    cutoff_switches: int = 0
    resets: int = 0
    rejoins: int = 0
    invalid_reasons: dict[str, int] = field(default_factory=dict)
    cutoff_ms: int | None = None
    # Where the time goes (seconds): Kafka poll, apply (validate + seed +
    # update), store write.
    poll_s: float = 0.0
    apply_s: float = 0.0
    write_s: float = 0.0


def check_lateness(group: GroupBy, allowed_lateness_ms: int) -> None:
    """ConfigError unless every tile a late-but-allowed event can touch is
    one the store's snapshot gives back (``read_entity`` reads, per hop, the
    longest window at that hop): the lateness is at most the shortest
    window span of the view."""
    spans = [s for s in realtime_spans(group).values() if s is not None]
    if allowed_lateness_ms < 0:
        raise ConfigError(f"[speed] allowed_lateness_ms must be >= 0, got {allowed_lateness_ms}")
    if spans and allowed_lateness_ms > min(spans):
        raise ConfigError(
            f"[speed] allowed_lateness_ms {allowed_lateness_ms} is longer than the shortest "
            f"window span of view {group.name!r} ({min(spans)} ms): a late event could update "
            "a tile the restarted speed layer does not reload; lower it (later events are "
            "counted by the next batch run)")


@dataclass
class _Entity:
    state: OnlineState
    seen: SeenIds


class RealtimeTiles:
    """The processing step and its store protocol (steps 1-5 of the module
    docstring) for one view ``group``, without Kafka: ``process(records,
    positions)`` applies one micro-batch and writes it with ``positions``
    under ``consumer``'s name. Holds per-entity state between batches;
    ``reset()`` forgets it (after a failed write or a rebalance)."""

    def __init__(self, store: TileStore, group: GroupBy, *, consumer: str,
                 validator: EventValidator, allowed_lateness_ms: int,
                 max_future_ms: int = 86_400_000, max_entities: int = 200_000,
                 wall_ms: Callable[[], int] = now_ms) -> None:
        check_lateness(group, allowed_lateness_ms)
        self.store = store
        self.group = group
        self.consumer = consumer
        self.validator = validator
        self.allowed_lateness_ms = allowed_lateness_ms
        self.max_future_ms = max_future_ms
        if max_entities < 1:
            raise ConfigError(f"[speed] max_entities must be >= 1, got {max_entities}")
        self.max_entities = max_entities
        self.wall_ms = wall_ms
        self.codec = TileCodec(group)
        self.spans = realtime_spans(group)
        self.stats = SpeedStats()
        self.view: PublishedView | None = None
        self._generation: int | None = None
        self._view_read = False
        # Least recently touched first (a touched entity moves to the end).
        self._entities: dict[str, _Entity] = {}

    # --- state ---------------------------------------------------------------
    def reset(self) -> None:
        """Forget every entity state: each is seeded again from the store."""
        self._entities.clear()
        self._view_read = False

    def entities(self) -> int:
        return len(self._entities)

    def refresh_view(self) -> None:
        """Step 1: notice a newly published batch view."""
        view = self.store.current_view(self.group.name)
        generation = None if view is None else view.generation
        if self._view_read and generation == self._generation:
            return
        if self._view_read:
            self.stats.cutoff_switches += 1
            log.info("batch view switched, re-seeding from the store", group=self.group.name,
                     cutoff_ms=None if view is None else view.cutoff_ms,
                     batch_version=None if view is None else view.batch_version,
                     entities_dropped=len(self._entities))
        self._entities.clear()
        self.view, self._generation, self._view_read = view, generation, True
        self.stats.cutoff_ms = None if view is None else view.cutoff_ms
        if view is not None:
            try:  # no reader counts them any more; this only frees space
                dropped = self.store.drop_realtime_before(self.group.name, view.cutoff_ms)
            except StoreError as exc:
                log.warning("could not drop realtime tiles before the cutoff",
                            group=self.group.name, cutoff_ms=view.cutoff_ms, error=exc)
            else:
                if dropped:
                    log.info("realtime tiles before the cutoff dropped", group=self.group.name,
                             cutoff_ms=view.cutoff_ms, tiles=dropped)

    def _seed(self, entity: str) -> _Entity:
        """Step 3 for one entity."""
        group, lateness = self.group, self.allowed_lateness_ms
        stored = self.store.read_tiles(seen_group(group), entity, [SEEN_SLOT])
        seen = SeenIds.decode(stored.get(SEEN_SLOT), lateness)
        newest = seen.newest_ms
        view = self.view
        seed: OnlineSeed | None = None
        if view is not None:
            as_of = view.cutoff_ms if newest is None else max(newest + 1, view.cutoff_ms)
            if as_of < view.horizon_ms:
                snapshot = self.store.read_entity(group.name, entity, as_of, self.spans)
                seed = online_seed(group, snapshot, seeded_through_ms=newest, codec=self.codec)
            else:  # the batch view is too old to answer: its tiles, no batch part
                seed = self._tiles_seed(entity, view.cutoff_ms, view.horizon_ms, newest)
        elif newest is not None:
            seed = self._tiles_seed(entity, 0, None, newest)
        self.stats.seeds += 1
        return _Entity(OnlineState(group, entity, allowed_lateness_ms=lateness, seed=seed), seen)

    def _tiles_seed(self, entity: str, cutoff_ms: int, horizon_ms: int | None,
                    newest: int) -> OnlineSeed:
        """A seed of the stored tiles an allowed event can still change
        (those from ``newest - lateness`` on), without a batch part: enough
        to go on writing exact tiles, not to answer features (the state
        refuses queries before ``newest + 1``; the scorer needs a view)."""
        lowest = max(newest - self.allowed_lateness_ms, cutoff_ms)
        slots = [(hop, start) for hop in self.group.hops()
                 for start in range(tile_start(lowest, hop), newest + 1, hop)]
        tiles: dict[int, dict[int, Any]] = {}
        for (hop, start), data in self.store.read_tiles(self.group.name, entity, slots).items():
            tiles.setdefault(hop, {})[start] = self.codec.decode(hop, data)
        return OnlineSeed(cutoff_ms=cutoff_ms, horizon_ms=horizon_ms, realtime=tiles,
                          seeded_through_ms=newest, answers_from_ms=newest + 1)

    # --- one micro-batch -------------------------------------------------------
    def process(self, records: Sequence[tuple[str, int, int, bytes]],
                positions: dict[tuple[str, int], int]) -> int:
        """Apply ``records`` (``(topic, partition, offset, value)``, arrival
        order) and write the changed tiles with ``positions`` in one
        transaction; returns the number of tile rows written. On any
        exception the entity states are forgotten (``reset``) before it
        propagates, so nothing half-applied survives."""
        try:
            return self._process(records, positions)
        except BaseException:
            self.reset()
            self.stats.resets += 1
            raise

    def _process(self, records: Sequence[tuple[str, int, int, bytes]],
                 positions: dict[tuple[str, int], int]) -> int:
        began = time.perf_counter()
        stats, group = self.stats, self.group
        self.refresh_view()
        validate = self.validator.validate
        events: list[ValidEvent] = []
        reasons: Counter[str] = Counter()  # invalid records by reason code
        counts: Counter[str] = Counter()  # SpeedStats field -> records
        for _topic, _partition, _offset, value in records:
            result = validate(value)
            if type(result) is not ValidEvent:
                reasons[getattr(result, "code", "invalid")] += 1
                continue
            if result.event_type != group.event_type:
                counts["other_types"] += 1
                continue
            events.append(result)
        entities = self._entities
        future_limit = self.wall_ms() + self.max_future_ms
        touched: set[str] = set()
        for event in events:
            key, event_time = event.entity_key, event.event_time_ms
            if event_time > future_limit:
                counts["future"] += 1
                continue
            entity = entities.pop(key, None)
            if entity is None:
                entity = self._seed(key)
            entities[key] = entity
            cutoff = entity.state.cutoff_ms
            if cutoff is not None and event_time < cutoff:
                counts["before_cutoff"] += 1
                continue
            if event.event_id in entity.seen:
                counts["duplicates"] += 1
                continue
            payload = event.payload
            if payload.get("event_time") != event_time:
                payload = {**payload, "event_time": event_time}
            try:
                applied = entity.state.add(payload)
            except ValueError as exc:  # a value the aggregation refuses: never stall
                reasons["not_aggregable"] += 1
                log.warning("event not aggregable, skipped", event_id=event.event_id,
                            entity=key, error=exc)
                continue
            if not applied:
                counts["late"] += 1
                continue
            entity.seen.add(event.event_id, event_time)
            touched.add(key)
            counts["applied"] += 1
        rows = []
        for key in sorted(touched):
            entity = entities[key]
            rows.extend(changed_tile_rows(group, key, entity.state.drain_changed_tiles(),
                                          codec=self.codec))
            rows.append(entity.seen.row(group, key))
            entity.seen.changed = False
        applied_at = time.perf_counter()
        stats.apply_s += applied_at - began
        written = self.store.write_tiles(rows, consumer=self.consumer, offsets=positions)
        stats.write_s += time.perf_counter() - applied_at
        # Counted once the batch is durable: a reset batch is read again.
        for name, n in counts.items():
            setattr(stats, name, getattr(stats, name) + n)
        if len(entities) > self.max_entities:
            # Everything is stored: a dropped state is seeded again, exactly,
            # when its entity comes back (as after a restart).
            for key in list(entities)[:len(entities) - self.max_entities]:
                del entities[key]
        stats.invalid += sum(reasons.values())
        for code, n in reasons.items():
            stats.invalid_reasons[code] = stats.invalid_reasons.get(code, 0) + n
        stats.commits += 1
        stats.tiles_written += written - len(touched)
        log.info("micro-batch written", group=group.name, records=len(records),
                 applied=counts["applied"], late=counts["late"],
                 before_cutoff=counts["before_cutoff"], duplicates=counts["duplicates"],
                 invalid=sum(reasons.values()), rows=written,
                 offsets=",".join(f"{p}:{o}" for (_, p), o in sorted(positions.items())))
        return written


class SpeedLayer:
    """The speed layer's loop on the core's ``ConsumerLoop`` (subscribe,
    rebalance, rejoin watchdog, caught-up, SIGTERM): polls into a
    ``MicroBatch`` and hands each due batch to ``RealtimeTiles.process``.
    ``run()`` returns when stopped, after ``max_events`` records, or when
    caught up and idle for ``idle_exit_s``; a stop finishes the batch."""

    def __init__(self, *, consumer: Any, topic: str, tiles: RealtimeTiles,
                 batch_max_events: int = 5_000, batch_max_wait_s: float = 0.2,
                 rejoin_after_s: float = 15.0) -> None:
        self.consumer = consumer
        self.topic = topic
        self.tiles = tiles
        self.stats = tiles.stats
        self._batch = MicroBatch(batch_max_events, batch_max_wait_s)
        self.loop = ConsumerLoop(consumer, topic, on_assigned=self.on_partitions_assigned,
                                 on_revoked=self.on_partitions_revoked,
                                 name=f"speed:{topic}", rejoin_after_s=rejoin_after_s)

    # --- partition ownership -------------------------------------------------
    def _resume(self, partitions: Iterable[Any]) -> None:
        """Seek ``partitions`` to the positions the store holds for this
        consumer (the beginning where it holds none)."""
        partitions = list(partitions)
        stored = self.tiles.store.read_offsets(self.tiles.consumer)
        for tp in partitions:
            position = stored.get((tp.topic, tp.partition))
            log.info("partition resumed from the store", topic=tp.topic, partition=tp.partition,
                     position="beginning" if position is None else position)
        self.loop.seek_all(partitions, lambda tp: stored.get((tp.topic, tp.partition)))

    def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        assigned = list(assigned)
        self._resume(assigned)
        # Another member may have written these entities' tiles meanwhile.
        self.tiles.reset()

    def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        tps = [(tp.topic, tp.partition) for tp in revoked]
        self._batch.drop_partitions(tps)
        for topic, partition in tps:
            log.info("partition revoked", topic=topic, partition=partition)

    # --- the loop --------------------------------------------------------------
    def stop(self, *_: Any) -> None:
        self.loop.stop()

    def install_signal_handlers(self) -> None:
        self.loop.install_signal_handlers()

    def run(self, *, idle_exit_s: float | None = None, max_events: int | None = None,
            on_commit: Callable[[SpeedStats], None] | None = None) -> SpeedStats:
        """Consume until stopped, ``max_events`` records or idle and caught
        up for ``idle_exit_s``; write what is pending and close."""
        with consumer_gc():
            return self._run(idle_exit_s=idle_exit_s, max_events=max_events,
                             on_commit=on_commit)

    def _run(self, *, idle_exit_s: float | None, max_events: int | None,
             on_commit: Callable[[SpeedStats], None] | None) -> SpeedStats:
        loop, stats, batch = self.loop, self.stats, self._batch
        loop.subscribe()
        last_record_at = time.monotonic()
        try:
            while not loop.stopped:
                began = time.perf_counter()
                polled = loop.poll(timeout_ms=100, max_records=batch.max_events)
                stats.poll_s += time.perf_counter() - began
                stats.rejoins = loop.rejoins
                now = time.monotonic()
                for tp, records in polled.items():
                    batch.add(tp.topic, tp.partition, records, now)
                    stats.consumed += len(records)
                    last_record_at = now
                if batch.due(now):
                    self._write()
                    if on_commit:
                        on_commit(stats)
                if max_events is not None and stats.consumed >= max_events:
                    break
                if idle_exit_s is not None and loop.idle_and_caught_up(
                        last_record_at, idle_exit_s, now):
                    break
            if len(batch):
                self._write()
        finally:
            loop.close()
        return stats

    def _write(self) -> None:
        records, positions = self._batch.take()
        try:
            self.tiles.process(records, positions)
        except OffsetsWentBackwards as exc:
            # Another member wrote these partitions further: this one is a
            # zombie of an old assignment. Start again from the store.
            log.warning("the store is ahead of this consumer, resuming from it", error=exc)
            self._resume(self.consumer.assignment())
            return
        except BaseException:
            # Nothing of the batch is stored; read it again if we go on.
            self._resume(self.consumer.assignment())
            raise
        try:  # lag metrics only; the store is the source of truth
            self.consumer.commit_async(offsets=_group_offsets(positions))
        except Exception as exc:  # noqa: BLE001 - metrics must not stop the speed layer
            log.debug("group offset commit failed", error=exc)


def _group_offsets(positions: dict[tuple[str, int], int]) -> dict[Any, Any]:
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    return {TopicPartition(topic, partition): OffsetAndMetadata(position, "", -1)
            for (topic, partition), position in positions.items()}
