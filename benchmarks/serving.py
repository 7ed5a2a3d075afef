"""The serving layer over HTTP: single-entity lookups under concurrency, the
1,000-entity batch lookup and produce-to-served freshness, each next to its
reference in the same run (issue 14, "Benchmarks").

    .venv/bin/python -m benchmarks.run --only serving            # appends a table
    .venv/bin/python -m benchmarks.run --only serving --quick --no-append

The data (built once per run, not a figure)
-------------------------------------------
`benchmarks.tile_store.prepare_data`: generated transactions (seed 42, 30
days), the card views' batch records at the cutoff (day 28) and the
realtime tiles of the next 20 hours, published and written into a fresh
SQLite file and a fresh Redis key prefix. Every lookup asks for a random
card of the data ``as_of_ms`` = the data's "now" (cutoff + 20 h; the
generator's clock is in the past, so the wall clock would be outside the
view's [cutoff, horizon)).

The processes and cores (two cores: 0 and 1)
----------------------------------------------
* The server: `lamina serve` itself (`python -m lamina.cli serve`, a
  settings file naming the store and a token, `[serving] score = false`),
  i.e. `uvicorn.run(app, access_log=False, log_config=None)`: one worker
  process, uvicorn's defaults (uvloop, httptools), started under
  `taskset -c 1`. For Redis, redis-server is pinned to core 1 too: the
  serving node is one core holding the app and its store.
* The references: a bare FastAPI app with one route returning a constant
  JSON object (`constant_app`), run by the same `uvicorn.run` call with the
  same settings and pinning; and a raw asyncio (uvloop) HTTP/1.1 responder
  with a fixed answer (`RawResponder`), the load generator's ceiling.
* The load generator: this process on core 0. One asyncio (uvloop) loop,
  one persistent keep-alive HTTP/1.1 connection per client, written as a
  bare `asyncio.Protocol` (prebuilt request bytes, the response framed by
  its Content-Length); each client sends its next request when the last
  answer is complete (closed loop). The Authorization header is in every
  request, constant endpoint included.

Figures
-------
* Single-entity lookup at 1, 8 and 32 clients, for each store: requests/s
  and p50/p99 of `GET /v1/features/card_transactions/{card}?as_of_ms=..`
  over a fixed duration after a warm-up, next to the constant endpoint at
  the same concurrency (ratio of requests/s) and the raw store read of
  the same records (`benchmarks.tile_store.RawStore.read`, one call at a
  time in this process) in the same run. Targets at 8 clients: p99 < 3 ms
  and >= 0.6x the constant endpoint's requests/s. Each (endpoint,
  concurrency) ran ROUNDS times, interleaved; the better round by
  requests/s is reported.
* Where a request's time goes: the server's CPU per request (its
  /proc/<pid>/stat utime + stime over the run, divided by the requests),
  split by timing the route's parts in this process on the same store:
  `read_entity` (with the speed offsets), `FeatureReader.features`, the answer
  dumped as JSON, and the whole app called as ASGI (no socket) -- the rest
  of the server's CPU per request is uvicorn's HTTP handling.
* Batch lookup: `POST /v1/features/card_transactions:batch` with 1,000
  random cards, p50/p99 of BATCH_REQUESTS requests, next to 1,000 single
  lookups one after another over one connection and 1,000 raw store reads
  (both timed as a whole, BATCH_REQUESTS times, p50/p99).
* Freshness (SQLite): a single-node KRaft broker (`lamina.broker`, pinned
  to core 1 with the server), `lamina speed run` as a child process
  (`[speed] score = false`, the speed defaults: micro-batches of up to
  5,000 events or 5 ms) writing the realtime tiles into the store that
  `lamina serve` reads. FRESH_EVENTS transaction events (a real event of
  the data with a new id, a random card and an event time after every
  event of the data) are produced at FRESH_RATE/s (confluent-kafka, acks
  all, linger 0); per event, a poller GETs the card's features every
  FRESH_POLL_S until `last_event_time_lifetime` equals the event's time.
  Produce -> visible p50/p99 next to Kafka's produce -> consume p50/p99 of
  the same events (a confluent-kafka consumer in this process, its own
  group) in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import BenchmarkError, fmt_ratio
from benchmarks.machine import BENCH_CORE, BROKER_CORE, can_pin, pin_pid_threads, pin_self
from benchmarks.report import Row
from lamina.errors import LaminaError

REPO = Path(__file__).resolve().parents[1]
GROUP = "card_transactions"
TRANSACTIONS = 50_000
QUICK_TRANSACTIONS = 10_000
CONCURRENCY = (1, 8, 32)
DURATION_S = 3.0
QUICK_DURATION_S = 1.0
WARMUP_S = 0.5
ROUNDS = 2
TARGET_P99_MS = 3.0
TARGET_RATIO = 0.6
BATCH_ENTITIES = 1000
BATCH_REQUESTS = 20
QUICK_BATCH_REQUESTS = 5
RAW_READS = 3000
FRESH_EVENTS = 300
QUICK_FRESH_EVENTS = 60
FRESH_RATE = 20.0  # events/s
FRESH_POLL_S = 0.002
FRESH_TIMEOUT_S = 30.0
SERVER_CORE = BROKER_CORE
CLIENT_CORE = BENCH_CORE


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def quantile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the reference servers (run as child processes by `main`) ----------------------


def constant_app() -> Any:
    """A bare FastAPI app: one async GET route returning a constant JSON
    object (no dependency, no middleware)."""
    from fastapi import FastAPI

    app = FastAPI(title="constant")

    # async, like the features route: a sync route would pay a thread-pool
    # hop per request that the features route does not.
    @app.get("/constant")
    async def constant() -> dict[str, str]:
        return {"status": "ok"}

    return app


class RawResponder(asyncio.Protocol):
    """A fixed HTTP/1.1 answer to every request (keep-alive), nothing parsed
    but the blank line ending a request without a body: the load
    generator's ceiling."""

    ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
              b"content-length: 15\r\n\r\n{\"status\":\"ok\"}")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.buffer = self.buffer[end + 4:]
            self.transport.write(self.ANSWER)


