"""The ``room-supervisor`` command line (console script ``supervisor.cli:main``).

- :mod:`.main`: parse, load settings, dispatch, exit codes; ``serve`` and ``demo`` glue;
- :mod:`.parser`: the grammar and the help text, and the redaction of secrets given as arguments;
- :mod:`.rooms`: ``join``, ``leave``, ``rooms`` (desired state, heartbeats, why a room failed or ended);
- :mod:`.events`: ``events``, ``consume`` (the event log and its projections);
- :mod:`.state`: ``state`` (a materialized state, and how far it is behind the room's stream);
- :mod:`.call`: ``call`` (a test caller in a LiveKit room);
- :mod:`.roomlog`: what Redis knows about rooms, in one round trip; :mod:`.output`: stdout, and ``| head``.
"""

from .main import main

__all__ = ["main"]
