"""The networked tile store: Redis, with the SQLite store's semantics.

Options (``open_store("redis", url=..., ...)``)
-----------------------------------------------
``url`` ("redis://127.0.0.1:6379/0")
    The server (redis-py URL syntax: ``redis://[[user]:password@]host:port/db``,
    ``rediss://`` for TLS, ``unix:///path.sock``).
``prefix`` ("lamina")
    Every key starts with ``<prefix>:``, so several deployments can share
    one database.
``publish_chunk`` (1000)
    Batch records per command while publishing (pipelined, out of readers'
    sight) and fields per ``HDEL`` when dropping tiles.
``socket_timeout_s`` (5.0)
    How long a command may wait for the server before ``StoreUnavailable``.
``scores_per_entity`` (5)
    Score records kept per entity (``latest_scores``); the write that adds
    newer ones removes the oldest.

Keys (all under the prefix; ``g`` a view name)
---------------------------------------------
``view:g`` (hash: the published view, ``generation`` included),
``gen:g`` (the generation counter), ``gens:g`` (set of generations with
records), ``batch:g:<generation>`` (hash: entity -> batch record),
``rt:g`` (hash: ``<hop>:<tile_start>:<entity>`` -> tile partials),
``offsets:<consumer>`` (hash: ``<topic>:<partition>`` -> position),
``scores:<entity>`` (hash: ``<event_id>\\0<model_version, 12 digits>`` ->
score record) with ``scoreidx:<entity>`` (sorted set of the same members
by event time: the order, ties by member, as the SQLite store orders).

How the guarantees are kept
---------------------------
Every operation that must be atomic is **one Lua script** (Redis runs a
script to the end before any other command): ``write_tiles`` checks every
offset first and only then writes tiles and offsets, so a refused write
changes nothing (Redis does not roll back a script's writes, so nothing is
written before the last check); ``read_entity`` reads the view, the
record of the view's generation and the realtime tiles the lookup needs in
one script, so it sees one state; the publish switch is one script that
refuses a cutoff going backwards. A client killed while sending a command
leaves nothing: Redis executes only complete commands.

A script blocks the server while it runs, and a reader's p99 rises while
large writes run (ARCHITECTURE.md: ~0.2 ms to ~5 ms with 1,000-command
EXECs): keep ``write_tiles`` batches to a few hundred tiles where serving
latency matters. Publishing writes records with plain pipelined ``HSET``s
of ``publish_chunk`` fields, and the old generation goes with one
``UNLINK`` (freed in the background).

Durability is the server's: Redis' own persistence (AOF with
``appendfsync everysec`` or ``always``) decides what survives a server
crash; the store asks for nothing. With ``maxmemory`` set, use
``noeviction``: an eviction policy could drop tiles, offsets or a view.
The scripts read keys they compute (the record of the view's generation),
so they need one Redis (primary and replicas), not Redis Cluster. The read
script is flagged ``no-writes``, so serving may read from a replica (a
replica applies each script's writes as one transaction: its snapshots are
consistent too, only later; checked by hand with a ``--replicaof``
server).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice
from typing import Any, Final

from lamina.errors import ConfigError
from lamina.logs import get_logger
from lamina.schemas.scores import ScoreRecord, decode_score
from lamina.stores.base import (
    DEFAULT_SCORES_PER_ENTITY,
    BatchRecord,
    BatchView,
    EntitySnapshot,
    NoPublishedView,
    Offsets,
    OffsetsWentBackwards,
    PublishedView,
    RealtimeSpans,
    ScoreRow,
    StoreError,
    StoreUnavailable,
    TileRow,
    TileSlot,
    TileStore,
    backwards_message,
    check_as_of,
    check_drop,
    check_group,
    check_offsets,
    check_scores_per_entity,
    check_switch,
    now_ms,
    published_view,
    score_rows,
)

try:
    import redis as redis_client
except ImportError as missing:  # the registry turns this into a ConfigError
    raise ImportError("the redis store needs the `redis` package", name="redis") from missing

log = get_logger(__name__)

_VIEW_FIELDS: Final = ("generation", "cutoff_ms", "horizon_ms", "batch_version", "definition",
                       "lineage", "published_at_ms")
_LUA_VIEW_FIELDS: Final = ", ".join(f"'{f}'" for f in _VIEW_FIELDS)
_LUA_MAX_UNPACK: Final = 500  # fields per HSET inside a script (Lua's unpack limit is ~8000)
_SCAN_COUNT: Final = 1000  # fields per HSCAN step when dropping tiles

# KEYS[1] offsets hash, KEYS[2..1+g] realtime hashes, then per scored entity
# its scores hash and index. ARGV[1] = n offsets, then n (field, position)
# pairs, then g, then per realtime hash: m, then m (field, value); then the
# scores kept per entity, then per scored entity: m, then m (member, event
# time, record).
_WRITE: Final = """#!lua
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  local field, given = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  local stored = redis.call('HGET', KEYS[1], field)
  if stored and tonumber(given) < tonumber(stored) then
    return redis.error_reply('LAMINA_OFFSETS_BACKWARDS ' .. field .. ' ' .. stored .. ' ' .. given)
  end
