"""The lander against a real Kafka broker: exactly-once under kill -9, and
bad input dead-lettered with its reason while landing goes on."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina import kafkaio
from lamina.errors import DatasetError
from lamina.generator import GeneratorConfig, generate
from lamina.master.dataset import MasterDataset
from lamina.master.deadletters import KafkaDeadLetters
from lamina.master.lander import Lander
from lamina.schemas.topics import TopicSpec
from lamina.schemas.validation import EventValidator
from lamina.topics import create_topics

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000


def new_topics(bootstrap: str, partitions: int = 3) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    raw, dlq = f"raw-{suffix}", f"dlq-{suffix}"
    create_topics(bootstrap, [TopicSpec(raw, partitions, 86_400_000),
                              TopicSpec(dlq, 1, 86_400_000)])
    return raw, dlq


def produce_all(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = kafkaio.make_producer(bootstrap)
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close()


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 30) -> list[Any]:
    """All records of `topic` from the beginning, once `expected` are there."""
    from kafka import TopicPartition

    consumer = kafkaio.make_consumer(bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                out.extend(records)
            ends = consumer.end_offsets(partitions)
            if len(out) >= expected and all(consumer.position(tp) >= ends[tp]
                                            for tp in partitions):
                break
        return out
    finally:
        consumer.close()


def landed_ids(master: Path) -> Counter[str]:
    rows = MasterDataset(str(master)).read(columns=["event_id"])
    return Counter(rows.column("event_id").to_pylist())


def landed_count(master: Path) -> int:
    """Events in the master dataset, 0 before its first commit (the writer
    creates the directory before the table's log exists)."""
    try:
        return len(landed_ids(master))
    except DatasetError:
        return 0


def lander_env(bootstrap: str, raw: str, dlq: str, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "LAMINA_HOME": str(home),
        "LAMINA_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "LAMINA_KAFKA_RAW_TOPIC": raw,
        "LAMINA_KAFKA_DLQ_TOPIC": dlq,
        "LAMINA_LANDER_GROUP": f"lander-{raw}",
        # A restarted lander takes its partitions back at once (static membership).
        "LAMINA_LANDER_INSTANCE_ID": "lander-under-test",
        # Small, frequent commits so kills land between and during them.
        "LAMINA_LANDER_COMMIT_MAX_EVENTS": "4000",
        "LAMINA_LANDER_COMMIT_MAX_SECONDS": "0.5",
    })
    return env


