"""Bot tokens: one room, agent kind, bounded lifetime, identity unique per session."""

from __future__ import annotations

import time

import jwt
import pytest

from transport.tokens import bot_identity, bot_token


def decode(token: str) -> dict:
    return jwt.decode(token, "a-test-secret-that-is-long-enough-32b", algorithms=["HS256"])


def test_token_grants_one_room_as_agent_with_bounded_ttl():
    token = bot_token("key", "a-test-secret-that-is-long-enough-32b", "room {x}: ü", "rs-bot-1", ttl=120)
    claims = decode(token)
    assert claims["sub"] == "rs-bot-1" and claims["iss"] == "key" and claims["kind"] == "agent"
    video = claims["video"]
    assert video["room"] == "room {x}: ü" and video["roomJoin"] is True and video["agent"] is True
    assert not video.get("roomAdmin") and not video.get("roomCreate") and not video.get("roomList")
    assert 0 < claims["exp"] - time.time() <= 121


def test_identities_are_unique_per_session():
    ids = {bot_identity() for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("rs-bot-") for i in ids)


@pytest.mark.parametrize("ttl", [0, -5])
def test_token_refuses_a_non_positive_ttl(ttl):
    with pytest.raises(ValueError):
        bot_token("key", "a-test-secret-that-is-long-enough-32b", "room", "id", ttl=ttl)