end
local a = 2 + 2 * n
local g = tonumber(ARGV[a])
a = a + 1
for k = 2, 1 + g do
  local m = tonumber(ARGV[a])
  a = a + 1
  local i = 0
  while i < m do
    local j = math.min(i + __CHUNK__, m)
    local args = {}
    for x = i, j - 1 do
      args[#args + 1] = ARGV[a + 2 * x]
      args[#args + 1] = ARGV[a + 2 * x + 1]
    end
    redis.call('HSET', KEYS[k], unpack(args))
    i = j
  end
  a = a + 2 * m
end
local keep = tonumber(ARGV[a])
a = a + 1
for k = 2 + g, #KEYS, 2 do
  local m = tonumber(ARGV[a])
  a = a + 1
  for x = 0, m - 1 do
    local member = ARGV[a + 3 * x]
    redis.call('HSET', KEYS[k], member, ARGV[a + 3 * x + 2])
    redis.call('ZADD', KEYS[k + 1], ARGV[a + 3 * x + 1], member)
  end
  a = a + 3 * m
  local extra = redis.call('ZCARD', KEYS[k + 1]) - keep
  if extra > 0 then
    local old = redis.call('ZRANGE', KEYS[k + 1], 0, extra - 1)
    redis.call('HDEL', KEYS[k], unpack(old))
    redis.call('ZREMRANGEBYRANK', KEYS[k + 1], 0, extra - 1)
  end
end
if n > 0 then
  local args = {}
  for i = 0, n - 1 do
    args[#args + 1] = ARGV[2 + 2 * i]
    args[#args + 1] = ARGV[3 + 2 * i]
  end
  redis.call('HSET', KEYS[1], unpack(args))
end
return 'OK'
""".replace("__CHUNK__", str(_LUA_MAX_UNPACK))

# KEYS[1] view hash, KEYS[2] realtime hash. ARGV[1] batch key prefix (the
# generation is appended), ARGV[2] entity, ARGV[3] as_of, then (hop,
# lookback) pairs, lookback -1 = back to the cutoff. Returns {} without a
# view, {view} when as_of is outside [cutoff, horizon), else {view, record,
# fields, tiles}. no-writes: it also runs on a read-only replica.
_READ: Final = """#!lua flags=no-writes
local v = redis.call('HMGET', KEYS[1], __FIELDS__)
if not v[1] then return {} end
local cutoff, horizon, t = tonumber(v[2]), tonumber(v[3]), tonumber(ARGV[3])
if t < cutoff or t >= horizon then return {v} end
local record = redis.call('HGET', ARGV[1] .. v[1], ARGV[2])
local fields = {}
for i = 4, #ARGV, 2 do
  local hop, back = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  local s = cutoff
  if back >= 0 then
    local x = t - back
    x = x - (x % hop)
    if x > s then s = x end
  end
  while s < t do
    fields[#fields + 1] = string.format('%.0f:%.0f:', hop, s) .. ARGV[2]
    s = s + hop
  end
end
local tiles = {}
if #fields > 0 then tiles = redis.call('HMGET', KEYS[2], unpack(fields)) end
if KEYS[3] then return {v, record, fields, tiles, redis.call('HGETALL', KEYS[3])} end
return {v, record, fields, tiles}
""".replace("__FIELDS__", _LUA_VIEW_FIELDS)

# KEYS[1] view hash. ARGV: the view's fields in _VIEW_FIELDS order.
_SWITCH: Final = """#!lua
local cur = redis.call('HMGET', KEYS[1], __FIELDS__)
if cur[1] then
  if tonumber(ARGV[2]) < tonumber(cur[2]) or tonumber(cur[1]) > tonumber(ARGV[1]) then
    return {'REFUSED', cur}
  end
end
redis.call('HSET', KEYS[1], __PAIRS__)
return {'OK', cur}
""".replace("__FIELDS__", _LUA_VIEW_FIELDS).replace(
    "__PAIRS__", ", ".join(f"'{f}', ARGV[{i}]" for i, f in enumerate(_VIEW_FIELDS, 1)))


# KEYS[1] scores hash, KEYS[2] its index; ARGV[1] how many. Newest first.
_LATEST_SCORES: Final = """#!lua flags=no-writes
local members = redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)
if #members == 0 then return {} end
return redis.call('HMGET', KEYS[1], unpack(members))
"""


def _score_member(event_id: str, model_version: int) -> str:
    # NUL sorts first and the version has a fixed width, so members of one
    # event time sort as (event_id, model_version) do in the SQLite store.
    return f"{event_id}\0{model_version:012d}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)



def _offsets(stored: Iterable[tuple[Any, Any]]) -> dict[tuple[str, int], int]:
    """A consumer's offsets from its hash's ``topic:partition -> position``."""
    out: dict[tuple[str, int], int] = {}
    for field, position in stored:
        topic, _, partition = _text(field).rpartition(":")
        out[(topic, int(partition))] = int(position)
    return out

class RedisTileStore(TileStore):
    """``TileStore`` in Redis (see the module docstring)."""

    name = "redis"

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "lamina",
                 publish_chunk: int = 1000, socket_timeout_s: float = 5.0,
                 scores_per_entity: int = DEFAULT_SCORES_PER_ENTITY) -> None:
        if not isinstance(url, str) or not url:
            raise ConfigError(f"redis store: url must be a redis:// URL, got {url!r}")
        if not isinstance(prefix, str) or not prefix or any(c.isspace() for c in prefix):
            raise ConfigError(f"redis store: prefix must be a word without spaces, got "
                              f"{prefix!r}")
        if isinstance(publish_chunk, bool) or not isinstance(publish_chunk, int) \
                or publish_chunk <= 0:
            raise ConfigError(f"redis store: publish_chunk must be a positive integer, got "
                              f"{publish_chunk!r}")
        if isinstance(socket_timeout_s, bool) or not isinstance(socket_timeout_s, int | float) \
                or socket_timeout_s <= 0:
            raise ConfigError(f"redis store: socket_timeout_s must be > 0, got "
                              f"{socket_timeout_s!r}")
        self.url = url
        self.prefix = prefix
        self.publish_chunk = publish_chunk
        self.scores_per_entity = check_scores_per_entity("redis", scores_per_entity)
        try:
            self._redis = redis_client.Redis.from_url(
                url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s)
        except ValueError as error:
            raise ConfigError(f"redis store: {error}") from None
        self._write_script = self._redis.register_script(_WRITE)
        self._read_script = self._redis.register_script(_READ)
        self._switch_script = self._redis.register_script(_SWITCH)
        self._latest_scores_script = self._redis.register_script(_LATEST_SCORES)
        self._views: dict[str, tuple[tuple[Any, ...], PublishedView]] = {}
        self._call(self._redis.ping)

    def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one client call; connection problems become StoreUnavailable."""
        try:
            return function(*args, **kwargs)
        except (redis_client.ConnectionError, redis_client.TimeoutError) as error:
            raise StoreUnavailable(f"redis store at {self.url} is unreachable ({error}); is "
                                   "redis-server running there?") from None

    def close(self) -> None:
        self._redis.close()

    # -- keys ----------------------------------------------------------------------

    def _key(self, *parts: object) -> str:
        return ":".join((self.prefix, *map(str, parts)))

    # -- realtime tiles and offsets --------------------------------------------

    def write_tiles(self, rows: Iterable[TileRow], *, consumer: str | None = None,
                    offsets: Offsets | None = None,
                    scores: Iterable[ScoreRecord | ScoreRow] | None = None) -> int:
        checked = check_offsets(consumer, offsets)
        scored = score_rows(scores)
        by_group: dict[str, list[bytes | str]] = {}
        count = 0
        for row in rows:  # consumed before anything is sent: an error here writes nothing
            if not isinstance(row, TileRow):
                raise ValueError(f"write_tiles takes TileRow values, got {row!r}")
            fields = by_group.setdefault(row.group, [])
            fields.append(f"{row.hop_ms}:{row.tile_start_ms}:{row.entity}")
            fields.append(row.partials)
            count += 1
        if not by_group and not checked and not scored:
            return 0
        keys = [self._key("offsets", consumer if checked else "-")]
        args: list[Any] = [len(checked)]
        for (topic, partition), position in checked.items():
            args += (f"{topic}:{partition}", position)
        args.append(len(by_group))
        for group, fields in by_group.items():
            keys.append(self._key("rt", group))
            args.append(len(fields) // 2)
            args += fields
        args.append(self.scores_per_entity)
        by_entity: dict[str, list[Any]] = {}
        for score in scored:
            by_entity.setdefault(score.entity, []).extend(
                (_score_member(score.event_id, score.model_version), score.event_time_ms,
                 score.record))
        for entity, triples in by_entity.items():
            keys += (self._key("scores", entity), self._key("scoreidx", entity))
            args.append(len(triples) // 3)
            args += triples
        try:
            self._call(self._write_script, keys=keys, args=args)
        except redis_client.ResponseError as error:
            message = str(error)
            if "LAMINA_OFFSETS_BACKWARDS" not in message:
                raise StoreError(f"redis store: write failed: {message}") from None
            field, stored, given = message.split("LAMINA_OFFSETS_BACKWARDS ", 1)[1].split()[:3]
            topic, _, partition_text = field.rpartition(":")
            raise OffsetsWentBackwards(backwards_message(
                str(consumer), topic, int(partition_text), int(stored), int(given))) from None
        return count

    def latest_scores(self, entity: str) -> list[ScoreRecord]:
        records = self._call(self._latest_scores_script,
                             keys=[self._key("scores", entity), self._key("scoreidx", entity)],
                             args=[self.scores_per_entity])
        return [decode_score(record) for record in records if record is not None]

    def read_offsets(self, consumer: str) -> dict[tuple[str, int], int]:
        return _offsets(self._call(self._redis.hgetall, self._key("offsets", consumer)).items())

    def read_tiles(self, group: str, entity: str, slots: Iterable[TileSlot]
                   ) -> dict[TileSlot, bytes]:
        wanted = list(slots)
        if not wanted:
            return {}
        values = self._call(self._redis.hmget, self._key("rt", group),
                            [f"{hop}:{start}:{entity}" for hop, start in wanted])
        return {slot: value for slot, value in zip(wanted, values, strict=True)
                if value is not None}

    def drop_realtime_before(self, group: str, cutoff_ms: int) -> int:
        check_group(group)
        check_drop(group, self.current_view(group), cutoff_ms)
        key = self._key("rt", group)
        dropped = 0
        cursor = 0
        while True:
            cursor, fields = self._call(self._redis.hscan, key, cursor, count=_SCAN_COUNT)
            stale = [f for f in fields if int(_text(f).split(":", 2)[1]) < cutoff_ms]
            for i in range(0, len(stale), self.publish_chunk):
                dropped += int(self._call(self._redis.hdel, key,
                                          *stale[i:i + self.publish_chunk]))
            if cursor == 0:
                break
        log.info("realtime tiles dropped", store=self.name, group=group, cutoff_ms=cutoff_ms,
                 tiles=dropped)
        return dropped

    # -- batch views -------------------------------------------------------------

    def _view(self, group: str, values: list[Any]) -> PublishedView | None:
        """The view from its hash's fields in _VIEW_FIELDS order (None if
        the hash does not exist); cached while the fields do not change."""
        if not values or values[0] is None:
            return None
        row = tuple(values)
        cached = self._views.get(group)
        if cached is not None and cached[0] == row:
            return cached[1]
        generation, cutoff, horizon, version, definition, lineage, published_at = row
        view = PublishedView(group=group, cutoff_ms=int(cutoff), horizon_ms=int(horizon),
                             batch_version=int(version), definition=_text(definition),
                             lineage=_text(lineage), generation=int(generation),
                             published_at_ms=int(published_at))
        self._views[group] = (row, view)
        return view

    def current_view(self, group: str) -> PublishedView | None:
        values = self._call(self._redis.hmget, self._key("view", group), list(_VIEW_FIELDS))
        return self._view(group, values)

    def publish_batch(self, view: BatchView, records: Iterable[BatchRecord]) -> PublishedView:
        group = view.group
        generation = int(self._call(self._redis.incr, self._key("gen", group)))
        self._call(self._redis.sadd, self._key("gens", group), generation)
        batch_key = self._key("batch", group, generation)
        written = 0
        iterator = iter(records)
        pipe = self._redis.pipeline(transaction=False)
        while True:
            chunk = list(islice(iterator, self.publish_chunk))
            if not chunk:
                break
            pipe.hset(batch_key, mapping={r.entity: r.payload for r in chunk})
            written += len(chunk)
            if len(pipe) >= 8:
                self._call(pipe.execute)
        if len(pipe):
            self._call(pipe.execute)
        published_at = now_ms()
        args = [generation, view.cutoff_ms, view.horizon_ms, view.batch_version,
                view.definition, view.lineage, published_at]
        outcome, current = self._call(self._switch_script, keys=[self._key("view", group)],
                                      args=args)
        if _text(outcome) != "OK":
            previous = self._view(group, current)
            if previous is not None:
                check_switch(previous, view, generation)  # raises CutoffWentBackwards
            raise StoreError(f"view {group!r}: the store refused the publish switch")
        log.info("batch view published", store=self.name, group=group,
                 cutoff_ms=view.cutoff_ms, horizon_ms=view.horizon_ms,
                 batch_version=view.batch_version, generation=generation, records=written)
        self._remove_generations_before(group, generation)
        return published_view(view, generation, published_at)

    def _remove_generations_before(self, group: str, generation: int) -> None:
        """UNLINK the records of every older generation (the previous
        view's, and any a crashed publish left): no reader points at them."""
        gens_key = self._key("gens", group)
        members = self._call(self._redis.smembers, gens_key)
        stale = sorted(int(m) for m in members if int(m) < generation)
        if stale:
            self._call(self._redis.unlink, *(self._key("batch", group, g) for g in stale))
            self._call(self._redis.srem, gens_key, *stale)

    def _read_args(self, group: str, entity: str, as_of_ms: int, spans: RealtimeSpans,
                   offsets_of: str | None = None) -> tuple[list[str], list[Any]]:
        args: list[Any] = [self._key("batch", group, ""), entity, as_of_ms]
        for hop, lookback in sorted(spans.items()):
            args += (hop, -1 if lookback is None else lookback)
        keys = [self._key("view", group), self._key("rt", group)]
        if offsets_of is not None:
            keys.append(self._key("offsets", offsets_of))
        return keys, args

    def _snapshot(self, group: str, entity: str, as_of_ms: int, reply: Any) -> EntitySnapshot:
        """The snapshot from the read script's reply."""
        view = self._view(group, reply[0]) if reply else None
        if view is None:
            raise NoPublishedView(f"view {group!r}: no batch view is published in the redis "
                                  f"store at {self.url}; run the batch layer first")
        if len(reply) == 1:
            check_as_of(view, as_of_ms)  # raises: the script found it out of range
            raise StoreError(f"view {group!r}: the store refused as of {as_of_ms}")
        _, record, fields, values = reply[:4]
        tiles: dict[TileSlot, bytes] = {}
        for field, value in zip(fields, values, strict=True):
            if value is not None:
                hop, start, _ = _text(field).split(":", 2)
                tiles[(int(hop), int(start))] = value
        # HGETALL from a script: field, value, field, value, ...
        offsets = _offsets(zip(reply[4][::2], reply[4][1::2], strict=True)) \
            if len(reply) > 4 else {}
        return EntitySnapshot(view, entity, as_of_ms, record, tiles, offsets)

    def read_entity(self, group: str, entity: str, as_of_ms: int,
                    spans: RealtimeSpans, *, offsets_of: str | None = None) -> EntitySnapshot:
        keys, args = self._read_args(group, entity, as_of_ms, spans, offsets_of)
        reply = self._call(self._read_script, keys=keys, args=args)
        return self._snapshot(group, entity, as_of_ms, reply)

    def read_entities(self, group: str, entities: Iterable[str], as_of_ms: int,
                      spans: RealtimeSpans) -> list[EntitySnapshot]:
        wanted = list(entities)
        if not wanted:
            return []
        # One MULTI/EXEC of one read script per entity: Redis runs the
        # transaction's commands with nothing in between (a publish switch
        # lands before or after all of them), in one round trip.
        pipe = self._redis.pipeline(transaction=True)
        for entity in wanted:
            keys, args = self._read_args(group, entity, as_of_ms, spans)
            self._read_script(keys=keys, args=args, client=pipe)
        replies = self._call(pipe.execute)
        return [self._snapshot(group, entity, as_of_ms, reply)
                for entity, reply in zip(wanted, replies, strict=True)]
