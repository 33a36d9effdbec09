"""What commands print on stdout, and what happens when nobody reads it any more (``room-supervisor events R |
head``): :func:`emit` turns the broken pipe into :class:`OutputClosed`, which is not an ``OSError``, so no
command mistakes it for trouble with Redis; :func:`main <.main.main>` ends the command quietly with exit 0."""

from __future__ import annotations

import contextlib
import os
import sys


class OutputClosed(Exception):
    """The reader of stdout went away (``| head`` read what it wanted)."""


def emit(text: str, *, flush: bool = False) -> None:
    """``print(text)``, with a closed stdout raised as :class:`OutputClosed`."""
    try:
        print(text, flush=flush)
    except BrokenPipeError:
        raise OutputClosed from None


def flush() -> None:
    """Flush stdout (a pipe holds a block back until now); a closed stdout raises :class:`OutputClosed`."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise OutputClosed from None


def silence_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered for a reader that went away is dropped, and the
    interpreter's last flush at exit has nothing to complain about ("Exception ignored ... BrokenPipeError")."""
    with contextlib.suppress(Exception):  # stdout may have no file descriptor (a test's capture)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
