"""Key layout: hostile room names map to distinct keys that share one Redis Cluster slot per room."""

from __future__ import annotations

import binascii

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore.keys import InvalidKeyPart, Keys, decode_name, encode_name, partition_of

HOSTILE = [
    "plain",
    "Plain",
    "PLAIN",
    "with space",
    "with  two  spaces",
    " leading and trailing ",
    "tab\there",
    "new\nline",
    "ünïcødé",
    "日本語の部屋",
    "emoji 🎉🚀",
    "a:b:c",
    "{tag}",
    "}{",
    "{",
    "}",
    "star*",
    "*",
    "?[a-z]",
    "100%",
    "%",
    "a b",
    "a%20b",
    "a%2520b",
    "a+b",
    "%41",
    "A",
    "a",
    "rs:room:{x}:events",
    "x" * 300,
    "é" * 301,
    "😀" * 300,
    "\x00nul",
    "back\\slash",
    "quote\"'",
    "dot.dash-under_tilde~",
]


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: the first ``{...}`` with something inside, else the key."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: str) -> int:
    """CLUSTER KEYSLOT: CRC16-XMODEM (``binascii.crc_hqx`` with 0) of the hash tag, modulo 16384."""
    return binascii.crc_hqx(hash_tag(key).encode("utf-8"), 0) % 16384


def test_key_slot_matches_redis_reference_values():
    # Values CLUSTER KEYSLOT returns on a real cluster (and Redis' crc16 test vector "123456789" = 0x31C3).
    assert binascii.crc_hqx(b"123456789", 0) == 0x31C3
    assert key_slot("foo") == 12182
    assert key_slot("somekey") == 11058
    assert key_slot("{foo}.bar") == key_slot("foo")
    assert key_slot("foo{}{bar}") == binascii.crc_hqx(b"foo{}{bar}", 0) % 16384
    assert hash_tag("foo{{bar}}zap") == "{bar"


def per_room_keys(keys: Keys, room: str) -> list[str]:
    return [keys.events(room), keys.meta(room), keys.lease(room), keys.state(room, "participants"),
            keys.state(room, "call-state_v2")]


@pytest.mark.parametrize("prefix", ["rs", "test-env:rs"])
def test_hostile_names_get_distinct_keys_in_one_slot_each(prefix):
    keys = Keys(prefix)
    assert len(set(HOSTILE)) == len(HOSTILE)
    seen: dict[str, str] = {}
    for room in HOSTILE:
        enc = encode_name(room)
        assert not set(enc) & set("{}: *\t\n")
        assert decode_name(enc) == room
        ks = per_room_keys(keys, room)
        assert {hash_tag(k) for k in ks} == {enc}
        assert len({key_slot(k) for k in ks}) == 1
        assert keys.room_from_events_key(keys.events(room)) == room
        assert keys.events(room) not in seen, (room, seen.get(keys.events(room)))
        seen[keys.events(room)] = room
    assert len(seen) == len(HOSTILE)


def test_case_and_percent_encoding_variants_stay_apart():
    keys = Keys()
    variants = ["room", "Room", "ROOM", "ro%6Fm", "ro%6fm", "a b", "a%20b", "a+b", "a%2Bb", "%", "%25"]
    assert len({keys.events(v) for v in variants}) == len(variants)
    assert encode_name("a%20b") == "a%2520b"
    assert encode_name("a b") == "a%20b"


@settings(max_examples=400, deadline=None)
@given(a=st.text(min_size=1), b=st.text(min_size=1))
def test_encoding_is_injective_and_reversible(a, b):
    keys = Keys()
    assert decode_name(encode_name(a)) == a
    assert hash_tag(keys.events(a)) == encode_name(a)
    assert key_slot(keys.events(a)) == key_slot(keys.meta(a)) == key_slot(keys.lease(a))
    assert keys.room_from_events_key(keys.events(a)) == a
    assert (keys.events(a) == keys.events(b)) == (a == b)


@pytest.mark.parametrize("bad", ["", None, 42, b"room", ["room"]])
def test_empty_or_non_string_room_is_refused(bad):
    keys = Keys()
    for build in (encode_name, keys.events, keys.meta, keys.lease, keys.room_base, keys.daemon):
        with pytest.raises(InvalidKeyPart):
            build(bad)


@pytest.mark.parametrize("prefix", ["", "a{b", "a}b", "has space", "tab\t"])
def test_invalid_prefix_is_refused(prefix):
    with pytest.raises(InvalidKeyPart):
        Keys(prefix)


@pytest.mark.parametrize("projection", ["", "a:b", "a b", "{x}", "a*"])
def test_invalid_projection_name_is_refused(projection):
    with pytest.raises(InvalidKeyPart):
        Keys().state("room", projection)


def test_room_from_foreign_key_is_refused():
    keys = Keys()
    for key in ["rs:room:{x}:meta", "other:room:{x}:events", "rs:feed:1"]:
        with pytest.raises(InvalidKeyPart):
            keys.room_from_events_key(key)


def test_partition_is_stable_and_in_range():
    # CRC-32 of UTF-8, fixed forever: consumers and writers in other processes must agree.
    assert partition_of("room-1", 16) == binascii.crc32(b"room-1") % 16
    assert partition_of("日本語", 7) == binascii.crc32("日本語".encode()) % 7
    assert all(0 <= partition_of(r, 16) < 16 for r in HOSTILE)


def test_lone_surrogate_is_an_invalid_key_part():
    from eventstore.keys import InvalidKeyPart, encode_name

    with pytest.raises(InvalidKeyPart):
        encode_name("room \udcff")
