"""The sealed network: LiveKit tests send nothing to any address outside loopback and our namespace, and the Redis
Cluster of the tests lives on loopback alone."""

from __future__ import annotations

import ipaddress
import os
import re

import pytest

from harness.participant import mint_token
from harness.util import is_root
from harness.seal import Capture, EgressAccounting, host_interfaces, probe_join, tx_packets

def _allowed_net(livekit_server) -> ipaddress.IPv4Network:
    ns = livekit_server.netns
    return ns.subnet if ns is not None else ipaddress.ip_network("127.0.0.0/8")


@pytest.mark.livekit
async def test_clients_are_handed_only_local_ice_servers(livekit_server, room_name):
    join = await probe_join(livekit_server.url, mint_token(room_name, "probe"))
    urls = [u for server in join.ice_servers for u in server.urls]
    assert urls, "expected the one local STUN server we configured"
    allowed = _allowed_net(livekit_server)
    for url in urls:
        m = re.match(r"^(stun|stuns|turn|turns):\[?([0-9a-fA-F.:]+?)\]?:(\d+)", url)
        assert m, f"ICE server {url!r} is not an IP literal (a name would need DNS)"
        assert m.group(1) == "stun", f"unexpected TURN server {url!r}"
        assert ipaddress.ip_address(m.group(2)) in allowed, f"ICE server {url!r} outside {allowed}"


async def _media_session(participant_factory, bot_factory) -> dict:
    """Bot + two participants: audio both ways, video, reliable and lossy data. Returns rtc stats."""
    bot = await bot_factory("seal-bot")
    alice = await participant_factory("alice")
    bob = await participant_factory("bob")
    await alice.publish_tone(440.0)
    await alice.publish_video()
    await bob.publish_tone(660.0)
    await alice.wait_for_audio("seal-bot", frames=50, timeout=30)
    await bob.wait_for_audio("alice", frames=50, timeout=30)
    for i in range(5):
        await alice.send_text(f"hello {i}", topic="seal")
        await alice.send_bytes(bytes([i, 0, 255]), topic="seal-bin", reliable=False)
    await bot.wait_for_data(b"hello 4", timeout=15)
    await bob.wait_for_data(lambda r: r.payload == b"hello 4" and r.topic == "seal" and r.sender == "alice")
    stats = await alice.room.get_rtc_stats()
    await alice.unpublish_video()
    await alice.leave()
    await bob.leave()
    await bot.stop()
    return stats


def _candidates(stats) -> tuple[list, list, list]:
    local, remote, pairs = [], [], []
    for s in list(stats.publisher_stats) + list(stats.subscriber_stats):
        kind = s.WhichOneof("stats")
        if kind == "local_candidate":
            local.append(s.local_candidate.candidate)
        elif kind == "remote_candidate":
            remote.append(s.remote_candidate.candidate)
        elif kind == "candidate_pair":
            pairs.append(s.candidate_pair.candidate_pair)
    return local, remote, pairs