def _serve_raw(port: int) -> None:
    import uvloop

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(RawResponder, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(serve())


def _serve_constant(port: int) -> None:
    import uvicorn

    # The same call as `lamina serve` (lamina/cli.py cmd_serve).
    uvicorn.run(constant_app(), host="127.0.0.1", port=port, access_log=False,
                log_config=None)


@dataclass
class ServerProcess:
    """A server child process on ``core`` (taskset), listening on ``port``."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """utime + stime of the process (all its threads) so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(name: str, argv: list[str], workdir: Path, core: int | None,
                 env: dict[str, str] | None = None, inherit: bool = True) -> ServerProcess:
    """``argv`` (which must listen on its ``--port``) under ``taskset -c
    core``; returns when the port accepts connections."""
    port = free_port()
    log_path = workdir / f"{name}.log"
    command = [*argv, "--port", str(port)]
    if core is not None:
        command = ["taskset", "-c", str(core), *command]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**(os.environ if inherit else {}), **(env or {})},
                                   cwd=REPO)
    server = ServerProcess(name, process, port, log_path)
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise BenchmarkError(f"{name} did not start; see {log_path}: "
                                     + log_path.read_text()[-2000:]) from None
            time.sleep(0.1)


# -- the load generator --------------------------------------------------------------


class _Client(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; ``exchange`` sends a request and
    returns (status, body) when the whole answer (Content-Length) is in."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0
                          else len(head)]) if at >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        body = bytes(self.buffer[end + 4:end + 4 + length])
        del self.buffer[:end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"the server closed the connection: "
                                                      f"{exc}"))

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


async def _connect(port: int) -> _Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(_Client, "127.0.0.1", port)
    return client


@dataclass
class LoadRun:
    """One closed-loop run: every request's latency, errors, CPU of both sides."""

    endpoint: str
    clients: int
    seconds: float
    latencies: list[float]
    errors: int
    client_cpu_s: float
    server_cpu_s: float | None

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def p(self, q: float) -> float:
        return quantile(self.latencies, q)

    @property
    def server_cpu_per_request_us(self) -> float | None:
        if self.server_cpu_s is None or not self.latencies:
            return None
        return self.server_cpu_s / len(self.latencies) * 1e6

    def describe(self) -> str:
        return (f"{self.rate:,.0f} req/s, p50 {self.p(0.5) * 1e3:.2f} ms, p99 "
                f"{self.p(0.99) * 1e3:.2f} ms, client CPU {self.client_cpu_s / self.seconds:.0%}")


def run_load(port: int, requests: Sequence[bytes], clients: int, duration_s: float,
             server: ServerProcess | None, endpoint: str,
             warmup_s: float = WARMUP_S) -> LoadRun:
    """``clients`` connections, each sending ``requests`` round-robin from
    its own offset, for ``warmup_s`` (not counted) then ``duration_s``."""
    import uvloop

    async def load() -> LoadRun:
        connections = [await _connect(port) for _ in range(clients)]
        latencies: list[float] = []
        errors = 0
        measuring = False
        stop_at = time.perf_counter() + warmup_s + duration_s

        async def one(index: int, client: _Client) -> None:
            nonlocal errors
            i = index * 997
            clock = time.perf_counter
            while True:
                began = clock()
                if began >= stop_at:
                    return
                status, _ = await client.exchange(requests[i % len(requests)])
                if measuring:
                    latencies.append(clock() - began)
                    if status != 200:
                        errors += 1
                i += 1

        tasks = [asyncio.create_task(one(n, c)) for n, c in enumerate(connections)]
        await asyncio.sleep(warmup_s)
        measuring = True
        began, cpu = time.perf_counter(), time.process_time()
        server_cpu = server.cpu_seconds() if server is not None else None
        await asyncio.gather(*tasks)
        seconds = time.perf_counter() - began
        client_cpu = time.process_time() - cpu
        server_used = (server.cpu_seconds() - server_cpu
                       if server is not None and server_cpu is not None else None)
        for c in connections:
            c.transport.close()
        return LoadRun(endpoint, clients, seconds, latencies, errors, client_cpu, server_used)

    result: LoadRun = uvloop.run(load())
    if result.errors:
        raise BenchmarkError(f"{endpoint} at {clients} clients: {result.errors} answers were "
                             "not 200")
    return result


def get_request(path: str, token: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            "\r\n").encode()


