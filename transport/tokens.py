"""Access tokens for the bot: one room, agent kind, bounded lifetime, an identity unique per session."""

from __future__ import annotations

import datetime as _dt
import secrets

from livekit import api

BOT_PREFIX = "rs-bot-"  # every bot identity starts so: a participant with it in a room is one of ours


def bot_identity() -> str:
    """A fresh identity for one session, so a rejoin never collides with a stale copy of itself
    (LiveKit would disconnect the older one with DUPLICATE_IDENTITY)."""
    return f"{BOT_PREFIX}{secrets.token_hex(4)}"


def bot_token(api_key: str, api_secret: str, room: str, identity: str, *, ttl: float = 600.0,
              name: str = "room-supervisor") -> str:
    """A JWT that lets ``identity`` join ``room`` only, as an agent, for ``ttl`` seconds. LiveKit refreshes the
    token of a connected client itself, so ``ttl`` bounds only how long it can be used to (re)join."""
    if ttl <= 0:
        raise ValueError("token ttl must be positive")
    grants = api.VideoGrants(
        room_join=True,
        room=room,
        can_publish=True,
        can_subscribe=True,
        can_publish_data=True,
        agent=True,
    )
    token = (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_name(name)
        .with_kind("agent")
        .with_grants(grants)
        .with_ttl(_dt.timedelta(seconds=ttl))
    )
    return token.to_jwt()
