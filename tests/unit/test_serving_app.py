"""The serving API over a real SQLite tile store written through the store
API (a published batch view and realtime tiles): features equal the
reference recomputation (the lambda equation, invariant 4), across a
publish too; scores, ad-hoc scoring, errors, auth, readiness and metrics.
The same routes against Redis: tests/integration/test_serving_redis.py."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina.config import ServingSettings, Settings
from lamina.errors import ConfigError
from lamina.schemas.card_views import CARD_FRAUD, CARD_VIEWS
from lamina.schemas.scores import ScoreRecord
from lamina.schemas.view_definitions import build_tiles, features_from_events
from lamina.serving.app import create_app
from lamina.stores.base import TileRow, TileStore
from lamina.stores.codec import TileCodec
from lamina.stores.sqlite import SqliteTileStore
from tests.unit.test_speed_realtime import DAY_MS, HOUR_MS, MINUTE_MS, publish
from tests.unit.test_speed_scoring import CountingScorer, champion
from tests.unit.test_speed_stream_scoring import Fixed
from tests.unit.test_views import T0, txn

TOKEN = "serving-test-token-6f1d"
GROUP = CARD_VIEWS.name
NOW = T0 + 20 * HOUR_MS  # after every event below, before the horizon (T0 + 2 d)


def serving_settings(**serving: Any) -> Settings:
    return dataclasses.replace(Settings(), serving=ServingSettings(token=TOKEN, **serving))


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def write_realtime(store: TileStore, events: list[dict[str, Any]], cutoff: int,
                   position: int = 1) -> None:
    """The realtime tiles of the events at or after ``cutoff``, as the speed
    layer writes them (one ``write_tiles`` with its offsets)."""
    after = [e for e in events if e["event_time"] >= cutoff]
    codec = TileCodec(CARD_VIEWS)
    rows = [TileRow(GROUP, entity, hop, start, codec.encode(hop, partials))
            for hop in CARD_VIEWS.hops()
            for (entity, start), partials in build_tiles(CARD_VIEWS, after, hop).items()]
    store.write_tiles(rows, consumer="lamina-speed", offsets={("events.raw", 0): position})


def history() -> list[dict[str, Any]]:
    """Three cards over four days before T0 and the hours after it."""
    events = []
    for i in range(120):
        card = f"c{i % 3}"
        at = T0 - 4 * DAY_MS + i * 53 * MINUTE_MS  # up to ~T0 + 10 h
        events.append(txn(f"e{i}", at, card=card, amount=1.0 + (i * 7) % 40,
                          channel=("pos", "online", "atm")[i % 3],
                          country="GB" if i % 4 else "US"))
    return events


def reference(events: list[dict[str, Any]], card: str, t: int) -> dict[str, Any]:
    expected = features_from_events(CARD_VIEWS, events, card, t)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in expected.items()}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TileStore]:
    with SqliteTileStore(tmp_path / "tiles.db") as opened:
        yield opened


@pytest.fixture
def scorer() -> CountingScorer:
    return CountingScorer(len(CARD_FRAUD.features))


@pytest.fixture
def client(store: TileStore, scorer: CountingScorer) -> Iterator[TestClient]:
    events = history()
    publish(store, events, T0, 7)
    write_realtime(store, events, T0, position=42)
    app = create_app(serving_settings(), store=store, champions=Fixed(champion(3, scorer)),
                     clock_ms=lambda: NOW)
    with TestClient(app) as test_client:
        yield test_client


# --- features ---------------------------------------------------------------------


def test_features_merge_the_batch_record_and_the_realtime_tiles_and_name_the_view(
        client: TestClient) -> None:
    events = history()
    for card in ("c0", "c1", "c2"):
        body = client.get(f"/v1/features/{GROUP}/{card}", headers=auth()).json()
        assert body["features"] == reference(events, card, NOW)
        assert body["as_of_ms"] == NOW  # "now" by default
        assert (body["batch"]["batch_version"], body["batch"]["cutoff_ms"],
                body["batch"]["horizon_ms"]) == (7, T0, T0 + 2 * DAY_MS)
        assert body["realtime"]["tiles"] > 0
        assert body["realtime"]["newest_tile_start_ms"] >= T0
        assert body["realtime"]["speed_offsets"] == {"events.raw:0": 42}
    at = T0 + 3 * HOUR_MS  # a tile boundary of every hop but the day
    body = client.get(f"/v1/features/{GROUP}/c1?as_of_ms={T0}", headers=auth()).json()
    assert body["features"] == reference(events, "c1", T0) and body["realtime"]["tiles"] == 0
    assert client.get(f"/v1/features/{GROUP}/c1?as_of_ms={at}", headers=auth()).status_code == 200


def test_a_past_as_of_inside_a_tile_is_flagged_inexact_and_now_or_a_tile_edge_is_exact(
        client: TestClient) -> None:
    events = history()
    cards = ("c0", "c1", "c2")
    now = [client.get(f"/v1/features/{GROUP}/{c}", headers=auth()).json() for c in cards]
    assert all(body["exact"] for body in now)
    edge = client.get(f"/v1/features/{GROUP}/c1?as_of_ms={T0}", headers=auth()).json()
    assert edge["exact"] and edge["features"] == reference(events, "c1", T0)
    # One millisecond after the newest realtime event of each card: its
    # day tile holds the events up to then, so the answer is still the
    # strict one; one before it, the head tile includes that event.
    inexact_seen = False
    for card in cards:
        newest = max(e["event_time"] for e in events
                     if e["card_id"] == card and e["event_time"] >= T0)
        body = client.get(f"/v1/features/{GROUP}/{card}?as_of_ms={newest}",
                          headers=auth()).json()
        assert body["exact"] is (newest % DAY_MS == 0)
        if not body["exact"] and body["features"] != reference(events, card, newest):
            inexact_seen = True
    assert inexact_seen  # the flag marks answers that do differ from "strictly before"
    batch = client.post(f"/v1/features/{GROUP}:batch", headers=auth(),
                        json={"entities": list(cards), "as_of_ms": T0 + 1}).json()
    assert batch["exact"] is False
    assert client.post(f"/v1/features/{GROUP}:batch", headers=auth(),
                       json={"entities": list(cards)}).json()["exact"] is True


def test_an_as_of_outside_the_published_view_is_refused_naming_the_allowed_range(
        client: TestClient) -> None:
    for as_of in (T0 - 1, T0 + 2 * DAY_MS):
        response = client.get(f"/v1/features/{GROUP}/c1?as_of_ms={as_of}", headers=auth())
        assert response.status_code == 422
        (error,) = response.json()["detail"]
        assert error["loc"] == ["query", "as_of_ms"]
        assert error["allowed"] == {"from_ms": T0, "before_ms": T0 + 2 * DAY_MS}
        assert error["batch"]["batch_version"] == 7


def test_unknown_entities_and_groups_are_404_and_malformed_requests_422_naming_the_field(
        client: TestClient) -> None:
    response = client.get(f"/v1/features/{GROUP}/nobody", headers=auth())
    assert response.status_code == 404
    assert "entity 'nobody' is unknown" in response.json()["detail"]
    response = client.get("/v1/features/merchant_views/c1", headers=auth())
    assert response.status_code == 404 and "unknown view group" in response.json()["detail"]
    response = client.get(f"/v1/features/{GROUP}/c1?as_of_ms=soon", headers=auth())
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "as_of_ms"]
    response = client.post(f"/v1/features/{GROUP}:batch", headers=auth(),
                           json={"entities": "c1"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "entities"]


def test_a_batch_lookup_reads_every_entity_under_one_view(client: TestClient) -> None:
    events = history()
    response = client.post(f"/v1/features/{GROUP}:batch", headers=auth(),
                           json={"entities": ["c2", "nobody", "c0"]})
    body = response.json()
    assert response.status_code == 200
    assert body["snapshot"] == "one_view" and body["batch"]["batch_version"] == 7
    assert [(r["entity"], r["found"]) for r in body["results"]] == [
        ("c2", True), ("nobody", False), ("c0", True)]
    assert body["results"][0]["features"] == reference(events, "c2", NOW)
    assert body["results"][1]["features"] is None
    too_many = client.post(f"/v1/features/{GROUP}:batch", headers=auth(),
                           json={"entities": [f"e{i}" for i in range(1001)]})
    assert too_many.status_code == 422
    assert too_many.json()["detail"][0]["loc"] == ["body", "entities"]


# --- scores ---------------------------------------------------------------------------


def score_record(event_id: str, event_time: int, version: int, value: float) -> ScoreRecord:
    return ScoreRecord(event_id=event_id, entity_key="card_id", entity="c1",
                       event_time=event_time, score=value, model_version=version,
                       batch_version=7, batch_cutoff=T0, scored_at=event_time + 9,
                       produce_to_score_ms=9, features={f: 0.0 for f in CARD_FRAUD.features})


def test_the_latest_scores_of_an_entity_come_with_their_model_versions(
        client: TestClient, store: TileStore) -> None:
    assert client.get("/v1/scores/c1", headers=auth()).status_code == 404
    store.write_tiles([], scores=[score_record("a", T0 + 1, 3, 0.25),
                                  score_record("b", T0 + 2, 4, 0.75)])
    body = client.get("/v1/scores/c1", headers=auth()).json()
    assert [(s["event_id"], s["model_version"], s["score"]) for s in body["scores"]] == [
        ("b", 4, 0.75), ("a", 3, 0.25)]
    assert body["scores"][0]["batch_version"] == 7
    assert client.get("/v1/scores/nobody", headers=auth()).json()["detail"].startswith(
        "entity 'nobody' has no stored score")


def test_an_ad_hoc_event_is_scored_with_the_champion_on_the_features_before_it(
        client: TestClient, scorer: CountingScorer) -> None:
    events = history()
    event = {key: value for key, value in txn("probe", NOW - 1000, card="c2", amount=99.0,
                                              channel="online").items()
             if key not in ("event_type", "schema_version")}
    response = client.post("/v1/score", headers=auth(), json=event)
    assert response.status_code == 200, response.text
    body = response.json()
    vector = CARD_FRAUD.vector(event, features_from_events(CARD_VIEWS, events, "c2",
                                                           NOW - 1000))
    assert body["features"] == vector
    matrix = np.array([list(vector.values())], dtype=np.float32)
    assert body["score"] == float(scorer(matrix)[0])
    assert (body["model_version"], body["batch"]["batch_version"]) == (3, 7)
    # No event_time: now. A field missing or out of range: 422 naming it.
    del event["event_time"]
    assert client.post("/v1/score", headers=auth(), json=event).json()["event_time_ms"] == NOW
    bad = client.post("/v1/score", headers=auth(), json={**event, "amount": -5})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "amount"]
    missing = client.post("/v1/score", headers=auth(), json={"card_id": "c2"})
    assert missing.status_code == 422 and "merchant_id" in missing.json()["detail"][0]["msg"]


def test_scoring_without_a_champion_is_503_and_ready_says_why(store: TileStore) -> None:
    with TestClient(create_app(serving_settings(), store=store, champions=Fixed(None))) as c:
        ready = c.get("/ready", headers=auth())
        assert ready.status_code == 503
        assert any("no batch view published" in p for p in ready.json()["problems"])
        assert any("no champion" in p for p in ready.json()["problems"])
        publish(store, [], T0, 1)
        event = {k: v for k, v in txn("x", T0 + 1000).items()}
        response = c.post("/v1/score", headers=auth(), json=event)
        assert response.status_code == 503 and "no champion" in response.json()["detail"]
        assert c.get("/ready", headers=auth()).json()["problems"] == [
            "no champion loaded yet (registry alias 'champion')"]
    off = serving_settings(score=False)
    with TestClient(create_app(off, store=store)) as c:
        assert c.get("/ready", headers=auth()).json()["ready"] is True
        assert c.post("/v1/score", headers=auth(), json={}).status_code == 503


def test_ready_when_a_view_is_published_and_a_champion_loaded(client: TestClient) -> None:
    body = client.get("/ready", headers=auth()).json()
    assert body["ready"] is True and body["model_version"] == 3
    assert body["views"][GROUP]["batch_version"] == 7


# --- auth, metrics -------------------------------------------------------------------


def test_every_route_but_health_needs_the_token_and_it_is_never_logged(
        client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    routes = [("get", f"/v1/features/{GROUP}/c1"), ("post", f"/v1/features/{GROUP}:batch"),
              ("get", "/v1/scores/c1"), ("post", "/v1/score"), ("get", "/ready"),
              ("get", "/metrics")]
    for method, path in routes:
        for headers in ({}, auth("wrong-token"), {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": "Bearer"}):
            response = client.request(method, path, headers=headers, json={"entities": ["c1"]})
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get(f"/v1/features/{GROUP}/c1", headers=auth()).status_code == 200
    assert "request refused" in caplog.text  # the refusals were logged...
    assert TOKEN not in caplog.text and "wrong-token" not in caplog.text  # ...no token


def test_an_app_without_a_token_is_refused(store: TileStore) -> None:
    with pytest.raises(ConfigError, match=r"\[serving\] token is empty"):
        create_app(Settings(), store=store)


def test_metrics_count_requests_and_time_them_per_route(client: TestClient) -> None:
    for _ in range(3):
        client.get(f"/v1/features/{GROUP}/c1", headers=auth())
    client.get(f"/v1/features/{GROUP}/nobody", headers=auth())
    text = client.get("/metrics", headers=auth()).text
    route = 'route="/v1/features/{group}/{entity}"'
    assert f'lamina_serving_requests_total{{method="GET",{route},status="200"}} 3.0' in text
    assert f'lamina_serving_requests_total{{method="GET",{route},status="404"}} 1.0' in text
    assert f'lamina_serving_request_seconds_count{{method="GET",{route}}} 4.0' in text


# --- the lambda equation and the hand-off -------------------------------------------------

# Event times relative to the cutoff: up to 9 days before it, 1 day after.
event_offsets = st.integers(-9 * DAY_MS, DAY_MS - 1)
random_events = st.lists(
    st.builds(lambda n, t, card, amount, channel: txn(f"tx-{n}", t, card=card, amount=amount,
                                                      channel=channel),
              st.integers(0, 10**6), event_offsets, st.sampled_from(["c0", "c1", "c2"]),
              st.integers(1, 5000).map(lambda cents: cents / 100),
              st.sampled_from(["pos", "online", "atm"])),
    max_size=60, unique_by=lambda e: e["event_id"])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(relative=random_events, cutoff_day=st.integers(-8, 0), data=st.data())
def test_served_features_equal_a_full_recomputation_for_any_tile_aligned_cutoff(
        relative: list[dict[str, Any]], cutoff_day: int, data: st.DataObject) -> None:
    # The batch part from the events before T through the store's publish
    # path, the rest as realtime tiles through the store's write; queries at
    # "now" (after every event) within the view's horizon.
    cutoff = T0 + cutoff_day * DAY_MS  # a day boundary: aligned for every hop
    events = [{**e, "event_time": cutoff + e["event_time"]} for e in relative]
    newest = max([cutoff, *(e["event_time"] + 1 for e in events)])
    with tempfile.TemporaryDirectory() as folder, \
            SqliteTileStore(Path(folder) / "tiles.db") as store:
        publish(store, events, cutoff, 1)
        write_realtime(store, events, cutoff)
        app = create_app(serving_settings(score=False), store=store)
        with TestClient(app) as c:
            for _ in range(3):
                t = data.draw(st.integers(newest, cutoff + 2 * DAY_MS - 1), label="as_of")
                card = data.draw(st.sampled_from(["c0", "c1", "c2"]), label="card")
                response = c.get(f"/v1/features/{GROUP}/{card}?as_of_ms={t}", headers=auth())
                if not any(e["card_id"] == card and e["event_time"] >= t - 31 * DAY_MS
                           for e in events) and response.status_code == 404:
                    continue  # nothing of the card in any window: unknown
                assert response.status_code == 200, response.text
                assert response.json()["features"] == reference(events, card, t)


def test_queries_during_a_publish_never_see_an_event_twice_or_miss_one(
        store: TileStore) -> None:
    # View 1 (cutoff T0 - 1 d) is serving, the speed layer's tiles go from
    # there on; view 2 (cutoff T0) is published while readers query. Either
    # answer is the whole history, once; each names the view it used.
    events = history()
    publish(store, events, T0 - DAY_MS, 1)
    write_realtime(store, events, T0 - DAY_MS)
    expected = {card: reference(events, card, NOW) for card in ("c0", "c1", "c2")}
    app = create_app(serving_settings(score=False), store=store, clock_ms=lambda: NOW)
    seen: list[tuple[int, int]] = []
    wrong: list[Any] = []
    publishing = threading.Event()
    done = threading.Event()

    def query(c: TestClient) -> None:
        for card in ("c0", "c1", "c2"):
            body = c.get(f"/v1/features/{GROUP}/{card}", headers=auth()).json()
            seen.append((body["batch"]["batch_version"], body["batch"]["cutoff_ms"]))
            if body["features"] != expected[card]:
                wrong.append((card, body))
        batch = c.post(f"/v1/features/{GROUP}:batch", headers=auth(),
                       json={"entities": ["c0", "c1", "c2"]}).json()
        for result in batch["results"]:
            seen.append((result["batch"]["batch_version"], result["batch"]["cutoff_ms"]))
            if result["features"] != expected[result["entity"]]:
                wrong.append((result["entity"], batch))

    with TestClient(app) as c:
        query(c)

        def readers() -> None:
            publishing.wait()
            while not done.is_set():
                query(c)

        thread = threading.Thread(target=readers)
        thread.start()
        publishing.set()
        publish(store, events, T0, 2)
        done.set()
        thread.join()
        query(c)
    assert wrong == []
    assert seen[0] == (1, T0 - DAY_MS) and seen[-1] == (2, T0)
    assert set(seen) <= {(1, T0 - DAY_MS), (2, T0)}


# --- the client and the CLI -------------------------------------------------------------


def test_the_client_returns_typed_results_and_raises_with_the_servers_detail(
        client: TestClient) -> None:
    from lamina.serving.client import ServingClient, ServingError

    api = ServingClient(token=TOKEN, http=client)
    found = api.features(GROUP, "c1")
    assert found.features == reference(history(), "c1", NOW)
    assert (found.batch.batch_version, found.batch.cutoff_ms) == (7, T0)
    batch = api.features_batch(GROUP, ["c0", "nobody"])
    assert batch.snapshot == "one_view" and batch.results["nobody"] is None
    with pytest.raises(ServingError) as refused:
        api.features(GROUP, "nobody")
    assert refused.value.status == 404 and "unknown" in str(refused.value.detail)
    with pytest.raises(ServingError) as unauthorised:
        ServingClient(token="wrong", http=client).ready()
    assert unauthorised.value.status == 401


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["serve", "--port", "70000"], {}, "is not a TCP port"),
    (["serve"], {"LAMINA_SERVING_PORT": "0"}, "LAMINA_SERVING_PORT must be at least 1"),
    (["serve"], {}, "[serving] token is empty"),
])
def test_lamina_serve_refuses_bad_settings_in_one_line_with_exit_2(
        argv: list[str], env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lamina.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LAMINA_SERVING_TOKEN", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) if "--port" in argv else _no_exit():
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    # One line naming the problem (argparse puts its usage lines before it).
    assert [line for line in err.splitlines() if "error" in line] == [err.strip().splitlines()[-1]]


class _no_exit:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
