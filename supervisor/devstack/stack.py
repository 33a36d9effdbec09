"""LocalStack: redis-server + livekit-server (+ the namespace) for the demo, with clear errors when a
prerequisite is missing. Everything it starts it stops, also after Ctrl-C."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..errors import CommandError
from .livekit_server import API_KEY, API_SECRET, LIVEKIT_VERSION, LiveKitServer, cache_dir
from .netns import NetNamespace, cleanup_stale
from .redis_server import RedisServer
from .util import is_root


class PrerequisiteMissing(CommandError):
    """Something the local stack needs is not installed; the message says how to get it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=4)


def sealed_mode() -> bool:
    """As root (and unless RS_NETNS=0), LiveKit runs in a network namespace of its own."""
    return is_root() and os.environ.get("RS_NETNS", "1") != "0" and shutil.which("ip") is not None


def ensure_redis_server() -> None:
    if shutil.which("redis-server") is None:
        hint = "apt-get install -y redis-server" if is_root() else "sudo apt-get install -y redis-server"
        raise PrerequisiteMissing(f"redis-server is not installed. Install it with:  {hint}")


def ensure_livekit_binary(progress=print) -> Path:
    """The cached livekit-server binary, built with ``go install`` (with progress output) if missing."""
    path = cache_dir() / f"livekit-{LIVEKIT_VERSION}" / "server"
    if path.is_file() and os.access(path, os.X_OK):
        return path
    go = shutil.which("go")
    if go is None:
        raise PrerequisiteMissing(
            f"livekit-server {LIVEKIT_VERSION} is not built yet and Go is not installed. Install Go "
            f"(1.2x, e.g. apt-get install golang-go or from go.dev), or put a livekit-server {LIVEKIT_VERSION} "
            f"binary at {path}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    progress(f"==> building livekit-server {LIVEKIT_VERSION} with Go into {path.parent} (first run only; "
             "a few minutes)")
    started = time.monotonic()
    env = {**os.environ, "GOBIN": str(path.parent)}
    proc = subprocess.Popen([go, "install", "-v", f"github.com/livekit/livekit-server/cmd/server@{LIVEKIT_VERSION}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    count = 0
    for _ in proc.stdout:
        count += 1
        if count % 50 == 0:
            progress(f"    ... {count} packages compiled ({time.monotonic() - started:.0f}s)")
    if proc.wait() != 0 or not path.is_file():
        raise PrerequisiteMissing(f"building livekit-server failed (go install exit {proc.returncode}); "
                                  "run `make livekit-server` to see why")
    progress(f"    built in {time.monotonic() - started:.0f}s")
    return path


class LocalStack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.netns: NetNamespace | None = None
        self.redis: RedisServer | None = None
        self.livekit: LiveKitServer | None = None

    @property
    def api_key(self) -> str:
        return API_KEY

    @property
    def api_secret(self) -> str:
        return API_SECRET

    def start(self, progress=print) -> LocalStack:
        ensure_redis_server()
        ensure_livekit_binary(progress)
        self.redis = RedisServer(self.workdir / "redis", appendonly=True).start()
        progress(f"==> redis-server on {self.redis.url} (appendonly, dir {self.redis.dir})")
        if sealed_mode():
            cleanup_stale()
            self.netns = NetNamespace().create()
            progress(f"==> network namespace {self.netns.name}: LiveKit is reachable only over its veth pair")
        else:
            progress("==> not root: LiveKit runs on 127.0.0.1 only")
        self.livekit = LiveKitServer(self.workdir / "livekit", self.netns).start()
        progress(f"==> livekit-server {LIVEKIT_VERSION} (dev keys) on {self.livekit.url}")
        return self

    def stop(self) -> None:
        for stop in (self.livekit and self.livekit.stop, self.redis and self.redis.stop,
                     self.netns and self.netns.destroy):
            if stop:
                try:
                    stop()
                except Exception as exc:  # keep stopping the rest
                    print(f"warning: cleanup step failed: {exc}", file=sys.stderr)
        self.livekit = self.redis = self.netns = None
