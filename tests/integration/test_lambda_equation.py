"""The lambda equation (invariant 4) on the real system: generated events
landed into the master dataset (the importer: the lander's validation,
dedup and commit), the Spark batch-views job at a tile-aligned cutoff T and
its publish into the tile store, the events at or after T (with resends,
malformed records and resends of events before T) streamed through the
speed layer on the real broker, and the serving app under uvicorn on a
loopback port answering over HTTP.

* Any cutoff, on both tile stores (SQLite on disk; Redis on the session's
  redis-server, opened from ``[tile_store]`` settings as ``lamina serve``
  opens it): for many (card, as_of) pairs the served features equal a
  full recomputation over every event strictly before as_of -- "now", at T,
  at day boundaries; at other times (just after T, at window edges) the
  recomputation that reads each window's head tile whole, as serving
  documents (``lamina.stores.lookup``). Before T is refused, naming the range.
* Across a publication (SQLite): while queries run, the batch job at T' = T + 1 d
  publishes and the live speed layer switches; every answer equals the
  recomputation and names the old or the new (batch version, cutoff).
* A failed batch run (its store publish dies half-way) leaves the previous
  view serving, and the answers stay exact.

The time rules, and why a past as_of is compared tile-wise: docs/decisions.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from lamina import kafkaio
from lamina.batch.store_publish import publish_to_store
from lamina.batch.views import run_batch_views
from lamina.config import ServingSettings, Settings, TileStoreSettings
from lamina.generator import GeneratedRecord, GeneratorConfig, generate
from lamina.master.dataset import MasterDataset
from lamina.master.importer import import_files
from lamina.schemas.card_views import CARD_VIEWS
from lamina.schemas.validation import EventValidator
from lamina.schemas.view_definitions import DAY_MS, HOUR_MS, MINUTE_MS
from lamina.serving.app import create_app
from lamina.speed.realtime import RealtimeTiles, SpeedLayer, SpeedStats
from lamina.stores import TileStore, open_store
from lamina.stores.base import PublishedView
from lamina.stores.sqlite import SqliteTileStore
from tests.integration.test_speed_realtime import end_offsets, new_topic, produce_all
from tests.lambda_helpers import exact_features, first_copies, served, tile_features

pytestmark = pytest.mark.integration  # Kafka, Spark

TOKEN = "lambda-equation-token-3c9e"
START = GeneratorConfig().start  # midnight UTC: a boundary of every hop
LATENESS = 30 * MINUTE_MS
#: Horizon = cutoff + 2 x interval = cutoff + 4 d: "now" (the end of the
#: generated days) is inside every view published here.
PUBLISH_INTERVAL = 2 * DAY_MS
SETTINGS = dataclasses.replace(Settings(), serving=ServingSettings(token=TOKEN, score=False))
SPEED_GROUP = SETTINGS.speed.group  # serving reports this consumer's offsets
RESENT_BEFORE_CUTOFF = 20
DEADLINE_S = 120.0


def generated(seed: int) -> list[GeneratedRecord]:
    return list(generate(GeneratorConfig(
        seed=seed, cards=30, merchants=12, transactions=2000, days=4.0,
        max_lateness_ms=20 * MINUTE_MS, late_fraction=0.02, duplicate_fraction=0.01,
        malformed_fraction=0.005)))


def land(records: list[GeneratedRecord], folder: Path) -> str:
    """Every record into a new master dataset through the importer."""
    lines = folder / "events.jsonl"
    lines.write_bytes(b"".join(r.value.replace(b"\n", b" ") + b"\n" for r in records))
    uri = str(folder / "master")
    import_files(MasterDataset(uri), [lines], EventValidator(), folder / "dlq", progress=False)
    return uri


def batch_and_publish(spark: Any, master_uri: str, views_uri: str, store: TileStore,
                      cutoff: int) -> PublishedView:
    """The batch layer's two steps (orchestration.tasks: batch_views, then
    publish_to_tile_store) on the test's Spark session."""
    run = run_batch_views(spark, master_uri, views_uri, CARD_VIEWS, snapshot=None,
                          cutoff_ms=cutoff)
    assert run.status == "published", run
    result = publish_to_store(spark, views_uri, store, CARD_VIEWS,
                              publish_interval_ms=PUBLISH_INTERVAL)
    assert result.status == "published" and result.published is not None, result
    return result.published


