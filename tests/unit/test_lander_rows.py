"""The rows a commit writes are exactly the kept records of the batch, column
by column, when the commit drops some (replays, resends) and when it drops
none; batches are buffered with ``add_records`` as the lander does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from lamina.master.dataset import MasterDataset
from lamina.master.deadletters import DeadLetter
from lamina.master.dedup import LandedIds
from lamina.master.lander import LanderStats, PendingBatch, commit_batch
from lamina.schemas.validation import EventValidator

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
DAY = 86_400_000


class Record:
    def __init__(self, offset: int, value: bytes | None) -> None:
        self.offset, self.value = offset, value


class ListSink:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def send(self, letters: list[DeadLetter]) -> None:
        self.letters.extend(letters)


def tx(n: int, card: str = "card-1", amount: Any = 12.5) -> bytes:
    return orjson.dumps({
        "event_id": f"tx-{n}", "event_type": "transaction", "schema_version": 1,
        "event_time": T0 + n * 3_600_000, "card_id": card, "merchant_id": "m-1",
        "merchant_category": "grocery", "amount": amount, "currency": "EUR",
        "country": "FR", "channel": "pos",
    })


def label(n: int) -> bytes:
    return orjson.dumps({
        "event_id": f"lb-{n}", "event_type": "label", "schema_version": 1,
        "event_time": T0 + n * 3_600_000 + DAY, "card_id": f"card-{n}",
        "transaction_id": f"tx-{n}", "is_fraud": n % 2 == 0, "label_source": "chargeback",
    })


@pytest.fixture
def dataset(tmp_path: Path) -> MasterDataset:
    ds = MasterDataset(str(tmp_path / "master"))
    ds.create_if_missing()
    return ds


def landed_rows(dataset: MasterDataset) -> list[tuple[Any, ...]]:
    table = dataset.read()
    columns = ["event_id", "event_type", "schema_version", "event_time", "entity_key",
               "kafka_topic", "kafka_partition", "kafka_offset", "payload", "event_date"]
    rows = zip(*(table.column(c).to_pylist() for c in columns), strict=True)
    return sorted((r[0], r[1], r[2], int(r[3].timestamp() * 1000), *r[4:]) for r in rows)


def expected_row(topic: str, partition: int, offset: int, raw: bytes) -> tuple[Any, ...]:
    event = orjson.loads(raw)
    date = "2026-01-01" if event["event_time"] < T0 + DAY else "2026-01-02"
    return (event["event_id"], event["event_type"], 1, event["event_time"], event["card_id"],
            topic, partition, offset, raw, date)


def test_a_commit_that_drops_resends_and_replays_writes_exactly_the_kept_rows(
    dataset: MasterDataset,
) -> None:
    validator = EventValidator()
    landed = LandedIds(dataset)
    # First commit: partition 0, offsets 0-2 (so offsets 0-2 become replays).
    first = PendingBatch()
    first.add_records("events.raw", 0, [Record(o, tx(o)) for o in range(3)], validator)
    commit_batch(dataset, first, landed, ListSink(), LanderStats(), writer="t")

    second = PendingBatch()
    p0 = [Record(0, tx(0)), Record(1, tx(1)), Record(2, tx(2)),  # replays
          Record(3, tx(3)), Record(4, b"{broken"), Record(5, tx(1)),  # tx-1 resent
          Record(6, tx(6, amount=7)), Record(7, None)]
    p1 = [Record(10, label(1)), Record(11, tx(11, card="card-9")), Record(12, tx(11)),
          Record(13, label(2))]
    second.add_records("events.raw", 0, p0, validator)
    second.add_records("events.raw", 1, p1, validator)
    stats, sink = LanderStats(), ListSink()
    commit_batch(dataset, second, landed, sink, stats, writer="t")

    assert (stats.landed, stats.replays_skipped, stats.duplicates_dropped) == (5, 3, 2)
    assert [(d.source_partition, d.source_offset) for d in sink.letters] == [(0, 4), (0, 7)]
    kept = [("events.raw", 0, o, tx(o)) for o in range(3)] + [
        ("events.raw", 0, 3, tx(3)), ("events.raw", 0, 6, tx(6, amount=7)),
        ("events.raw", 1, 10, label(1)), ("events.raw", 1, 11, tx(11, card="card-9")),
        ("events.raw", 1, 13, label(2)),
    ]
    assert landed_rows(dataset) == sorted(expected_row(*k) for k in kept)


def test_a_commit_that_drops_nothing_writes_every_row(dataset: MasterDataset) -> None:
    validator = EventValidator()
    batch = PendingBatch()
    records = [Record(o, tx(o)) for o in range(40)]
    batch.add_records("events.raw", 2, records, validator)
    stats = LanderStats()
    commit_batch(dataset, batch, LandedIds(dataset), ListSink(), stats, writer="t")
    assert stats.landed == 40
    assert landed_rows(dataset) == sorted(
        expected_row("events.raw", 2, r.offset, r.value or b"") for r in records)
    ingest = set(dataset.read(columns=["ingest_time"]).column("ingest_time").to_pylist())
    assert len(ingest) == 1  # one ingest time per commit
