"""The Kafka runtime Lamina starts itself: KRaft nodes from the Maven jars.

`KafkaCluster` runs 1 ("single") or 3 ("cluster") combined broker+controller
JVMs on 127.0.0.1 from a cluster directory that holds everything about them:

    <cluster_dir>/cluster.json   cluster id and every node's ports (stable)
    <cluster_dir>/pids.json      pids of the running nodes (while running)
    <cluster_dir>/node-<i>/      server.properties, log4j2.properties,
                                 server.log, stdout.log, data/

A later process builds a `KafkaCluster` on the same directory to find, stop
or restart the nodes; `lamina.infra` does that for the CLI with the
directories under `Settings.kafka_home`. Topic administration is
`lamina.topics`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lamina.config import Settings
from lamina.errors import InfraError
from lamina.kafkaio import make_admin
from lamina.logs import get_logger
from lamina.schemas.topics import TopicSpec
from lamina.topics import create_topics

log = get_logger(__name__)

Mode = Literal["single", "cluster"]
NODES_PER_MODE: dict[Mode, int] = {"single": 1, "cluster": 3}

READY_MARKER = b"Kafka Server started"
HOST = "127.0.0.1"


def _clone_root() -> Path | None:
    """The Lamina clone this code runs from (an editable install), or None
    for an installed wheel. `infra/bootstrap.sh` puts Kafka's jars there."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "infra" / "bootstrap.sh").is_file() else None


#: Where this code was cloned, if it was (see `kafka_libs`).
CLONE = _clone_root()


def _has_kafka_jars(libs: Path) -> bool:
    return any(libs.glob("kafka_2.13-*.jar"))


