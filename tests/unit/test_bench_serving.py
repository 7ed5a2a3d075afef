"""The serving benchmark's in-process part (benchmarks/serving.py
``measure_parts``) runs on tiny data: the route's parts, the whole app and
the constant app called as ASGI, so a change to the app or its response
model cannot break the benchmark unnoticed (it once crashed on a new
required field of FeaturesResponse). No timing is asserted."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from benchmarks.serving import fill_store, measure_parts
from benchmarks.tile_store import prepare_data


def test_measure_parts_runs_every_part_on_tiny_data(tmp_path: Path) -> None:
    data = prepare_data(300)
    store, _ = fill_store("sqlite", data, tmp_path, None)
    try:
        parts = measure_parts(store, data, "bench-token", data.cards, calls=20)
    finally:
        store.close()
    figures = dataclasses.asdict(parts)
    assert set(figures) == {"read_entity_us", "read_offsets_us", "features_us", "response_us",
                            "asgi_us", "constant_asgi_us"}
    assert all(value > 0 for value in figures.values()), figures
