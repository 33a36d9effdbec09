"""Shared fixtures: real redis-server, real (sealed) livekit-server, rtc participants, a pipecat echo bot.

The harness lives in ``tests/harness/`` (importable as ``harness``). See tests/harness/fixtures.py.
"""

from __future__ import annotations

import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from harness.fixtures import (  # noqa: E402,F401 - fixtures are found by name
    ACTIVE_LIVEKIT,
    ACTIVE_REDIS,
    _rs_no_leaked_tasks,
    _rs_task_guard,
    bot,
    bot_factory,
    clients,
    fresh_livekit,
    fresh_redis,
    livekit_server,
    make_bot,
    participant_factory,
    private_cluster,
    redis_cluster,
    redis_server,
    redis_url,
    room_name,
    sealed_netns,
    store_url,
)


# Warnings from third-party imports that we cannot avoid; each is narrow (message + category).
THIRD_PARTY_WARNING_FILTERS = (
    # pipecat/audio/utils.py does `import audioop` (stdlib module deprecated in 3.11, gone in 3.13).
    "ignore:'audioop' is deprecated and slated for removal in Python 3.13:DeprecationWarning",
    # PyJWT (via livekit.api.AccessToken) warns that the dev secret "secret" (6 bytes) is short.
    # The harness uses livekit-server's dev keys devkey/secret on purpose.
    "ignore:The HMAC key is 6 bytes long:jwt.warnings.InsecureKeyLengthWarning",
    # When a hypothesis test fails, its pytest plugin reports explicit-example patches through
    # hypothesis.extra._patching, which imports libcst, whose type_inference_provider subclasses
    # mypy_extensions.TypedDict. mypy_extensions warns with stacklevel=2, so the warning is attributed to that
    # libcst module. Turned into an error it becomes an INTERNALERROR that hides the real failure.
    r"ignore:mypy_extensions\.TypedDict is deprecated:DeprecationWarning:libcst\.metadata\.type_inference_provider",
)


def pytest_configure(config):
    for line in THIRD_PARTY_WARNING_FILTERS:
        config.addinivalue_line("filterwarnings", line)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of every live livekit-server / redis-server log to the report."""
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    for server in list(ACTIVE_LIVEKIT):
        rep.sections.append((f"livekit-server {server.url} log tail ({server.log_path})", server.log_tail(80)))
    for server in list(ACTIVE_REDIS):
        rep.sections.append((f"redis-server {server.url} log tail", server.log_tail(20)))