def kafka_libs(settings_or_home: Settings | Path, *, clone: Path | None = CLONE) -> Path:
    """The directory of Kafka's jars, given Settings or Lamina's home
    directory: `<home>/kafka/libs` if it holds them, else the clone's
    `.lamina/kafka/libs` (where `infra/bootstrap.sh` copies them), so a
    LAMINA_HOME anywhere works after the bootstrap. Raises InfraError with a
    command that puts the jars where they are looked for."""
    home = settings_or_home.home if isinstance(settings_or_home, Settings) else settings_or_home
    libs = Path(home) / "kafka" / "libs"
    if _has_kafka_jars(libs):
        return libs.resolve()
    if clone is None:
        raise InfraError(
            f"Kafka's jars are missing from {libs}; in a Lamina clone, copy them there with "
            f"`mvn -q -f infra/kafka/pom.xml dependency:copy-dependencies "
            f"-DoutputDirectory={libs.absolute()}` (infra/bootstrap.sh does this for the "
            "clone's own .lamina)"
        )
    clone_libs = clone / ".lamina" / "kafka" / "libs"
    if _has_kafka_jars(clone_libs):
        return clone_libs.resolve()
    looked = str(clone_libs) if libs.absolute() == clone_libs.absolute() else \
        f"{libs.absolute()} and {clone_libs}"
    raise InfraError(
        f"Kafka's jars are missing (looked in {looked}); run `{clone / 'infra' / 'bootstrap.sh'}` "
        f"to copy them with Maven into {clone_libs}, where Lamina finds them whatever "
        "LAMINA_HOME is"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:port. SO_REUSEADDR so sockets in
    TIME_WAIT left by a stopped broker do not count as busy (Java binds the
    same way)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    # Hold every socket until all are bound so the ports are distinct.
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind((HOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


@dataclass(frozen=True)
class NodePorts:
    broker: int
    controller: int


class KafkaCluster:
    """N KRaft nodes (each broker+controller) on 127.0.0.1, node ids 0..N-1.

    Ports and the cluster id are kept in `cluster.json`, so a restart (of a
    node or of the whole cluster, by this or a later process) reuses the same
    storage and ports. Controller ports must not change once storage is
    formatted; broker ports may (`broker_ports` overrides the stored ones).

    With `daemon=False` (tests) the nodes are also killed if the thread that
    started them dies, so an aborted run leaks no JVMs; with `daemon=True`
    they outlive this process (`lamina infra up`). Either way each node runs
    in its own session, so a Ctrl-C aimed at the parent does not reach it.
    Not thread-safe: drive one cluster from one thread.

    `advertised_ports` (one per node; default the broker ports) are the
    ports each node tells clients to connect to, for something in front of
    the broker on 127.0.0.1 (a TCP proxy a test controls). The node still
    listens on its broker port; `bootstrap_servers` names the advertised
    ports, and whatever is in front must forward them while the node
    starts (the readiness check is a client too). Not stored in
    `cluster.json`: give it again to each `KafkaCluster` on the directory.
    """

    def __init__(
        self,
        cluster_dir: Path,
        libs: Path,
        *,
        nodes: int = 1,
        broker_ports: Sequence[int] | None = None,
        heap: str = "512m",
        daemon: bool = False,
        start_timeout_s: float = 60.0,
        advertised_ports: Sequence[int] | None = None,
    ) -> None:
        if nodes not in (1, 3):
            raise InfraError(f"a Lamina Kafka cluster has 1 or 3 nodes, not {nodes}")
        self.cluster_dir = Path(cluster_dir).resolve()
        # Absolute: each node runs with its own directory as cwd.
        self.libs = Path(libs).resolve()
        self.heap = heap
        self.daemon = daemon
        self.start_timeout_s = start_timeout_s
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._pids: dict[int, int] = {}

        stored = self._read_json(self.cluster_file)
        if stored is not None:
            if len(stored["nodes"]) != nodes:
                raise InfraError(
                    f"{self.cluster_dir} holds a {len(stored['nodes'])}-node Kafka cluster, "
                    f"not {nodes}; stop it and delete the directory to change its size"
                )
            self.cluster_id: str | None = stored["cluster_id"]
            ports = [NodePorts(n["broker"], n["controller"]) for n in stored["nodes"]]
        else:
            self.cluster_id = None
            allocated = _free_ports(2 * nodes)
            ports = [NodePorts(allocated[2 * i], allocated[2 * i + 1]) for i in range(nodes)]
        # Advertised ports point something in front at the broker ports:
        # those are then never chosen again.
        self._random_ports = stored is None and broker_ports is None and advertised_ports is None
        if broker_ports is not None:
            if len(broker_ports) != nodes:
                raise InfraError(f"{nodes} broker ports are needed, got {list(broker_ports)}")
            ports = [NodePorts(b, p.controller) for b, p in zip(broker_ports, ports, strict=True)]
        self.ports = ports
        if advertised_ports is not None and len(advertised_ports) != nodes:
            raise InfraError(f"{nodes} advertised ports are needed, got {list(advertised_ports)}")
        self.advertised_ports = (None if advertised_ports is None
                                 else [int(p) for p in advertised_ports])
        # Pids written by an earlier process: how `infra down` finds a daemon.
        for key, pid in (self._read_json(self.pids_file) or {}).items():
            self._pids[int(key)] = int(pid)

    # -- paths and state ----------------------------------------------------

    @property
    def nodes(self) -> int:
        return len(self.ports)

    @property
    def cluster_file(self) -> Path:
        return self.cluster_dir / "cluster.json"

    @property
    def pids_file(self) -> Path:
        return self.cluster_dir / "pids.json"

    def node_dir(self, node_index: int) -> Path:
        return self.cluster_dir / f"node-{node_index}"

    def log_path(self, node_index: int) -> Path:
        """The node's Kafka server log (log4j2 writes it)."""
        return self.node_dir(node_index) / "server.log"

    @property
    def log_paths(self) -> list[Path]:
        return [self.log_path(i) for i in range(self.nodes)]

    def advertised_port(self, node_index: int) -> int:
        """The port node `node_index` tells clients to connect to."""
        if self.advertised_ports is None:
            return self.ports[node_index].broker
        return self.advertised_ports[node_index]

    @property
    def bootstrap_servers(self) -> str:
        """Every node's advertised broker address, `127.0.0.1:p0,127.0.0.1:p1,...`
        (its broker listener unless `advertised_ports` put something in front)."""
        return ",".join(self.node_bootstrap(i) for i in range(self.nodes))

    def node_bootstrap(self, node_index: int) -> str:
        return f"{HOST}:{self.advertised_port(node_index)}"

    def pid(self, node_index: int) -> int | None:
        """The node's pid if it is running, else None."""
        return self._pids.get(node_index) if self.node_running(node_index) else None

    @property
    def pids(self) -> list[int | None]:
        return [self.pid(i) for i in range(self.nodes)]

    def node_running(self, node_index: int) -> bool:
        proc = self._procs.get(node_index)
        if proc is not None:
            return proc.poll() is None
        pid = self._pids.get(node_index)
        return pid is not None and self._is_our_java(node_index, pid)

    @property
    def is_running(self) -> bool:
        """True if every node is running."""
        return all(self.node_running(i) for i in range(self.nodes))

    @property
    def any_running(self) -> bool:
        return any(self.node_running(i) for i in range(self.nodes))

    def _is_our_java(self, node_index: int, pid: int) -> bool:
        # A pid from pids.json may have been reused by an unrelated process
        # after a reboot: only trust it if it runs this node's config.
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        if stat.rpartition(")")[2].split()[0] == "Z":
            return False
        return str(self.node_dir(node_index) / "server.properties").encode() in cmdline

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Start every node that is not running (formatting storage the first
        time) and return once each says it started and answers metadata
        requests as an unfenced broker. Raises InfraError with the last log
        lines if a node exits or does not get ready in `start_timeout_s`."""
        self._start_nodes([i for i in range(self.nodes) if not self.node_running(i)])

    def restart(self, node_index: int) -> None:
        """Stop the node if it runs (SIGTERM), then start it again on the same
        storage and ports and wait until it is ready."""
        if self.node_running(node_index):
            self.stop_node(node_index)
        self._start_nodes([node_index])

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop every node: SIGTERM (a clean shutdown), then SIGKILL whatever
        still runs after timeout_s. Returns when all are gone."""
        self._signal_and_wait(list(range(self.nodes)), signal.SIGTERM, timeout_s)

    def stop_node(self, node_index: int, timeout_s: float = 30.0) -> None:
        """Stop one node cleanly (SIGTERM, SIGKILL after timeout_s)."""
        self._signal_and_wait([node_index], signal.SIGTERM, timeout_s)

    def kill(self, node_index: int) -> None:
        """SIGKILL one node (a crash: no clean shutdown) and wait until it is gone."""
        self._signal_and_wait([node_index], signal.SIGKILL, timeout_s=30.0)

    def _signal_and_wait(
        self, indexes: list[int], sig: signal.Signals, timeout_s: float
    ) -> None:
        # Signal all first, then wait: the nodes of a cluster stop in parallel.
        running = [i for i in indexes if self.node_running(i)]
        for i in running:
            self._send(i, sig)
            log.info("kafka node signalled", node=i, pid=self._pids[i], signal=sig.name)
        deadline = time.monotonic() + timeout_s
        for i in running:
            if not self._wait_gone(i, max(0.0, deadline - time.monotonic())):
                log.warning("kafka node did not stop in time; killing", node=i, pid=self._pids[i])
                self._send(i, signal.SIGKILL)
                self._wait_gone(i, 30.0)
        for i in indexes:
            self._procs.pop(i, None)
            self._pids.pop(i, None)
        self._write_pids()

    def _send(self, node_index: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._pids[node_index], sig)

    def _wait_gone(self, node_index: int, timeout_s: float) -> bool:
        proc = self._procs.get(node_index)
        if proc is not None:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout_s
        while self.node_running(node_index):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    # -- starting -----------------------------------------------------------

    def _start_nodes(self, indexes: list[int]) -> None:
        if not indexes:
            return
        java = _java()
        if self.cluster_id is None and self._random_ports and not all(
            port_is_free(port) for p in self.ports for port in (p.broker, p.controller)
        ):
            # Nothing is formatted yet, so a port taken since __init__ chose
            # it (parallel test runs) can simply be chosen again.
            allocated = _free_ports(2 * self.nodes)
            self.ports = [
                NodePorts(allocated[2 * i], allocated[2 * i + 1]) for i in range(self.nodes)
            ]
        for i in indexes:
            for port in (self.ports[i].broker, self.ports[i].controller):
                if not port_is_free(port):
                    raise InfraError(
                        f"port {port} on {HOST} is in use by another process; Kafka node {i} "
                        f"of {self.cluster_dir} needs it (stop that process, or delete the "
                        "directory to start on new ports)"
                    )
        self.cluster_dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.nodes):
            self._write_node_config(i)
        self._format_storage(java)
        # Broker ports may have moved (infra_up follows the settings).
        self._write_cluster_file()

        began = time.monotonic()
        log_offsets = {}
        for i in indexes:
            log_file = self.log_path(i)
            log_offsets[i] = log_file.stat().st_size if log_file.exists() else 0
            self._spawn(java, i)
        self._write_pids()
        try:
            self._wait_logged_ready(indexes, log_offsets, began)
            self._wait_metadata_ready(indexes, began)
        except BaseException:
            # Leave nothing half-started behind (a test or the CLI will retry).
            self._signal_and_wait(indexes, signal.SIGKILL, timeout_s=30.0)
            raise
        log.info(
            "kafka nodes ready",
            nodes=",".join(map(str, indexes)),
            bootstrap=self.bootstrap_servers,
            seconds=round(time.monotonic() - began, 2),
        )

    def _spawn(self, java: str, node_index: int) -> None:
        node_dir = self.node_dir(node_index)
        cmd = [
            java,
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={node_dir / 'log4j2.properties'}",
            # One argument, unexpanded: java expands the `*` itself.
            "-cp",
            f"{self.libs}/*",
            "kafka.Kafka",
            str(node_dir / "server.properties"),
        ]
        setpriv = shutil.which("setpriv")
        if not self.daemon and setpriv:
            # The kernel kills the node if its parent dies without stopping it.
            cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
        with open(node_dir / "stdout.log", "ab") as stdout:
            proc = subprocess.Popen(
                cmd,
                cwd=node_dir,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs[node_index] = proc
        self._pids[node_index] = proc.pid
        log.info("kafka node spawned", node=node_index, pid=proc.pid, dir=node_dir)

    def _wait_logged_ready(
        self, indexes: list[int], offsets: dict[int, int], began: float
    ) -> None:
        pending = set(indexes)
        tails = {i: b"" for i in indexes}
        while pending:
            for i in sorted(pending):
                chunk = _read_from(self.log_path(i), offsets[i])
                offsets[i] += len(chunk)
                # Keep a little of the previous chunk: the marker may straddle reads.
                tails[i] = tails[i][-len(READY_MARKER):] + chunk
                if READY_MARKER in tails[i]:
                    pending.discard(i)
                elif not self.node_running(i):
                    code = self._procs[i].returncode if i in self._procs else "?"
                    raise InfraError(
                        f"Kafka node {i} exited with code {code} while starting; "
                        f"see {self.log_path(i)}:\n{self._last_lines(i)}"
                    )
            if pending and time.monotonic() - began > self.start_timeout_s:
                i = min(pending)
                raise InfraError(
                    f"Kafka node {i} did not log 'Kafka Server started' within "
                    f"{self.start_timeout_s:.0f}s; see {self.log_path(i)}:\n{self._last_lines(i)}"
                )
            if pending:
                time.sleep(0.05)

    def _wait_metadata_ready(self, indexes: list[int], began: float) -> None:
        for i in indexes:
            while not self._registered_unfenced(i):
                if time.monotonic() - began > self.start_timeout_s:
                    raise InfraError(
                        f"Kafka node {i} started but is not an unfenced broker in the cluster "
                        f"metadata after {self.start_timeout_s:.0f}s; see {self.log_path(i)}:\n"
                        f"{self._last_lines(i)}"
                    )
                time.sleep(0.1)

    def _registered_unfenced(self, node_index: int) -> bool:
        try:
            admin = make_admin(self.node_bootstrap(node_index), request_timeout_ms=5000)
        except Exception:  # any failure here means "not ready yet"
            return False
        try:
            brokers = admin.describe_cluster()["brokers"]
        except Exception:
            return False
        finally:
            admin.close()
        return any(b["broker_id"] == node_index and not b.get("is_fenced") for b in brokers)

    def _last_lines(self, node_index: int, count: int = 8) -> str:
        lines: list[str] = []
        for path in (self.log_path(node_index), self.node_dir(node_index) / "stdout.log"):
            if path.exists():
                text = path.read_bytes()[-16384:].decode("utf-8", "replace")
                lines += [f"{path.name}: {line}" for line in text.splitlines()[-count:]]
        return "\n".join(lines) or "(no log output)"

    # -- configuration and storage ------------------------------------------

    def _write_node_config(self, node_index: int) -> None:
        node_dir = self.node_dir(node_index)
        node_dir.mkdir(parents=True, exist_ok=True)
        p = self.ports[node_index]
        n = self.nodes
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node_index),
            "listeners": f"PLAINTEXT://{HOST}:{p.broker},CONTROLLER://{HOST}:{p.controller}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.advertised_port(node_index)}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(node_dir / "data"),
            # Lamina creates its topics explicitly, with their retention.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "default.replication.factor": str(n),
            "min.insync.replicas": "2" if n >= 3 else "1",
            "offsets.topic.replication.factor": str(n),
            "transaction.state.log.replication.factor": str(n),
            "transaction.state.log.min.isr": "2" if n >= 3 else "1",
            "share.coordinator.state.topic.replication.factor": str(n),
            "share.coordinator.state.topic.min.isr": "2" if n >= 3 else "1",
            # A consumer group starts at once instead of waiting 3 s for peers.
            "group.initial.rebalance.delay.ms": "0",
            # Fence a dead broker in 3 s, not 9 s, so failover tests are quick.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
            "message.max.bytes": str(4 * 1024 * 1024),
            "replica.fetch.max.bytes": str(4 * 1024 * 1024),
        }
        if n == 1:
            props["controller.quorum.bootstrap.servers"] = f"{HOST}:{p.controller}"
        else:
            props["controller.quorum.voters"] = ",".join(
                f"{i}@{HOST}:{q.controller}" for i, q in enumerate(self.ports)
            )
        _write_if_changed(
            node_dir / "server.properties", "".join(f"{k}={v}\n" for k, v in props.items())
        )
        _write_if_changed(node_dir / "log4j2.properties", _log4j2_config(node_dir / "server.log"))

    def _format_storage(self, java: str) -> None:
        unformatted = [
            i for i in range(self.nodes)
            if not (self.node_dir(i) / "data" / "meta.properties").exists()
        ]
        if not unformatted:
            return
        if self.cluster_id is None:
            self.cluster_id = _run_storage_tool(java, self.libs, ["random-uuid"]).strip()
        # Controller ports are fixed from here on: their addresses are part of
        # the formatted metadata.
        self._write_cluster_file()
        # Single node: a dynamic quorum bootstrapped by this one controller.
        # Three nodes: the static voter set from controller.quorum.voters.
        extra = ["--standalone"] if self.nodes == 1 else []
        procs = [
            (i, _storage_tool(java, self.libs, [
                "format", "-t", self.cluster_id,
                "-c", str(self.node_dir(i) / "server.properties"), *extra,
            ]))
            for i in unformatted
        ]
        for i, proc in procs:
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise InfraError(
                    f"formatting Kafka storage for node {i} in {self.node_dir(i)} failed: "
                    f"{out.decode(errors='replace').strip()[-2000:]}"
                )
        log.info("kafka storage formatted", cluster_id=self.cluster_id, nodes=len(unformatted))

    # -- topics ---------------------------------------------------------------

    def create_topics(
        self,
        specs: Sequence[TopicSpec],
        replication_factor: int | None = None,
        min_insync: int | None = None,
    ) -> dict[str, int]:
        """`create_topics` on this cluster; replication defaults to the node
        count (min.insync 2 when there are 3 nodes)."""
        rf = self.nodes if replication_factor is None else replication_factor
        if min_insync is None and rf >= 3:
            min_insync = 2
        return create_topics(self.bootstrap_servers, specs, rf, min_insync)

    # -- small file helpers -----------------------------------------------------

    def _write_cluster_file(self) -> None:
        stored = {
            "cluster_id": self.cluster_id,
            "nodes": [{"broker": p.broker, "controller": p.controller} for p in self.ports],
        }
        if self._read_json(self.cluster_file) != stored:
            self._write_json(self.cluster_file, stored)

    def _write_pids(self) -> None:
        running = {str(i): pid for i, pid in self._pids.items() if self.node_running(i)}
        if running:
            self._write_json(self.pids_file, running)
        else:
            self.pids_file.unlink(missing_ok=True)

    @staticmethod
    def _read_json(path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InfraError(f"{path} is unreadable ({exc}); delete it and retry") from None

    @staticmethod
    def _write_json(path: Path, value: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value, indent=2) + "\n")
        tmp.replace(path)

    def __repr__(self) -> str:
        return f"KafkaCluster({self.cluster_dir}, nodes={self.nodes}, {self.bootstrap_servers})"


def _java() -> str:
    java = shutil.which("java")
    if java is None and os.environ.get("JAVA_HOME"):
        candidate = Path(os.environ["JAVA_HOME"]) / "bin" / "java"
        java = str(candidate) if candidate.exists() else None
    if java is None:
        raise InfraError("`java` is not on PATH; install Java 17 (it runs the Kafka broker)")
    return java


def _storage_tool(java: str, libs: Path, args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [java, "-cp", f"{libs}/*", "kafka.tools.StorageTool", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _run_storage_tool(java: str, libs: Path, args: list[str]) -> str:
    proc = _storage_tool(java, libs, args)
    out, _ = proc.communicate(timeout=120)
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise InfraError(f"kafka StorageTool {' '.join(args)} failed: {text.strip()[-2000:]}")
    # The JVM may print warnings first; the answer is the last line.
    return text.strip().splitlines()[-1]


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < offset:
                offset = 0  # rolled over
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _log4j2_config(log_file: Path) -> str:
    """A log4j2 config: everything at INFO to a size-rolled server.log.
    Without one (and the slf4j binding) Kafka logs nothing at all."""
    return f"""\
status = warn
# Kafka logs until its last thread stops; log4j's own hook would close the
# file first and send those lines to stdout.
shutdownHook = disable
appender.server.type = RollingFile
appender.server.name = SERVER
appender.server.fileName = {log_file}
appender.server.filePattern = {log_file}.%i
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
appender.server.policies.type = Policies
appender.server.policies.size.type = SizeBasedTriggeringPolicy
appender.server.policies.size.size = 64MB
appender.server.strategy.type = DefaultRolloverStrategy
appender.server.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.server.ref = SERVER
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
"""
