"""A private network namespace joined to the root namespace by one veth pair.

Everything started inside it (``ip netns exec``) can talk only to itself and, over the veth, to the
root namespace's end of the pair: the namespace has no default route and the root namespace does not
forward (we check), so nothing from it can leave this machine.

Names carry the owner pid (``rs-<pid>-<n>``) so a later run can remove what a crashed run left.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import signal
import subprocess
from pathlib import Path

from .util import pid_alive

PREFIX = "rs-"
_NAME_RE = re.compile(r"^rs-(\d+)-(\d+)$")
_VETH_RE = re.compile(r"^rsv(\d+)[hn](\d+)$")
_counter = itertools.count()


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _taken_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine already knows: routes (all tables), addresses, resolvers."""
    nets: list[ipaddress.IPv4Network] = []
    out = ip("-4", "route", "show", "table", "all").stdout + ip("-4", "-o", "addr", "show").stdout
    for tok in re.findall(r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)\b", out):
        net = ipaddress.ip_network(tok, strict=False)
        if net.prefixlen > 0:
            nets.append(net)
    try:
        resolv = Path("/etc/resolv.conf").read_text()
    except OSError:
        resolv = ""
    for tok in re.findall(r"^nameserver\s+(\d+\.\d+\.\d+\.\d+)", resolv, re.M):
        nets.append(ipaddress.ip_network(tok))
    return nets


def choose_subnet(pid: int, n: int) -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0-10.254.255.0 that overlaps nothing already routed or addressed here."""
    taken = _taken_networks()
    start = (pid * 7 + n * 131) % (55 * 256)
    for i in range(55 * 256):
        k = (start + i) % (55 * 256)
        cand = ipaddress.ip_network(f"10.{200 + k // 256}.{k % 256}.0/24")
        if not any(cand.overlaps(t) for t in taken):
            return cand
    raise RuntimeError("no free /24 in 10.200.0.0/16..10.254.255.0/24")


def _kill_ns_processes(name: str) -> None:
    pids = ip("netns", "pids", name, check=False).stdout.split()
    for p in pids:
        try:
            os.kill(int(p), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def cleanup_stale() -> list[str]:
    """Remove namespaces/veths named ``rs-<pid>-*`` / ``rsv<pid>*`` whose owner pid is gone."""
    removed: list[str] = []
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NAME_RE.match(name)
        if m and not pid_alive(int(m.group(1))):
            _kill_ns_processes(name)
            ip("netns", "del", name, check=False)
            removed.append(name)
    for line in ip("-o", "link", "show", check=False).stdout.splitlines():
        m = re.match(r"^\d+:\s+([^:@]+)", line)
        if m:
            dev = m.group(1)
            vm = _VETH_RE.match(dev)
            if vm and not pid_alive(int(vm.group(1))):
                ip("link", "del", dev, check=False)
                removed.append(dev)
    return removed


class NetNamespace:
    """``rs-<pid>-<n>`` with veth ``rsv<pid>h<n>`` (root side, .1) <-> ``rsv<pid>n<n>`` (inside, .2)."""

    def __init__(self) -> None:
        pid, n = os.getpid(), next(_counter)
        self.name = f"{PREFIX}{pid}-{n}"
        self.host_if = f"rsv{pid}h{n}"
        self.ns_if = f"rsv{pid}n{n}"
        self.subnet = choose_subnet(pid, n)
        hosts = list(itertools.islice(self.subnet.hosts(), 2))
        self.host_ip, self.ns_ip = str(hosts[0]), str(hosts[1])
        self.created = False

    def create(self) -> NetNamespace:
        if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "0":
            raise RuntimeError("net.ipv4.ip_forward is on: a namespace could route out through this host")
        try:
            ip("netns", "add", self.name)
            self.created = True
            ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if, "netns", self.name)
            for conf, where in ((self.host_if, None), (self.ns_if, self.name)):
                self._sysctl(f"net/ipv6/conf/{conf}/disable_ipv6", "1", where)
            self._sysctl("net/ipv6/conf/all/disable_ipv6", "1", self.name)
            ip("addr", "add", f"{self.host_ip}/{self.subnet.prefixlen}", "dev", self.host_if)
            ip("link", "set", self.host_if, "up")
            ip("-n", self.name, "link", "set", "lo", "up")
            ip("-n", self.name, "addr", "add", f"{self.ns_ip}/{self.subnet.prefixlen}", "dev", self.ns_if)
            ip("-n", self.name, "link", "set", self.ns_if, "up")
        except subprocess.CalledProcessError as exc:
            self.destroy()
            raise RuntimeError(f"could not create namespace {self.name}: {exc.stderr}") from exc
        return self

    def _sysctl(self, key: str, value: str, netns: str | None) -> None:
        cmd = ["sh", "-c", f"echo {value} > /proc/sys/{key}"]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        subprocess.run(cmd, check=False, capture_output=True)

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def destroy(self) -> None:
        if self.created:
            _kill_ns_processes(self.name)
            ip("netns", "del", self.name, check=False)
            self.created = False
        ip("link", "del", self.host_if, check=False)

    def __repr__(self) -> str:
        return f"NetNamespace({self.name}, {self.subnet}, host={self.host_ip}, ns={self.ns_ip})"
