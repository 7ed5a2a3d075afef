"""The serving layer's HTTP API: batch (+) realtime features, scores, ad-hoc
scoring, health, readiness and metrics (FastAPI).

``create_app(settings)`` builds the app over the tile store the settings
name (``[tile_store]``) and the feature contract (``CARD_FRAUD``); tests
and embedders may hand it an open ``store`` and a champion source instead.
Every route but ``/health`` requires ``Authorization: Bearer <[serving]
token>`` (compared in constant time; the token is never logged).

What each answer guarantees
---------------------------
* A feature lookup reads **one store snapshot** per entity
  (``TileStore.read_entity``): the published batch view, that view's batch
  record and the realtime tiles at or after its cutoff, read at one
  instant, so no event is counted twice or missed across the cutoff, even
  while a new view is being published. Every answer names the view it used
  (batch version, cutoff, horizon, the store's generation).
* "As of" is "now" unless ``as_of_ms`` is given; a time outside the view's
  ``[cutoff, horizon)`` is refused with 422 naming that range. Realtime
  tiles are kept per tile, not per event, so an ``as_of_ms`` in the past
  inside a tile that has since received later events includes them
  (``lamina.stores.lookup``): exact answers are "now", or at a tile
  boundary of every hop; the past belongs to point-in-time training sets.
  Every answer says which it is (``exact``), so a past time inside a tile
  is never a silently wrong answer.
* A batch lookup reads every entity as **one store snapshot**
  (``TileStore.read_entities``: one SQLite read transaction, one Redis
  MULTI/EXEC), so under one batch view even while a publish switches views
  (``snapshot: "one_view"``; ``"per_entity"`` is kept in the schema for a
  store that could not, and names each entity's view).
* Scores are the speed layer's, stored with its tiles (``latest_scores``).
* An ad-hoc score takes the features strictly before the event through the
  speed layer's path (the store snapshot seeds an ``OnlineState``, then
  ``features_before``), the contract's vectoriser and the champion's
  scorer; nothing is written.
* The tile store unreachable: **503** (the batch records live in the same
  store, so there is no batch-only answer to fall back to; docs/decisions.md).
"""

from __future__ import annotations

import hmac
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import numpy as np
import orjson
from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lamina.config import Settings
from lamina.errors import ConfigError
from lamina.logs import get_logger
from lamina.models.champion import Champion
from lamina.schemas.card_views import CARD_FRAUD
from lamina.schemas.contract import FeatureContract
from lamina.schemas.event_schemas import default_registry
from lamina.schemas.online import OnlineState, QueryOutOfRange
from lamina.schemas.validation import EventValidator, ValidEvent
from lamina.schemas.view_definitions import GroupBy
from lamina.stores import (
    AsOfOutOfRange,
    EntitySnapshot,
    NoPublishedView,
    PublishedView,
    StoreError,
    StoreUnavailable,
    TileStore,
    open_store,
)
from lamina.stores.base import now_ms
from lamina.stores.lookup import FeatureReader
from lamina.stores.online import online_seed
from lamina.stores.sqlite import SqliteTileStore

log = get_logger(__name__)

API_VERSION = "1"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


# Module level: the route signatures' annotations are resolved here.
_BEARER = HTTPBearer(auto_error=False, description="[serving] token")
_EVENT_BODY = Body(
    description="a query event of the contract (a card transaction); event_id, event_type, "
                "schema_version and event_time (default: now) may be left out",
    examples=[{"card_id": "card-1", "merchant_id": "m-1", "merchant_category": "grocery",
               "amount": 12.5, "currency": "GBP", "country": "GB", "channel": "pos"}])


class ChampionSource(Protocol):
    """Where the champion comes from (``lamina.models.champion.ChampionHolder``)."""

    def check(self) -> Champion | None:
        """The champion to score with now (never blocks)."""


# --- response and request models (the OpenAPI schema) ---------------------------


class BatchViewInfo(BaseModel):
    """The published batch view an answer used."""

    batch_version: int
    cutoff_ms: int = Field(description="the batch part holds the events before it")
    horizon_ms: int = Field(description="the view answers as-of times before it")
    generation: int = Field(description="the store's publish counter of the group")
    published_at_ms: int