def post_request(path: str, token: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


def timed_exchanges(port: int, requests: Sequence[bytes]) -> list[float]:
    """Each request over one connection, one after another; per-request
    latencies (non-200 raises)."""
    import uvloop

    async def go() -> list[float]:
        client = await _connect(port)
        out = []
        for request in requests:
            began = time.perf_counter()
            status, body = await client.exchange(request)
            out.append(time.perf_counter() - began)
            if status != 200:
                raise BenchmarkError(f"answer {status}: {body[:300]!r}")
        client.transport.close()
        return out

    result: list[float] = uvloop.run(go())
    return result


# -- the serving processes ---------------------------------------------------------------


def write_settings(path: Path, home: Path, token: str, store_kind: str,
                   store_options: dict[str, Any], extra: str = "") -> Path:
    options = "\n".join(f"{k} = {json.dumps(v)}" for k, v in store_options.items())
    path.write_text(f"home = {json.dumps(str(home))}\n[serving]\ntoken = {json.dumps(token)}\n"
                    f"score = false\n[tile_store]\nkind = {json.dumps(store_kind)}\n"
                    f"[tile_store.options]\n{options}\n{extra}", encoding="utf-8")
    return path


def start_lamina_serve(name: str, settings_file: Path, workdir: Path,
                       core: int | None) -> ServerProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
    env["LAMINA_CONFIG"] = str(settings_file)
    return start_server(name, [sys.executable, "-m", "lamina.cli", "serve"], workdir, core,
                        env=env, inherit=False)


# -- measuring -----------------------------------------------------------------------


@dataclass
class Parts:
    """Per-call wall time (µs, median of many) of the route's parts, in
    this process on the same store."""

    read_entity_us: float
    features_us: float
    response_us: float
    asgi_us: float
    constant_asgi_us: float


@dataclass
class StoreFigures:
    store: str
    version: str
    runs: dict[tuple[str, int], list[LoadRun]] = field(default_factory=dict)
    raw_read: list[float] = field(default_factory=list)
    lookup: list[float] = field(default_factory=list)
    parts: Parts | None = None
    batch: list[float] = field(default_factory=list)
    singles: list[float] = field(default_factory=list)
    raw_batch: list[float] = field(default_factory=list)
    batch_bytes: int = 0
    single_bytes: int = 0

    def best(self, endpoint: str, clients: int) -> LoadRun:
        return max(self.runs[(endpoint, clients)], key=lambda r: r.rate)


@dataclass
class Freshness:
    visible: list[float]
    kafka: list[float]
    polls: int
    missing: int


@dataclass
class ServingResults:
    data: Any  # benchmarks.tile_store.TileData
    stores: list[StoreFigures]
    ceiling: dict[int, LoadRun]
    constant: dict[int, list[LoadRun]]
    freshness: Freshness | None
    pinned: str
    duration_s: float
    versions: str
    freshness_error: str = ""


def _median_us(call: Callable[[], Any], n: int) -> float:
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        call()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1e6


def measure_parts(store: Any, data: Any, token: str, cards: Sequence[str],
                  calls: int = 1000) -> Parts:
    """The route's parts timed one by one in this process (see the module
    docstring), ``calls`` times each (the ASGI calls 1.5 times as many),
    and the whole app and the constant app called as ASGI.
    BenchmarkError if the app answers anything but 200 or 404, or never 200."""
    import dataclasses

    from lamina.config import Settings
    from lamina.schemas.card_views import CARD_VIEWS
    from lamina.serving.app import create_app
    from lamina.stores.lookup import FeatureReader

    reader = FeatureReader(CARD_VIEWS)
    rng = random.Random(5)
    picks = [rng.choice(cards) for _ in range(2000)]
    it = iter(range(10**9))

    def card() -> str:
        return picks[next(it) % len(picks)]

    snapshots = [store.read_entity(GROUP, c, data.now_ms, reader.spans) for c in picks[:200]]
    found = [s for s in snapshots if s.batch_record is not None or s.tiles]
    # As the route reads: the snapshot with the speed layer's offsets in it.
    read_entity = _median_us(lambda: store.read_entity(GROUP, card(), data.now_ms,
                                                       reader.spans, offsets_of="lamina-speed"),
                             calls)
    features = _median_us(lambda: reader.features(found[next(it) % len(found)]), calls)
    sample = found[0]
    values = reader.features(sample)
    view = sample.view
    batch = {"batch_version": view.batch_version, "cutoff_ms": view.cutoff_ms,
             "horizon_ms": view.horizon_ms, "generation": view.generation,
             "published_at_ms": view.published_at_ms}
    realtime: dict[str, Any] = {"tiles": len(sample.tiles), "newest_tile_start_ms": None,
                                "speed_offsets": {}}

    # The fast path's answer: the same fields as FeaturesResponse, as plain
    # data, dumped by orjson (the model is built only by FastAPI's route).
    def response() -> bytes:
        return orjson.dumps({"group": GROUP, "entity": sample.entity, "as_of_ms": data.now_ms,
                             "exact": True, "features": values, "batch": batch,
                             "realtime": realtime})

    response_us = _median_us(response, calls)
    settings = Settings()
    settings = dataclasses.replace(settings, serving=dataclasses.replace(
        settings.serving, token=token, score=False))
    app = create_app(settings, store=store)
    constant = constant_app()
    headers = [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode())]

    async def asgi(application: Any, path: str, query: bytes) -> int:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": query, "root_path": "", "headers": headers,
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        status = 0

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await application(scope, receive, send)
        return status

    async def time_asgi() -> tuple[float, float]:
        query = f"as_of_ms={data.now_ms}".encode()
        paths = [f"/v1/features/{GROUP}/{c}" for c in picks]
        samples, constants = [], []
        answered = 0
        for n in range(calls * 3 // 2):
            began = time.perf_counter()
            status = await asgi(app, paths[n % len(paths)], query)
            samples.append(time.perf_counter() - began)
            if status not in (200, 404):
                raise BenchmarkError(f"the app called as ASGI answered {status}")
            answered += status == 200
            began = time.perf_counter()
            if await asgi(constant, "/constant", b"") != 200:
                raise BenchmarkError("the constant app called as ASGI did not answer 200")
            constants.append(time.perf_counter() - began)
        if not answered:
            raise BenchmarkError("the app called as ASGI answered no lookup with 200")
        return statistics.median(samples) * 1e6, statistics.median(constants) * 1e6

    import concurrent.futures

    import uvloop

    # A loop of its own in a thread of its own: the caller's thread may
    # already run one (a test process after Playwright's sync API), where
    # uvloop.run refuses to start.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        asgi_us, constant_us = pool.submit(lambda: uvloop.run(time_asgi())).result()
    return Parts(read_entity, features, response_us, asgi_us, constant_us)


def raw_reads(store_name: str, options: dict[str, Any], store: Any, data: Any,
              cards: Sequence[str], n: int) -> tuple[list[float], list[float]]:
    """Per-call latencies of the raw read of a card's records
    (tile_store.RawStore.read) and of FeatureLookup.features, interleaved."""
    from benchmarks.tile_store import RawStore
    from lamina.schemas.card_views import CARD_VIEWS
    from lamina.stores.base import realtime_ranges
    from lamina.stores.lookup import FeatureLookup

    raw = RawStore(store_name, options)
    lookup = FeatureLookup(store, CARD_VIEWS)
    view = store.current_view(GROUP)
    ranges = realtime_ranges(data.cutoff_ms, data.now_ms, lookup.reader.spans)
    rng = random.Random(3)
    raw_s, lookup_s = [], []
    try:
        for _ in range(n):
            card = rng.choice(cards)
            began = time.perf_counter()
            raw.read(view.generation, card, ranges)
            raw_s.append(time.perf_counter() - began)
            began = time.perf_counter()
            lookup.features(card, data.now_ms)
            lookup_s.append(time.perf_counter() - began)
    finally:
        raw.close()
    return raw_s, lookup_s


def fill_store(name: str, data: Any, workdir: Path, url: str | None
               ) -> tuple[Any, dict[str, Any]]:
    """A fresh store with the data's batch view and realtime tiles."""
    from lamina.schemas.card_views import CARD_VIEWS
    from lamina.stores import BatchView, open_store
    from lamina.stores.lookup import definition_fingerprint

    options: dict[str, Any] = ({"path": str(workdir / f"serving-{uuid.uuid4().hex[:6]}.db")}
                               if name == "sqlite"
                               else {"url": url, "prefix": f"bench{uuid.uuid4().hex[:6]}"})
    store = open_store(name, **options)
    store.publish_batch(BatchView(group=GROUP, cutoff_ms=data.cutoff_ms,
                                  horizon_ms=data.horizon_ms, batch_version=1,
                                  definition=definition_fingerprint(CARD_VIEWS)), data.records)
    for i in range(0, len(data.rows), 500):
        store.write_tiles(data.rows[i:i + 500], consumer="lamina-speed",
                          offsets={("events.raw", 0): i})
    return store, options


def measure_store(name: str, data: Any, workdir: Path, url: str | None, token: str,
                  duration_s: float, batch_requests: int, rounds: int,
                  constant: ServerProcess, constant_runs: dict[int, list[LoadRun]],
                  cards: Sequence[str]) -> StoreFigures:
    import sqlite3

    store, options = fill_store(name, data, workdir, url)
    version = (f"SQLite {sqlite3.sqlite_version}" if name == "sqlite"
               else f"redis-py {metadata.version('redis')}")
    figures = StoreFigures(name, version)
    settings_file = write_settings(workdir / f"serve-{name}.toml", workdir, token, name, options)
    server = start_lamina_serve(f"lamina-serve-{name}", settings_file, workdir,
                                SERVER_CORE if can_pin() else None)
    try:
        rng = random.Random(4)
        requests = [get_request(f"/v1/features/{GROUP}/{rng.choice(cards)}"
                                f"?as_of_ms={data.now_ms}", token) for _ in range(4096)]
        constant_request = [get_request("/constant", token)]
        for round_no in range(1, rounds + 1):
            for clients in CONCURRENCY:
                run = run_load(server.port, requests, clients, duration_s, server, "features")
                figures.runs.setdefault(("features", clients), []).append(run)
                say(f"{name} round {round_no}, {clients} clients: features {run.describe()}")
                ref = run_load(constant.port, constant_request, clients, duration_s, constant,
                               "constant")
                constant_runs.setdefault(clients, []).append(ref)
                say(f"{name} round {round_no}, {clients} clients: constant {ref.describe()}")
            raw_s, lookup_s = raw_reads(name, options, store, data, cards, RAW_READS)
            figures.raw_read += raw_s
            figures.lookup += lookup_s
        say(f"{name}: raw read p50 {quantile(figures.raw_read, 0.5) * 1e3:.3f} ms, "
            f"FeatureLookup.features p50 {quantile(figures.lookup, 0.5) * 1e3:.3f} ms")
        figures.parts = measure_parts(store, data, token, cards)
        say(f"{name}: parts {figures.parts}")
        # Batch lookup of BATCH_ENTITIES, next to as many single lookups and raw reads.
        from benchmarks.tile_store import RawStore
        from lamina.schemas.card_views import CARD_VIEWS
        from lamina.stores.base import realtime_ranges
        from lamina.stores.lookup import FeatureReader

        spans = FeatureReader(CARD_VIEWS).spans
        ranges = realtime_ranges(data.cutoff_ms, data.now_ms, spans)
        raw = RawStore(name, options)
        generation = store.current_view(GROUP).generation
        try:
            for n in range(batch_requests):
                entities = [rng.choice(cards) for _ in range(BATCH_ENTITIES)]
                body = orjson.dumps({"entities": entities, "as_of_ms": data.now_ms})
                batch = timed_exchanges(server.port, [post_request(
                    f"/v1/features/{GROUP}:batch", token, body)])
                figures.batch += batch
                singles = timed_exchanges(server.port, [get_request(
                    f"/v1/features/{GROUP}/{e}?as_of_ms={data.now_ms}", token)
                    for e in entities])
                figures.singles.append(sum(singles))
                began = time.perf_counter()
                for e in entities:
                    raw.read(generation, e, ranges)
                figures.raw_batch.append(time.perf_counter() - began)
                if n == 0:
                    figures.batch_bytes = len(body)
            say(f"{name}: batch of {BATCH_ENTITIES} p50 {quantile(figures.batch, 0.5):.3f} s, "
                f"singles {quantile(figures.singles, 0.5):.3f} s, raw "
                f"{quantile(figures.raw_batch, 0.5):.3f} s")
        finally:
            raw.close()
    finally:
        server.stop()
        store.close()
    return figures


# -- freshness -------------------------------------------------------------------------


def measure_freshness(data: Any, workdir: Path, token: str, events: int,
                      cards: Sequence[str]) -> Freshness:
    """Produce -> visible in a served feature, next to produce -> consume
    (see the module docstring)."""
    from confluent_kafka import Consumer, Producer

    from lamina.broker import KafkaCluster, kafka_libs
    from lamina.schemas.topics import TopicSpec
    from lamina.topics import create_topics

    cluster = KafkaCluster(workdir / "kafka", kafka_libs(REPO / ".lamina"), nodes=1)
    say(f"freshness: starting Kafka in {cluster.cluster_dir}")
    cluster.start()
    speed: subprocess.Popen[bytes] | None = None
    server: ServerProcess | None = None
    try:
        if can_pin():
            for pid in cluster.pids:
                if pid is not None:
                    pin_pid_threads(pid, SERVER_CORE)
        bootstrap = cluster.bootstrap_servers
        topic = "bench.fresh"
        create_topics(bootstrap, [TopicSpec(topic, 1, -1), TopicSpec("bench.fresh.dlq", 1, -1)])
        _warm_up_group_coordinator(bootstrap, topic)
        store, options = fill_store("sqlite", data, workdir, None)
        store.close()
        extra = (f"[kafka]\nbootstrap_servers = {json.dumps(bootstrap)}\n"
                 f"raw_topic = {json.dumps(topic)}\ndlq_topic = \"bench.fresh.dlq\"\n"
                 "[speed]\nscore = false\nmetrics_interval_s = 1.0\n")
        settings_file = write_settings(workdir / "fresh.toml", workdir, token, "sqlite",
                                       options, extra)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAMINA_")}
        env["LAMINA_CONFIG"] = str(settings_file)
        speed_log = (workdir / "speed.log").open("wb")
        speed = subprocess.Popen([sys.executable, "-m", "lamina.cli", "speed", "run", "--quiet"],
                                 stdout=speed_log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        speed_log.close()
        server = start_lamina_serve("lamina-serve-fresh", settings_file, workdir,
                                    SERVER_CORE if can_pin() else None)
        template = _template_event(data)
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"fresh-{uuid.uuid4()}",
                             "auto.offset.reset": "latest", "enable.auto.commit": False})
        consumer.subscribe([topic])
        received: dict[str, float] = {}
        stop = threading.Event()

        def consume() -> None:
            while not stop.is_set():
                message = consumer.poll(0.05)
                if message is not None and message.error() is None:
                    received[(message.key() or b"").decode()] = time.perf_counter()

        rng = random.Random(6)
        base_time = data.now_ms + 1000
        # Warm-up: the speed layer's group join and the consumer's assignment.
        _produce_until_visible(producer, topic, template, rng.choice(cards), base_time, server,
                               token, data, timeout_s=300, received=None)
        # Join the group before the reader thread starts: confluent-kafka's
        # assignment() waits behind a poll in another thread, so asking it
        # from here while the reader polls hung the run. Nothing is produced
        # until then, so this poll drops no record.
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(0.05)
        if not consumer.assignment():
            raise BenchmarkError("the produce->consume reference consumer got no partition "
                                 f"of {topic} within 30 s")
        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        time.sleep(1.0)
        visible, kafka, polls, missing = _fresh_events(producer, topic, template, cards, rng,
                                                       base_time + 1000, server, token, data,
                                                       events, received)
        stop.set()
        reader.join()
        consumer.close()
        return Freshness(visible, kafka, polls, missing)
    finally:
        if server is not None:
            server.stop()
        if speed is not None:
            speed.terminate()
            try:
                speed.wait(timeout=30)
            except subprocess.TimeoutExpired:
                speed.kill()
        cluster.stop()


