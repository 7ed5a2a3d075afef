"""The per-partition collapse the store publish runs in Spark
(``lamina.batch.store_publish.collapse_sorted_tiles``): tile rows in the
views table's columns, sorted by entity and cut into Arrow batches anywhere
(an entity's rows may span batches), give exactly the reference's batch
records. Pure functions: no Spark."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.batch.store_publish import collapse_sorted_tiles
from lamina.schemas.card_views import CARD_VIEWS
from lamina.schemas.view_definitions import DAY_MS, GroupBy, build_tiles
from lamina.stores.lookup import batch_records
from tests.unit.test_tile_lookup import CUTOFF, _resends, event_strategy
from tests.unit.test_views import ALL_OPS


def views_rows(group: GroupBy, events: list[dict[str, Any]], cutoff: int) -> pa.Table:
    """The reference's tiles before ``cutoff`` as views-table rows
    (``entity_key, hop_ms, tile_start, <aggregate>...``; an aggregate
    without a window at the row's hop is null), sorted by entity."""
    before = [e for e in events if e["event_time"] < cutoff]
    rows = []
    for hop in group.hops():
        names = {a.name for a in group.aggregates_for_hop(hop)}
        for (entity, start), partials in build_tiles(group, before, hop).items():
            row: dict[str, Any] = {"entity_key": entity, "hop_ms": hop, "tile_start": start}
            for aggregate in group.aggregates:
                row[aggregate.name] = (aggregate.aggregation.to_storage(partials[aggregate.name])
                                       if aggregate.name in names else None)
            rows.append(row)
    rows.sort(key=lambda r: (r["entity_key"], r["tile_start"], r["hop_ms"]))
    schema = pa.schema([("entity_key", pa.string()), ("hop_ms", pa.int64()),
                        ("tile_start", pa.int64())]
                       + [(a.name, a.aggregation.arrow_type) for a in group.aggregates])
    return pa.Table.from_pylist(rows, schema=schema)


@settings(max_examples=40, deadline=None)
@given(events=st.lists(event_strategy.map(lambda e: {**e, "card_id": e["card_id"] + "x"})
                       | event_strategy, max_size=50).map(_resends),
       group=st.sampled_from([ALL_OPS, CARD_VIEWS]), batch_rows=st.integers(1, 40),
       interval=st.sampled_from([DAY_MS, 3 * DAY_MS]))
def test_sorted_tile_rows_in_any_batches_collapse_to_the_reference_records(
        events: list[dict[str, Any]], group: GroupBy, batch_rows: int, interval: int) -> None:
    horizon = CUTOFF + interval
    table = views_rows(group, events, CUTOFF)
    got = [(entity, payload)
           for batch in collapse_sorted_tiles(group, CUTOFF, horizon,
                                              table.to_batches(max_chunksize=batch_rows))
           for entity, payload in zip(batch.column("entity").to_pylist(),
                                      batch.column("payload").to_pylist(), strict=True)]
    before = [e for e in events if e["event_time"] < CUTOFF]
    reference = {hop: build_tiles(group, before, hop) for hop in group.hops()}
    expected = [(r.entity, r.payload) for r in batch_records(group, reference, CUTOFF, horizon)]
    assert got == expected


def test_no_rows_give_no_records() -> None:
    table = views_rows(CARD_VIEWS, [], CUTOFF)
    assert list(collapse_sorted_tiles(CARD_VIEWS, CUTOFF, CUTOFF + DAY_MS,
                                      table.to_batches())) == []