@pytest.mark.livekit
async def test_full_media_session_sends_nothing_off_host(livekit_server, participant_factory, bot_factory, tmp_path):
    """Count, per outgoing interface, every packet this process sends during a full media session."""
    ns = livekit_server.netns
    allowed_net = _allowed_net(livekit_server)
    allowed_ifaces = ["lo"] + ([ns.host_if] if ns is not None else [])
    if not is_root():
        # Without root there is no nft/tcpdump: only the ICE checks below can run.
        stats = await _media_session(participant_factory, bot_factory)
        _check_candidates(stats, allowed_net)
        pytest.skip("not root: packet accounting skipped (ICE candidates were checked)")

    captures = [Capture(i, tmp_path).start() for i in host_interfaces() if _is_up(i)]
    tx_before = tx_packets()
    try:
        with EgressAccounting(allowed_ifaces) as acct:
            stats = await _media_session(participant_factory, bot_factory)
            counts = acct.counters()
    finally:
        packets = {c.iface: c.stop() for c in captures}
        tx_after = tx_packets()

    tx_delta = {i: tx_after.get(i, 0) - tx_before.get(i, 0) for i in tx_after}
    print(f"\nLiveKit at {livekit_server.url} ({ns or 'loopback'})\nnft counters of this process: {counts}")
    print(f"host interface tx_packets deltas (all processes): {tx_delta}")
    for iface, lines in packets.items():
        print(f"tcpdump {iface}: {len(lines)} packets (all processes)" + "".join(f"\n  {ln}" for ln in lines[:20]))

    # Positive control: the accounting does see this process's WebRTC traffic where it is allowed to go.
    media_if = ns.host_if if ns is not None else "lo"
    assert counts.get(f"if:{media_if}", 0) > 200, counts
    # The claim: not one packet from a socket of this process left through any other interface.
    assert counts.get("elsewhere", -1) == 0, counts
    # No packet from/to the namespace subnet, and no STUN/TURN/mDNS, on any host interface.
    pattern = re.compile(
        (re.escape(str(ns.subnet.network_address).rsplit(".", 1)[0] + ".") + "|" if ns is not None else "")
        + r"\.(3478|19302|5349|5353) "
    )
    for iface, lines in packets.items():
        leaked = [ln for ln in lines if pattern.search(ln)]
        assert not leaked, f"{iface}: {leaked[:10]}"
    _check_candidates(stats, allowed_net)


def _check_candidates(stats, allowed_net) -> None:
    """The server offered only its own address; no server-reflexive/relay candidate was gathered."""
    local, remote, pairs = _candidates(stats)
    assert remote, "no remote candidates in rtc stats"
    for cand in remote:
        assert ipaddress.ip_address(cand.address) in allowed_net, cand
    assert not [c for c in local if c.candidate_type in ("srflx", "relay")], local
    assert any(p.nominated for p in pairs), pairs


def _is_up(iface: str) -> bool:
    try:
        with open(f"/sys/class/net/{iface}/operstate") as f:
            state = f.read().strip()
        with open(f"/sys/class/net/{iface}/flags") as f:
            flags = int(f.read().strip(), 16)
    except OSError:
        return False
    return bool(flags & 0x1) or state == "up"


def _sockets_of(pid: int) -> list[tuple[str, str]]:
    """(local, remote) addresses of every TCP socket process ``pid`` holds, from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    out.append((_address(fields[1]), _address(fields[2])))
    return out


def _address(hex_address: str) -> str:
    ip, port = hex_address.split(":")
    raw = bytes.fromhex(ip)
    if len(raw) == 4:
        return f"{ipaddress.IPv4Address(raw[::-1])}:{int(port, 16)}"
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return f"[{ipaddress.IPv6Address(words)}]:{int(port, 16)}"


async def test_the_redis_cluster_lives_on_loopback(redis_cluster):
    """Every node of the test cluster announces 127.0.0.1 and holds sockets (clients, the cluster bus, its
    replication) to and from 127.0.0.1 only."""
    from eventstore.connection import connect

    redis = connect(redis_cluster.url)
    try:
        await redis.set("seal:{a}", 1)  # some traffic between the nodes first: replication, the bus
        await redis.set("seal:{b}", 1)
    finally:
        await redis.aclose()
    for node in redis_cluster.nodes:
        table = _cluster_nodes(node.port)
        assert table and all(addr.startswith("127.0.0.1:") for addr in table), table
        sockets = _sockets_of(node.proc.pid)
        assert sockets, node.port
        for local, remote in sockets:
            assert local.startswith("127.0.0.1:"), (node.port, local, remote)
            assert remote.startswith(("127.0.0.1:", "0.0.0.0:")), (node.port, local, remote)


def _cluster_nodes(port: int) -> list[str]:
    from harness.redis_cluster import _info

    return [line.split()[1] for line in _info(port, "CLUSTER", "NODES").splitlines() if line.strip()]