def _warm_up_group_coordinator(bootstrap: str, topic: str) -> None:
    """Commit one group offset so the broker creates `__consumer_offsets`
    now: a fresh broker does it on the first group join (the speed layer's),
    minutes on a loaded machine, and the warm-up event would wait for it."""
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    from lamina import kafkaio

    consumer = kafkaio.make_consumer(bootstrap, group_id="bench-fresh-warm-up")
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.commit({partition: OffsetAndMetadata(0, "", -1)})
    finally:
        consumer.close()


def _template_event(data: Any) -> dict[str, Any]:
    from lamina.generator import KIND_VALID, GeneratorConfig, generate

    config = GeneratorConfig(seed=42, transactions=200, cards=10, days=1.0)
    for record in generate(config):
        if record.kind == KIND_VALID:
            event = orjson.loads(record.value)
            if event.get("event_type") == "transaction":
                return dict(event)
    raise BenchmarkError("the generator produced no transaction")


def _event(template: dict[str, Any], card: str, event_time: int) -> tuple[str, bytes]:
    event_id = f"fresh-{uuid.uuid4().hex}"
    body = {**template, "event_id": event_id, "card_id": card, "event_time": event_time}
    return event_id, orjson.dumps(body)


def _produce_until_visible(producer: Any, topic: str, template: dict[str, Any], card: str,
                           event_time: int, server: ServerProcess, token: str, data: Any, *,
                           timeout_s: float, received: dict[str, float] | None) -> float:
    event_id, value = _event(template, card, event_time)
    began = time.perf_counter()
    producer.produce(topic, key=event_id.encode(), value=value)
    producer.flush(10)
    request = get_request(f"/v1/features/{GROUP}/{card}?as_of_ms={data.now_ms + 3_600_000}",
                          token)
    while time.perf_counter() - began < timeout_s:
        status, body = timed_fetch(server.port, request)
        if status == 200 and orjson.loads(body)["features"].get(
                "last_event_time_lifetime") == event_time:
            return time.perf_counter() - began
        time.sleep(0.05)
    raise BenchmarkError(f"the warm-up event was not served within {timeout_s:.0f} s")


