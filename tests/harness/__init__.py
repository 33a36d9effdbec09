"""Test harness. The server, namespace and participant helpers live in ``supervisor.devstack`` (the demo uses
them too); they are aliased here so tests can keep importing ``harness.redis_server`` and friends."""

import sys as _sys

from supervisor.devstack import livekit_server, netns, participant, redis_cluster, redis_server, util

for _name, _module in {
    "util": util,
    "redis_server": redis_server,
    "redis_cluster": redis_cluster,
    "livekit_server": livekit_server,
    "netns": netns,
    "participant": participant,
}.items():
    _sys.modules[f"{__name__}.{_name}"] = _module
