"""The serving API against the Redis tile store (a real redis-server,
tests/redis_fixtures.py): the same answers as over SQLite, and 503 -- never
a silently wrong answer -- when the store goes away."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lamina.serving.app import create_app
from lamina.stores.redis import RedisTileStore
from tests.redis_fixtures import _stop, start_redis
from tests.unit.test_serving_app import (
    GROUP,
    NOW,
    T0,
    TOKEN,
    auth,
    history,
    reference,
    score_record,
    serving_settings,
    write_realtime,
)
from tests.unit.test_speed_realtime import publish

pytestmark = pytest.mark.integration


def test_features_and_scores_over_redis_equal_the_reference(redis_url: str) -> None:
    store = RedisTileStore(redis_url, prefix="serving-test")
    events = history()
    publish(store, events, T0, 7)
    write_realtime(store, events, T0, position=5)
    store.write_tiles([], scores=[score_record("a", T0 + 1, 3, 0.25)])
    app = create_app(serving_settings(score=False), store=store, clock_ms=lambda: NOW)
    with TestClient(app) as client:
        for card in ("c0", "c1", "c2"):
            body = client.get(f"/v1/features/{GROUP}/{card}", headers=auth()).json()
            assert body["features"] == reference(events, card, NOW)
            assert body["batch"]["batch_version"] == 7
        batch = client.post(f"/v1/features/{GROUP}:batch", headers=auth(),
                            json={"entities": ["c0", "c1"]}).json()
        assert batch["snapshot"] == "one_view"
        assert [s["event_id"] for s in client.get("/v1/scores/c1", headers=auth()).json()[
            "scores"]] == ["a"]
        assert client.get("/health").status_code == 200
        assert client.get("/ready", headers=auth()).json()["ready"] is True
    store.close()


def test_a_store_that_goes_away_answers_503_never_a_wrong_answer(tmp_path: Path) -> None:
    server = start_redis(tmp_path)
    store = RedisTileStore(server.url(), socket_timeout_s=1.0)
    events = history()
    publish(store, events, T0, 1)
    app = create_app(serving_settings(score=False), store=store, clock_ms=lambda: NOW)
    with TestClient(app) as client:
        assert client.get(f"/v1/features/{GROUP}/c1", headers=auth()).status_code == 200
        _stop(server.process)
        response = client.get(f"/v1/features/{GROUP}/c1", headers=auth())
        assert response.status_code == 503
        assert "tile store is unavailable" in response.json()["detail"]
        assert TOKEN not in response.text
        assert client.get("/ready", headers=auth()).status_code == 503
        assert client.get("/health").status_code == 200  # alive, not ready
    store.close()
