"""Evidence that tests send nothing off this machine: nft accounting by cgroup, tcpdump, ICE checks.

- :class:`EgressAccounting` moves this test process into a fresh cgroup v2 and installs nft counters in
  the root namespace's OUTPUT hook that match sockets created by that cgroup, split by outgoing interface:
  loopback, our veth, and *anything else*. Attribution is exact (the kernel tags each socket with the
  cgroup of the task that created it), so traffic of other processes on this machine cannot disturb it.
- :class:`Capture` runs tcpdump on every host interface except ``lo`` and our veths.
- :func:`probe_join` opens a bare signalling connection and returns LiveKit's JoinResponse, i.e. the
  ICE servers every client is handed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .util import terminate, wait_until

MAX_CAPTURE_S = 600
CGROUP_FS = Path("/sys/fs/cgroup")  # nft resolves `socket cgroupv2` paths below this directory


def host_interfaces() -> list[str]:
    """Every interface of the root namespace except loopback and the veths this harness creates."""
    return sorted(n for n in os.listdir("/sys/class/net") if n != "lo" and not n.startswith("rsv"))


def tx_packets() -> dict[str, int]:
    out = {}
    for name in host_interfaces():
        try:
            out[name] = int(Path(f"/sys/class/net/{name}/statistics/tx_packets").read_text())
        except (OSError, ValueError):
            pass
    return out


def _cgroup2_mount() -> Path:
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[2] == "cgroup2":
            return Path(parts[1])
    raise RuntimeError("no cgroup2 hierarchy mounted")


def _own_cgroup2() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise RuntimeError("this process has no cgroup v2 membership")


def cleanup_stale_accounting() -> None:
    """Remove nft tables / cgroups ``rs_seal_<pid>_*`` left by a run whose process is gone."""
    from .util import pid_alive

    out = subprocess.run(["nft", "list", "tables"], text=True, capture_output=True).stdout
    for m in re.finditer(r"^table inet (rs_seal_(\d+)_\d+)$", out, re.M):
        if not pid_alive(int(m.group(2))):
            subprocess.run(["nft", "delete", "table", "inet", m.group(1)], capture_output=True)
    mount = _cgroup2_mount()
    for d in mount.glob("rs-seal-*"):
        m = re.match(r"^rs-seal-(\d+)-\d+$", d.name)
        if m and not pid_alive(int(m.group(1))):
            try:
                d.rmdir()
            except OSError:
                pass


class EgressAccounting:
    """Count packets sent by sockets this process creates from now on, per outgoing interface."""

    def __init__(self, allowed_ifaces: list[str]):
        if shutil.which("nft") is None:
            raise RuntimeError("nft not found: apt-get install -y nftables (the seal test needs it)")
        self.allowed = allowed_ifaces
        cleanup_stale_accounting()
        tag = f"rs_seal_{os.getpid()}_{int(time.monotonic() * 1000) % 100000}"
        self.table = tag
        mount = _cgroup2_mount()
        self.cgroup = mount / tag.replace("_", "-")
        self.nft_path = os.path.relpath(self.cgroup, CGROUP_FS)
        self.level = len(self.cgroup.relative_to(mount).parts)
        self._origin: str | None = None

    def __enter__(self) -> EgressAccounting:
        self.cgroup.mkdir()
        self._origin = _own_cgroup2()
        (self.cgroup / "cgroup.procs").write_text(str(os.getpid()))
        match = f'socket cgroupv2 level {self.level} "{self.nft_path}"'
        allowed = ", ".join(f'"{i}"' for i in self.allowed)
        rules = "\n".join(
            [f'{match} oifname "{i}" counter comment "if:{i}"' for i in self.allowed]
            + [f'{match} oifname != {{ {allowed} }} counter comment "elsewhere"']
            + [f'{match} oifname != {{ {allowed} }} log prefix "rs-seal-leak " counter comment "logged"']
        )
        script = f"table inet {self.table} {{\n chain out {{\n  type filter hook output priority -300; policy accept;\n{rules}\n }}\n}}\n"
        try:
            subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True, capture_output=True)
        except subprocess.CalledProcessError as exc:
            self.__exit__(None, None, None)
            raise RuntimeError(f"nft failed: {exc.stderr}\n{script}") from exc
        return self

    def counters(self) -> dict[str, int]:
        out = subprocess.run(["nft", "list", "table", "inet", self.table], text=True, check=True, capture_output=True).stdout
        counts: dict[str, int] = {}
        for m in re.finditer(r'counter packets (\d+) bytes \d+ comment "([^"]+)"', out):
            counts[m.group(2)] = int(m.group(1))
        return counts

    def __exit__(self, *exc) -> None:
        subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True)
        if self._origin is not None:
            back = _cgroup2_mount() / self._origin.lstrip("/") / "cgroup.procs"
            back.write_text(str(os.getpid()))
        try:
            self.cgroup.rmdir()
        except OSError:
            pass


class Capture:
    """tcpdump on one interface (no filter: every packet is kept, classified afterwards)."""

    def __init__(self, iface: str, out_dir: Path):
        self.iface = iface
        self.path = out_dir / f"tcpdump-{iface}.txt"
        self.err_path = out_dir / f"tcpdump-{iface}.err"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Capture:
        if shutil.which("tcpdump") is None:
            raise RuntimeError("tcpdump not found: apt-get install -y tcpdump")
        self._out, self._err = open(self.path, "wb"), open(self.err_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            # `timeout` bounds its life should this process die without stopping it (it forwards SIGINT).
            ["timeout", "-s", "INT", str(MAX_CAPTURE_S), "tcpdump", "-i", self.iface, "-n", "-l", "-tt", "-p", "-Q", "inout"],
            stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL,
        )
        wait_until(lambda: b"listening on" in self.err_path.read_bytes() or self._dead(), 10, f"tcpdump on {self.iface}")
        if self._dead():
            raise RuntimeError(f"tcpdump -i {self.iface} failed: {self.err_path.read_text()}")
        return self

    def _dead(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self) -> list[str]:
        terminate(self.proc, timeout=5, sig=signal.SIGINT)
        for f in (self._out, self._err):
            f.close()
        return [ln for ln in self.path.read_text(errors="replace").splitlines() if ln.strip()]


async def probe_join(url: str, token: str):
    """Open a bare signalling websocket and return LiveKit's JoinResponse (then leave)."""
    import aiohttp
    from livekit.protocol import rtc as proto

    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url}/rtc?access_token={token}&protocol=15&auto_subscribe=0") as ws:
            while True:
                msg = await ws.receive(timeout=10)
                if msg.type != aiohttp.WSMsgType.BINARY:
                    raise RuntimeError(f"unexpected signalling message {msg!r}")
                resp = proto.SignalResponse.FromString(msg.data)
                if resp.HasField("join"):
                    await ws.send_bytes(proto.SignalRequest(leave=proto.LeaveRequest()).SerializeToString())
                    return resp.join
