"""Pytest plugin: real Kafka brokers for integration tests.

Fixtures:
- `kafka`: a single-node KafkaCluster for the whole session, on random ports
  in a temporary directory. Tests create their own topics
  (`kafka.create_topics(specs)` or `fresh_topics`).
- `fresh_topics`: a raw (3 partitions) and a dead-letter topic with names
  unique to the test, created on `kafka`.
- `kafka_cluster3`: a 3-node cluster for one test module (RF 3, min.insync 2
  by default for `create_topics`). A test that kills a node restarts it.
- `kafka_behind_proxy`: a private single-node broker for one test module
  whose advertised listener is a `tests.tcp_proxy.TcpProxy` in front of
  it, so every client connection (bootstrap and after) goes through the
  proxy and `proxy.cut()` takes the broker away from all of them. Yields
  `(cluster, proxy)`; `cluster.bootstrap_servers` is the proxy. A test that
  cuts restores before it ends.

Brokers are stopped at teardown. Their directories (with the server logs)
are deleted unless a test failed while they ran; then the paths are listed
in the terminal summary.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lamina.broker import KafkaCluster, _free_ports, kafka_libs
from lamina.schemas.topics import default_topics
from tests.tcp_proxy import TcpProxy

REPO = Path(__file__).resolve().parents[1]
_KEPT = pytest.StashKey[list[Path]]()


@dataclass(frozen=True)
class FreshTopics:
    raw: str
    dlq: str


def _running_cluster(
    request: pytest.FixtureRequest, base: Path, nodes: int, **options: Any
) -> Iterator[KafkaCluster]:
    failed_before = request.session.testsfailed
    cluster = KafkaCluster(base / "cluster", kafka_libs(REPO / ".lamina"), nodes=nodes,
                           **options)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        if request.session.testsfailed > failed_before:
            request.config.stash.setdefault(_KEPT, []).extend(cluster.log_paths)
        else:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaCluster]:
    """A running single-node Kafka for the session (random ports, no topics)."""
    yield from _running_cluster(request, tmp_path_factory.mktemp("kafka"), nodes=1)


@pytest.fixture(scope="module")
def kafka_cluster3(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaCluster]:
    """A running 3-node Kafka cluster for the module (random ports)."""
    yield from _running_cluster(request, tmp_path_factory.mktemp("kafka3"), nodes=3)


@pytest.fixture(scope="module")
def kafka_behind_proxy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KafkaCluster, TcpProxy]]:
    """A private single-node Kafka whose clients all go through a TCP proxy
    the test controls (module scope)."""
    broker_port, proxy_port = _free_ports(2)
    proxy = TcpProxy(("127.0.0.1", broker_port), listen_port=proxy_port)
    proxy.start()  # before the broker: its readiness check is a client too
    clusters = _running_cluster(request, tmp_path_factory.mktemp("kafka-proxied"), nodes=1,
                                broker_ports=[broker_port], advertised_ports=[proxy_port])
    try:
        yield next(clusters), proxy
    finally:
        clusters.close()  # stops the broker (its logs kept if a test failed)
        proxy.stop()


@pytest.fixture
def fresh_topics(request: pytest.FixtureRequest, kafka: KafkaCluster) -> FreshTopics:
    """A raw topic (3 partitions) and a DLQ topic on `kafka`, new for this test."""
    stem = re.sub(r"[^a-zA-Z0-9._-]", "_", request.node.name)[:60]
    suffix = uuid.uuid4().hex[:8]
    topics = FreshTopics(raw=f"{stem}.{suffix}.raw", dlq=f"{stem}.{suffix}.dlq")
    kafka.create_topics(default_topics(topics.raw, topics.dlq, raw_partitions=3))
    return topics


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    kept = terminalreporter.config.stash.get(_KEPT, [])
    if kept:
        terminalreporter.section("Kafka logs kept (a test failed while they ran)")
        for path in kept:
            terminalreporter.write_line(str(path))
