"""sd_notify over a real unix datagram socket: a path, an abstract name, none; the watchdog interval."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from supervisor.daemon.notify import Notifier


def receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_messages_reach_a_path_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    with receiver(path) as sock:
        n = Notifier({"NOTIFY_SOCKET": path})
        assert n.enabled
        assert n.ready("3 rooms running")
        assert sock.recv(4096) == b"READY=1\nSTATUS=3 rooms running"
        assert n.status("draining")
        assert sock.recv(4096) == b"STATUS=draining"
        assert n.stopping()
        assert sock.recv(4096) == b"STOPPING=1"
        assert n.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert n.reloading()
        lines = sock.recv(4096).decode().split("\n")
        assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
        n.close()


def test_messages_reach_an_abstract_socket():
    name = f"rs-test-{uuid.uuid4().hex}"
    with receiver("\0" + name) as sock:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert sock.recv(4096) == b"READY=1"
        n.close()


@pytest.mark.parametrize("value", ["", "relative/path.sock", "vsock:2:1234"])
def test_no_usable_socket_means_no_op(value):
    n = Notifier({"NOTIFY_SOCKET": value} if value else {})
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False


def test_a_socket_that_is_gone_does_not_raise(tmp_path):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert n.enabled
    assert n.ready() is False
    n.close()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout(env, interval):
    assert Notifier(env).watchdog_interval == interval
