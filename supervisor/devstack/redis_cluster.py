"""A real Redis Cluster of ``redis-server`` processes on free 127.0.0.1 ports: 3 masters and 3 replicas by
default, made with ``redis-cli --cluster create``, a short ``cluster-node-timeout`` so that a failover takes
seconds, and helpers to kill a master and wait for its replica's promotion.

Every node binds 127.0.0.1 and announces 127.0.0.1 (``cluster-announce-ip``), so that clients and the nodes' own
bus only ever use loopback.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from .redis_server import RedisServer
from .util import free_port, wait_until

NODE_TIMEOUT_MS = 1000
READY_TIMEOUT = 60.0


def _info(port: int, *args: str) -> str:
    """One command (sent as a RESP array, so arguments may hold spaces); a bulk reply's text whole, an integer
    or status reply as its text, an error reply raised as RuntimeError."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
        s.sendall(payload)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError(f"127.0.0.1:{port} closed the connection")
            buf += chunk
            head, sep, body = buf.partition(b"\r\n")
            if not sep:
                continue
            if head.startswith(b"$") and len(body) >= int(head[1:]) + 2:
                return body[: int(head[1:])].decode()
            if head.startswith((b"+", b":")):
                return head[1:].decode()
            if head.startswith(b"-"):
                raise RuntimeError(head[1:].decode())


class ClusterNode(RedisServer):
    """One node: a RedisServer with cluster mode on (its own nodes.conf in its directory)."""

    def _argv(self) -> list[str]:
        return [*super()._argv(), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-announce-ip", "127.0.0.1",
                "--cluster-replica-validity-factor", "0", "--cluster-require-full-coverage", "no",
                "--cluster-port", str(self.bus_port)]

    @property
    def bus_port(self) -> int:
        if not hasattr(self, "_bus_port"):
            self._bus_port = free_port()
        return self._bus_port

    def flushall(self) -> None:
        if self.role() == "master":
            super().flushall()

    def role(self) -> str:
        """``master`` or ``slave`` (as INFO replication says), ``down`` when it does not answer."""
        try:
            text = _info(self.port, "INFO", "replication")
        except (OSError, RuntimeError):
            return "down"
        for line in text.splitlines():
            if line.startswith("role:"):
                return line.split(":", 1)[1].strip()
        return "down"


class RedisCluster:
    """``masters`` masters with ``replicas`` replicas each; :attr:`url` is the ``redis+cluster://`` seed list."""

    def __init__(self, workdir: Path, *, masters: int = 3, replicas: int = 1, appendonly: bool = True) -> None:
        self.dir = Path(workdir)
        count = masters * (1 + replicas)
        self.masters = masters
        self.replicas = replicas
        self.nodes = [ClusterNode(self.dir / f"node-{i}", appendonly=appendonly) for i in range(count)]
        self._created = False

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def running(self) -> bool:
        return all(n.running for n in self.nodes)

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        if not self._created:
            self._create()
            self._created = True
        wait_until(self.healthy, READY_TIMEOUT, "the cluster to cover every slot")
        return self

    def _create(self) -> None:
        argv = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas", str(self.replicas), "--cluster-yes"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if out.returncode != 0 or "[OK] All 16384 slots covered" not in out.stdout:
            raise RuntimeError(f"redis-cli --cluster create failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok, and there are ``masters`` live masters with a replica each."""
        live = [n for n in self.nodes if n.running]
        try:
            if not all("cluster_state:ok" in _info(n.port, "CLUSTER", "INFO") for n in live):
                return False
        except (OSError, RuntimeError):
            return False
        return len(self.master_nodes()) == self.masters

    def master_nodes(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.running and n.role() == "master"]

    def master_of(self, key: str) -> ClusterNode:
        """The live node that serves ``key``'s slot as master (asked of the cluster: CLUSTER KEYSLOT, NODES)."""
        any_node = next(n for n in self.nodes if n.running)
        slot = int(_info(any_node.port, "CLUSTER", "KEYSLOT", key))
        for line in _info(any_node.port, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            for part in fields[8:]:
                lo, _, hi = part.partition("-")
                if not lo.startswith("[") and int(lo) <= slot <= int(hi or lo):
                    return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no master serves slot {slot}")

    def replica_of(self, replica: ClusterNode) -> ClusterNode | None:
        """The master ``replica`` replicates (as it says itself in CLUSTER NODES), or None."""
        table = [line.split() for line in _info(replica.port, "CLUSTER", "NODES").splitlines() if line.strip()]
        mine = next((f for f in table if "myself" in f[2]), None)
        if mine is None or "slave" not in mine[2]:
            return None
        master = next((f for f in table if f[0] == mine[3]), None)
        if master is None:
            return None
        port = int(master[1].split("@")[0].rsplit(":", 1)[1])
        return next((n for n in self.nodes if n.port == port), None)

    def kill_master(self, node: ClusterNode, timeout: float = 30.0) -> float:
        """SIGKILL ``node`` (a master) and wait until its replica has been promoted and the cluster is ok again;
        returns how long that took."""
        started = time.monotonic()
        node.kill()
        wait_until(lambda: len(self.master_nodes()) == self.masters and self._ok_without(node), timeout,
                   f"a replica of {node.port} to be promoted")
        return time.monotonic() - started

    def _ok_without(self, gone: ClusterNode) -> bool:
        try:
            return all("cluster_state:ok" in _info(n.port, "CLUSTER", "INFO") for n in self.nodes
                       if n.running and n is not gone)
        except (OSError, RuntimeError):
            return False

    def rejoin(self, node: ClusterNode, timeout: float = 30.0) -> None:
        """Start a killed node again (it comes back as a replica of the master that replaced it)."""
        node.start()
        wait_until(lambda: node.role() == "slave" and self.healthy(), timeout, f"{node.port} back as a replica")

    def flushall(self) -> None:
        for node in self.master_nodes():
            node.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(f"--- node {n.port}\n{n.log_tail(lines)}" for n in self.nodes)