def log_tail(path: Path, lines: int = 40) -> str:
    """The end of a subprocess log, for a failure message CI shows."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def snapshot_version(master: Path) -> int:
    dataset = MasterDataset(str(master))
    return dataset.table().version() if dataset.exists() else -1


@pytest.mark.slow
def test_lander_survives_kill_9_without_loss_or_duplicates(kafka, tmp_path):
    bootstrap = kafka.bootstrap_servers
    raw, dlq = new_topics(bootstrap)
    config = GeneratorConfig(seed=11, transactions=100_000, cards=3000, days=5.0)
    records = list(generate(config))
    valid = {r.event_id for r in records if r.kind == "valid"}
    malformed = sum(r.kind == "malformed" for r in records)
    assert len(records) >= 100_000 and malformed > 0
    assert any(r.kind == "duplicate" for r in records)

    # Production runs concurrently with the lander being killed.
    producer = threading.Thread(
        target=produce_all, args=(bootstrap, raw, [(r.key, r.value) for r in records]))
    producer.start()

    home = tmp_path / "home"
    master = home / "master"
    env = lander_env(bootstrap, raw, dlq, home)
    rng = random.Random(20261125)
    kills = 0
    log = (tmp_path / "lander.log").open("ab")
    while kills < 6:
        before = snapshot_version(master)
        proc = subprocess.Popen([sys.executable, "-m", "lamina.cli", "land", "--quiet"],
                                env=env, stdout=log, stderr=log)
        # Let this incarnation commit 1-4 times, then kill it at a random
        # moment: mid-poll, mid-validation, mid-commit.
        target = before + rng.randint(1, 4)
        deadline = time.monotonic() + 60
        try:
            while snapshot_version(master) < target and time.monotonic() < deadline:
                assert proc.poll() is None, f"lander exited early, see {tmp_path / 'lander.log'}"
                time.sleep(0.02)
            if snapshot_version(master) == before and not producer.is_alive() \
                    and set(landed_ids(master)) == valid:
                break  # the killed ones landed everything: nothing left to commit
            assert snapshot_version(master) > before, \
                f"lander made no progress; its log ends:\n{log_tail(tmp_path / 'lander.log')}"
            time.sleep(rng.uniform(0.0, 0.5))
        finally:  # never leave a lander running past the test
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        kills += 1
    producer.join()
    assert kills >= 2, "too few kills landed mid-stream for the test to mean anything"

    landed_before_final = sum(landed_ids(master).values())
    assert landed_before_final > 0
    final = subprocess.run(
        [sys.executable, "-m", "lamina.cli", "land", "--quiet", "--idle-exit", "4"],
        env=env, stdout=log, stderr=log, timeout=300)
    assert final.returncode == 0, f"see {tmp_path / 'lander.log'}"

    counts = landed_ids(master)
    assert [e for e, n in counts.items() if n > 1] == []
    assert set(counts) == valid
    # Dead letters may repeat after a kill, but none is lost.
    letters = read_topic(bootstrap, dlq, malformed)
    keys = {m.key for m in letters}
    assert len(keys) == malformed
    assert all(dict(m.headers)["reason"] for m in letters)


def run_lander_in_process(bootstrap: str, raw: str, dlq: str, master: Path,
                          expected: int) -> Any:
    producer = kafkaio.make_producer(bootstrap)
    lander = Lander(
        dataset=MasterDataset(str(master)),
        consumer=kafkaio.make_consumer(bootstrap, group_id=f"lander-{raw}"),
        topic=raw,
        dead_letters=KafkaDeadLetters(producer, dlq),
        validator=EventValidator(max_event_bytes=64 * 1024),
        commit_max_events=1000,
        commit_max_seconds=0.5,
    )
    try:
        return lander.run(max_events=expected)
    finally:
        producer.close()


def tx(n: int, **changes: Any) -> dict[str, Any]:
    event = {
        "event_id": f"tx-{n}", "event_type": "transaction", "schema_version": 1,
        "event_time": T0 + n, "card_id": "card-1", "merchant_id": "m-1",
        "merchant_category": "grocery", "amount": 10.0, "currency": "EUR",
        "country": "FR", "channel": "pos",
    }
    event.update(changes)
    return event


def test_bad_input_goes_to_the_dlq_with_its_reason_and_landing_goes_on(kafka, tmp_path):
    bootstrap = kafka.bootstrap_servers
    raw, dlq = new_topics(bootstrap, partitions=1)
    missing = tx(5)
    del missing["amount"]
    bad = {
        b'{"event_id": "x", "event_type": ': "malformed_json",
        orjson.dumps(tx(2, amount="12.50")): "schema_violation",
        orjson.dumps(missing): "schema_violation",
        orjson.dumps(tx(3, schema_version=99)): "unknown_schema_version",
        orjson.dumps(tx(4, event_type="refund")): "unknown_event_type",
        orjson.dumps(tx(6, padding="x" * 70_000)): "oversized",
        bytes(range(256)): "malformed_json",
        b"[1, 2, 3]": "not_an_object",
    }
    sent: list[tuple[bytes | None, bytes]] = []
    for n, value in enumerate(bad):
        sent.append((b"card-1", value))
        sent.append((b"card-1", orjson.dumps(tx(100 + n))))  # a good event after each bad one
    produce_all(bootstrap, raw, sent)

    stats = run_lander_in_process(bootstrap, raw, dlq, tmp_path / "master", len(sent))
    assert stats.landed == len(bad) and stats.dead_lettered == len(bad)
    assert set(landed_ids(tmp_path / "master")) == {f"tx-{100 + n}" for n in range(len(bad))}

    letters = read_topic(bootstrap, dlq, len(bad))
    by_value = {m.value: m for m in letters}
    assert set(by_value) == set(bad), "every bad event is in the DLQ with its original bytes"
    for value, code in bad.items():
        message = by_value[value]
        headers = {k: v.decode() for k, v in message.headers}
        assert headers["reason"].startswith(code + ":"), (code, headers["reason"])
        assert message.key.decode() == (
            f"{raw}:{headers['source_partition']}:{headers['source_offset']}")


@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(garbage=st.lists(st.binary(max_size=300), min_size=5, max_size=40))
def test_binary_garbage_is_dead_lettered_and_never_stops_the_lander(kafka, tmp_path, garbage):
    bootstrap = kafka.bootstrap_servers
    raw, dlq = new_topics(bootstrap, partitions=2)
    good = [orjson.dumps(tx(n)) for n in range(len(garbage))]
    interleaved = [v for pair in zip(garbage, good, strict=True) for v in pair]
    produce_all(bootstrap, raw, [(str(i % 2).encode(), v) for i, v in enumerate(interleaved)])
    master = tmp_path / f"master-{raw}"
    stats = run_lander_in_process(bootstrap, raw, dlq, master, len(interleaved))
    assert stats.landed == len(good)
    assert stats.dead_lettered == len(garbage)
    letters = read_topic(bootstrap, dlq, len(garbage))
    assert sorted(m.value for m in letters) == sorted(garbage)
    assert set(landed_ids(master)) == {f"tx-{n}" for n in range(len(good))}


def commits_by_writer(master: Path) -> Counter[str]:
    """How many commits each lander process (host:pid) made."""
    table = MasterDataset(str(master)).table() if MasterDataset(str(master)).exists() else None
    if table is None:
        return Counter()
    return Counter(str(e.get("lamina.writer")) for e in table.history() if e.get("lamina.writer"))


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_two_landers_and_a_paused_zombie_land_each_event_exactly_once(kafka, tmp_path):
    """Lander A is frozen (SIGSTOP) past its session timeout, likely holding
    an uncommitted batch; B takes A's partitions over and lands them; then A
    wakes up (SIGCONT) and commits what it held. The offsets in the table
    fence it: nothing lands twice, nothing is lost."""
    bootstrap = kafka.bootstrap_servers
    raw, dlq = new_topics(bootstrap, partitions=4)
    records = list(generate(GeneratorConfig(seed=5, transactions=30_000, cards=1500, days=3.0)))
    phases = [records[:15_000], records[15_000:22_000], records[22_000:]]

    def valid_ids(upto: int) -> set[str]:
        return {r.event_id for phase in phases[:upto] for r in phase  # type: ignore[misc]
                if r.kind == "valid"}

    home = tmp_path / "home"
    master = home / "master"
    env = lander_env(bootstrap, raw, dlq, home)
    del env["LAMINA_LANDER_INSTANCE_ID"]  # dynamic membership: B must take over
    env.update({"LAMINA_LANDER_SESSION_TIMEOUT_MS": "6000",
                # Long enough that A is likely to hold a batch when frozen.
                "LAMINA_LANDER_COMMIT_MAX_SECONDS": "4.0",
                "LAMINA_LANDER_COMMIT_MAX_EVENTS": "50000"})
    log = (tmp_path / "landers.log").open("ab")
    command = [sys.executable, "-m", "lamina.cli", "land", "--quiet"]

    def landed_set() -> set[str]:
        return set(landed_ids(master)) if MasterDataset(str(master)).exists() else set()

    lander_a = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    lander_b = None
    try:
        produce_all(bootstrap, raw, [(r.key, r.value) for r in phases[0]])
        wait_for(lambda: landed_set() == valid_ids(1), 90, "A to land phase 1")

        b_log_path = tmp_path / "lander-b.log"
        with b_log_path.open("ab") as b_log:
            lander_b = subprocess.Popen(command, env=env, stdout=b_log, stderr=b_log)
        # Produce phase 2 only once the group has shared the partitions out.
        wait_for(lambda: b"partition assigned" in b_log_path.read_bytes(), 90,
                 "B to be assigned partitions")
        produce_all(bootstrap, raw, [(r.key, r.value) for r in phases[1]])
        wait_for(lambda: landed_set() == valid_ids(2), 90, "A and B to land phase 2")
        pid_b = lander_b.pid
        assert any(w.endswith(f":{pid_b}") for w in commits_by_writer(master)), \
            "B never got partitions"

        producer = threading.Thread(target=produce_all, args=(
            bootstrap, raw, [(r.key, r.value) for r in phases[2]]))
        producer.start()
        time.sleep(0.5)
        lander_a.send_signal(signal.SIGSTOP)  # A becomes a zombie mid-phase 3
        producer.join()
        # B alone lands everything once A's session has expired.
        wait_for(lambda: landed_set() == valid_ids(3), 120, "B to take over A's partitions")
        lander_a.send_signal(signal.SIGCONT)
        time.sleep(5.0)  # the zombie wakes, commits what it held, rejoins
    finally:
        for proc in (lander_a, lander_b):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()  # graceful: commits what it holds, then exits
                proc.wait(timeout=60)

    counts = landed_ids(master)
    assert [e for e, n in counts.items() if n > 1] == []
    assert set(counts) == valid_ids(3)


def test_a_lander_holding_no_partition_rejoins_and_landing_stays_exactly_once(kafka, tmp_path):
    """The assignment watchdog: lander B joins a group whose only partition
    A holds, so B gets nothing; after `rejoin_after_s` it leaves and rejoins
    (a fresh join, what un-sticks kafka-python's lost rejoin). The rebalance
    may hand the partition to B, and then A is the one without and rejoins:
    either way somebody keeps rejoining, with backoff. Every event still
    lands exactly once."""
    bootstrap = kafka.bootstrap_servers
    raw, dlq = new_topics(bootstrap, partitions=1)
    master = tmp_path / "master"
    producer = kafkaio.make_producer(bootstrap)

    def lander(rejoin_after_s: float) -> Lander:
        return Lander(
            dataset=MasterDataset(str(master)),
            consumer=kafkaio.make_consumer(bootstrap, group_id=f"lander-{raw}"),
            topic=raw, dead_letters=KafkaDeadLetters(producer, dlq),
            validator=EventValidator(max_event_bytes=64 * 1024),
            commit_max_events=100, commit_max_seconds=0.2, rejoin_after_s=rejoin_after_s)

    a, b = lander(0.5), lander(0.5)
    threads = [threading.Thread(target=x.run, daemon=True) for x in (a, b)]
    try:
        produce_all(bootstrap, raw, [(b"card-1", orjson.dumps(tx(n))) for n in range(300)])
        threads[0].start()
        # Generous deadlines: a watchdog of 0.5 s doubling its wait needs a join
        # to finish inside one window, slow on a loaded machine (CI).
        wait_for(lambda: landed_count(master) == 300, 240,
                 "lander A to land the first 300 events")
        threads[1].start()
        wait_for(lambda: a.stats.rejoins + b.stats.rejoins >= 2, 240,
                 "the lander without a partition to rejoin twice")
        produce_all(bootstrap, raw, [(b"card-1", orjson.dumps(tx(n)))
                                     for n in range(300, 600)])
        wait_for(lambda: len(landed_ids(master)) == 600, 240, "all 600 events to land")
    finally:
        a.stop()
        b.stop()
        for thread in threads:
            if thread.ident is not None:  # B is not started if A's wait failed
                thread.join(timeout=30)
        producer.close()
    counts = landed_ids(master)
    assert set(counts) == {f"tx-{n}" for n in range(600)}
    assert max(counts.values()) == 1


def test_a_resend_behind_a_partition_that_got_ahead_lands_once_across_restarts(
        kafka, tmp_path):
    """Keyed production as the outside check did it: 50 events dated Jan 6 on
    partition 0, one dated Jan 1 on partition 2; a new lander process (only
    the table survives) then sees the producer resend the Jan 1 event."""
    bootstrap = kafka.bootstrap_servers
    raw, dlq = new_topics(bootstrap)
    master = tmp_path / "master"
    jan6 = T0 + 5 * 86_400_000
    producer = kafkaio.make_producer(bootstrap)
    try:
        for n in range(50):
            producer.send(raw, value=orjson.dumps(tx(100 + n, event_time=jan6 + n)),
                          partition=0)
        producer.send(raw, value=orjson.dumps(tx(7)), partition=2)
        producer.flush()
    finally:
        producer.close()
    first = run_lander_in_process(bootstrap, raw, dlq, master, expected=51)
    assert first.landed == 51

    producer = kafkaio.make_producer(bootstrap)
    try:
        producer.send(raw, value=orjson.dumps(tx(7)), partition=2)
        producer.flush()
    finally:
        producer.close()
    second = run_lander_in_process(bootstrap, raw, dlq, master, expected=1)
    assert second.duplicates_dropped == 1
    counts = landed_ids(master)
    assert counts["tx-7"] == 1 and sum(counts.values()) == 51
