"""Process-wide settings of a running daemon: its log level (ours and pipecat's loguru), and what a reload may
change."""

from __future__ import annotations

import logging
import sys

import msgspec

from .settings import Settings


def set_level(level: str) -> None:
    """Apply ``level`` (DEBUG, INFO, ...) to the root logger and to loguru, which pipecat logs through at DEBUG
    to stderr by default (a flood in the journal with many rooms)."""
    logging.getLogger().setLevel(level)
    try:
        from loguru import logger
    except ImportError:
        return
    logger.remove()
    logger.add(sys.stderr, level=level, format="{time:YYYY-MM-DD HH:mm:ss,SSS} {level} {name} {message}")


def reloadable(old: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """The settings a running daemon adopts on SIGHUP, and what it cannot adopt without a restart.

    [livekit] (used by the next sessions) and [daemon] apply at once, except the daemon's id and HTTP address;
    [redis] and [writer] belong to connections and files already open.
    """
    later = [f"[{section}]" for section in ("redis", "writer") if getattr(new, section) != getattr(old, section)]
    fixed = {name: getattr(old.daemon, name) for name in ("id", "http_host", "http_port")}
    later += [f"daemon.{name}" for name, value in fixed.items() if getattr(new.daemon, name) != value]
    daemon = msgspec.structs.replace(new.daemon, **fixed)
    merged = Settings(livekit=new.livekit, redis=old.redis, writer=old.writer, daemon=daemon, consumer=new.consumer,
                      pipelines=new.pipelines)
    return merged, later
