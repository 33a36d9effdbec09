"""Typed errors of the supervisor. Only the CLI turns them into exit codes."""

from __future__ import annotations


class SupervisorError(Exception):
    """Base class of the supervisor's own errors."""


class CommandError(SupervisorError):
    """A command cannot do what was asked; the message says why and what to do."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class InvalidRoomName(CommandError):
    """A room name LiveKit would not accept."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)
