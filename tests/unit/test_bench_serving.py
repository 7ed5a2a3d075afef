"""The serving benchmark's in-process part (benchmarks/serving.py
``measure_parts``) runs on tiny data: the route's parts, the whole app and
the constant app called as ASGI, so a change to the app or its response
model cannot break the benchmark unnoticed (it once crashed on a new
required field of FeaturesResponse). It is called from inside a running
event loop, as in a test process after Playwright's sync API, where it once
failed (uvloop.run refuses a thread that runs a loop). No timing is
asserted."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from pathlib import Path
from typing import Any

from benchmarks.serving import fill_store, measure_parts
from benchmarks.tile_store import prepare_data


def test_measure_parts_runs_every_part_on_tiny_data(tmp_path: Path) -> None:
    data = prepare_data(300)
    store, _ = fill_store("sqlite", data, tmp_path, None)
    try:
        async def inside_a_running_loop() -> Any:
            return measure_parts(store, data, "bench-token", data.cards, calls=20)

        # A thread of its own, so that this test's loop is the only one in
        # it whatever this test process ran before.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            parts = pool.submit(asyncio.run, inside_a_running_loop()).result()
    finally:
        store.close()
    figures = dataclasses.asdict(parts)
    assert set(figures) == {"read_entity_us", "features_us", "response_us",
                            "asgi_us", "constant_asgi_us"}
    assert all(value > 0 for value in figures.values()), figures
