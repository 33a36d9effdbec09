"""The daemon's small policies, as plain functions: rejoin backoff, restart budget, what a reload may change."""

from __future__ import annotations

import random

import pytest

from supervisor.settings import reloadable
from supervisor.daemon.loops import RestartBudget, backoff_delay
from supervisor.settings import load_settings


def test_backoff_grows_exponentially_up_to_the_cap_with_jitter():
    top = [backoff_delay(n, 0.5, 30.0, rand=lambda: 1.0) for n in range(1, 10)]
    assert top == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    bottom = [backoff_delay(n, 0.5, 30.0, rand=lambda: 0.0) for n in range(1, 10)]
    assert bottom == [t / 2 for t in top]  # jitter keeps at least half: never a hot loop
    rng = random.Random(7)
    samples = [backoff_delay(3, 0.5, 30.0, rand=rng.random) for _ in range(200)]
    assert all(1.0 <= s <= 2.0 for s in samples) and len(set(samples)) > 150
    assert backoff_delay(0, 0.5, 30.0) == 0.0
    assert backoff_delay(10_000, 0.5, 30.0, rand=lambda: 1.0) == 30.0  # no overflow for long outages


def test_restart_budget_counts_within_a_sliding_window():
    budget = RestartBudget(budget=3, window=60.0)
    assert [budget.spend(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert budget.spend(3.0) is False  # a fourth crash within 60 s: the room is failed
    assert budget.spend(60.5) is True  # the first one left the window


@pytest.mark.parametrize("budget", [0, 1])
def test_small_budgets(budget):
    b = RestartBudget(budget=budget, window=10.0)
    assert [b.spend(0.0), b.spend(0.1)] == [budget >= 1, False]


def test_reload_keeps_what_needs_a_restart(tmp_path):
    old = load_settings(environ={"RS_DAEMON_ID": "d1", "RS_DAEMON_HTTP_PORT": "9200"})
    new = load_settings(environ={"RS_DAEMON_ID": "d2", "RS_DAEMON_HTTP_PORT": "9300", "RS_DAEMON_MAX_ROOMS": "7",
                                 "RS_REDIS_PREFIX": "other", "LIVEKIT_URL": "wss://lk2.example.com",
                                 "RS_WRITER_MAX_BATCH": "9"})
    merged, later = reloadable(old, new)
    assert merged.daemon.max_rooms == 7 and merged.livekit.url == "wss://lk2.example.com"  # taken at once
    assert (merged.daemon.id, merged.daemon.http_port) == ("d1", 9200)  # kept
    assert merged.redis == old.redis and merged.writer == old.writer
    assert sorted(later) == ["[redis]", "[writer]", "daemon.http_port", "daemon.id"]
    same, nothing = reloadable(old, old)
    assert same == old and nothing == []


def test_routine_livekit_noise_is_not_an_error_and_a_short_secret_is_said_at_start_not_per_token(caplog):
    import logging
    import warnings

    from supervisor.settings import quiet_routine_noise
    from transport.tokens import bot_token

    settings = load_settings(None, environ={"LIVEKIT_API_SECRET": "secret"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.INFO):
            quiet_routine_noise(settings)
            quiet_routine_noise(settings)  # a SIGHUP or a second daemon in one process adds nothing twice
            bot_token("devkey", "secret", "room", "rs-bot-1")  # PyJWT's warning is filtered, not raised
            rtc = logging.getLogger("livekit")
            rtc.error("publisher data channel '_lossy' closed unexpectedly")
            rtc.error("something else failed")
    levels = {r.getMessage(): r.levelname for r in caplog.records if r.name == "livekit"}
    assert levels == {"publisher data channel '_lossy' closed unexpectedly": "INFO", "something else failed": "ERROR"}
    said = [r.getMessage() for r in caplog.records if "api_secret is 6 bytes" in r.getMessage()]
    assert len(said) == 2 and "refuses secrets under 32 bytes" in said[0]
    assert len([f for f in logging.getLogger("livekit").filters]) == 1
