"""A small Python client of the serving API with typed results.

``ServingClient(base_url, token)`` wraps one ``httpx.Client`` (or the one it
is given, e.g. FastAPI's TestClient). Each method returns a frozen
dataclass; an answer other than 200 raises ``ServingError`` with the
status and the server's ``detail`` (404: unknown entity, 422: the field
named, 503: store unavailable or nothing published).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from lamina.errors import LaminaError


class ServingError(LaminaError):
    """The server refused a request: ``status`` and its ``detail``."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"serving answered {status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class BatchViewUsed:
    batch_version: int
    cutoff_ms: int
    horizon_ms: int
    generation: int
    published_at_ms: int


@dataclass(frozen=True)
class Features:
    group: str
    entity: str
    as_of_ms: int
    features: dict[str, Any]
    batch: BatchViewUsed
    realtime_tiles: int
    newest_tile_start_ms: int | None
    speed_offsets: dict[str, int]
    #: False: a past ``as_of_ms`` inside a tile, whose head tiles may hold
    #: later events (serving/app.py, ``FeaturesResponse.exact``).
    exact: bool


@dataclass(frozen=True)
class BatchFeatures:
    group: str
    as_of_ms: int
    #: "one_view" (every entity under ``batch``) or "per_entity".
    snapshot: str
    batch: BatchViewUsed | None
    #: entity -> its features, None for an unknown entity.
    results: dict[str, dict[str, Any] | None]
    views: dict[str, BatchViewUsed]
    exact: bool


@dataclass(frozen=True)
class Score:
    event_id: str
    event_time_ms: int
    score: float
    model_version: int
    batch_version: int | None
    batch_cutoff_ms: int | None
    scored_at_ms: int


@dataclass(frozen=True)
class AdHocScore:
    event_id: str
    entity: str
    event_time_ms: int
    score: float
    model_version: int
    batch: BatchViewUsed
    features: dict[str, float]


def _view(data: dict[str, Any]) -> BatchViewUsed:
    return BatchViewUsed(**data)


class ServingClient:
    """The serving API over HTTP (module docstring). Use as a context
    manager, or call ``close()``."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", token: str = "", *,
                 timeout_s: float = 5.0, http: httpx.Client | None = None) -> None:
        self._owned = http is None
        self._http = http if http is not None else httpx.Client(base_url=base_url,
                                                                timeout=timeout_s)
        self._headers = {"Authorization": f"Bearer {token}"}

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, headers=self._headers, **kwargs)
        if response.status_code != 200:
            try:
                body = response.json()
                detail = body.get("detail", body) if isinstance(body, dict) else body
            except ValueError:
                detail = response.text
            raise ServingError(response.status_code, detail)
        return response.json()

    def features(self, group: str, entity: str, as_of_ms: int | None = None) -> Features:
        """Every feature of ``entity`` in view ``group`` (default: now)."""
        params = {} if as_of_ms is None else {"as_of_ms": as_of_ms}
        body = self._call("GET", f"/v1/features/{group}/{entity}", params=params)
        realtime = body["realtime"]
        return Features(group=body["group"], entity=body["entity"], as_of_ms=body["as_of_ms"],
                        features=body["features"], batch=_view(body["batch"]),
                        realtime_tiles=realtime["tiles"],
                        newest_tile_start_ms=realtime["newest_tile_start_ms"],
                        speed_offsets=realtime["speed_offsets"], exact=body["exact"])

    def features_batch(self, group: str, entities: list[str],
                       as_of_ms: int | None = None) -> BatchFeatures:
        """Many entities in one request (one batch view when the store allows)."""
        body = self._call("POST", f"/v1/features/{group}:batch",
                          json={"entities": entities, "as_of_ms": as_of_ms})
        return BatchFeatures(
            group=body["group"], as_of_ms=body["as_of_ms"], snapshot=body["snapshot"],
            batch=_view(body["batch"]) if body["batch"] else None,
            results={r["entity"]: r["features"] for r in body["results"]},
            views={r["entity"]: _view(r["batch"]) for r in body["results"]},
            exact=body["exact"])

    def scores(self, entity: str) -> list[Score]:
        """The speed layer's latest scores of ``entity``, newest first."""
        return [Score(**s) for s in self._call("GET", f"/v1/scores/{entity}")["scores"]]

    def score(self, event: dict[str, Any]) -> AdHocScore:
        """Score one event now with the champion (nothing is stored)."""
        body = self._call("POST", "/v1/score", json=event)
        return AdHocScore(event_id=body["event_id"], entity=body["entity"],
                          event_time_ms=body["event_time_ms"], score=body["score"],
                          model_version=body["model_version"], batch=_view(body["batch"]),
                          features=body["features"])

    def ready(self) -> dict[str, Any]:
        """The readiness body (``ServingError`` 503 with the problems if not ready)."""
        result: dict[str, Any] = self._call("GET", "/ready")
        return result
