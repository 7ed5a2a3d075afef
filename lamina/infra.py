"""`lamina infra up | down | status`: Lamina's own broker on this machine.

The brokers run from the directories under ``Settings.kafka_home`` (one per
mode, see ``lamina.broker.KafkaCluster``), on the ports that
``bootstrap_servers`` names, with Lamina's default topics.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.broker import NODES_PER_MODE, KafkaCluster, Mode, kafka_libs, port_is_free
from lamina.config import Settings
from lamina.errors import InfraError
from lamina.kafkaio import parse_bootstrap
from lamina.logs import get_logger
from lamina.schemas.topics import default_topics
from lamina.topics import topic_partitions

log = get_logger(__name__)


@dataclass(frozen=True)
class InfraUp:
    """What `infra_up` did: the broker that runs now and Lamina's topics."""

    mode: Mode
    bootstrap_servers: str
    already_running: bool
    pids: list[int]
    cluster_dir: Path
    log_paths: list[Path]
    topics: dict[str, int]


def _cluster_for(settings: Settings, mode: Mode, **kwargs: Any) -> KafkaCluster:
    return KafkaCluster(
        settings.kafka_home / mode,
        kwargs.pop("libs", settings.kafka_home / "libs"),
        nodes=NODES_PER_MODE[mode],
        **kwargs,
    )


def _existing_clusters(settings: Settings) -> Iterator[tuple[Mode, KafkaCluster]]:
    for mode in NODES_PER_MODE:
        if (settings.kafka_home / mode / "cluster.json").exists():
            yield mode, _cluster_for(settings, mode)


def _wanted_broker_ports(settings: Settings, nodes: int) -> list[int]:
    # The broker listens where Lamina's clients look: the ports of
    # settings.kafka.bootstrap_servers (a 3-node cluster uses p, p+1, p+2
    # unless three servers are listed).
    servers = parse_bootstrap(settings.kafka.bootstrap_servers)
    for host, _ in servers:
        if host not in ("127.0.0.1", "localhost"):
            raise InfraError(
                f"kafka.bootstrap_servers is {settings.kafka.bootstrap_servers}, but `lamina "
                "infra up` starts a broker on this machine (127.0.0.1); unset "
                "LAMINA_KAFKA_BOOTSTRAP_SERVERS "
                "or point it at 127.0.0.1:<port>"
            )
    if len(servers) == nodes:
        return [port for _, port in servers]
    return [servers[0][1] + i for i in range(nodes)]


def infra_up(settings: Settings, mode: Mode = "single", *, heap: str = "512m") -> InfraUp:
    """Start Lamina's broker(s) as daemons under `settings.kafka_home/<mode>`
    and create the default topics (RF = node count, min.insync 2 for 3
    nodes). Idempotent: if the broker already runs, only the topics are
    checked and `already_running` is True; nodes of it that died are started
    again on their storage. Raises InfraError if the other mode is running
    or a port is taken by another process (the message says what to do)."""
    if mode not in NODES_PER_MODE:
        raise InfraError(f"infra mode must be one of {', '.join(NODES_PER_MODE)}, not {mode!r}")
    for other_mode, other in _existing_clusters(settings):
        if other_mode != mode and other.any_running:
            raise InfraError(
                f"a {other_mode} Kafka is already running at {other.bootstrap_servers}; "
                "run `lamina infra down` first"
            )
    libs = kafka_libs(settings)
    cluster = _cluster_for(settings, mode, libs=libs, daemon=True, heap=heap)
    already_running = cluster.is_running
    if not cluster.any_running:
        # Nothing runs, so the broker may move to the ports the settings name.
        ports = _wanted_broker_ports(settings, cluster.nodes)
        for port in ports:
            if not port_is_free(port):
                raise InfraError(
                    f"port {port} on 127.0.0.1 is in use by another process, so Lamina cannot "
                    "start its broker there; stop that process, or choose a free port with "
                    "LAMINA_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:<port>"
                )
        cluster = _cluster_for(
            settings, mode, libs=libs, daemon=True, heap=heap, broker_ports=ports
        )
    if not already_running:
        cluster.start()  # starts only the nodes that are not running
    kafka = settings.kafka
    specs = default_topics(kafka.raw_topic, kafka.dlq_topic, kafka.raw_partitions,
                           kafka.scores_topic)
    topics = cluster.create_topics(specs)
    log.info("kafka up", mode=mode, bootstrap=cluster.bootstrap_servers,
             already_running=already_running)
    return InfraUp(
        mode=mode,
        bootstrap_servers=cluster.bootstrap_servers,
        already_running=already_running,
        pids=[p for p in cluster.pids if p is not None],
        cluster_dir=cluster.cluster_dir,
        log_paths=cluster.log_paths,
        topics=topics,
    )


def infra_down(settings: Settings, timeout_s: float = 30.0) -> list[Mode]:
    """Stop every Lamina broker running from `settings.kafka_home` (clean
    shutdown, SIGKILL after timeout_s). Storage is kept, so a later
    `infra_up` resumes with the same topics and data. Returns the modes that
    were running (empty if nothing was)."""
    stopped: list[Mode] = []
    for mode, cluster in _existing_clusters(settings):
        if cluster.any_running:
            cluster.stop(timeout_s)
            stopped.append(mode)
            log.info("kafka down", mode=mode, dir=cluster.cluster_dir)
    return stopped


def infra_status(settings: Settings) -> dict[str, Any]:
    """The state of Lamina's own broker, JSON-serialisable:

    running (bool, any node up), healthy (every node up), mode ("single",
    "cluster" or None), bootstrap_servers, cluster_dir, nodes (node, pid,
    running, broker_port, log), topics ({name: partitions} when running,
    else {}) and error (why topics could not be listed, or None).
    """
    found = list(_existing_clusters(settings))
    running = [(mode, c) for mode, c in found if c.any_running]
    if not running and not found:
        return {"running": False, "healthy": False, "mode": None, "bootstrap_servers": None,
                "cluster_dir": None, "nodes": [], "topics": {}, "error": None}
    mode, cluster = running[0] if running else found[0]
    status: dict[str, Any] = {
        "running": cluster.any_running,
        "healthy": cluster.is_running,
        "mode": mode,
        "bootstrap_servers": cluster.bootstrap_servers,
        "cluster_dir": str(cluster.cluster_dir),
        "nodes": [
            {
                "node": i,
                "pid": cluster.pid(i),
                "running": cluster.node_running(i),
                "broker_port": cluster.ports[i].broker,
                "log": str(cluster.log_path(i)),
            }
            for i in range(cluster.nodes)
        ],
        "topics": {},
        "error": None,
    }
    if cluster.any_running:
        live = ",".join(cluster.node_bootstrap(i) for i in range(cluster.nodes)
                        if cluster.node_running(i))
        try:
            status["topics"] = topic_partitions(live)
        except Exception as exc:  # status reports a problem, it does not fail on it
            status["error"] = f"could not list topics: {exc}"
    return status