def stream_after(records: list[GeneratedRecord], cutoff: int) -> list[GeneratedRecord]:
    """What reaches the speed layer: every record not valid-before-the-
    cutoff (the rest, resends and malformed ones included), then resends of
    a few transactions the batch view already holds."""
    events = {id(r): orjson.loads(r.value) for r in records if r.kind != "malformed"}
    after = [r for r in records if id(r) not in events or events[id(r)]["event_time"] >= cutoff]
    before = [r for r in records if r.kind == "valid" and events[id(r)]["event_time"] < cutoff
              and events[id(r)]["event_type"] == "transaction"]
    return after + before[:RESENT_BEFORE_CUTOFF]


def valid_events(records: list[GeneratedRecord]) -> list[dict[str, Any]]:
    return first_copies(orjson.loads(r.value) for r in records if r.kind == "valid")


def speed_layer(bootstrap: str, topic: str, store: TileStore) -> SpeedLayer:
    tiles = RealtimeTiles(store, CARD_VIEWS, consumer=SPEED_GROUP, validator=EventValidator(),
                          allowed_lateness_ms=LATENESS)
    consumer = kafkaio.make_consumer(bootstrap, group_id=f"{SPEED_GROUP}-{topic}",
                                     session_timeout_ms=6000)
    return SpeedLayer(consumer=consumer, topic=topic, tiles=tiles, batch_max_events=300,
                      batch_max_wait_s=0.1)


def run_speed_until_idle(bootstrap: str, topic: str, store: TileStore) -> SpeedStats:
    return speed_layer(bootstrap, topic, store).run(idle_exit_s=2.0)


def cards_of(events: list[dict[str, Any]]) -> list[str]:
    return sorted({e["card_id"] for e in events if e["event_type"] == "transaction"})


def newest(events: list[dict[str, Any]]) -> int:
    return max(e["event_time"] for e in events)


def check_view(body: dict[str, Any], view: PublishedView) -> None:
    """The answer names the view it used."""
    assert (body["batch"]["batch_version"], body["batch"]["cutoff_ms"],
            body["batch"]["horizon_ms"], body["batch"]["generation"]) == \
        (view.batch_version, view.cutoff_ms, view.horizon_ms, view.generation), body["batch"]


def exact_at(t: int, now: int) -> bool:
    """Serving promises the full recomputation "now" and at a boundary of
    every hop (the largest hop is the views' cutoff alignment)."""
    return t >= now or t % CARD_VIEWS.cutoff_alignment_ms() == 0


# --- 1. any tile-aligned cutoff ------------------------------------------------------

#: Examples per store. Each runs the Spark job twice; the Redis leg runs the
#: first example of the same derandomised sequence (the same data on the
#: other store), to keep the suite's time down.
EXAMPLES = {"sqlite": 3, "redis": 1}
_redis_prefixes = itertools.count()


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
def test_served_features_equal_a_full_recomputation_for_a_random_tile_aligned_cutoff(
        kafka: Any, spark: Any, tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest, store_kind: str) -> None:
    redis_url = request.getfixturevalue("redis_url") if store_kind == "redis" else ""

    # No shrinking (a failure reports its example as drawn), a fixed
    # derandomised sequence, no example database.
    @settings(max_examples=EXAMPLES[store_kind], deadline=None, derandomize=True,
              database=None, phases=(Phase.explicit, Phase.generate),
              suppress_health_check=[HealthCheck.too_slow])
    @given(seed=st.integers(1, 2**20), cutoff_day=st.integers(1, 3), data=st.data())
    def example(seed: int, cutoff_day: int, data: st.DataObject) -> None:
        folder = tmp_path_factory.mktemp("lambda")
        if store_kind == "sqlite":
            store = TileStoreSettings(kind="sqlite", options={"path": str(folder / "tiles.db")})
        else:  # each example in a key space of its own
            store = TileStoreSettings(kind="redis", options={
                "url": redis_url, "prefix": f"lambda{next(_redis_prefixes)}"})
        lambda_equation_holds(kafka, spark, folder, store, seed, cutoff_day, data.draw)

    example()


