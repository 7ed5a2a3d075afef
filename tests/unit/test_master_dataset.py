"""The master dataset and the commit protocol, on a real Delta table
(no broker needed: batches are built the way the lander builds them)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.errors import DatasetError
from lamina.master.dataset import CommitConflict, MasterDataset, with_event_date
from lamina.master.deadletters import DeadLetter, FileDeadLetters, read_file_dead_letters
from lamina.master.dedup import LandedIds
from lamina.master.importer import import_files
from lamina.master.lander import LanderStats, PendingBatch, app_id, commit_batch
from lamina.schemas.validation import EventValidator

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
HOUR = 3_600_000
DAY = 24 * HOUR


def tx(n: int, t: int = T0, card: str = "card-1") -> bytes:
    return orjson.dumps({
        "event_id": f"tx-{n}", "event_type": "transaction", "schema_version": 1,
        "event_time": t + n, "card_id": card, "merchant_id": "m-1",
        "merchant_category": "grocery", "amount": 12.5, "currency": "EUR",
        "country": "FR", "channel": "pos",
    })


class ListSink:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def send(self, letters):  # type: ignore[no-untyped-def]
        self.letters.extend(letters)


@pytest.fixture
def dataset(tmp_path: Path) -> MasterDataset:
    ds = MasterDataset(str(tmp_path / "master"))
    ds.create_if_missing()
    return ds


@pytest.fixture
def validator() -> EventValidator:
    return EventValidator()


def batch_of(values: list[tuple[int, bytes]], validator: EventValidator,
             topic: str = "events.raw", partition: int = 0) -> PendingBatch:
    batch = PendingBatch()
    for offset, value in values:
        batch.add(topic, partition, offset, value, validator)
    return batch


def land(dataset: MasterDataset, batch: PendingBatch, landed: LandedIds | None = None,
         sink: ListSink | None = None) -> int | None:
    if landed is None:
        landed = LandedIds(dataset)
    return commit_batch(dataset, batch, landed, sink if sink is not None else ListSink(),
                        LanderStats(), writer="test")


def event_ids(dataset: MasterDataset, version: int | None = None) -> list[str]:
    return sorted(dataset.read(version, columns=["event_id"]).column("event_id").to_pylist())


def test_master_dataset_is_append_only_delete_and_overwrite_fail(dataset, validator):
    land(dataset, batch_of([(i, tx(i)) for i in range(5)], validator))
    table = dataset.table()
    with pytest.raises(Exception, match="append-only"):
        table.delete("event_id = 'tx-1'")
    rows = dataset.read()
    with pytest.raises(Exception, match="append-only"):
        write_deltalake(table, rows, mode="overwrite")
    assert event_ids(dataset) == [f"tx-{i}" for i in range(5)]


def _file_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*.parquet")}


def test_snapshot_reads_the_same_rows_after_compaction_and_no_file_is_rewritten(
        dataset, validator):
    for k in range(6):  # six small commits -> six small files per partition
        land(dataset, batch_of([(k * 10 + i, tx(k * 10 + i)) for i in range(10)], validator))
    version = dataset.table().version()
    before_rows = dataset.read(version).sort_by("event_id")
    root = Path(dataset.uri)
    digests = _file_digests(root)

    metrics = dataset.compact()
    assert metrics["to_version"] == version + 1
    assert metrics["numFilesRemoved"] > metrics["numFilesAdded"]

    # The old snapshot returns exactly the same rows, read twice.
    assert dataset.read(version).sort_by("event_id").equals(before_rows)
    assert dataset.read(version).sort_by("event_id").equals(before_rows)
    # The new snapshot holds the same events, in fewer files.
    assert event_ids(dataset) == sorted(before_rows.column("event_id").to_pylist())
    assert len(dataset.file_stats()) < len(dataset.file_stats(version))
    # Every file committed before compaction is still there, byte for byte.
    after = _file_digests(root)
    for name, digest in digests.items():
        assert after[name] == digest, f"{name} was rewritten"
    # The lander's offsets survive compaction.
    assert dataset.table().transaction_version(app_id("events.raw", 0)) == 59


def test_replayed_offsets_are_skipped_and_partial_overlap_lands_only_new(dataset, validator):
    assert land(dataset, batch_of([(i, tx(i)) for i in range(10)], validator)) is not None
    assert land(dataset, batch_of([(i, tx(i)) for i in range(10)], validator)) is None
    land(dataset, batch_of([(i, tx(i)) for i in range(5, 15)], validator))
    assert event_ids(dataset) == sorted(f"tx-{i}" for i in range(15))
    assert dataset.table().transaction_version(app_id("events.raw", 0)) == 14


def test_offsets_are_committed_in_the_same_snapshot_as_the_rows(dataset, validator):
    land(dataset, batch_of([(i, tx(i)) for i in range(3)], validator))
    first = dataset.table().version()
    land(dataset, batch_of([(i, tx(i)) for i in range(3, 8)], validator))
    assert dataset.table(first).transaction_version(app_id("events.raw", 0)) == 2
    assert len(dataset.read(first)) == 3
    assert dataset.table().transaction_version(app_id("events.raw", 0)) == 7


def test_resent_event_id_is_dropped_in_the_batch_and_in_later_batches(dataset, validator):
    landed = LandedIds(dataset)
    land(dataset, batch_of([(0, tx(1)), (1, tx(1))], validator), landed)  # resend in batch
    land(dataset, batch_of([(2, tx(1))], validator), landed)  # resend in a later batch
    assert event_ids(dataset) == ["tx-1"]
    # Days later in event time the resend is still recognised: the rule looks
    # at the event's own date, not at how far landing got.
    land(dataset, batch_of([(3, tx(99, t=T0 + 9 * DAY))], validator), landed)
    land(dataset, batch_of([(4, tx(1))], validator), landed)
    assert event_ids(dataset) == ["tx-1", "tx-99"]


def test_resend_behind_a_partition_that_got_ahead_lands_once_after_a_restart(
        dataset, validator):
    """The outside check's case: 50 events dated Jan 6 on partition 0, then
    one dated Jan 1 on partition 2; the lander restarts (kill -9: only the
    table survives) and the producer resends the Jan 1 event. A floor of
    "newest landed - 24 h" would let it land twice."""
    jan6 = T0 + 5 * DAY
    land(dataset, batch_of([(i, tx(100 + i, t=jan6)) for i in range(50)], validator,
                           partition=0))
    land(dataset, batch_of([(0, tx(7))], validator, partition=2))
    restarted = LandedIds(dataset)  # a fresh process: nothing in memory
    land(dataset, batch_of([(1, tx(7))], validator, partition=2), restarted)
    assert event_ids(dataset).count("tx-7") == 1
    # Also with only the newest date cached and the old one probed.
    small = LandedIds(dataset, cached_days=1)
    land(dataset, batch_of([(50, tx(200, t=jan6))], validator, partition=0), small)
    land(dataset, batch_of([(2, tx(7))], validator, partition=2), small)
    assert event_ids(dataset).count("tx-7") == 1
    assert small.probes >= 1 and small.cached() == [jan6 // DAY * DAY]


def test_the_same_event_id_on_another_date_is_another_event(dataset, validator):
    land(dataset, batch_of([(0, tx(1))], validator))
    land(dataset, batch_of([(1, tx(1, t=T0 + DAY))], validator))
    assert event_ids(dataset) == ["tx-1", "tx-1"]


def test_import_of_an_event_already_landed_from_kafka_is_a_duplicate(
        tmp_path, dataset, validator):
    jan6 = T0 + 5 * DAY
    land(dataset, batch_of([(i, tx(100 + i, t=jan6)) for i in range(20)], validator))
    land(dataset, batch_of([(0, tx(3))], validator, partition=1))  # Jan 1, from Kafka
    path = tmp_path / "backfill.jsonl"
    path.write_bytes(tx(3) + b"\n" + tx(4) + b"\n")
    [result] = import_files(dataset, [path], validator, tmp_path / "dead", progress=False)
    assert (result.stats.landed, result.stats.duplicates_dropped) == (1, 1)
    assert event_ids(dataset).count("tx-3") == 1 and "tx-4" in event_ids(dataset)


def test_landed_ids_index_is_rebuilt_from_the_table(dataset, validator):
    land(dataset, batch_of([(i, tx(i)) for i in range(5)], validator))
    index = LandedIds(dataset)  # a restarted lander's: loaded lazily from the table
    # A restarted lander uses it: a resend of tx-3 at a new offset is dropped.
    land(dataset, batch_of([(5, tx(3)), (6, tx(6))], validator), index)
    assert event_ids(dataset) == ["tx-0", "tx-1", "tx-2", "tx-3", "tx-4", "tx-6"]


def test_a_zombie_commit_of_the_same_partition_conflicts_instead_of_duplicating(
        dataset, validator):
    land(dataset, batch_of([(0, tx(0))], validator))
    stale = dataset.table()  # the zombie loaded the table ...
    land(dataset, batch_of([(1, tx(1))], validator))  # ... then the new owner committed
    rows = dataset.read(columns=None).slice(0, 0).drop_columns(["event_date"])
    with pytest.raises(CommitConflict):
        dataset.append(stale, rows, {app_id("events.raw", 0): 1})
    # A different partition's app id does not conflict.
    other = MasterDataset(dataset.uri).table()
    dataset.append(other, rows, {app_id("events.raw", 1): 0})


def test_commit_retries_after_a_conflict_and_refilters(dataset, validator, monkeypatch):
    land(dataset, batch_of([(0, tx(0))], validator))
    stale = dataset.table()
    land(dataset, batch_of([(1, tx(1)), (2, tx(2))], validator))
    real_table = MasterDataset.table
    calls = {"n": 0}

    def first_stale(self, version=None):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return stale if calls["n"] == 1 else real_table(self, version)

    monkeypatch.setattr(MasterDataset, "table", first_stale)
    stats = LanderStats()
    commit_batch(dataset, batch_of([(i, tx(i)) for i in range(4)], validator),
                 LandedIds(dataset), ListSink(), stats, writer="zombie")
    monkeypatch.undo()
    assert stats.conflicts == 1
    assert event_ids(dataset) == ["tx-0", "tx-1", "tx-2", "tx-3"]


def test_dead_letters_are_stored_before_the_commit_and_a_failing_sink_commits_nothing(
        dataset, validator):
    class Broken:
        def send(self, letters):  # type: ignore[no-untyped-def]
            raise RuntimeError("dlq down")

    batch = batch_of([(0, tx(0)), (1, b"{not json"), (2, tx(2))], validator)
    version = dataset.table().version()
    with pytest.raises(RuntimeError):
        commit_batch(dataset, batch, LandedIds(dataset), Broken(), LanderStats(), writer="t")
    assert dataset.table().version() == version
    assert dataset.table().transaction_version(app_id("events.raw", 0)) is None

    sink = ListSink()
    land(dataset, batch, sink=sink)
    assert [(d.source_offset, d.reason.split(":")[0]) for d in sink.letters] == [
        (1, "malformed_json")]
    assert sink.letters[0].original == b"{not json"
    assert event_ids(dataset) == ["tx-0", "tx-2"]


def test_a_batch_of_only_bad_events_still_advances_the_offsets(dataset, validator):
    sink = ListSink()
    land(dataset, batch_of([(0, b"\xff\xfe"), (1, b"[]")], validator), sink=sink)
    assert dataset.table().transaction_version(app_id("events.raw", 0)) == 1
    assert len(sink.letters) == 2
    assert land(dataset, batch_of([(0, b"\xff\xfe")], validator), sink=sink) is None
    assert len(sink.letters) == 2


def test_rows_keep_the_envelope_typed_and_the_original_bytes(dataset, validator):
    raw = tx(7, card="card-42")
    land(dataset, batch_of([(7, raw)], validator, partition=2))
    row = dataset.read().to_pylist()[0]
    assert row["payload"] == raw
    assert row["event_type"] == "transaction" and row["schema_version"] == 1
    assert row["entity_key"] == "card-42"
    assert (row["kafka_topic"], row["kafka_partition"], row["kafka_offset"]) == (
        "events.raw", 2, 7)
    assert row["event_date"] == "2026-01-01"
    assert int(row["event_time"].timestamp() * 1000) == T0 + 7
    files = DeltaTable(dataset.uri).file_uris()
    assert all("event_type=transaction" in f and "event_date=2026-01-01" in f for f in files)


def test_import_is_idempotent_and_dead_letters_bad_lines(tmp_path, dataset, validator):
    path = tmp_path / "backfill.jsonl"
    path.write_bytes(b"\n".join([tx(1), b"garbage", tx(2), tx(1), b""]) + b"\n")
    dead = tmp_path / "dead"
    [result] = import_files(dataset, [path], validator, dead, progress=False)
    assert (result.stats.landed, result.stats.dead_lettered,
            result.stats.duplicates_dropped) == (2, 2, 1)
    letters = read_file_dead_letters(result.dead_letter_file)  # type: ignore[arg-type]
    assert [(entry["original"], entry["reason"].split(":")[0]) for entry in letters] == [
        (b"garbage", "malformed_json"), (b"", "malformed_json")]
    assert event_ids(dataset) == ["tx-1", "tx-2"]
    [again] = import_files(dataset, [path], validator, dead, progress=False)
    assert again.stats.landed == 0 and again.stats.consumed == 0
    assert event_ids(dataset) == ["tx-1", "tx-2"]


def test_import_of_a_missing_file_is_a_clear_error(tmp_path, dataset, validator):
    with pytest.raises(DatasetError, match="no such file"):
        import_files(dataset, [tmp_path / "nope.jsonl"], validator, tmp_path, progress=False)


def test_reading_a_missing_dataset_tells_what_to_do(tmp_path):
    with pytest.raises(DatasetError, match="land events first"):
        MasterDataset(str(tmp_path / "none")).read()


def test_file_dead_letters_round_trip(tmp_path):
    sink = FileDeadLetters(tmp_path / "d.jsonl")
    sink.send([DeadLetter("t", 1, 2, "oversized: 70000 bytes", b"\x00\xff")])
    [entry] = read_file_dead_letters(tmp_path / "d.jsonl")
    assert entry == {"key": "t:1:2", "reason": "oversized: 70000 bytes", "original": b"\x00\xff"}


def test_info_reports_partitions_rows_and_offsets(dataset, validator):
    land(dataset, batch_of([(i, tx(i, t=T0 + i * 10 * HOUR)) for i in range(4)], validator))
    info = dataset.info()
    assert info["rows"] == 4
    assert [(p["event_date"], p["rows"]) for p in info["partitions"]] == [
        ("2026-01-01", 3), ("2026-01-02", 1)]
    assert info["offsets"] == {app_id("events.raw", 0): 3}


def test_add_records_buffers_exactly_what_add_does(validator):
    class Record:
        def __init__(self, offset: int, value: bytes | None) -> None:
            self.offset, self.value = offset, value

    values = [tx(0), b"nope", None, tx(3), tx(3)]
    one_by_one, in_bulk = PendingBatch(), PendingBatch()
    for offset, value in enumerate(values):
        one_by_one.add("events.raw", 1, offset, value, validator)  # type: ignore[arg-type]
    in_bulk.add_records("events.raw", 1, [Record(o, v) for o, v in enumerate(values)], validator)
    for name in ("event_id", "event_type", "schema_version", "event_time", "entity_key",
                 "topic", "partition", "offset", "payload", "rejects", "last_offsets"):
        assert getattr(in_bulk, name) == getattr(one_by_one, name), name



@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-2_208_988_800_000,  # 1900-01-01
                            max_value=253_402_300_799_999),  # 9999-12-31, the last ms
                min_size=1, max_size=50))
def test_event_date_is_the_utc_calendar_date_of_event_time(times_ms: list[int]) -> None:
    rows = pa.table({"event_time": pa.array(times_ms, pa.timestamp("ms", tz="UTC"))})
    dates = with_event_date(rows).column("event_date").to_pylist()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert dates == [(epoch + timedelta(milliseconds=t)).date().isoformat() for t in times_ms]
