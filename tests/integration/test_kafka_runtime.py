"""The Kafka runtime Lamina starts: brokers start and restart on their
storage, topic creation is idempotent, and acks=all idempotent production
loses nothing (and duplicates nothing) across a broker restart or a kill -9
of the partition leader in a 3-node cluster."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lamina import kafkaio
from lamina.broker import KafkaCluster, free_port, kafka_libs
from lamina.config import KafkaSettings, Settings
from lamina.errors import InfraError
from lamina.infra import infra_down, infra_status, infra_up
from lamina.schemas.topics import TopicSpec
from lamina.topics import topic_partitions
from tests.kafka_fixtures import REPO, FreshTopics

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


class NumberedProducer(threading.Thread):
    """Sends the numbers 0..total-1 (as values, keyed so they spread over the
    partitions) at about `rate` messages/s, so production spans a failure
    the test injects; then flushes. Send errors are collected, not raised."""

    def __init__(self, bootstrap: str, topic: str, total: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.total, self.rate = bootstrap, topic, total, rate
        self.sent = 0
        self.errors: list[BaseException] = []
        self.done = threading.Event()

    def run(self) -> None:
        producer = kafkaio.make_producer(self.bootstrap)
        try:
            began = time.monotonic()
            for n in range(self.total):
                value = str(n).encode()
                future = producer.send(self.topic, key=value, value=value)
                future.add_errback(self.errors.append)
                self.sent = n + 1
                if n % 200 == 199:
                    time.sleep(max(0.0, began + self.sent / self.rate - time.monotonic()))
            producer.flush(timeout=90)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.errors.append(exc)
        finally:
            producer.close(timeout=5)
            self.done.set()


def read_numbers(bootstrap: str, topic: str, timeout_s: float = 30.0) -> Counter[int]:
    """Every value of `topic` from the beginning to its current end, counted."""
    from kafka import TopicPartition

    consumer = kafkaio.make_consumer(bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        seen: Counter[int] = Counter()
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for records in consumer.poll(timeout_ms=200).values():
                seen.update(int(r.value) for r in records)
        return seen
    finally:
        consumer.close()


def assert_exactly_once(seen: Counter[int], total: int) -> None:
    missing = sorted(set(range(total)) - set(seen))
    duplicated = sorted(n for n, count in seen.items() if count > 1)
    assert not missing, f"{len(missing)} of {total} messages lost, e.g. {missing[:10]}"
    assert not duplicated, f"{len(duplicated)} messages duplicated, e.g. {duplicated[:10]}"
    assert set(seen) == set(range(total))


def describe_partition(bootstrap: str, topic: str, partition: int = 0) -> dict[str, Any]:
    """The partition's metadata; {} while the cluster cannot answer (e.g. the
    admin client picked a node that was just killed)."""
    from kafka.errors import KafkaError

    try:
        admin = kafkaio.make_admin(bootstrap, request_timeout_ms=5000)
        try:
            (described,) = admin.describe_topics([topic])
        finally:
            admin.close()
    except KafkaError:
        return {}
    return dict(described["partitions"][partition])


def test_broker_starts_with_a_non_empty_log_and_answers_metadata(kafka: KafkaCluster) -> None:
    assert kafka.is_running
    assert all(pid is not None for pid in kafka.pids)
    log_text = kafka.log_path(0).read_text()
    assert "Kafka Server started" in log_text
    assert isinstance(topic_partitions(kafka.bootstrap_servers), dict)


def test_topic_creation_is_idempotent(
    kafka: KafkaCluster, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"idempotent-{uuid.uuid4().hex[:8]}"
    specs = [TopicSpec(name, 3, DAY_MS), TopicSpec(f"{name}.dlq", 1, DAY_MS)]
    assert kafka.create_topics(specs) == {name: 3, f"{name}.dlq": 1}
    assert kafka.create_topics(specs) == {name: 3, f"{name}.dlq": 1}
    # A spec that disagrees with the existing topic is not an error: the
    # topic stays as it is and the difference is logged.
    with caplog.at_level(logging.WARNING, logger="lamina.broker"):
        assert kafka.create_topics([TopicSpec(name, 5, DAY_MS)]) == {name: 3}
    assert "another partition count" in caplog.text
    assert topic_partitions(kafka.bootstrap_servers)[name] == 3


def test_produce_consume_round_trip(kafka: KafkaCluster, fresh_topics: FreshTopics) -> None:
    producer = kafkaio.make_producer(kafka.bootstrap_servers)
    try:
        for n in range(1000):
            producer.send(fresh_topics.raw, key=str(n).encode(), value=str(n).encode())
        producer.flush(timeout=30)
    finally:
        producer.close()
    assert_exactly_once(read_numbers(kafka.bootstrap_servers, fresh_topics.raw), 1000)


def test_broker_restart_during_production_loses_nothing(
    kafka: KafkaCluster, fresh_topics: FreshTopics
) -> None:
    total = 20_000
    producer = NumberedProducer(kafka.bootstrap_servers, fresh_topics.raw, total, rate=5000)
    producer.start()
    wait_for(lambda: producer.sent >= total // 5, 30, "the first fifth to be sent")
    sent_before = producer.sent
    kafka.restart(0)  # clean stop, start on the same storage and ports
    sent_after = producer.sent
    assert producer.done.wait(120), "producer did not finish"
    assert not producer.errors, f"send errors: {producer.errors[:3]}"
    # The restart really happened in the middle of production.
    assert sent_before < total and sent_after > sent_before
    assert_exactly_once(read_numbers(kafka.bootstrap_servers, fresh_topics.raw), total)


def test_cluster_leader_kill_during_acks_all_production_loses_nothing(
    kafka_cluster3: KafkaCluster,
) -> None:
    cluster = kafka_cluster3
    topic = f"failover-{uuid.uuid4().hex[:8]}"
    cluster.create_topics([TopicSpec(topic, 1, DAY_MS)])  # RF 3, min.insync 2
    leader = describe_partition(cluster.bootstrap_servers, topic)["leader_id"]
    survivors = ",".join(cluster.node_bootstrap(i) for i in range(cluster.nodes) if i != leader)

    total = 20_000
    producer = NumberedProducer(cluster.bootstrap_servers, topic, total, rate=5000)
    producer.start()
    wait_for(lambda: producer.sent >= total // 5, 30, "the first fifth to be sent")
    sent_before = producer.sent
    cluster.kill(leader)
    wait_for(
        lambda: describe_partition(survivors, topic).get("leader_id", -1) not in (-1, leader),
        30,
        "a new leader among the surviving nodes",
    )
    cluster.restart(leader)
    wait_for(
        lambda: leader in describe_partition(survivors, topic).get("isr_nodes", ()),
        30,
        "the restarted node back in the ISR",
    )
    assert producer.done.wait(120), "producer did not finish"
    assert not producer.errors, f"send errors: {producer.errors[:3]}"
    assert sent_before < total
    assert_exactly_once(read_numbers(cluster.bootstrap_servers, topic), total)


def settings_with_own_home(home: Path, port: int) -> Settings:
    # A home of its own (sharing the repo's jars) so the test never touches
    # a broker someone runs from the repo's .lamina.
    (home / "kafka").mkdir(parents=True)
    (home / "kafka" / "libs").symlink_to(kafka_libs(REPO / ".lamina"))
    return Settings(home=home, kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}"))


def test_infra_up_status_down_manage_a_daemonised_broker(tmp_path: Path) -> None:
    settings = settings_with_own_home(tmp_path / "home", free_port())
    kafka = settings.kafka
    expected_topics = {kafka.raw_topic: kafka.raw_partitions, kafka.dlq_topic: 1,
                       kafka.scores_topic: kafka.raw_partitions}
    try:
        up = infra_up(settings)
        assert not up.already_running
        assert up.bootstrap_servers == settings.kafka.bootstrap_servers
        assert up.topics == expected_topics
        again = infra_up(settings)
        assert again.already_running and again.pids == up.pids
        # Status and down find the daemon from its pid file, as a later
        # `lamina` process would.
        status = infra_status(settings)
        assert status["running"] and status["healthy"] and status["mode"] == "single"
        assert status["topics"] == expected_topics
        assert [node["pid"] for node in status["nodes"]] == up.pids
        with pytest.raises(InfraError, match="already running"):
            infra_up(settings, "cluster")
    finally:
        stopped = infra_down(settings)
    assert stopped == ["single"]
    assert not infra_status(settings)["running"]
    assert infra_down(settings) == []


def test_infra_up_refuses_a_port_another_process_listens_on(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        settings = settings_with_own_home(tmp_path / "home", squatter.getsockname()[1])
        with pytest.raises(InfraError, match="in use by another process"):
            infra_up(settings)


def test_missing_jars_say_how_to_get_them(tmp_path: Path) -> None:
    # Not run from a clone: the clone's jars (found otherwise) are no fallback.
    with pytest.raises(InfraError, match=r"infra/bootstrap\.sh"):
        kafka_libs(tmp_path, clone=None)