def timed_fetch(port: int, request: bytes) -> tuple[int, bytes]:
    import uvloop

    async def go() -> tuple[int, bytes]:
        client = await _connect(port)
        try:
            return await client.exchange(request)
        finally:
            client.transport.close()

    result: tuple[int, bytes] = uvloop.run(go())
    return result


def _fresh_events(producer: Any, topic: str, template: dict[str, Any], cards: Sequence[str],
                  rng: random.Random, first_time: int, server: ServerProcess, token: str,
                  data: Any, events: int, received: dict[str, float]
                  ) -> tuple[list[float], list[float], int, int]:
    import uvloop

    as_of = data.now_ms + 3_600_000
    sent: dict[str, float] = {}

    async def go() -> tuple[list[float], int, int]:
        visible: list[float] = []
        polls = 0
        missing = 0

        async def watch(card: str, event_time: int, began: float) -> None:
            nonlocal polls, missing
            client = await _connect(server.port)
            request = get_request(f"/v1/features/{GROUP}/{card}?as_of_ms={as_of}", token)
            try:
                while time.perf_counter() - began < FRESH_TIMEOUT_S:
                    status, body = await client.exchange(request)
                    polls += 1
                    if status == 200 and orjson.loads(body)["features"].get(
                            "last_event_time_lifetime") == event_time:
                        visible.append(time.perf_counter() - began)
                        return
                    await asyncio.sleep(FRESH_POLL_S)
                missing += 1
            finally:
                client.transport.close()

        tasks = []
        used: set[str] = set()
        start = time.perf_counter()
        for n in range(events):
            await asyncio.sleep(max(0.0, start + n / FRESH_RATE - time.perf_counter()))
            card = rng.choice([c for c in rng.sample(list(cards), 8) if c not in used] or cards)
            used.add(card)
            event_time = first_time + n * 1000
            event_id, value = _event(template, card, event_time)
            began = time.perf_counter()
            sent[event_id] = began
            producer.produce(topic, key=event_id.encode(), value=value)
            producer.poll(0)
            tasks.append(asyncio.create_task(watch(card, event_time, began)))
        producer.flush(10)
        await asyncio.gather(*tasks)
        return visible, polls, missing

    visible, polls, missing = uvloop.run(go())
    time.sleep(0.5)
    kafka = [received[k] - t for k, t in sent.items() if k in received]
    if len(kafka) < len(sent):
        missing += len(sent) - len(kafka)
    return visible, kafka, polls, missing