class RealtimeInfo(BaseModel):
    """How fresh the realtime part is."""

    tiles: int = Field(description="realtime tiles of the entity merged into the answer")
    newest_tile_start_ms: int | None = Field(
        description="start of the entity's newest realtime tile read (None: none since the "
                    "cutoff)")
    speed_offsets: dict[str, int] = Field(
        description="'topic:partition' -> position the speed layer stored with its last "
                    "tiles: everything before it is in the store (single lookups read it "
                    "in the same snapshot as the tiles)")


_EXACT = Field(description="true: every feature covers exactly the events strictly before "
                            "as_of_ms (as_of_ms is now or later, or on a tile edge of every "
                            "hop). false: "
                            "as_of_ms is a past time inside a tile, and a window's head tile "
                            "may include events at or after it (the store keeps partials per "
                            "tile); ask at a tile edge or use a point-in-time training set")


class FeaturesResponse(BaseModel):
    group: str
    entity: str
    as_of_ms: int
    exact: bool = _EXACT
    features: dict[str, int | float | list[int] | None]
    batch: BatchViewInfo
    realtime: RealtimeInfo


class BatchLookupRequest(BaseModel):
    entities: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1, description="entity keys to look up (at most [serving] "
                                  "max_batch_entities)")
    as_of_ms: int | None = Field(default=None, ge=0, description="default: now")


class EntityFeatures(BaseModel):
    entity: str
    found: bool
    features: dict[str, int | float | list[int] | None] | None
    batch: BatchViewInfo
    realtime: RealtimeInfo | None


class BatchLookupResponse(BaseModel):
    group: str
    as_of_ms: int
    exact: bool = _EXACT
    snapshot: str = Field(description="'one_view': every entity read under the batch view "
                                      "in 'batch'; 'per_entity': see each entity's")
    batch: BatchViewInfo | None
    results: list[EntityFeatures]


class ScoreInfo(BaseModel):
    event_id: str
    event_time_ms: int
    score: float
    model_version: int
    batch_version: int | None
    batch_cutoff_ms: int | None
    scored_at_ms: int


class ScoresResponse(BaseModel):
    entity: str
    scores: list[ScoreInfo] = Field(description="newest event first")


class AdHocScoreResponse(BaseModel):
    event_id: str
    entity: str
    event_time_ms: int
    score: float
    model_version: int
    batch: BatchViewInfo
    features: dict[str, float] = Field(description="the model's input, in its order")


class ErrorBody(BaseModel):
    detail: Any


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
    503: {"model": ErrorBody, "description": "tile store unavailable or nothing published"},
}


# --- the app ------------------------------------------------------------------------


