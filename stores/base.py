"""The tile store interface: a few methods over typed rows.

Every layer meets the tile store here; none knows which implementation it
has (``lamina.stores.open_store`` picks one by its short name). What the
store keeps, per view (a ``GroupBy``, by name):

* **Realtime tiles** -- ``TileRow``: one encoded partial per (entity, hop,
  tile_start), written by the speed layer for event times at or after the
  published cutoff, together with its Kafka consumer offsets in one
  transaction (``write_tiles``).
* **The published batch view** -- ``PublishedView``: cutoff ``T``, horizon
  ``H`` (the view answers queries at ``T <= t < H``), the batch layer's
  version and lineage; plus one ``BatchRecord`` per entity (the entity's
  batch tiles collapsed for ``[T, H)``, see ``lamina.stores.lookup``).
  ``publish_batch`` writes the records out of sight, then switches the
  view in one small transaction: a reader sees the old view and its
  records, or the new view and its records, never a mix.
* **Consumer offsets** -- per consumer name and (topic, partition): the
  position the writer stored with its last tiles (``read_offsets``).
* **Latest scores** -- per entity, the newest ``scores_per_entity`` score
  records (``lamina.schemas.scores.ScoreRecord``, newest event time
  first) the speed layer wrote with its tiles (``write_tiles(...,
  scores=...)``), for serving's ``latest_scores``. A record is keyed by
  (entity, event_id, model_version): a replayed batch rewrites the same
  keys, so an event scored again by the same version is kept once.

Units and shapes: every time is epoch milliseconds UTC (an ``int``); hops
and tile starts follow ``lamina.schemas.view_definitions`` (a tile of hop ``h`` covers
``[tile_start, tile_start + h)``, ``tile_start`` a multiple of ``h``).
Partials and batch records are opaque ``bytes`` to the store; their format
is ``lamina.stores.codec`` and ``lamina.stores.lookup``'s business.

Guarantees every implementation gives (``tests/integration/
test_tile_store_contract.py`` holds both to them):

1. ``write_tiles`` is one transaction: all its tiles and offsets, or none
   of them (an exception, or a ``kill -9`` of the writer, leaves neither).
2. Offsets never go backwards: a position lower than the stored one for the
   same (consumer, topic, partition) refuses the whole write with
   ``OffsetsWentBackwards``; an equal one is accepted (a replay of the same
   batch rewrites the same tiles).
3. ``read_entity`` returns one consistent snapshot: the view, that view's
   batch record of the entity, and the entity's realtime tiles at or after
   that view's cutoff, all read at one instant; ``read_entities`` reads
   many entities at one instant (one view for all). Realtime tiles before the
   cutoff stop counting the moment a view with that cutoff is published;
   ``drop_realtime_before`` removes them later.
   The scores given to ``write_tiles`` are part of its transaction too.
4. A published cutoff never goes backwards (``CutoffWentBackwards``): the
   realtime tiles before it may already be gone.
5. The store is shared: processes (and threads) that open the same store
   see each other's committed writes.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar, Final

from lamina.errors import ConfigError, LaminaError
from lamina.schemas.scores import ScoreRecord, encode_score

#: ``(topic, partition) -> position``: what a consumer stores with its tiles.
Offsets = Mapping[tuple[str, int], int]
#: Per hop (ms), how far before the query time a view needs realtime tiles:
#: the longest window at that hop in ms, or None for "back to the cutoff"
#: (a lifetime window). ``lamina.stores.lookup.realtime_spans`` makes it.
RealtimeSpans = Mapping[int, int | None]
#: A realtime tile of one entity and view: ``(hop_ms, tile_start_ms)``.
TileSlot = tuple[int, int]

#: Score records kept per entity by default (``scores_per_entity``).
DEFAULT_SCORES_PER_ENTITY: Final = 5

_GROUP: Final = re.compile(r"^[a-z][a-z0-9_]*$")
_CONSUMER: Final = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
_TOPIC: Final = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class StoreError(LaminaError):
    """A tile-store operation failed or was refused; the message says why
    and what to do."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or opened (no server, unreadable file)."""


