"""The dev stack: what the demo and the tests run on, from a source checkout. Not in the wheel (see
``pyproject.toml``): it starts root-only network namespaces and kills stale processes, which a production
install has no business doing.

- ``redis_server``, ``livekit_server``, ``netns``, ``stack``: a private redis-server and a LiveKit dev server
  (inside a network namespace of its own when run as root, else on loopback);
- ``participant``: a simulated caller (a real rtc participant); ``daemon_process``: ``room-supervisor serve``
  as a child process, as systemd runs it;
- ``demo``, ``report``: ``room-supervisor demo``.

Nothing here sends a packet anywhere but loopback or a namespace it created itself."""
