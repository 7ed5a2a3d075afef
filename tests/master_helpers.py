"""Helpers shared by tests that need a master dataset with awkward rows."""

from __future__ import annotations

import random

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from lamina.master.dataset import MASTER_SCHEMA, MasterDataset


def append_resends(dataset: MasterDataset, count: int, seed: int) -> int:
    """Land `count` producer resends of landed transactions at new offsets,
    one minute later; every other one with a different amount (which must
    not count: the first landed copy wins). Returns the new snapshot."""
    rows = dataset.read()
    rows = rows.filter(pc.equal(rows.column("event_type"), "transaction"))
    rows = rows.select([f.name for f in MASTER_SCHEMA if f.name != "event_date"])
    rng = random.Random(seed)
    picked = rows.take(sorted(rng.sample(range(rows.num_rows), count)))
    payloads = []
    for i, raw in enumerate(picked.column("payload").to_pylist()):
        event = orjson.loads(raw)
        if i % 2:
            event["amount"] = round(event["amount"] * 100 + 1, 2)
        payloads.append(orjson.dumps(event))
    later = pc.add(picked.column("ingest_time"), pa.scalar(60_000, pa.duration("ms")))
    resent = picked.set_column(picked.schema.get_field_index("payload"), "payload",
                               pa.array(payloads, pa.binary()))
    resent = resent.set_column(resent.schema.get_field_index("ingest_time"), "ingest_time",
                               later.cast(pa.timestamp("ms", tz="UTC")))
    resent = resent.set_column(resent.schema.get_field_index("kafka_topic"), "kafka_topic",
                               pa.array(["resend"] * count, pa.string()))
    resent = resent.set_column(resent.schema.get_field_index("kafka_offset"), "kafka_offset",
                               pa.array(range(count), pa.int64()))
    return dataset.append(dataset.table(), resent, {"resend:0": count - 1})