class OffsetsWentBackwards(StoreError):
    """A write carried an offset lower than the one stored: nothing was
    written. Usually a zombie consumer after a rebalance."""


class CutoffWentBackwards(StoreError):
    """A publish carried a cutoff older than the published one, or lost a
    race against a newer publish: the published view is unchanged."""


class NoPublishedView(StoreError):
    """No batch view of the group has been published to this store yet."""


class AsOfOutOfRange(StoreError):
    """A lookup asked for a time the published view does not answer:
    before its cutoff, or at or after its horizon. ``view`` is that view."""

    def __init__(self, message: str, view: PublishedView) -> None:
        super().__init__(message)
        self.view = view


def now_ms() -> int:
    """The wall clock in epoch milliseconds UTC."""
    return int(time.time() * 1000)


def check_group(group: str) -> str:
    """``group`` if it is a valid view (``GroupBy``) name, else ValueError."""
    if not isinstance(group, str) or not _GROUP.match(group):
        raise ValueError(f"group {group!r} is not a view name (lower-case letters, digits, _)")
    return group


def _check_ms(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer number of epoch milliseconds, got {value!r}")


@dataclass(frozen=True, slots=True)
class TileRow:
    """One realtime tile: the encoded partials of ``entity``'s events with
    ``tile_start_ms <= event_time < tile_start_ms + hop_ms`` in view
    ``group`` (``lamina.stores.codec.TileCodec`` encodes them). A write
    replaces the stored tile of the same (group, entity, hop, start)."""

    group: str
    entity: str
    hop_ms: int
    tile_start_ms: int
    partials: bytes

    def __post_init__(self) -> None:
        check_group(self.group)
        if not isinstance(self.entity, str):
            raise ValueError(f"entity must be a string, got {self.entity!r}")
        _check_ms("hop_ms", self.hop_ms)
        _check_ms("tile_start_ms", self.tile_start_ms)
        if self.hop_ms <= 0 or self.tile_start_ms % self.hop_ms:
            raise ValueError(f"tile_start_ms {self.tile_start_ms} is not a multiple of hop "
                             f"{self.hop_ms} ms")
        if not isinstance(self.partials, bytes):
            raise ValueError(f"partials must be bytes, got {type(self.partials).__name__}")


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One entity's batch record in a published view (``payload`` from
    ``lamina.stores.lookup.build_batch_record``)."""

    entity: str
    payload: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.entity, str):
            raise ValueError(f"entity must be a string, got {self.entity!r}")
        if not isinstance(self.payload, bytes):
            raise ValueError(f"payload must be bytes, got {type(self.payload).__name__}")


@dataclass(frozen=True, kw_only=True)
class BatchView:
    """What a publish switches to: view ``group`` with batch cutoff
    ``cutoff_ms`` (the batch part holds events before it), answering
    queries at ``cutoff_ms <= t < horizon_ms`` (the batch records are built
    for that interval). ``batch_version`` is the batch layer's own number
    for what it published (e.g. the views table's Delta version);
    ``definition`` a fingerprint of the ``GroupBy`` the records were built
    with (``lamina.stores.lookup.definition_fingerprint``); ``lineage`` free
    text (the batch layer's metadata JSON)."""

    group: str
    cutoff_ms: int
    horizon_ms: int
    batch_version: int
    definition: str = ""
    lineage: str = ""

    def __post_init__(self) -> None:
        check_group(self.group)
        _check_ms("cutoff_ms", self.cutoff_ms)
        _check_ms("horizon_ms", self.horizon_ms)
        if self.horizon_ms <= self.cutoff_ms:
            raise ValueError(f"horizon_ms {self.horizon_ms} must be after cutoff_ms "
                             f"{self.cutoff_ms}")
        if isinstance(self.batch_version, bool) or not isinstance(self.batch_version, int) \
                or self.batch_version < 0:
            raise ValueError(f"batch_version must be an integer >= 0, got {self.batch_version!r}")
        if not isinstance(self.definition, str) or not isinstance(self.lineage, str):
            raise ValueError("definition and lineage must be strings")


@dataclass(frozen=True, kw_only=True)
class PublishedView(BatchView):
    """A view as published: ``generation`` is the store's own counter of
    publishes of the group (it names where the records live),
    ``published_at_ms`` when the switch committed."""

    generation: int
    published_at_ms: int


@dataclass(frozen=True)
class EntitySnapshot:
    """What ``read_entity`` read, at one instant: the published ``view``,
    its ``batch_record`` of ``entity`` (None: the entity has no batch
    events the view's windows need) and the entity's realtime ``tiles``,
    ``(hop_ms, tile_start_ms) -> partials``, with ``view.cutoff_ms <=
    tile_start_ms < as_of_ms`` and within the spans asked for; with
    ``offsets_of``, that consumer's stored ``offsets`` at the same instant
    (what the realtime tiles read reflect), else empty."""

    view: PublishedView
    entity: str
    as_of_ms: int
    batch_record: bytes | None
    tiles: Mapping[TileSlot, bytes] = field(default_factory=dict)
    offsets: Mapping[tuple[str, int], int] = field(default_factory=dict)


def realtime_ranges(cutoff_ms: int, as_of_ms: int, spans: RealtimeSpans
                    ) -> list[tuple[int, int, int]]:
    """``(hop_ms, first_start, end)`` per hop: the realtime tiles a lookup
    at ``as_of_ms`` reads are those with ``first_start <= tile_start < end``
    (``end = as_of_ms``: the tile holding ``as_of_ms`` is the head), and
    ``first_start`` is the later of the cutoff and the start of the longest
    window at that hop (``floor((t - W) / h) * h``)."""
    ranges = []
    for hop, lookback in sorted(spans.items()):
        first = cutoff_ms
        if lookback is not None:
            first = max(first, (as_of_ms - lookback) // hop * hop)
        ranges.append((hop, first, as_of_ms))
    return ranges


def check_as_of(view: PublishedView, as_of_ms: int) -> None:
    """AsOfOutOfRange unless ``view.cutoff_ms <= as_of_ms < view.horizon_ms``."""
    if as_of_ms < view.cutoff_ms:
        raise AsOfOutOfRange(
            f"view {view.group!r}: as of {as_of_ms} is before the published batch cutoff "
            f"{view.cutoff_ms}; the store answers from the cutoff on (features further back "
            "come from the master dataset: a point-in-time training set)", view)
    if as_of_ms >= view.horizon_ms:
        raise AsOfOutOfRange(
            f"view {view.group!r}: as of {as_of_ms} is at or after the horizon "
            f"{view.horizon_ms} of the batch view published with cutoff {view.cutoff_ms} "
            f"(batch version {view.batch_version}): publish a newer batch view "
            "(`lamina batch run`), or publish with a longer horizon", view)


def check_offsets(consumer: str | None, offsets: Offsets | None) -> dict[tuple[str, int], int]:
    """The offsets as a plain dict, or ValueError for a malformed one (or
    offsets without a consumer name)."""
    if not offsets:
        return {}
    if consumer is None or not isinstance(consumer, str) or not _CONSUMER.match(consumer):
        raise ValueError(f"offsets need a consumer name ([A-Za-z0-9._:-], 1-200), "
                         f"got {consumer!r}")
    checked: dict[tuple[str, int], int] = {}
    for key, position in offsets.items():
        topic, partition = key
        if not isinstance(topic, str) or not _TOPIC.match(topic):
            raise ValueError(f"offsets: {topic!r} is not a Kafka topic name")
        for name, value in (("partition", partition), ("offset", position)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"offsets: {name} of {topic!r} must be an integer >= 0, "
                                 f"got {value!r}")
        checked[(topic, partition)] = position
    return checked


@dataclass(frozen=True, slots=True)
class ScoreRow:
    """A score record as a store keeps it: its key, its order and its
    ``scores.v1`` bytes (``lamina.schemas.scores.encode_score``)."""

    entity: str
    event_time_ms: int
    event_id: str
    model_version: int
    record: bytes


def score_rows(scores: Iterable[ScoreRecord | ScoreRow] | None) -> list[ScoreRow]:
    """The records as ``ScoreRow``s: a ``ScoreRecord`` is encoded here, a
    ``ScoreRow`` (already encoded, e.g. once for the score topic and the
    store alike) is kept as it is. ValueError for anything else
    (``ScoreRecordError`` for a record that cannot be encoded)."""
    rows = []
    for record in scores or ():
        if type(record) is ScoreRow:
            rows.append(record)
            continue
        if not isinstance(record, ScoreRecord):
            raise ValueError(f"scores must be ScoreRecord or ScoreRow values, got {record!r}")
        rows.append(ScoreRow(record.entity, record.event_time, record.event_id,
                             record.model_version, encode_score(record)))
    return rows


def check_scores_per_entity(store: str, value: object) -> int:
    """``value`` if it is a whole number >= 1, else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{store} store: scores_per_entity must be an integer >= 1, "
                          f"got {value!r}")
    return value


def backwards_message(consumer: str, topic: str, partition: int, stored: int, given: int) -> str:
    return (f"consumer {consumer!r}: offset {given} for {topic}[{partition}] is behind the "
            f"stored {stored}; nothing was written (another instance has moved on: this one "
            "is a zombie and must reload its state from the store)")


class TileStore(ABC):
    """The tile store: a handful of methods, each one transaction.

    Implementations are safe to share between the threads of a process and
    between processes (each process opens its own ``TileStore``). Use as a
    context manager, or call ``close()``.
    """

    #: The short name ``open_store`` knows it by.
    name: ClassVar[str]

    @abstractmethod
    def write_tiles(self, rows: Iterable[TileRow], *, consumer: str | None = None,
                    offsets: Offsets | None = None,
                    scores: Iterable[ScoreRecord | ScoreRow] | None = None) -> int:
        """Write ``rows`` (each replaces the stored tile of its key; a key
        twice in ``rows``: the last wins), store ``offsets`` for
        ``consumer`` and add ``scores`` to their entities' latest scores
        (each replaces a stored record of the same entity, event_id and
        model version; beyond ``scores_per_entity`` per entity the oldest by
        event time go), in one transaction. Returns the number of rows.

        Raises ``OffsetsWentBackwards`` (writing nothing) if a position is
        below the stored one; any exception leaves the store as it was.
        ``rows`` may be a generator: it is consumed inside the transaction.
        """

    @abstractmethod
    def read_offsets(self, consumer: str) -> dict[tuple[str, int], int]:
        """The stored ``(topic, partition) -> position`` of ``consumer``
        (empty if it never wrote)."""

    @abstractmethod
    def latest_scores(self, entity: str) -> list[ScoreRecord]:
        """The stored score records of ``entity``, newest first (by event
        time, then event_id and model version, descending); at most
        ``scores_per_entity``; empty for an entity never scored."""

    @abstractmethod
    def read_tiles(self, group: str, entity: str, slots: Iterable[TileSlot]
                   ) -> dict[TileSlot, bytes]:
        """The stored realtime tiles of ``entity`` among ``slots`` (missing
        ones are left out): how a restarted speed layer reloads the tiles
        it goes on merging into. Ignores the published cutoff."""

    @abstractmethod
    def publish_batch(self, view: BatchView, records: Iterable[BatchRecord]) -> PublishedView:
        """Store ``records`` (one per entity; an entity twice: the last
        wins) and switch readers to ``view`` atomically. Records are
        written in several short transactions out of readers' sight; the
        switch is one transaction. A crash before the switch leaves the
        published view unchanged (the next publish removes the leftovers).

        Raises ``CutoffWentBackwards`` if ``view.cutoff_ms`` is before the
        published cutoff, or if a publish that started later has already
        switched. The previous view's records are removed after the switch.
        """

    @abstractmethod
    def current_view(self, group: str) -> PublishedView | None:
        """The published view of ``group``, or None."""

    @abstractmethod
    def read_entity(self, group: str, entity: str, as_of_ms: int,
                    spans: RealtimeSpans, *, offsets_of: str | None = None) -> EntitySnapshot:
        """One consistent snapshot of ``entity`` for a lookup at
        ``as_of_ms`` (see ``EntitySnapshot``; the tiles read are
        ``realtime_ranges(view.cutoff_ms, as_of_ms, spans)``), with the
        offsets of consumer ``offsets_of`` (``read_offsets``) in the same
        snapshot when given.

        Raises ``NoPublishedView`` before the first publish and
        ``AsOfOutOfRange`` unless ``cutoff_ms <= as_of_ms < horizon_ms``.
        """

    @abstractmethod
    def read_entities(self, group: str, entities: Iterable[str], as_of_ms: int,
                      spans: RealtimeSpans) -> list[EntitySnapshot]:
        """``read_entity`` of every entity (in order, duplicates repeated), all
        read at **one** instant: every snapshot has the same view, even
        while a publish switches views (a batch lookup is never split
        across two views). ``entities`` is consumed once, before or inside
        the read; empty reads nothing and returns ``[]``.

        Raises ``NoPublishedView`` and ``AsOfOutOfRange`` as ``read_entity``.
        """

    @abstractmethod
    def drop_realtime_before(self, group: str, cutoff_ms: int) -> int:
        """Delete the realtime tiles of ``group`` with ``tile_start <
        cutoff_ms`` (no reader counts them once a view with that cutoff is
        published); returns how many. Works in short transactions.

        Raises ``StoreError`` if ``cutoff_ms`` is after the published cutoff
        (those tiles still count) or nothing is published.
        """

    def close(self) -> None:  # noqa: B027 - optional for implementations
        """Release connections; the store is unusable afterwards."""

    def __enter__(self) -> TileStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def check_drop(group: str, view: PublishedView | None, cutoff_ms: int) -> None:
    """StoreError unless ``cutoff_ms`` is at or before the published cutoff."""
    if view is None:
        raise StoreError(f"view {group!r}: nothing is published, so every realtime tile "
                         "still counts; publish a batch view before dropping tiles")
    if cutoff_ms > view.cutoff_ms:
        raise StoreError(
            f"view {group!r}: cannot drop realtime tiles before {cutoff_ms}: the published "
            f"cutoff is {view.cutoff_ms}, so tiles from there on still count")


def published_view(view: BatchView, generation: int, published_at_ms: int) -> PublishedView:
    """``view`` as published under ``generation`` at ``published_at_ms``."""
    return PublishedView(group=view.group, cutoff_ms=view.cutoff_ms,
                         horizon_ms=view.horizon_ms, batch_version=view.batch_version,
                         definition=view.definition, lineage=view.lineage,
                         generation=generation, published_at_ms=published_at_ms)


def check_switch(current: PublishedView, view: BatchView, generation: int) -> None:
    """CutoffWentBackwards if switching from ``current`` to ``view`` (as
    ``generation``) would move the cutoff back or undo a later publish."""
    if view.cutoff_ms < current.cutoff_ms:
        raise CutoffWentBackwards(
            f"view {view.group!r}: cutoff {view.cutoff_ms} is before the published cutoff "
            f"{current.cutoff_ms} (batch version {current.batch_version}); realtime tiles "
            "before the published cutoff may already be dropped, so publishing it would lose "
            "events: nothing was switched")
    if current.generation > generation:
        raise CutoffWentBackwards(
            f"view {view.group!r}: a publish that started later (generation "
            f"{current.generation}, batch version {current.batch_version}) switched first; "
            "this one is superseded and was not switched")