class _RequestMetrics:
    """Counts and times every HTTP request per route, method and status
    (pure ASGI: Starlette's ``BaseHTTPMiddleware`` runs each request
    through a task group and memory streams, measured at a large share of
    a lookup's CPU, docs/benchmarks.md). Never logs the headers: the
    Authorization header carries the token."""

    def __init__(self, app: ASGIApp, *, requests: Counter, latency: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.latency = latency
        # The labelled children per (route, method, status): ``labels()``
        # validates and locks on every call, a good share of a lookup's time
        # (as many children as the registry itself keeps).
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            # The router stores the matched route in this same scope dict.
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            elapsed = time.perf_counter() - began
            children = self._children.get((route, method, status))
            if children is None:
                children = self._children[(route, method, status)] = (
                    self.requests.labels(route, method, str(status)),
                    self.latency.labels(route, method))
            children[0].inc()
            children[1].observe(elapsed)
            log.debug("request", route=route, method=method, status=status,
                      ms=round(elapsed * 1000, 3))


class _FastPath:
    """A pure-ASGI handler in front of FastAPI for the hottest route:
    ``handle(scope, receive, send)`` answers a request and returns True, or
    returns False (having sent nothing) to leave it to FastAPI. FastAPI's
    per-request machinery (dependency resolution, parameter validation,
    response-model validation and encoding) costs several times the lookup
    itself (docs/benchmarks.md); the route stays declared in FastAPI, which
    answers everything the fast path does not take and documents it."""

    def __init__(self, app: ASGIApp, *,
                 handle: Callable[[Scope, Receive, Send], Awaitable[bool]]) -> None:
        self.app = app
        self.handle = handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and await self.handle(scope, receive, send):
            return
        await self.app(scope, receive, send)


@dataclass
class _Group:
    group: GroupBy
    reader: FeatureReader

    def __post_init__(self) -> None:
        self.largest_hop = max(self.group.hops())

    def exact(self, t: int, *, now: bool) -> bool:
        """``exact_at`` with the largest hop computed once."""
        return now or t % self.largest_hop == 0


def exact_at(group: GroupBy, t: int, *, now: bool) -> bool:
    """Whether a lookup at ``t`` is exact (see ``FeaturesResponse.exact``):
    "now" or later (no applied event can be at or after it), or a tile edge of
    the largest hop (the group's hops divide one another, so of every hop)."""
    return now or t % max(group.hops()) == 0


def _view_info(view: PublishedView) -> BatchViewInfo:
    return BatchViewInfo(batch_version=view.batch_version, cutoff_ms=view.cutoff_ms,
                         horizon_ms=view.horizon_ms, generation=view.generation,
                         published_at_ms=view.published_at_ms)


def _store_from_settings(settings: Settings) -> TileStore:
    if settings.tile_store.kind == "sqlite" and not settings.tile_store.options.get("path"):
        settings.home.mkdir(parents=True, exist_ok=True)
    return open_store(settings.tile_store.kind, **settings.tile_store_options())


def _champions_from_settings(settings: Settings, contract: FeatureContract) -> ChampionSource:
    from lamina.models.champion import ChampionHolder

    holder = ChampionHolder.from_settings(settings, contract,
                                          poll_seconds=settings.serving.champion_poll_s)
    holder.check()  # starts loading in the background; /ready says when it is there
    return holder


def create_app(settings: Settings, *, store: TileStore | None = None,
               champions: ChampionSource | None = None,
               contract: FeatureContract = CARD_FRAUD,
               clock_ms: Callable[[], int] = now_ms) -> FastAPI:
    """The serving app over ``store`` (default: the settings' tile store)
    for ``contract``'s view groups. With ``[serving] score`` the champion
    comes from ``champions`` (default: a ``ChampionHolder`` following the
    registry's alias). ConfigError without a ``[serving] token``."""
    token = settings.serving.token
    if not token:
        raise ConfigError("[serving] token is empty: set it in the settings file or "
                          "LAMINA_SERVING_TOKEN (every route but /health needs it)")
    expected = token.encode()
    store = store if store is not None else _store_from_settings(settings)
    if settings.serving.score and champions is None:
        champions = _champions_from_settings(settings, contract)
    groups = {g.name: _Group(g, FeatureReader(g, record_cache=settings.serving.record_cache))
              for g in contract.groups}
    validator = EventValidator(max_event_bytes=settings.lander.max_event_bytes)
    speed_consumer = settings.speed.group
    lateness = settings.speed.allowed_lateness_ms
    max_entities = settings.serving.max_batch_entities

    # The embedded store answers in tens of µs: a lookup on the event loop
    # is cheaper than a thread-pool hop. A networked store (Redis) waits on
    # round trips, which the thread pool lets concurrent requests overlap
    # (docs/decisions.md, measured in docs/benchmarks.md).
    on_loop = isinstance(store, SqliteTileStore)

    app = FastAPI(title="Lamina serving", version=API_VERSION,
                  description="Batch (+) realtime features, the speed layer's scores and "
                              "ad-hoc scoring with the champion.")
    metrics = CollectorRegistry()
    requests = Counter("lamina_serving_requests", "HTTP requests served",
                       ("route", "method", "status"), registry=metrics)
    latency = Histogram("lamina_serving_request_seconds", "time to answer a request",
                        ("route", "method"), buckets=_LATENCY_BUCKETS, registry=metrics)
    app.state.store = store
    app.state.metrics = metrics

    # Inner first: the metrics middleware wraps the fast path too.
    app.add_middleware(_FastPath, handle=lambda *call: fast_features(*call))
    app.add_middleware(_RequestMetrics, requests=requests, latency=latency)

    async def authorised(request: Request, credentials: Annotated[
            HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        given = b"" if credentials is None else credentials.credentials.encode()
        if not hmac.compare_digest(given, expected):
            log.warning("request refused: missing or wrong bearer token",
                        route=request.url.path,
                        client=request.client.host if request.client else None)
            raise HTTPException(401, "a valid bearer token is required "
                                     "(Authorization: Bearer <[serving] token>)",
                                headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorised)]

    # --- errors ---------------------------------------------------------------------
    @app.exception_handler(StoreUnavailable)
    def store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.error("tile store unavailable", route=request.url.path, error=str(exc))
        return JSONResponse({"detail": f"the tile store is unavailable: {exc}"}, 503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(NoPublishedView)
    def nothing_published(request: Request, exc: NoPublishedView) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 503)

    @app.exception_handler(AsOfOutOfRange)
    def out_of_range(request: Request, exc: AsOfOutOfRange) -> JSONResponse:
        view = exc.view
        return JSONResponse({"detail": [{
            "loc": ["query", "as_of_ms"], "type": "as_of_out_of_range", "msg": str(exc),
            "allowed": {"from_ms": view.cutoff_ms, "before_ms": view.horizon_ms},
            "batch": _view_info(view).model_dump()}]}, 422)

    @app.exception_handler(StoreError)
    def store_error(request: Request, exc: StoreError) -> JSONResponse:
        log.error("tile store refused the lookup", route=request.url.path, error=str(exc))
        return JSONResponse({"detail": f"the tile store cannot answer: {exc}"}, 503)

    # --- helpers ----------------------------------------------------------------------
    def group_of(name: str) -> _Group:
        found = groups.get(name)
        if found is None:
            raise HTTPException(404, f"unknown view group {name!r}; this server serves "
                                     f"{sorted(groups)}")
        return found

    def realtime_info(snapshot: EntitySnapshot, offsets: Mapping[tuple[str, int], int]
                      ) -> RealtimeInfo:
        starts = [start for _, start in snapshot.tiles]
        return RealtimeInfo(tiles=len(snapshot.tiles),
                            newest_tile_start_ms=max(starts) if starts else None,
                            speed_offsets={f"{t}:{p}": o for (t, p), o in sorted(offsets.items())})

    def known(snapshot: EntitySnapshot) -> bool:
        return snapshot.batch_record is not None or bool(snapshot.tiles)

    def as_list(features: Mapping[str, Any]) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in features.items()}

    # --- routes -----------------------------------------------------------------------
    @app.get("/health", tags=["operations"])
    def health() -> dict[str, str]:
        """Liveness: the process answers (no store access, no auth)."""
        return {"status": "ok"}

    @app.get("/ready", tags=["operations"], dependencies=auth,
             responses={**_ERRORS, 503: {"description": "not ready; the body says why"}})
    def ready() -> JSONResponse:
        """Readiness: the store answers, every view group has a published
        batch view, and (with scoring) a champion is loaded."""
        problems: list[str] = []
        views: dict[str, Any] = {}
        for name in groups:
            try:
                view = store.current_view(name)
            except StoreError as exc:
                problems.append(f"tile store: {exc}")
                break
            if view is None:
                problems.append(f"view {name!r}: no batch view published")
            else:
                views[name] = _view_info(view).model_dump()
        champion = None
        if settings.serving.score and champions is not None:
            champion = champions.check()
            if champion is None:
                problems.append("no champion loaded yet (registry alias 'champion')")
        body = {"ready": not problems, "problems": problems, "views": views,
                "model_version": None if champion is None else champion.version}
        return JSONResponse(body, 200 if not problems else 503)

    @app.get("/metrics", tags=["operations"], dependencies=auth, responses=_ERRORS,
             response_class=Response)
    def prometheus_metrics() -> Response:
        """Request counts and latency histograms per route (Prometheus text)."""
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/features/{group}/{entity}", tags=["features"], dependencies=auth,
             response_model=FeaturesResponse,
             responses={**_ERRORS, 404: {"model": ErrorBody, "description": "unknown entity"},
                        422: {"description": "malformed request, or as_of_ms outside the "
                                             "published view's [cutoff, horizon)"}})
    async def features(group: Annotated[str, Path(min_length=1, max_length=64)],
                 entity: Annotated[str, Path(min_length=1, max_length=256)],
                 as_of_ms: Annotated[int | None, Query(ge=0, description="default: now")]
                 = None) -> FeaturesResponse:
        """Every feature of the group for ``entity`` just before ``as_of_ms``:
        the published batch record merged with the realtime tiles since its
        cutoff, read as one snapshot."""
        found = group_of(group)
        t = clock_ms() if as_of_ms is None else as_of_ms
        now = as_of_ms is None or as_of_ms >= clock_ms()
        if on_loop:
            return lookup(found, group, entity, t, now)
        return await run_in_threadpool(lookup, found, group, entity, t, now)

    def answer(found: _Group, group: str, entity: str, t: int, now: bool) -> dict[str, Any]:
        """The features answer as plain data, in ``FeaturesResponse``'s field
        order (the route validates it into the model, the fast path dumps it
        with orjson: one answer, two encoders; a histogram stays a tuple, which
        both encode as an array). HTTPException 404 for an unknown entity;
        the store's errors propagate."""
        # The speed layer's offsets in the same snapshot: what its tiles reflect.
        snapshot = store.read_entity(group, entity, t, found.reader.spans,
                                     offsets_of=speed_consumer)
        if not known(snapshot):
            raise HTTPException(404, f"entity {entity!r} is unknown to view {group!r}: no batch "
                                     "record and no realtime tile in the windows as of "
                                     f"{t} (batch version {snapshot.view.batch_version})")
        values = found.reader.features(snapshot)
        view = snapshot.view
        starts = [start for _, start in snapshot.tiles]
        offsets = snapshot.offsets
        return {"group": group, "entity": entity, "as_of_ms": t,
                "exact": found.exact(t, now=now), "features": values,
                "batch": {"batch_version": view.batch_version, "cutoff_ms": view.cutoff_ms,
                          "horizon_ms": view.horizon_ms, "generation": view.generation,
                          "published_at_ms": view.published_at_ms},
                "realtime": {"tiles": len(snapshot.tiles),
                             "newest_tile_start_ms": max(starts) if starts else None,
                             "speed_offsets": {f"{topic}:{partition}": position
                                               for (topic, partition), position
                                               in sorted(offsets.items())}}}

    def lookup(found: _Group, group: str, entity: str, t: int, now: bool) -> FeaturesResponse:
        return FeaturesResponse.model_validate(answer(found, group, entity, t, now))

    @app.post("/v1/features/{group}:batch", tags=["features"], dependencies=auth,
              response_model=BatchLookupResponse,
              responses={**_ERRORS, 404: {"model": ErrorBody, "description": "unknown group"}})
    async def features_batch(group: Annotated[str, Path(min_length=1, max_length=64)],
                             request: BatchLookupRequest) -> BatchLookupResponse:
        """Many entities in one request, all read as one store snapshot
        under one batch view (see the module docstring); an unknown entity
        is ``found: false``, not an error."""
        found = group_of(group)
        if len(request.entities) > max_entities:
            raise HTTPException(422, [{"loc": ["body", "entities"], "type": "too_long",
                                       "msg": f"at most {max_entities} entities per request "
                                              f"([serving] max_batch_entities), got "
                                              f"{len(request.entities)}"}])
        t = clock_ms() if request.as_of_ms is None else request.as_of_ms
        now = request.as_of_ms is None or request.as_of_ms >= clock_ms()
        if on_loop:
            return batch_lookup(found, group, request.entities, t, now)
        return await run_in_threadpool(batch_lookup, found, group, request.entities, t, now)

    def batch_lookup(found: _Group, group: str, entities: list[str], t: int,
                     now: bool) -> BatchLookupResponse:
        snapshots = store.read_entities(group, entities, t, found.reader.spans)
        offsets = store.read_offsets(speed_consumer)
        one_view = len({s.view.generation for s in snapshots}) == 1  # read_entities: always
        results = []
        for snapshot in snapshots:
            hit = known(snapshot)
            results.append(EntityFeatures(
                entity=snapshot.entity, found=hit,
                features=as_list(found.reader.features(snapshot)) if hit else None,
                batch=_view_info(snapshot.view),
                realtime=realtime_info(snapshot, offsets) if hit else None))
        return BatchLookupResponse(group=group, as_of_ms=t, exact=found.exact(t, now=now),
                                   snapshot="one_view" if one_view else "per_entity",
                                   batch=_view_info(snapshots[0].view) if one_view else None,
                                   results=results)

    @app.get("/v1/scores/{entity}", tags=["scores"], dependencies=auth,
             response_model=ScoresResponse,
             responses={**_ERRORS, 404: {"model": ErrorBody, "description": "never scored"}})
    def scores(entity: Annotated[str, Path(min_length=1, max_length=256)]) -> ScoresResponse:
        """The speed layer's latest scores of ``entity`` (newest first), each
        with the model version that made it."""
        records = store.latest_scores(entity)
        if not records:
            raise HTTPException(404, f"entity {entity!r} has no stored score (never scored by "
                                     "the speed layer, or scored before scores were stored)")
        return ScoresResponse(entity=entity, scores=[
            ScoreInfo(event_id=r.event_id, event_time_ms=r.event_time, score=r.score,
                      model_version=r.model_version, batch_version=r.batch_version,
                      batch_cutoff_ms=r.batch_cutoff, scored_at_ms=r.scored_at)
            for r in records])

    @app.post("/v1/score", tags=["scores"], dependencies=auth,
              response_model=AdHocScoreResponse,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": query_event_schema(contract)}}}},
              responses={**_ERRORS, 422: {"description": "the event is not a valid query "
                                                         "event; the body names the field"}})
    def score_event(event: Annotated[dict[str, Any], _EVENT_BODY]) -> AdHocScoreResponse:
        """Score one event now with the champion: the features strictly before
        the event through the speed layer's path, the contract's vectoriser,
        the champion's scorer. Nothing is stored."""
        if not settings.serving.score or champions is None:
            raise HTTPException(503, "scoring is off on this server ([serving] score = false)")
        champion = champions.check()
        if champion is None:
            raise HTTPException(503, "no champion is loaded yet (registry alias 'champion'); "
                                     "see /ready")
        valid = _validate(validator, contract, event, clock_ms())
        payload = valid.payload
        t = valid.event_time_ms
        view_features: dict[str, Any] = {}
        used: PublishedView | None = None
        for member in groups.values():
            snapshot = store.read_entity(member.group.name, valid.entity_key, t,
                                         member.reader.spans)
            state = OnlineState(member.group, valid.entity_key, allowed_lateness_ms=lateness,
                                seed=online_seed(member.group, snapshot,
                                                 codec=member.reader.codec))
            try:
                view_features.update(state.features_before(t))
            except QueryOutOfRange as exc:
                raise HTTPException(422, [{"loc": ["body", "event_time"],
                                           "type": "out_of_range", "msg": str(exc)}]) from None
            used = snapshot.view
        assert used is not None  # a contract has at least one group
        try:
            vector = contract.vector(payload, view_features)
        except ConfigError:
            raise
        except Exception as exc:  # the event's data, not the code
            raise HTTPException(422, [{"loc": ["body"], "type": "not_vectorisable",
                                       "msg": f"the contract's vectoriser refused the event: "
                                              f"{exc}"}]) from None
        matrix = np.array([list(vector.values())], dtype=np.float32)
        if not np.isfinite(matrix).all():
            raise HTTPException(422, [{"loc": ["body"], "type": "not_finite",
                                       "msg": "the event's features are not all finite"}])
        value = float(champion.scorer(matrix)[0])
        return AdHocScoreResponse(event_id=valid.event_id, entity=valid.entity_key,
                                  event_time_ms=t, score=value, model_version=champion.version,
                                  batch=_view_info(used), features=vector)

    # --- the fast path of GET /v1/features/{group}/{entity} ------------------------
    # It takes exactly the requests whose answer needs none of FastAPI's
    # machinery to be the same: GET, the route's path, a known group, both
    # parameters within their lengths, no query or a plain `as_of_ms=<digits>`,
    # the right bearer token. Anything else goes to FastAPI before any work
    # (a wrong token, so FastAPI logs and answers the 401). Its errors go
    # through the app's own exception handlers, so bodies are identical; the
    # answer is the route's (`answer`), dumped by orjson instead of validated
    # into FeaturesResponse and encoded again (tests/unit/test_serving_fast.py
    # checks both give the same JSON).
    features_route = next(r for r in app.router.routes
                          if getattr(r, "path", None) == "/v1/features/{group}/{entity}")
    # A non-ASCII token is left to FastAPI, which compares decoded headers.
    bearer = b"Bearer " + expected if token.isascii() else None
    handlers = app.exception_handlers

    def fast_request(scope: Scope) -> tuple[_Group, str, str, int | None] | None:
        if scope["method"] != "GET" or scope.get("root_path") or bearer is None:
            return None
        parts = scope["path"].split("/")
        if len(parts) != 5 or parts[0] or parts[1] != "v1" or parts[2] != "features":
            return None
        group, entity = parts[3], parts[4]
        found = groups.get(group)
        if found is None or not 1 <= len(group) <= 64 or not 1 <= len(entity) <= 256:
            return None
        query: bytes = scope["query_string"]
        as_of_ms: int | None = None
        if query:
            digits = query[9:]
            if not query.startswith(b"as_of_ms=") or not digits.isdigit() \
                    or len(digits) > 18 or (digits[0] == 48 and len(digits) > 1):
                return None
            as_of_ms = int(digits)
        for name, value in scope["headers"]:
            if name == b"authorization":
                return (found, group, entity, as_of_ms) \
                    if hmac.compare_digest(value, bearer) else None
        return None

    async def fast_features(scope: Scope, receive: Receive, send: Send) -> bool:
        asked = fast_request(scope)
        if asked is None:
            return False
        found, group, entity, as_of_ms = asked
        scope["route"] = features_route  # the metrics' label, as the router sets it
        try:
            t = clock_ms() if as_of_ms is None else as_of_ms
            now = as_of_ms is None or as_of_ms >= clock_ms()
            if on_loop:
                body = answer(found, group, entity, t, now)
            else:
                body = await run_in_threadpool(answer, found, group, entity, t, now)
        except Exception as exc:
            # As Starlette's ExceptionMiddleware picks (Exception itself is the
            # server-error handler's, outside it).
            handler = next((handlers[c] for c in type(exc).__mro__
                            if c in handlers and c is not Exception), None)
            if handler is None:
                raise
            response = handler(Request(scope, receive), exc)
            if inspect.isawaitable(response):
                response = await response
            await response(scope, receive, send)
            return True
        data = orjson.dumps(body)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(data)).encode()),
                                (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})
        return True

    return app


