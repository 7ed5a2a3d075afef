"""The fast path of GET /v1/features/{group}/{entity} (serving/app.py,
``_FastPath``): for every request it takes, the answer -- status, body,
content type -- is the one FastAPI's route gives, errors included; what it
does not take reaches FastAPI unchanged. FastAPI's answer is had by asking
with the scheme written ``bearer`` (valid, but not the spelling the fast
path takes), over the same app and store (the fixtures of test_serving_app)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from lamina.serving.app import FeaturesResponse, create_app
from lamina.stores.base import TileStore
from lamina.stores.sqlite import SqliteTileStore
from tests.unit.test_serving_app import (
    GROUP,
    NOW,
    T0,
    TOKEN,
    auth,
    history,
    serving_settings,
    write_realtime,
)
from tests.unit.test_speed_realtime import DAY_MS, HOUR_MS, publish

FASTAPI = {"Authorization": f"bearer {TOKEN}"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TileStore]:
    with SqliteTileStore(tmp_path / "tiles.db") as opened:
        yield opened


@pytest.fixture
def client(store: TileStore) -> Iterator[TestClient]:
    events = history()
    publish(store, events, T0, 7)
    write_realtime(store, events, T0, position=42)
    app = create_app(serving_settings(score=False), store=store, clock_ms=lambda: NOW)
    with TestClient(app) as test_client:
        yield test_client


def both(client: TestClient, path: str) -> tuple[Any, Any]:
    fast = client.get(path, headers=auth())
    slow = client.get(path, headers=FASTAPI)
    return fast, slow


def same(fast: Any, slow: Any) -> None:
    assert fast.status_code == slow.status_code, (fast.text, slow.text)
    assert fast.json() == slow.json()
    assert fast.headers["content-type"] == slow.headers["content-type"]
    assert fast.headers.get("retry-after") == slow.headers.get("retry-after")


def test_the_fast_answer_is_the_routes_answer(client: TestClient,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    validated: list[str] = []  # the route validates its answer; the fast path does not
    original = FeaturesResponse.model_validate
    monkeypatch.setattr(FeaturesResponse, "model_validate",
                        lambda body: validated.append(body["entity"]) or original(body))
    queries = ["", f"?as_of_ms={T0}", f"?as_of_ms={T0 + 3 * HOUR_MS}",
               f"?as_of_ms={T0 + 5 * HOUR_MS + 17}", f"?as_of_ms={NOW}", f"?as_of_ms={NOW + 1}"]
    answered = 0
    for card in ("c0", "c1", "c2"):
        for query in queries:
            fast, slow = both(client, f"/v1/features/{GROUP}/{card}{query}")
            same(fast, slow)
            answered += fast.status_code == 200
    assert answered == 18
    assert len(validated) == 18  # FastAPI answered every `bearer` request, and only those
    body = client.get(f"/v1/features/{GROUP}/c1", headers=auth()).json()
    assert body["features"] and body["realtime"]["speed_offsets"] == {"events.raw:0": 42}


def test_its_errors_are_the_routes_errors(client: TestClient, store: TileStore) -> None:
    for path in (f"/v1/features/{GROUP}/nobody",  # 404 unknown entity
                 f"/v1/features/{GROUP}/c1?as_of_ms={T0 - 1}",  # 422 before the cutoff
                 f"/v1/features/{GROUP}/c1?as_of_ms={T0 + 2 * DAY_MS}"):  # at the horizon
        fast, slow = both(client, path)
        assert fast.status_code in (404, 422)
        same(fast, slow)
    store.close()  # the store refuses every read now: 503
    fast, slow = both(client, f"/v1/features/{GROUP}/c1")
    assert fast.status_code == 503
    same(fast, slow)


def test_what_it_does_not_take_reaches_fastapi(client: TestClient) -> None:
    expect = {
        f"/v1/features/{GROUP}/c1?as_of_ms=soon": 422,
        f"/v1/features/{GROUP}/c1?as_of_ms=-5": 422,
        f"/v1/features/{GROUP}/c1?as_of_ms=1.0": 422,
        f"/v1/features/{GROUP}/c1?as_of_ms=0{T0}": 200,
        f"/v1/features/{GROUP}/c1?other=1": 200,
        f"/v1/features/{GROUP}/{'x' * 257}": 422,
        "/v1/features/merchant_views/c1": 404,
    }
    for path, status in expect.items():
        fast, slow = both(client, path)
        assert fast.status_code == status, (path, fast.text)
        same(fast, slow)
    for headers in ({}, auth("wrong-token"), {"Authorization": "Bearer"}):
        refused = client.get(f"/v1/features/{GROUP}/c1", headers=headers)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert client.post(f"/v1/features/{GROUP}/c1", headers=auth()).status_code == 405
