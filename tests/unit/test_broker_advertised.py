"""KafkaCluster's advertised ports: a node listens on its broker port and
tells clients another one (a proxy in front of it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina.broker import KafkaCluster
from lamina.errors import InfraError


def properties(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_a_node_advertises_the_given_port_and_still_listens_on_its_broker_port(tmp_path):
    cluster = KafkaCluster(tmp_path / "c", tmp_path, broker_ports=[41001],
                           advertised_ports=[42001])
    cluster._write_node_config(0)
    props = properties(cluster.node_dir(0) / "server.properties")
    assert props["listeners"].startswith("PLAINTEXT://127.0.0.1:41001,CONTROLLER://")
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:42001"
    assert cluster.bootstrap_servers == cluster.node_bootstrap(0) == "127.0.0.1:42001"


def test_without_advertised_ports_clients_are_sent_to_the_broker_port(tmp_path):
    cluster = KafkaCluster(tmp_path / "c", tmp_path, broker_ports=[41001])
    cluster._write_node_config(0)
    props = properties(cluster.node_dir(0) / "server.properties")
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:41001"
    assert cluster.bootstrap_servers == "127.0.0.1:41001"


def test_one_advertised_port_per_node_is_required(tmp_path):
    with pytest.raises(InfraError, match="1 advertised ports are needed"):
        KafkaCluster(tmp_path / "c", tmp_path, advertised_ports=[1, 2])