def lambda_equation_holds(kafka: Any, spark: Any, folder: Path, tile_store: TileStoreSettings,
                          seed: int, cutoff_day: int, draw: Callable[..., Any]) -> None:
    """One example of the test above (``draw``: hypothesis' ``data.draw``)
    on the store ``tile_store`` names: the batch layer, the speed layer and
    serving each open it from these settings, as their commands do."""
    cutoff = START + cutoff_day * DAY_MS
    assert cutoff % CARD_VIEWS.cutoff_alignment_ms() == 0  # what the publish requires
    records = generated(seed)
    events = valid_events(records)
    master_uri = land(records, folder)
    lamina_settings = dataclasses.replace(SETTINGS, home=folder, tile_store=tile_store)
    with open_store(tile_store.kind, **lamina_settings.tile_store_options()) as store:
        view = batch_and_publish(spark, master_uri, str(folder / "views"), store, cutoff)
    assert view.cutoff_ms == cutoff

    bootstrap = kafka.bootstrap_servers
    topic = new_topic(bootstrap)
    produce_all(bootstrap, topic, [(r.key, r.value) for r in stream_after(records, cutoff)])
    with open_store(tile_store.kind, **lamina_settings.tile_store_options()) as store:
        stats = run_speed_until_idle(bootstrap, topic, store)
    assert stats.before_cutoff == RESENT_BEFORE_CUTOFF and stats.duplicates > 0
    assert stats.late == 0 and stats.invalid > 0

    now = newest(events) + 1
    assert cutoff <= now < view.horizon_ms
    cards = cards_of(events)
    picked = draw(st.lists(st.sampled_from(cards), min_size=6, max_size=6, unique=True),
                       label="cards")
    drawn = draw(st.lists(st.integers(cutoff, now), min_size=3, max_size=3), label="times")
    edges = [cutoff, cutoff + 1, cutoff + 5 * MINUTE_MS - 1, cutoff + 5 * MINUTE_MS,
             cutoff + 10 * MINUTE_MS, cutoff + HOUR_MS, cutoff + 24 * HOUR_MS,  # window edges
             cutoff + DAY_MS + 1, cutoff + 2 * DAY_MS, now - 1, now]
    times = sorted({t for t in edges + drawn if cutoff <= t <= now})

    app = create_app(lamina_settings, clock_ms=lambda: now)  # the store from the settings
    with served(app) as url, httpx.Client(base_url=url, timeout=30,
                                          headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        path = f"/v1/features/{CARD_VIEWS.name}"
        # Just before the cutoff: refused, naming the range it answers.
        refused = http.get(f"{path}/{picked[0]}", params={"as_of_ms": cutoff - 1})
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["allowed"] == {"from_ms": cutoff,
                                                         "before_ms": view.horizon_ms}
        mismatches = []
        for t in times:
            for card in picked:
                response = http.get(f"{path}/{card}", params={"as_of_ms": t})
                if response.status_code == 404:  # nothing of the card read as of t
                    assert not any(e.get("card_id") == card and e["event_time"] < t
                                   for e in events if e["event_type"] == "transaction"), t
                    continue
                assert response.status_code == 200, response.text
                body = response.json()
                check_view(body, view)
                # Serving never calls an answer exact that may not be.
                assert not body["exact"] or exact_at(t, now), (card, t)
                want = (exact_features if exact_at(t, now) else tile_features)(
                    CARD_VIEWS, events, card, t)
                if body["features"] != want:
                    mismatches.append((card, t, body["features"], want))
        assert mismatches == []

        # "Now" from the clock, every card in one batch lookup: one view,
        # the full recomputation, the speed layer caught up.
        batch = http.post(f"{path}:batch", json={"entities": cards})
        assert batch.status_code == 200, batch.text
        body = batch.json()
        assert body["snapshot"] == "one_view" and body["as_of_ms"] == now
        check_view(body, view)
        assert {r["entity"]: r["features"] for r in body["results"]} == \
            {card: exact_features(CARD_VIEWS, events, card, now) for card in cards}
        one = http.get(f"{path}/{cards[0]}").json()
        assert one["as_of_ms"] == now
        assert one["realtime"]["speed_offsets"] == {
            f"{t}:{p}": o for (t, p), o in sorted(end_offsets(bootstrap, topic).items())}
    app.state.store.close()


# --- 2 and 3. a live system: a publication while queries run, a failed run ------------


@dataclass
class Live:
    """A system with a view at ``cutoff`` and the speed layer caught up on
    every card but the ``held`` ones, whose stream is ``held_records``."""

    records: list[GeneratedRecord]
    events: list[dict[str, Any]]
    master_uri: str
    views_uri: str
    db: Path
    bootstrap: str
    topic: str
    cutoff: int
    first: PublishedView
    held: frozenset[str]
    held_records: list[GeneratedRecord]
    now: int


@pytest.fixture(scope="module")
def live(kafka: Any, spark: Any, tmp_path_factory: pytest.TempPathFactory) -> Live:
    folder = tmp_path_factory.mktemp("lambda-live")
    records = generated(20261201)
    events = valid_events(records)
    cutoff = START + DAY_MS
    master_uri = land(records, folder)
    views_uri = str(folder / "views")
    db = folder / "tiles.db"
    with SqliteTileStore(db) as store:
        first = batch_and_publish(spark, master_uri, views_uri, store, cutoff)
    held = frozenset(cards_of(events)[::3])
    stream = stream_after(records, cutoff)

    def is_held(r: GeneratedRecord) -> bool:
        return r.key is not None and r.key.decode() in held

    bootstrap = kafka.bootstrap_servers
    topic = new_topic(bootstrap)
    produce_all(bootstrap, topic, [(r.key, r.value) for r in stream if not is_held(r)])
    with SqliteTileStore(db) as store:
        run_speed_until_idle(bootstrap, topic, store)
    return Live(records, events, master_uri, views_uri, db, bootstrap, topic, cutoff, first,
                held, [r for r in stream if is_held(r)], newest(events) + 1)


class Queries:
    """A thread asking for the features "now" of ``cards`` (one by one and
    in a batch lookup) until stopped; keeps the (batch version, cutoff) of
    every answer and every answer that differs from ``expected``."""

    def __init__(self, url: str, cards: list[str], expected: dict[str, dict[str, Any]]) -> None:
        self.url, self.cards, self.expected = url, cards, expected
        self.seen: list[tuple[int, int]] = []
        self.wrong: list[Any] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="queries")

    def __enter__(self) -> Queries:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(DEADLINE_S)

    def _run(self) -> None:
        path = f"/v1/features/{CARD_VIEWS.name}"
        try:
            with httpx.Client(base_url=self.url, timeout=30,
                              headers={"Authorization": f"Bearer {TOKEN}"}) as http:
                while not self._stop.is_set():
                    for card in self.cards:
                        body = http.get(f"{path}/{card}").raise_for_status().json()
                        self._check(card, body, body)
                    batch = http.post(f"{path}:batch", json={"entities": self.cards})
                    body = batch.raise_for_status().json()
                    for result in body["results"]:
                        self._check(result["entity"], result, body)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def _check(self, card: str, answer: dict[str, Any], body: dict[str, Any]) -> None:
        self.seen.append((answer["batch"]["batch_version"], answer["batch"]["cutoff_ms"]))
        if answer["features"] != self.expected[card]:
            self.wrong.append((card, body))


