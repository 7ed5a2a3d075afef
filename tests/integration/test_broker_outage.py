"""A broker outage under a running lander: one line when the broker is
lost, one when it is back, not a screen of kafka-python retry errors, and
every event landed exactly once.

The broker is private to the test (the session's `kafka` fixture is shared
and must not go down), in the test's tmp dir; it is stopped cleanly and
started again on the same storage and ports while the lander runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from lamina import kafkaio
from lamina.broker import KafkaCluster, kafka_libs
from lamina.master.dataset import MasterDataset
from lamina.schemas.topics import TopicSpec

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T0 = 1_767_225_600_000
OUTAGE_S = 4.0
WARNING_LINE = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) ")


def tx(n: int) -> bytes:
    return orjson.dumps({
        "event_id": f"tx-{n}", "event_type": "transaction", "schema_version": 1,
        "event_time": T0 + n, "card_id": f"card-{n % 7}", "merchant_id": "m-1",
        "merchant_category": "grocery", "amount": 10.0, "currency": "EUR",
        "country": "FR", "channel": "pos",
    })


def send_all(producer: Any, topic: str, numbers: range) -> None:
    for n in numbers:
        producer.send(topic, key=f"card-{n % 7}".encode(), value=tx(n))
    producer.flush()


def produce(bootstrap: str, topic: str, numbers: range) -> None:
    producer = kafkaio.make_producer(bootstrap)
    try:
        send_all(producer, topic, numbers)
    finally:
        producer.close()


def landed(master: Path) -> Counter[str]:
    dataset = MasterDataset(str(master))
    if not dataset.exists():
        return Counter()
    return Counter(dataset.read(columns=["event_id"]).column("event_id").to_pylist())


def wait_for(condition: Any, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}; see {log}"
        time.sleep(0.1)


def test_a_broker_outage_logs_lost_and_back_once_and_loses_nothing(tmp_path: Path) -> None:
    cluster = KafkaCluster(tmp_path / "kafka", kafka_libs(REPO / ".lamina"), nodes=1)
    cluster.start()
    lander = None
    log_path = tmp_path / "lander.log"
    try:
        bootstrap = cluster.bootstrap_servers
        cluster.create_topics([TopicSpec("raw", 3, 86_400_000), TopicSpec("dlq", 1, 86_400_000)])
        home = tmp_path / "home"
        env = {**os.environ, "LAMINA_HOME": str(home), "LAMINA_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
               "LAMINA_KAFKA_RAW_TOPIC": "raw", "LAMINA_KAFKA_DLQ_TOPIC": "dlq",
               "LAMINA_LANDER_COMMIT_MAX_SECONDS": "0.5", "LAMINA_LOG_LEVEL": "INFO"}
        with log_path.open("wb") as log:
            lander = subprocess.Popen([sys.executable, "-m", "lamina.cli", "land", "--quiet"],
                                      env=env, stdout=log, stderr=log)
        produce(bootstrap, "raw", range(0, 500))
        wait_for(lambda: len(landed(home / "master")) == 500, 90, "the first 500", log_path)

        # Events sent during the outage wait in the producer and go once it is back.
        producer = kafkaio.make_producer(bootstrap)
        try:
            cluster.stop_node(0)
            during = threading.Thread(target=send_all, args=(producer, "raw", range(500, 1000)))
            during.start()
            time.sleep(OUTAGE_S)
            cluster.start()
            during.join(timeout=150)
            assert not during.is_alive(), "the producer did not deliver after the outage"
        finally:
            producer.close()
        produce(bootstrap, "raw", range(1000, 1500))
        wait_for(lambda: len(landed(home / "master")) == 1500, 90, "all 1500", log_path)
        assert lander.poll() is None, f"the lander exited; see {log_path}"
    finally:
        if lander is not None and lander.poll() is None:
            lander.terminate()  # graceful: commits what it holds, then exits
            lander.wait(timeout=60)
        cluster.stop()

    counts = landed(home / "master")
    assert set(counts) == {f"tx-{n}" for n in range(1500)}
    assert max(counts.values()) == 1
    lines = log_path.read_text().splitlines()
    loud = [line for line in lines if WARNING_LINE.match(line)]
    assert len(loud) <= 5, "\n".join(loud[:20])
    lost = [i for i, line in enumerate(lines) if "kafka broker lost, retrying" in line]
    back = [i for i, line in enumerate(lines) if "kafka broker back" in line]
    assert len(lost) == 1 and len(back) == 1 and lost[0] < back[0], \
        "\n".join(lines[i] for i in lost + back)
    assert " WARNING " in lines[lost[0]] and "down_s=" in lines[back[0]]