#: Envelope fields an ad-hoc event may leave out (``_validate`` fills them).
_ENVELOPE_DEFAULTS = ("event_id", "event_type", "schema_version", "event_time")


def query_event_schema(contract: FeatureContract) -> dict[str, Any]:
    """The OpenAPI schema of an ad-hoc event: the latest event schema of the
    contract's query event type, the envelope fields optional. Requests are
    validated against the schema file itself, so the two cannot drift."""
    registry = default_registry()
    event_type = contract.query_event_type
    schema = dict(registry.get(event_type, registry.latest(event_type)))
    schema.pop("$schema", None)
    schema["required"] = [f for f in schema["required"] if f not in _ENVELOPE_DEFAULTS]
    return schema


def _validate(validator: EventValidator, contract: FeatureContract, event: Mapping[str, Any],
              now: int) -> ValidEvent:
    """The ad-hoc event completed (envelope defaults) and validated as the
    lander and the speed layer validate; HTTPException 422 naming the field
    otherwise."""
    full = {"event_id": f"adhoc-{uuid.uuid4().hex}", "event_type": contract.query_event_type,
            "schema_version": 1, "event_time": now, **event}
    result = validator.validate(orjson.dumps(full))
    if not isinstance(result, ValidEvent):
        detail = getattr(result, "detail", str(result))
        field = _field_named(detail)
        raise HTTPException(422, [{"loc": ["body", *([field] if field else [])],
                                   "type": getattr(result, "code", "invalid"), "msg": detail}])
    if result.event_type != contract.query_event_type:
        raise HTTPException(422, [{"loc": ["body", "event_type"], "type": "wrong_event_type",
                                   "msg": f"only {contract.query_event_type!r} events are "
                                          f"scored, got {result.event_type!r}"}])
    return result


def _field_named(detail: str) -> str | None:
    """The field a validator message names (``data.amount must ...``)."""
    marker = detail.find("data.")
    if marker < 0:
        return None
    name = detail[marker + 5:].split(" ", 1)[0].rstrip(",.:;")
    return name or None