def every_card_now(url: str, cards: list[str]) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=30,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        return http.post(f"/v1/features/{CARD_VIEWS.name}:batch",
                         json={"entities": cards}).raise_for_status().json()


def feed(bootstrap: str, topic: str, records: list[GeneratedRecord], chunks: int,
         fed: threading.Event, stop: threading.Event) -> None:
    """Produce ``records`` in ``chunks`` parts a little apart (then set
    ``fed``), and go on resending a few of them (same bytes: duplicates,
    which change no value) until ``stop``: the speed layer keeps writing
    micro-batches however long the batch layer takes to publish."""
    size = max(1, len(records) // chunks + 1)
    for i in range(0, len(records), size):
        produce_all(bootstrap, topic, [(r.key, r.value) for r in records[i:i + size]])
        time.sleep(0.3)
    fed.set()
    resends = [r for r in records if r.kind == "valid"][:10]
    while not stop.wait(0.3):
        produce_all(bootstrap, topic, [(r.key, r.value) for r in resends])


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_queries_across_a_publication_and_the_speed_layers_switch_see_every_event_once(
        live: Live, spark: Any) -> None:
    cards = cards_of(live.events)
    steady = [c for c in cards if c not in live.held]  # their events are all in
    expected = {c: exact_features(CARD_VIEWS, live.events, c, live.now) for c in cards}
    later = live.cutoff + DAY_MS
    app = create_app(SETTINGS, store=SqliteTileStore(live.db), clock_ms=lambda: live.now)
    speed_store = SqliteTileStore(live.db)
    layer = speed_layer(live.bootstrap, live.topic, speed_store)
    outcome: list[Any] = []
    speed = threading.Thread(target=lambda: outcome.append(layer.run()), name="speed")
    fed, stop_feeding = threading.Event(), threading.Event()
    feeder = threading.Thread(target=feed, args=(live.bootstrap, live.topic,
                                                 live.held_records, 8, fed, stop_feeding))
    try:
        with served(app) as url:
            speed.start()
            with Queries(url, steady, expected) as queries:
                feeder.start()  # the held cards' events arrive during the publish
                with SqliteTileStore(live.db) as store:
                    second = batch_and_publish(spark, live.master_uri, live.views_uri, store,
                                               later)
                # The speed layer notices the new view, then catches up.
                wait_for(lambda: layer.stats.cutoff_ms == later, "the speed layer's switch")
                stop_feeding.set()
                feeder.join(DEADLINE_S)
                wait_for(lambda: speed_store.read_offsets(SPEED_GROUP)
                         == end_offsets(live.bootstrap, live.topic), "the speed layer")
                wait_for(lambda: len(queries.seen) > 0 and queries.seen[-1][1] == later,
                         "a query under the new view")
            after = every_card_now(url, cards)
    finally:
        stop_feeding.set()
        layer.stop()
        speed.join(DEADLINE_S)
        speed_store.close()
        app.state.store.close()
    assert queries.errors == [] and fed.is_set()
    assert queries.wrong == []
    old = (live.first.batch_version, live.cutoff)
    new = (second.batch_version, later)
    assert second.cutoff_ms == later and new != old
    assert queries.seen[0] == old and queries.seen[-1] == new
    assert set(queries.seen) <= {old, new}
    # Once caught up, every card (the held ones too) is the recomputation.
    assert after["snapshot"] == "one_view"
    assert (after["batch"]["batch_version"], after["batch"]["cutoff_ms"]) == new
    assert {r["entity"]: r["features"] for r in after["results"]} == expected
    assert isinstance(outcome[0], SpeedStats) and outcome[0].cutoff_switches >= 1


def test_a_failed_batch_run_leaves_the_previous_view_serving_and_the_answers_exact(
        live: Live, spark: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import lamina.batch.store_publish as store_publish

    # The speed layer is caught up on every card (the held ones too).
    produce_all(live.bootstrap, live.topic, [(r.key, r.value) for r in live.held_records])
    with SqliteTileStore(live.db) as store:
        run_speed_until_idle(live.bootstrap, live.topic, store)
    cards = cards_of(live.events)
    expected = {c: exact_features(CARD_VIEWS, live.events, c, live.now) for c in cards}
    with SqliteTileStore(live.db) as store:
        before = store.current_view(CARD_VIEWS.name)
        assert before is not None
        later = before.cutoff_ms + DAY_MS
        run = run_batch_views(spark, live.master_uri, live.views_uri, CARD_VIEWS,
                              snapshot=None, cutoff_ms=later)
        assert run.status == "published"
        streamed = store_publish._streamed

        def dies_half_way(frame: Any, counter: list[int]) -> Iterator[Any]:
            for i, record in enumerate(streamed(frame, counter)):
                if i == len(cards) // 2:
                    raise RuntimeError("batch worker lost (injected)")
                yield record

        # The run's store publish dies after writing half its records.
        monkeypatch.setattr(store_publish, "_streamed", dies_half_way)
        with pytest.raises(RuntimeError, match="injected"):
            publish_to_store(spark, live.views_uri, store, CARD_VIEWS,
                             publish_interval_ms=PUBLISH_INTERVAL)
        monkeypatch.undo()
        assert store.current_view(CARD_VIEWS.name) == before

        app = create_app(SETTINGS, store=SqliteTileStore(live.db), clock_ms=lambda: live.now)
        try:
            with served(app) as url:
                failed = every_card_now(url, cards)
                # The retry publishes; the half-written records never showed.
                retried = publish_to_store(spark, live.views_uri, store, CARD_VIEWS,
                                           publish_interval_ms=PUBLISH_INTERVAL)
                assert retried.status == "published" and retried.published is not None
                after = every_card_now(url, cards)
        finally:
            app.state.store.close()
    assert (failed["batch"]["batch_version"], failed["batch"]["cutoff_ms"]) == \
        (before.batch_version, before.cutoff_ms)
    assert {r["entity"]: r["features"] for r in failed["results"]} == expected
    assert (after["batch"]["batch_version"], after["batch"]["cutoff_ms"]) == \
        (retried.published.batch_version, later)
    assert {r["entity"]: r["features"] for r in after["results"]} == expected
