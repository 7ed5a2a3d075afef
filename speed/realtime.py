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
   With scoring (``StreamScoring``), each applied query event (the
   contract's query event type) is given its features *before* it is
   added -- ``features_before(event_time)``, strictly before, so neither
   the event nor others at the same millisecond are in them -- and after
   the loop the batch's (event, features) are scored in one ``score_batch``
   call with the champion ``ChampionHolder.check()`` gave at the start of
   the batch, and the score records are produced to ``scores.v1`` and
   flushed (``lamina.speed.sink``). Not scored, counted: no champion yet
   (``unscored_no_champion``); a state without a batch part -- no view
   published, or the event at or past its horizon -- whose features would
   be partial (``unscored_no_batch_view``); a time the state cannot answer
   exactly, e.g. an allowed-late event older than what a restarted state
   was seeded through (``unscored_out_of_range``); refused by the scorer
   (``unscored_refused``). Late, before-cutoff, duplicate and invalid
   events are not scored.
5. Write the tiles the batch changed (each once, however many events it
   took: ``OnlineState.drain_changed_tiles``), the touched entities' ids
   rows and the batch's consumer offsets in one ``write_tiles``
   transaction. The store refuses offsets that go backwards.
6. Only then tell Kafka the group offsets (lag metrics; never read back).

On start and on every partition assignment the consumer seeks each
partition to the position the store holds for this consumer (never the
group's committed offsets), and the states of entities from other
partitions, or from a partition whose stored position is not the one this
process last wrote there (another member wrote it meanwhile), are dropped
(``RealtimeTiles.reassigned``), so a state is always the store's state
plus the events read since. A rebalance that gives a partition back where
this process left it keeps its states: they are what a re-seed would
give, and more -- a re-seeded state cannot answer an allowed-late event
older than what it was seeded through (``unscored_out_of_range``), one
that never left can. A crash anywhere
loses at most the batch not yet written, which is read again from the
store's offsets onto states seeded from the same store: the same events,
the same decisions (the ids row restores the newest event time, so late
stays late), the same tiles. A failed write resets the same way.

Scores are produced *before* the store transaction, so they are
at-least-once: a crash after the produce and before the write replays the
batch and scores its events again (same features, same model unless the
champion moved meanwhile); readers keep one record per ``event_id`` (and
model version). A batch whose offsets are stored always has its scores on
the topic.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lamina.consumer import ConsumerLoop, consumer_gc
from lamina.errors import ConfigError
from lamina.logs import get_logger
from lamina.schemas.aggregations import FeatureValue
from lamina.schemas.contract import FeatureContract
from lamina.schemas.online import OnlineSeed, OnlineState, QueryOutOfRange
from lamina.schemas.validation import EventValidator, ValidEvent
from lamina.schemas.view_definitions import GroupBy, tile_start
from lamina.speed.metrics import SpeedMetrics, consumer_lag
from lamina.speed.microbatch import MicroBatch
from lamina.speed.models import Champion
from lamina.speed.scoring import score_batch
from lamina.speed.seen import SEEN_SLOT, SeenIds, seen_group
from lamina.speed.sink import ScoreSink
from lamina.stores.base import (
    OffsetsWentBackwards,
    PublishedView,
    ScoreRow,
    StoreError,
    TileStore,
    now_ms,
    score_rows,
)
from lamina.stores.codec import TileCodec
from lamina.stores.lookup import realtime_spans
from lamina.stores.online import changed_tile_rows, online_seed

log = get_logger(__name__)

#: The longest a poll waits for records: how late a stop, the idle exit and
#: the metrics are noticed on a quiet topic. An open micro-batch shortens it
#: to its own wait (``MicroBatch.poll_timeout_ms``).
POLL_MAX_MS = 10


@dataclass
class SpeedStats:
    """Counters of one speed-layer process. Every consumed record ends in
    exactly one of applied, late, before_cutoff, duplicates, invalid,
    future, other_types -- or is read again after a reset or revocation,
    and then counted in ``reread`` too (``consumed - reread`` records were
    taken into written batches)."""

    consumed: int = 0
    #: Records consumed and then dropped unwritten, to be read again: those
    #: of a revoked partition's open batch, and a batch the store refused.
    reread: int = 0
    applied: int = 0
    late: int = 0
    before_cutoff: int = 0
    duplicates: int = 0
    invalid: int = 0
    future: int = 0
    other_types: int = 0
    # Scoring (applied query events end in exactly one of these).
    scored: int = 0
    unscored_no_champion: int = 0
    unscored_no_batch_view: int = 0
    unscored_out_of_range: int = 0
    unscored_refused: int = 0
    model_version: int | None = None  # of the last scored batch
    commits: int = 0
    tiles_written: int = 0
    seeds: int = 0
    cutoff_switches: int = 0
    resets: int = 0
    rejoins: int = 0
    invalid_reasons: dict[str, int] = field(default_factory=dict)
    cutoff_ms: int | None = None
    # Where the time goes (seconds): Kafka poll, apply (validate + seed +
    # update + drain), store write.
    poll_s: float = 0.0
    apply_s: float = 0.0
    # Parts of apply_s: validating the records, seeding entity states from
    # the store, draining and encoding the changed tiles (the rest of
    # apply_s is the online state's features_before and add, with dedup).
    validate_s: float = 0.0
    seed_s: float = 0.0
    drain_s: float = 0.0
    write_s: float = 0.0
    score_s: float = 0.0  # score_batch + producing the records


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


class ChampionSource(Protocol):
    def check(self) -> Champion | None:
        """The champion to score the next micro-batch with (never blocks)."""


@dataclass
class StreamScoring:
    """What scoring needs: the feature ``contract`` (its only view must be
    the tiles' view), where the champion comes from (a ``ChampionHolder``)
    and where the score records go."""

    contract: FeatureContract
    champions: ChampionSource
    sink: ScoreSink


@dataclass
class _Entity:
    state: OnlineState
    seen: SeenIds
    # False when seeded for tiles only (no published view, or one whose
    # horizon had passed): its features would lack the batch part.
    batch_part: bool = True
    # The (topic, partition) its events were last read from.
    partition: tuple[str, int] | None = None


class RealtimeTiles:
    """The processing step and its store protocol (steps 1-5 of the module
    docstring) for one view ``group``, without Kafka: ``process(records,
    positions)`` applies one micro-batch and writes it with ``positions``
    under ``consumer``'s name. Holds per-entity state between batches;
    ``reset()`` forgets it (after a failed write or a rebalance)."""

    def __init__(self, store: TileStore, group: GroupBy, *, consumer: str,
                 validator: EventValidator, allowed_lateness_ms: int,
                 max_future_ms: int = 86_400_000, max_entities: int = 200_000,
                 scoring: StreamScoring | None = None,
                 wall_ms: Callable[[], int] = now_ms) -> None:
        check_lateness(group, allowed_lateness_ms)
        if scoring is not None and tuple(scoring.contract.groups) != (group,):
            raise ConfigError(
                f"contract {scoring.contract.name!r} reads views "
                f"{[g.name for g in scoring.contract.groups]}, the speed layer keeps only "
                f"{group.name!r}; score with a contract over this one view")
        self.scoring = scoring
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
        self._view_read = False  # False again after reset(): re-read it
        self._ever_read = False
        # Least recently touched first (a touched entity moves to the end).
        self._entities: dict[str, _Entity] = {}
        # Per (topic, partition), the position this process last stored.
        self._written: dict[tuple[str, int], int] = {}

    # --- state ---------------------------------------------------------------
    def reset(self) -> None:
        """Forget every entity state: each is seeded again from the store."""
        self._entities.clear()
        self._view_read = False

    def reassigned(self, assigned: Iterable[tuple[str, int]],
                   stored: dict[tuple[str, int], int]) -> int:
        """After a partition assignment: keep the states of entities whose
        partition is ``assigned`` and whose ``stored`` position is the one
        this process last wrote there; drop the rest (another member may
        have written their tiles since). Returns how many were dropped.

        Sound because every write stores its batch's offsets in the same
        transaction as its tiles and the store refuses offsets that go
        backwards: a write by anyone else on a partition moves its stored
        position past this process's."""
        kept = {p for p in assigned if stored.get(p) == self._written.get(p)}
        entities = self._entities
        dropped = [key for key, entity in entities.items() if entity.partition not in kept]
        for key in dropped:
            del entities[key]
        return len(dropped)

    def entities(self) -> int:
        return len(self._entities)

    def refresh_view(self) -> None:
        """Step 1: notice a newly published batch view."""
        view = self.store.current_view(self.group.name)
        generation = None if view is None else view.generation
        if self._view_read and generation == self._generation:
            return
        # A switch is a generation other than the last one read, even when a
        # reset (a rebalance) came between them and forced this re-read.
        if self._ever_read and generation != self._generation:
            self.stats.cutoff_switches += 1
            log.info("batch view switched, re-seeding from the store", group=self.group.name,
                     cutoff_ms=None if view is None else view.cutoff_ms,
                     batch_version=None if view is None else view.batch_version,
                     entities_dropped=len(self._entities))
        self._entities.clear()
        self.view, self._generation, self._view_read = view, generation, True
        self._ever_read = True
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
        batch_part = False
        if view is not None:
            as_of = view.cutoff_ms if newest is None else max(newest + 1, view.cutoff_ms)
            if as_of < view.horizon_ms:
                snapshot = self.store.read_entity(group.name, entity, as_of, self.spans)
                seed = online_seed(group, snapshot, seeded_through_ms=newest, codec=self.codec)
                batch_part = True
            elif newest is not None:  # the view is too old to answer: its tiles, no batch part
                seed = self._tiles_seed(entity, view.cutoff_ms, view.horizon_ms, newest)
        elif newest is not None:
            seed = self._tiles_seed(entity, 0, None, newest)
        self.stats.seeds += 1
        return _Entity(OnlineState(group, entity, allowed_lateness_ms=lateness, seed=seed), seen,
                       batch_part)

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
                positions: dict[tuple[str, int], int],
                produced_at_ms: Sequence[int] | None = None) -> int:
        """Apply ``records`` (``(topic, partition, offset, value)``, arrival
        order), score the applied query events (with scoring; their scores
        are produced before the store write) and write the changed tiles
        with ``positions`` in one transaction; returns the number of tile
        rows written. ``produced_at_ms[i]``: record i's Kafka timestamp
        (None: the wall clock now, i.e. no latency measured). On any
        exception the entity states are forgotten (``reset``) before it
        propagates, so nothing half-applied survives."""
        if produced_at_ms is not None and len(produced_at_ms) != len(records):
            raise ValueError(f"{len(records)} records but {len(produced_at_ms)} timestamps")
        try:
            return self._process(records, positions, produced_at_ms)
        except BaseException:
            self.reset()
            self.stats.resets += 1
            raise

    def _process(self, records: Sequence[tuple[str, int, int, bytes]],
                 positions: dict[tuple[str, int], int],
                 produced_at_ms: Sequence[int] | None) -> int:
        began = time.perf_counter()
        stats, group, scoring = self.stats, self.group, self.scoring
        self.refresh_view()
        view = self.view
        champion = None if scoring is None else scoring.champions.check()
        query_type = None if scoring is None else scoring.contract.query_event_type
        if produced_at_ms is None:
            produced_at_ms = [self.wall_ms()] * len(records)
        validate = self.validator.validate
        events: list[tuple[ValidEvent, int, tuple[str, int]]] = []
        items: list[tuple[ValidEvent, dict[str, FeatureValue]]] = []
        items_produced: list[int] = []
        reasons: Counter[str] = Counter()  # invalid records by reason code
        counts: Counter[str] = Counter()  # SpeedStats field -> records
        for (topic, partition, _offset, value), produced in zip(records, produced_at_ms,
                                                                 strict=True):
            result = validate(value)
            if type(result) is not ValidEvent:
                reasons[getattr(result, "code", "invalid")] += 1
                continue
            if result.event_type != group.event_type:
                counts["other_types"] += 1
                continue
            events.append((result, produced, (topic, partition)))
        validated = time.perf_counter()
        stats.validate_s += validated - began
        seed_s = 0.0
        entities = self._entities
        future_limit = self.wall_ms() + self.max_future_ms
        touched: set[str] = set()
        for event, produced, source in events:
            key, event_time = event.entity_key, event.event_time_ms
            if event_time > future_limit:
                counts["future"] += 1
                continue
            entity = entities.pop(key, None)
            if entity is not None and entity.partition != source and key not in touched:
                # The entity's events come from another partition now (the
                # topic gained partitions): what its state missed was
                # written by whoever read that partition. Seeded again.
                entity = None
            if entity is None:
                seeding = time.perf_counter()
                entity = self._seed(key)
                seed_s += time.perf_counter() - seeding
            entity.partition = source
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
            # Read before adding: features strictly before the event, so
            # neither it nor another event at the same millisecond is in them.
            features: dict[str, FeatureValue] | None = None
            unscored = ""
            if query_type is not None and event.event_type == query_type:
                if champion is None:
                    unscored = "unscored_no_champion"
                elif view is None or not entity.batch_part or event_time >= view.horizon_ms:
                    unscored = "unscored_no_batch_view"
                else:
                    try:
                        features = entity.state.features_before(event_time)
                    except QueryOutOfRange:  # counted below if the event is applied
                        unscored = "unscored_out_of_range"
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
            if features is not None:
                items.append((event, features))
                items_produced.append(produced)
            elif unscored:
                counts[unscored] += 1
                if unscored == "unscored_out_of_range":
                    log.debug("event not scored: its features cannot be answered exactly",
                              event_id=event.event_id, entity=key, event_time=event_time)
        stats.seed_s += seed_s
        draining = time.perf_counter()
        rows = []
        for key in sorted(touched):
            entity = entities[key]
            rows.extend(changed_tile_rows(group, key, entity.state.drain_changed_tiles(),
                                          codec=self.codec))
            rows.append(entity.seen.row(group, key))
            entity.seen.changed = False
        applied_at = time.perf_counter()
        stats.drain_s += applied_at - draining
        stats.apply_s += applied_at - began
        scored_version: int | None = None
        stored_scores: list[ScoreRow] = []
        if items and scoring is not None and champion is not None and view is not None:
            scored = score_batch(items, contract=scoring.contract, champion=champion,
                                 produced_at_ms=items_produced,
                                 batch_version=view.batch_version, batch_cutoff=view.cutoff_ms)
            # Encoded once, for the topic and the store alike. Before the
            # store write: a stored batch always has its scores on the topic
            # (at-least-once; module docstring).
            stored_scores = score_rows(scored.records)
            scoring.sink.send(scored.records, [row.record for row in stored_scores])
            counts["scored"] += len(scored.records)
            counts["unscored_refused"] += len(scored.refused)
            scored_version = scored.model_version
            scored_at = time.perf_counter()
            stats.score_s += scored_at - applied_at
            applied_at = scored_at
        written = self.store.write_tiles(rows, consumer=self.consumer, offsets=positions,
                                         scores=stored_scores)  # serving's latest per entity
        self._written.update(positions)
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
        if scored_version is not None:
            stats.model_version = scored_version
        stats.commits += 1
        stats.tiles_written += written - len(touched)
        log.info("micro-batch written", group=group.name, records=len(records),
                 applied=counts["applied"], late=counts["late"],
                 before_cutoff=counts["before_cutoff"], duplicates=counts["duplicates"],
                 invalid=sum(reasons.values()), rows=written, scored=counts["scored"],
                 model_version=scored_version,
                 offsets=",".join(f"{p}:{o}" for (_, p), o in sorted(positions.items())))
        return written


class SpeedLayer:
    """The speed layer's loop on the core's ``ConsumerLoop`` (subscribe,
    rebalance, rejoin watchdog, caught-up, SIGTERM): polls into a
    ``MicroBatch`` and hands each due batch to ``RealtimeTiles.process``.
    ``run()`` returns when stopped, after ``max_events`` records, or when
    caught up and idle for ``idle_exit_s``; a stop finishes the batch."""

    def __init__(self, *, consumer: Any, topic: str, tiles: RealtimeTiles,
                 batch_max_events: int = 5_000, batch_max_wait_s: float = 0.005,
                 poll_max_ms: int = POLL_MAX_MS, rejoin_after_s: float = 15.0,
                 metrics: SpeedMetrics | None = None) -> None:
        self.consumer = consumer
        self.topic = topic
        self.tiles = tiles
        self.stats = tiles.stats
        self._batch = MicroBatch(batch_max_events, batch_max_wait_s)
        self.poll_max_ms = poll_max_ms
        self.loop = ConsumerLoop(consumer, topic, on_assigned=self.on_partitions_assigned,
                                 on_revoked=self.on_partitions_revoked,
                                 name=f"speed:{topic}", rejoin_after_s=rejoin_after_s)
        self.metrics = metrics
        self._assign_error: StoreError | None = None
        if metrics is not None:
            metrics.lag_source = lambda: consumer_lag(consumer)

    # --- partition ownership -------------------------------------------------
    def _resume(self, partitions: Iterable[Any]) -> dict[tuple[str, int], int]:
        """Seek ``partitions`` to the positions the store holds for this
        consumer (the beginning where it holds none); returns them."""
        partitions = list(partitions)
        stored = self.tiles.store.read_offsets(self.tiles.consumer)
        for tp in partitions:
            position = stored.get((tp.topic, tp.partition))
            log.info("partition resumed from the store", topic=tp.topic, partition=tp.partition,
                     position="beginning" if position is None else position)
        self.loop.seek_all(partitions, lambda tp: stored.get((tp.topic, tp.partition)))
        return stored

    def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        assigned = list(assigned)
        try:
            stored = self._resume(assigned)
        except StoreError as exc:
            # kafka-python would wrap it in a KafkaError ("User rebalance
            # callback throws an error"), which no caller can tell from a
            # broker fault: kept, and raised by the loop as it is, before
            # any record of this assignment is used.
            self._assign_error = exc
            self.tiles.reset()
            return
        # Another member may have written some of these entities' tiles
        # meanwhile: their states go; those of partitions given back where
        # this process left them stay.
        dropped = self.tiles.reassigned([(tp.topic, tp.partition) for tp in assigned], stored)
        log.info("partitions assigned", partitions=len(assigned), states_dropped=dropped,
                 states_kept=self.tiles.entities())

    def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        tps = [(tp.topic, tp.partition) for tp in revoked]
        self.stats.reread += self._batch.drop_partitions(tps)
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
                # No longer than the open batch may still wait: it is
                # written on time even when no record arrives.
                polled = loop.poll(timeout_ms=batch.poll_timeout_ms(time.monotonic(),
                                                                    self.poll_max_ms),
                                   max_records=batch.max_events)
                stats.poll_s += time.perf_counter() - began
                if self._assign_error is not None:
                    error, self._assign_error = self._assign_error, None
                    raise error
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
                if self.metrics is not None:
                    self.metrics.tick()
                if idle_exit_s is not None and loop.idle_and_caught_up(
                        last_record_at, idle_exit_s, now):
                    break
            if len(batch):
                self._write()
        finally:
            if self.metrics is not None:
                self.metrics.tick(force=True)  # the last state, lag read while it can be
                self.metrics.lag_source = None
            loop.close()
        return stats

    def _write(self) -> None:
        records, produced_at_ms, positions = self._batch.take_timed()
        try:
            self.tiles.process(records, positions, produced_at_ms)
        except OffsetsWentBackwards as exc:
            # Another member wrote these partitions further: this one is a
            # zombie of an old assignment. Start again from the store.
            log.warning("the store is ahead of this consumer, resuming from it", error=exc)
            self.stats.reread += len(records)
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
