"""The serving API against its own OpenAPI: schemathesis generates requests
from the published schema (valid and malformed ones) and checks every
response -- no 5xx, status codes and bodies as documented, content types
as declared. One check is left out: "schema-valid data is accepted". A
query is also refused (422, naming the field) for what no schema states: a
time outside the published view's range or ahead of the clock, and an
integer written with a fraction part (1.0), which the event validator
refuses everywhere (docs/decisions.md, "Serving"). The app runs over a
real SQLite store with a published view, realtime tiles and a champion (the
fixtures of test_serving_app)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from lamina.schemas.card_views import CARD_FRAUD
from lamina.serving.app import create_app
from lamina.stores.sqlite import SqliteTileStore
from tests.unit.test_serving_app import (
    NOW,
    T0,
    TOKEN,
    history,
    serving_settings,
    write_realtime,
)
from tests.unit.test_speed_realtime import publish
from tests.unit.test_speed_scoring import CountingScorer, champion
from tests.unit.test_speed_stream_scoring import Fixed


@pytest.fixture(scope="module")
def served_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with SqliteTileStore(tmp_path_factory.mktemp("openapi") / "tiles.db") as store:
        events = history()
        publish(store, events, T0, 7)
        write_realtime(store, events, T0, position=42)
        scorer = CountingScorer(len(CARD_FRAUD.features))
        app = create_app(serving_settings(), store=store,
                         champions=Fixed(champion(3, scorer)), clock_ms=lambda: NOW)
        with TestClient(app):  # runs the app's startup (champion loading)
            yield app


def operations(app: Any) -> list[Any]:
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in loaded.get_all_operations()]


def test_every_route_answers_as_its_openapi_says(served_app: Any) -> None:
    checked = []
    for operation in operations(served_app):
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"},
                                   excluded_checks=[positive_data_acceptance])

        check()
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert len(checked) >= 7, checked


def test_the_schema_documents_every_route(served_app: Any) -> None:
    paths = set(TestClient(served_app).get("/openapi.json").json()["paths"])
    assert {"/health", "/ready", "/metrics", "/v1/score", "/v1/scores/{entity}",
            "/v1/features/{group}/{entity}"} <= paths, paths
