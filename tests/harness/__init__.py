"""Test harness: real redis-server, real livekit-server (sealed in a network namespace), real rtc clients.

Fixtures live in :mod:`harness.fixtures` and are re-exported by ``tests/conftest.py``.
"""
