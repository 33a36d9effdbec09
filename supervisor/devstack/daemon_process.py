"""The daemon as a child process, as systemd runs it: ``python -m supervisor.cli serve --config FILE``.

One class for the demo and the tests: a TOML config file like an operator's (secrets stay out of it, they
come from the environment), its own spool dir, HTTP port and log file; signals, exit codes and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Mapping

from .livekit_server import API_KEY, API_SECRET
from .util import async_wait_until, free_port, tail

REPO = Path(__file__).resolve().parents[2]
# Variables an outer environment may set that would change what a daemon started here does.
_OUTER = ("RS_", "LIVEKIT_", "REDIS_", "NOTIFY_", "WATCHDOG_", "ROOM_SUPERVISOR")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else repr(value)


def write_config(path: Path, redis_url: str, livekit_url: str, *, spool_dir: Path, daemon: Mapping[str, Any],
                 pipelines: Mapping[str, str] | None = None,
                 sections: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """A TOML config like an operator's: ``[livekit]`` and ``[redis]`` URLs, ``[writer] spool_dir``, the
    ``[daemon]`` settings given, other ``sections`` (``{"webhooks": {"enabled": True}}``) and ``[pipelines]``.
    Credentials come from the environment."""
    lines = ["[livekit]", f'url = "{livekit_url}"', "", "[redis]", f'url = "{redis_url}"', "",
             "[writer]", f'spool_dir = "{spool_dir}"', "", "[daemon]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in daemon.items()]
    for section, values in (sections or {}).items():
        lines += ["", f"[{section}]", *(f"{key} = {_toml_value(value)}" for key, value in values.items())]
    lines += ["", "[pipelines]"]
    lines += [f'{name} = "{target}"' for name, target in (pipelines or {}).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without settings of ours, plus the dev stack's LiveKit credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OUTER)}
    env.update({"LIVEKIT_API_KEY": API_KEY, "LIVEKIT_API_SECRET": API_SECRET, "PYTHONPATH": str(REPO),
                "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


class DaemonProcess:
    """One ``room-supervisor serve`` child process with its own config, spool dir, HTTP port and log file."""

    def __init__(self, workdir: Path, redis_url: str, livekit_url: str, *, daemon_id: str,
                 env: Mapping[str, str] | None = None, pipelines: Mapping[str, str] | None = None,
                 sections: Mapping[str, Mapping[str, Any]] | None = None, **daemon: Any) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.redis_url, self.livekit_url = redis_url, livekit_url
        self.id = daemon_id
        self.spool_dir = self.dir / "spool"
        self.http_host = daemon.get("http_host", "127.0.0.1")
        self.http_port = daemon.pop("http_port", None) or free_port(self.http_host)
        self.config = write_config(self.dir / f"{self.id}.toml", redis_url, livekit_url, spool_dir=self.spool_dir,
                                   daemon={"id": daemon_id, "http_port": self.http_port, **daemon},
                                   pipelines=pipelines, sections=sections)
        self.env = clean_env(env)
        self.log_path = self.dir / f"{self.id}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> DaemonProcess:
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it; closed when it exits
        log.write(f"\n===== start #{self.starts}\n".encode())
        log.flush()
        self.proc = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "serve", "--config", str(self.config)],
                                     cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     start_new_session=True)
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    async def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        await async_wait_until(lambda: self.proc.poll() is not None, timeout, f"daemon {self.id} to exit", 0.1)
        return self.proc.returncode

    def stop(self, timeout: float = 40.0) -> tuple[int | None, float]:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; (exit code, seconds it took). Never raises."""
        if self.proc is None or self.proc.poll() is not None:
            return (self.proc.returncode if self.proc else None), 0.0
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        return self.proc.returncode, time.monotonic() - started

    async def metric(self, name: str) -> float:
        """One unlabelled value from the daemon's ``/metrics`` (0 when it does not answer)."""
        def get() -> str:
            try:
                with urllib.request.urlopen(f"http://{self.http_host}:{self.http_port}/metrics", timeout=10) as resp:
                    return resp.read().decode()
            except OSError:
                return ""

        match = re.search(rf"^{re.escape(name)} (\S+)$", await asyncio.to_thread(get), re.M)
        return float(match.group(1)) if match else 0.0

    def log_tail(self, lines: int = 80) -> str:
        return tail(self.log_path, lines)
