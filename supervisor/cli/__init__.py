"""The ``room-supervisor`` command line (console script ``supervisor.cli:main``).

- :mod:`.main`: parse, load settings, dispatch, exit codes; ``serve`` and ``demo`` glue;
- :mod:`.parser`: the grammar and the help text, and the redaction of secrets given as arguments;
- :mod:`.rooms`: ``join``, ``leave``, ``rooms`` (desired state, heartbeats);
- :mod:`.events`: ``events``, ``state``, ``consume`` (the event log and its projections).
"""

from .main import main

__all__ = ["main"]
