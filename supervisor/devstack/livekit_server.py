"""A real livekit-server v1.13.5, sealed in a network namespace when we are root.

Config (JSON is valid YAML, so no YAML writer is needed); every key checked against v1.13.5's
pkg/config/config.go and mediatransportutil's pkg/rtcconfig/config.go:
- ``development: true`` + ``keys: {devkey: secret}``, explicit ``bind_addresses``.
- ``rtc.node_ip`` = the namespace address (or 127.0.0.1), ``use_external_ip: false``: with node_ip
  set and not auto-detected, the server never queries STUN itself and rewrites its host candidates
  to node_ip (NAT 1:1 rule).
- ``rtc.stun_servers`` = one local, silent address. An empty/absent list makes the server hand every
  client Google's and Twilio's public STUN servers (roommanager.go iceServersForParticipant), so it
  must not be empty. TURN stays disabled (default), so no TURN server is handed out either.
- ``rtc.ips.includes`` = node_ip/32, ``rtc.interfaces.includes`` = the one interface: candidates are
  gathered only there.
- Single UDP port (``rtc.udp_port``) and ``rtc.tcp_port`` on free ports.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from .netns import NetNamespace
from .util import free_port, free_port_both, tail, terminate, wait_until

LIVEKIT_VERSION = "v1.13.5"
API_KEY = "devkey"
API_SECRET = "secret"
READY_TIMEOUT = 30.0


def cache_dir() -> Path:
    base = os.environ.get("RS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "room-supervisor")
    return Path(base)


def livekit_binary() -> Path:
    """The cached livekit-server binary; a clear error with the install command when missing."""
    path = cache_dir() / f"livekit-{LIVEKIT_VERSION}" / "server"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise RuntimeError(
            f"livekit-server {LIVEKIT_VERSION} not found at {path}. Build it with:\n"
            f"  GOBIN={path.parent} go install github.com/livekit/livekit-server/cmd/server@{LIVEKIT_VERSION}\n"
            "(or `make livekit-server`)"
        )
    return path


class _NsPorts:
    """Ports inside one of our namespaces: nothing but our servers listens there, so a counter is enough."""

    def __init__(self) -> None:
        self._next = 20000

    def take(self) -> int:
        self._next += 1
        return self._next


_ns_ports: dict[str, _NsPorts] = {}


class LiveKitServer:
    """One livekit-server process; ``start``/``restart`` keep ports, config and log file."""

    def __init__(self, workdir: Path, netns: NetNamespace | None = None, *, extra_config: dict | None = None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.netns = netns
        if netns is not None:
            ports = _ns_ports.setdefault(netns.name, _NsPorts())
            self.host = netns.ns_ip
            self.port, self.tcp_port, self.udp_port, self.stun_port = (ports.take() for _ in range(4))
            self.interface = netns.ns_if
        else:
            self.host = "127.0.0.1"
            self.port, self.tcp_port = free_port(), free_port()
            self.udp_port, self.stun_port = free_port_both(), free_port_both()
            self.interface = "lo"
        self.extra_config = extra_config or {}
        self.config_path = self.dir / "livekit.yaml"
        self.log_path = self.dir / "livekit.log"
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.starts = 0
        self._ready_at = 0.0

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    http_url = api_url

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def config(self) -> dict:
        rtc = {
            "tcp_port": self.tcp_port,
            "udp_port": self.udp_port,
            "node_ip": self.host,
            "use_external_ip": False,
            "stun_servers": [f"{self.host}:{self.stun_port}"],
            "ips": {"includes": [f"{self.host}/32"]},
            "interfaces": {"includes": [self.interface]},
            "enable_loopback_candidate": self.netns is None,
            "use_mdns": False,
        }
        cfg = {
            "port": self.port,
            "bind_addresses": [self.host],
            "development": True,
            "keys": {API_KEY: API_SECRET},
            "log_level": os.environ.get("RS_LIVEKIT_LOG_LEVEL", "info"),
            "logging": {"pion_level": "error"},
            "rtc": rtc,
            "turn": {"enabled": False},
        }
        for key, value in self.extra_config.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value
        return cfg

    def start(self) -> LiveKitServer:
        if self.running:
            return self
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        argv = [str(livekit_binary()), "--config", str(self.config_path)]
        if self.netns is not None:
            argv = self.netns.exec_prefix() + argv
        self.starts += 1
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"\n===== start #{self.starts}: {' '.join(argv)}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_until(self._ready, READY_TIMEOUT, f"livekit-server at {self.api_url}", interval=0.05)
            self._ready_at = time.monotonic()
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"livekit-server did not start: {exc}\n--- livekit.log ---\n{self.log_tail()}") from exc
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"livekit-server exited with {self.proc.returncode}")
        conn = http.client.HTTPConnection(self.host, self.port, timeout=1)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            return resp.status == 200 and resp.read().strip() == b"OK"
        finally:
            conn.close()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM; a second SIGTERM (LiveKit's "force") after 2 s; SIGKILL at the deadline.

        livekit-server ignores a SIGTERM that lands in the ~100 ms between its HTTP listener answering
        and its ``running`` flag being set (server.go Start/Stop), so one signal is not always enough.
        """
        proc = self.proc
        if proc is not None and proc.poll() is None:
            # Skip the known 100 ms deaf window instead of paying the 2 s fallback.
            early = 0.25 - (time.monotonic() - self._ready_at)
            if early > 0:
                time.sleep(early)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                terminate(proc, timeout=max(timeout - 2, 1))
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        terminate(self.proc, sig=signal.SIGKILL)
        self.stop()

    def restart(self) -> LiveKitServer:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)