# -- the whole suite -------------------------------------------------------------------


def measure_serving(quick: bool, rounds: int, stores: Sequence[str] = ("sqlite", "redis"),
                    freshness: bool = True) -> ServingResults:
    from benchmarks.tile_store import prepare_data, redis_server

    began = time.monotonic()
    data = prepare_data(QUICK_TRANSACTIONS if quick else TRANSACTIONS)
    say(f"serving data: {data.describe()}")
    cards = data.cards
    token = secrets.token_urlsafe(24)
    duration = QUICK_DURATION_S if quick else DURATION_S
    batch_requests = QUICK_BATCH_REQUESTS if quick else BATCH_REQUESTS
    workdir = Path(tempfile.mkdtemp(prefix="lamina-bench-serving-"))
    cores = set(os.sched_getaffinity(0))
    pinned = "Nothing pinned (needs cores 0 and 1 and taskset): every process shares the CPUs."
    pin = can_pin()
    if pin:
        pin_self(CLIENT_CORE)
        pinned = (f"Servers (lamina serve, the constant app, the raw responder; redis-server; "
                  f"the broker for freshness) on core {SERVER_CORE} (`taskset`), this process "
                  f"(load generator, raw reads, the in-process parts) on core {CLIENT_CORE}; "
                  "`lamina speed run` (freshness) unpinned.")
    figures: list[StoreFigures] = []
    constant_runs: dict[int, list[LoadRun]] = {}
    ceiling: dict[int, LoadRun] = {}
    fresh: Freshness | None = None
    fresh_error = ""
    constant: ServerProcess | None = None
    raw_server: ServerProcess | None = None
    redis_version = ""
    try:
        core = SERVER_CORE if pin else None
        module = [sys.executable, "-m", "benchmarks.serving"]
        constant = start_server("constant", [*module, "constant-server"], workdir, core)
        raw_server = start_server("raw", [*module, "raw-server"], workdir, core)
        for clients in CONCURRENCY:
            ceiling[clients] = run_load(raw_server.port, [get_request("/constant", token)],
                                        clients, duration, raw_server, "raw")
            say(f"client ceiling, {clients} clients: {ceiling[clients].describe()}")
        raw_server.stop()
        raw_server = None
        if "sqlite" in stores:
            figures.append(measure_store("sqlite", data, workdir, None, token, duration,
                                         batch_requests, rounds, constant, constant_runs,
                                         cards))
        if "redis" in stores:
            with redis_server(workdir) as (url, pid):
                if pin:
                    pin_pid_threads(pid, SERVER_CORE)
                import redis

                client = redis.Redis.from_url(url)
                redis_version = f"redis-server {client.info('server')['redis_version']}"
                client.close()
                figures.append(measure_store("redis", data, workdir, url, token, duration,
                                             batch_requests, rounds, constant, constant_runs,
                                             cards))
                figures[-1].version = f"{redis_version}, {figures[-1].version}"
        constant.stop()
        constant = None
        if freshness:
            try:
                fresh = measure_freshness(data, workdir, token,
                                          QUICK_FRESH_EVENTS if quick else FRESH_EVENTS, cards)
            except (BenchmarkError, LaminaError) as exc:
                # The HTTP figures stand; the table says why this one is missing.
                fresh_error = str(exc).splitlines()[0]
                say(f"freshness not measured: {fresh_error}")
        if fresh is not None:
            say(f"freshness: visible p99 {quantile(fresh.visible, 0.99) * 1e3:.0f} ms, "
                f"kafka p99 {quantile(fresh.kafka, 0.99) * 1e3:.1f} ms")
    finally:
        for server in (constant, raw_server):
            if server is not None:
                server.stop()
        os.sched_setaffinity(0, cores)
        shutil.rmtree(workdir, ignore_errors=True)
    versions = ", ".join(f"{d} {metadata.version(d)}" for d in
                         ("fastapi", "starlette", "pydantic", "uvicorn", "uvloop", "httptools",
                          "orjson"))
    return ServingResults(data, figures, ceiling, constant_runs, fresh, pinned,
                          time.monotonic() - began, versions, fresh_error)


