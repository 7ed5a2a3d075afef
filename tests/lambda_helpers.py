"""What the lambda-equation test (tests/integration/test_lambda_equation.py)
needs beside the real components: the two recomputations it compares the
served features with, and the serving app on a loopback port.

* ``exact_features``: the full recomputation, every event of the entity
  strictly before ``t`` (``features_from_events``). Serving promises this for
  a lookup "now" (after every event) and at a boundary of every hop.
* ``tile_features``: the same recomputation with each window's head tile
  taken whole (``[floor((t - W)/h)*h, ceil(t/h)*h)``): what serving
  documents for a past ``t`` inside a realtime tile that has since
  received later events (``lamina.stores.lookup``). It equals
  ``exact_features`` wherever ``t`` is a boundary of every hop.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from lamina.schemas.view_definitions import (
    GroupBy,
    features_from_events,
    lift_event,
    tile_start,
    window_range,
)


def _listy(features: Mapping[str, Any]) -> dict[str, Any]:
    """As JSON gives them back (tuples are lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in features.items()}


def exact_features(group: GroupBy, events: Iterable[Mapping[str, Any]], entity: str,
                   t_ms: int) -> dict[str, Any]:
    """Every feature of ``entity`` from its events strictly before ``t_ms``."""
    return _listy(features_from_events(group, events, entity, t_ms))


def tile_features(group: GroupBy, events: Iterable[Mapping[str, Any]], entity: str,
                  t_ms: int) -> dict[str, Any]:
    """Every feature of ``entity`` at ``t_ms`` with the head tile of each
    window read whole (its events at or after ``t_ms`` included)."""
    mine = [e for e in first_copies(events)
            if e.get("event_type", group.event_type) == group.event_type
            and str(e.get(group.entity_key)) == entity]
    out: dict[str, Any] = {}
    for aggregate in group.aggregates:
        monoid = aggregate.aggregation
        for window in aggregate.windows:
            hop = window.hop_ms
            start, _ = window_range(t_ms, window)
            head = tile_start(t_ms, hop)
            end = t_ms if head == t_ms else head + hop
            inside = [e for e in mine
                      if (start is None or start <= e["event_time"]) and e["event_time"] < end]
            merged = monoid.merge_all(lift_event(group, e, (aggregate,))[aggregate.name]
                                      for e in inside)
            out[aggregate.feature_name(window)] = monoid.present(merged)
    return _listy(out)


def first_copies(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One event per event_id, the first seen (as the lander and the speed
    layer keep a producer's resend)."""
    seen: set[str] = set()
    out = []
    for e in events:
        if e["event_id"] not in seen:
            seen.add(e["event_id"])
            out.append(dict(e))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a loopback port for the block; yields its
    base URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, name="uvicorn-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