# -- the report ------------------------------------------------------------------------


def _speed_wait_s() -> float:
    """The ``[speed] batch_max_wait_s`` default, which the freshness run's
    ``lamina speed run`` uses."""
    from lamina.config import SpeedSettings

    return SpeedSettings().batch_max_wait_s


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def serving_rows(results: ServingResults) -> list[Row]:
    rows: list[Row] = []
    for clients, run in results.ceiling.items():
        constant = max(results.constant[clients], key=lambda r: r.rate)
        rows.append(Row(f"load generator ceiling, {clients} clients (raw asyncio responder)",
                        f"{run.rate:,.0f} req/s; p50 {_ms(run.p(0.5))}, p99 {_ms(run.p(0.99))}",
                        f"constant FastAPI endpoint {constant.rate:,.0f} req/s",
                        fmt_ratio(run.rate / constant.rate), "≫ 1×",
                        f"the client's own limit; client CPU {run.client_cpu_s / run.seconds:.0%}"
                        f" of its core, responder CPU "
                        f"{(run.server_cpu_s or 0) / run.seconds:.0%} of its core"))
    for f in results.stores:
        raw50, raw99 = quantile(f.raw_read, 0.5), quantile(f.raw_read, 0.99)
        for clients in CONCURRENCY:
            run = f.best("features", clients)
            constant = max(results.constant[clients], key=lambda r: r.rate)
            ratio = run.rate / constant.rate
            target, verdict = "—", ""
            if clients == 8:
                target = f"p99 < {TARGET_P99_MS:.0f} ms and ≥ {TARGET_RATIO}×"
                ok_p99 = run.p(0.99) * 1e3 < TARGET_P99_MS
                ok_ratio = ratio >= TARGET_RATIO
                verdict = (f"p99 target {'met' if ok_p99 else 'NOT met'}, throughput target "
                           f"{'met' if ok_ratio else 'NOT met'}; ")
            cpu = run.server_cpu_per_request_us
            ccpu = constant.server_cpu_per_request_us
            rows.append(Row(
                f"{f.store}: GET features, {clients} client{'s' if clients > 1 else ''}",
                f"{run.rate:,.0f} req/s; p50 {_ms(run.p(0.5))}, p99 {_ms(run.p(0.99))}",
                f"constant {constant.rate:,.0f} req/s (p50 {_ms(constant.p(0.5))}, p99 "
                f"{_ms(constant.p(0.99))}); raw store read p50 {_ms(raw50)}, p99 {_ms(raw99)}",
                fmt_ratio(ratio), target,
                f"{verdict}server CPU {cpu or 0:,.0f} µs/request (constant {ccpu or 0:,.0f}); "
                f"client CPU {run.client_cpu_s / run.seconds:.0%}; best of "
                f"{len(f.runs[('features', clients)])} by req/s: "
                + ", ".join(f"{r.rate:,.0f}" for r in f.runs[("features", clients)])))
        rows.append(Row(f"{f.store}: FeatureLookup.features in-process (one at a time)",
                        f"p50 {_ms(quantile(f.lookup, 0.5))}, p99 {_ms(quantile(f.lookup, 0.99))}",
                        f"raw store read p50 {_ms(raw50)}, p99 {_ms(raw99)}",
                        fmt_ratio(quantile(f.lookup, 0.5) / raw50) + " (time)", "—",
                        f"{len(f.lookup):,} random cards, interleaved with the raw read, on the "
                        "client core between the HTTP runs"))
        if f.parts is not None:
            p = f.parts
            run = f.best("features", 8)
            total = run.server_cpu_per_request_us or 0.0
            constant_cpu = max(results.constant[8], key=lambda r: r.rate
                               ).server_cpu_per_request_us or 0.0
            steps = [
                ("store.read_entity (the snapshot with the speed offsets)", p.read_entity_us),
                ("FeatureReader.features (decode, merge, present)", p.features_us),
                ("the answer as JSON (orjson, the fast path's encoder)", p.response_us),
                ("ASGI rest: middleware, metrics, path and token checks (ASGI call minus "
                 "the parts above)",
                 p.asgi_us - p.read_entity_us - p.features_us - p.response_us),
                ("uvicorn HTTP + event loop (server CPU minus the ASGI call)",
                 total - p.asgi_us),
            ]
            for name, us in steps:
                rows.append(Row(f"{f.store}: request time, {name}", f"{us:,.0f} µs",
                                f"server CPU {total:,.0f} µs/request at 8 clients",
                                f"{us / total:.0%}" if total else "—", "—",
                                "median per call, in-process on the same store"
                                if "uvicorn" not in name else
                                f"constant app as ASGI {p.constant_asgi_us:,.0f} µs; the "
                                f"constant server's CPU {constant_cpu:,.0f} µs/request"))
        if f.batch:
            b50, b99 = quantile(f.batch, 0.5), quantile(f.batch, 0.99)
            s50, r50 = quantile(f.singles, 0.5), quantile(f.raw_batch, 0.5)
            rows.append(Row(
                f"{f.store}: POST :batch of {BATCH_ENTITIES:,} entities",
                f"p50 {_ms(b50)}, p99 {_ms(b99)}",
                f"{BATCH_ENTITIES:,} single GETs over one connection p50 {_ms(s50)} (p99 "
                f"{_ms(quantile(f.singles, 0.99))}); {BATCH_ENTITIES:,} raw store reads p50 "
                f"{_ms(r50)} (p99 {_ms(quantile(f.raw_batch, 0.99))})",
                f"{fmt_ratio(b50 / s50)} of singles, {fmt_ratio(b50 / r50)} of raw (time)", "—",
                f"{len(f.batch)} requests of random cards (request body {f.batch_bytes:,} B); "
                f"{b50 / BATCH_ENTITIES * 1e6:,.0f} µs per entity"))
    if results.freshness is None and results.freshness_error:
        rows.append(Row("freshness: produce → visible in a served feature", "not measured",
                        "—", "—", "—", results.freshness_error))
    if results.freshness is not None:
        fr = results.freshness
        rows.append(Row(
            "freshness: produce → visible in a served feature (SQLite, speed layer running)",
            f"p50 {_ms(quantile(fr.visible, 0.5))}, p99 {_ms(quantile(fr.visible, 0.99))}",
            f"Kafka produce → consume p50 {_ms(quantile(fr.kafka, 0.5))}, p99 "
            f"{_ms(quantile(fr.kafka, 0.99))}",
            fmt_ratio(quantile(fr.visible, 0.99) / quantile(fr.kafka, 0.99)) + " (p99 time)",
            "—",
            f"{len(fr.visible)} events at {FRESH_RATE:.0f}/s, polled every "
            f"{FRESH_POLL_S * 1e3:.0f} ms ({fr.polls:,} polls); {fr.missing} not seen within "
            f"{FRESH_TIMEOUT_S:.0f} s; the speed layer's micro-batch waits up to "
            f"{_speed_wait_s():g} s"))
    return rows


def serving_notes(results: ServingResults) -> list[str]:
    return [
        results.pinned,
        f"Versions: {results.versions}; " + "; ".join(f"{f.store}: {f.version}"
                                                      for f in results.stores) + ".",
        "Load: closed loop, one keep-alive HTTP/1.1 connection per client (a bare asyncio "
        "Protocol on uvloop), the Authorization header in every request; each (endpoint, "
        f"concurrency) ran {DURATION_S:g} s after a {WARMUP_S:g} s warm-up, endpoint and "
        "constant interleaved. p50/p99 are of every request of the reported run. Server CPU "
        "per request is the server process's utime + stime over the run divided by its "
        "requests (Redis: without redis-server's own CPU).",
        f"Suite duration {results.duration_s:.0f} s.",
    ]


# -- entry point (the reference servers) -------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving",
                                     description="The serving benchmark's reference servers "
                                                 "(the suite: python -m benchmarks.run "
                                                 "--only serving).")
    parser.add_argument("server", choices=["constant-server", "raw-server"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.server == "constant-server":
        _serve_constant(args.port)
    else:
        _serve_raw(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
