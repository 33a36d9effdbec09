"""No Redis password ever reaches the terminal: every CLI command, against a real redis-server that requires a
password, given it in the URL's userinfo or as ``?password=``, right, wrong, or for a port nobody listens on."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from daemonproc import REPO, cli_env, write_config
from harness.redis_server import RedisServer, _command
from harness.util import free_port, wait_until
from supervisor.settings import load_settings, redact, redact_url, url_secrets

SECRET = "s3cret"
WRONG = "wr0ngpass"
SECRETS = (SECRET, WRONG)


class PasswordRedis(RedisServer):
    """A redis-server with ``requirepass``."""

    def _argv(self) -> list[str]:
        return [*super()._argv(), "--requirepass", SECRET]

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
        return _command(self.port, b"PING\r\n").startswith(b"-NOAUTH")


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory):
    server = PasswordRedis(tmp_path_factory.mktemp("locked-redis")).start()
    try:
        yield server
    finally:
        server.stop()


def urls(port: int) -> dict[str, str]:
    host = f"127.0.0.1:{port}"
    return {
        "userinfo": f"redis://:{SECRET}@{host}/0",
        "user and password": f"redis://default:{SECRET}@{host}/0",
        "query": f"redis://{host}/0?password={SECRET}",
        "wrong userinfo": f"redis://:{WRONG}@{host}/0",
        "wrong query": f"redis://{host}/0?password={WRONG}",
        "no password": f"redis://{host}/0",
    }


COMMANDS = {
    "events": ["events", "some room"],
    "state": ["state", "some room"],
    "rooms": ["rooms", "-v"],
    "join": ["join", "some room", "--pipeline", "listen"],
    "leave": ["leave", "some room"],
    "consume": ["consume", "participants", "--until-caught-up"],
}


def run_all(runs: dict[tuple[str, str], tuple[list[str], dict[str, str]]], parallel: int = 4):
    """Run the CLI for every key (argv, extra env), a few at a time; key -> CompletedProcess-like tuple."""
    out: dict[tuple[str, str], tuple[int, str, str]] = {}
    pending = list(runs.items())
    while pending:
        batch, pending = pending[:parallel], pending[parallel:]
        procs = [(key, subprocess.Popen([sys.executable, "-m", "supervisor.cli", *argv], cwd=REPO,
                                        env=cli_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True))
                 for key, (argv, env) in batch]
        for key, proc in procs:
            stdout, stderr = proc.communicate(timeout=60)
            out[key] = (proc.returncode, stdout, stderr)
    return out


def assert_no_secret(key, result) -> None:
    code, stdout, stderr = result
    for secret in SECRETS:
        assert secret not in stdout and secret not in stderr, (key, code, stdout, stderr)
    assert "Traceback" not in stderr, (key, stderr)


@pytest.mark.slow
def test_no_command_prints_the_password(locked_redis):
    """Every command, with the URL in $REDIS_URL (and a few with --redis-url): right passwords work, wrong ones
    and unreachable ports are clear errors, and no password, right or wrong, is printed."""
    runs = {}
    up, down = urls(locked_redis.port), urls(free_port())
    for reachable, kind in [("up", "userinfo"), ("up", "query"), ("up", "wrong userinfo"), ("up", "wrong query"),
                            ("down", "userinfo"), ("down", "query")]:
        url = (up if reachable == "up" else down)[kind]
        for name, argv in COMMANDS.items():  # every command with the two ways of giving a password
            runs[(reachable, kind, "REDIS_URL", name)] = (argv, {"REDIS_URL": url})
    for reachable, kind, name in [("up", "user and password", "events"), ("up", "no password", "rooms"),
                                  ("up", "no password", "state")]:
        runs[(reachable, kind, "REDIS_URL", name)] = (COMMANDS[name], {"REDIS_URL": up[kind]})
    for reachable, kind, name in [("up", "query", "rooms"), ("up", "wrong userinfo", "join"),
                                  ("down", "query", "events"), ("down", "userinfo", "consume")]:
        url = (up if reachable == "up" else down)[kind]
        runs[(reachable, kind, "--redis-url", name)] = ([*COMMANDS[name], "--redis-url", url], {})
    for key, result in run_all(runs).items():
        assert_no_secret(key, result)
        (reachable, kind, _, _), (code, _, stderr) = key, result
        if reachable == "up" and kind in ("userinfo", "user and password", "query"):
            # the password worked: Redis accepted it (`events`/`state` of a room nobody recorded: exit 2)
            assert code == 0 or (code == 2 and "no such room" in stderr), (key, stderr)
        elif reachable == "up":
            assert code == 1 and "refused access" in stderr, (key, stderr)
        else:
            assert code == 1 and "cannot reach Redis at redis://" in stderr, (key, stderr)
            assert ("password=***" if kind == "query" else "redis://***@") in stderr, (key, stderr)


def test_usage_and_configuration_errors_do_not_print_the_password(tmp_path):
    bad_scheme = tmp_path / "bad.toml"
    bad_scheme.write_text(f'[redis]\nurl = "http://:{SECRET}@127.0.0.1/0?password={SECRET}"\n')
    not_toml = tmp_path / "not.toml"
    not_toml.write_text(f'[redis]\nurl = "redis://:{SECRET}@127.0.0.1/0\n')
    runs = {
        ("argument", "misplaced"): (["rooms", f"redis://:{SECRET}@127.0.0.1:1/0"], {}),
        ("argument", "bad value"): (["events", "r", "--since", f"redis://:{SECRET}@h/0"], {}),
        ("env", "bad scheme"): (["rooms"], {"REDIS_URL": f"http://:{SECRET}@h/0?password={SECRET}"}),
        ("env", "no scheme"): (["rooms"], {"REDIS_URL": f":{SECRET}@127.0.0.1:6379"}),
        ("file", "bad scheme"): (["rooms", "--config", str(bad_scheme)], {}),
        ("file", "not toml"): (["rooms", "--config", str(not_toml)], {}),
        ("flag", "bad scheme"): (["leave", "r", "--redis-url", f"ftp://u:{SECRET}@h/0"], {}),
    }
    for key, result in run_all(runs).items():
        assert_no_secret(key, result)
        assert result[0] == 2, (key, result)


@pytest.mark.slow
def test_serve_does_not_print_the_password(tmp_path, locked_redis):
    """The daemon's own log lines go through the same redaction: settings, and Redis refusing the password or
    not answering (LiveKit is not there either, so the daemon waits until SIGTERM)."""
    cases = {
        "wrong": f"redis://:{WRONG}@127.0.0.1:{locked_redis.port}/0",
        "down": f"redis://127.0.0.1:{free_port()}/0?password={SECRET}",
        "right": f"redis://default:{SECRET}@127.0.0.1:{locked_redis.port}/0",
    }
    procs = {}
    for name, url in cases.items():
        config = write_config(tmp_path / f"{name}.toml", "redis://127.0.0.1:1/0", f"ws://127.0.0.1:{free_port()}",
                              spool_dir=tmp_path / name / "spool", daemon_id=f"redact-{name}")
        log = tmp_path / f"{name}.log"
        with open(log, "wb") as out:
            procs[name] = (subprocess.Popen([sys.executable, "-m", "supervisor.cli", "serve", "--config", str(config)],
                                            cwd=REPO, env=cli_env({"REDIS_URL": url}), stdout=out,
                                            stderr=subprocess.STDOUT), log)
    try:
        for name, (proc, log) in procs.items():
            wait_until(lambda: "waiting:" in log.read_text(errors="replace") or proc.poll() is not None, 90,
                       f"the {name} daemon to say what it waits for", 0.1)
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    for name, (proc, log) in procs.items():
        text = log.read_text(errors="replace")
        for secret in SECRETS:
            assert secret not in text, (name, text)
        assert "settings: Settings(" in text and "waiting:" in text, (name, text)
        if name != "right":
            assert "redis" in text.split("waiting:", 1)[1].lower(), (name, text)


# ----- the helper itself ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw1234@h:6379/0", "redis://***@h:6379/0"),
        ("redis://user:pw1234@h:6379/0?password=pw5678&db=2", "redis://***@h:6379/0?password=***&db=2"),
        ("rediss://h/0?PassWord=pw1234", "rediss://h/0?PassWord=***"),
        ("unix:///run/redis.sock?password=x&db=2", "unix:///run/redis.sock?password=***&db=2"),
        ("redis://u:pa/ss#w?rd@h:1/0", "redis://***@h:1/0"),  # '/', '#', '?' in the password
        (":pw1234@h:6379", "***@h:6379"),  # no scheme
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("localhost:6379", "localhost:6379"),
        ("redis+cluster://admin:pw1234@10.0.0.1:6379,10.0.0.2:6379", "redis+cluster://***@10.0.0.1:6379,10.0.0.2:6379"),
        ("rediss+cluster://:pw1234@h1:1,h2:2", "rediss+cluster://***@h1:1,h2:2"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    if "://" in url:  # in free text, only what has a scheme is taken for a URL
        assert redact(f"error: cannot use {url} now") == f"error: cannot use {shown} now"


def test_secrets_are_masked_wherever_they_appear():
    url = "redis://:p%40ss-word@h/0?password=second-one"
    assert sorted(url_secrets(url)) == ["p%40ss-word", "p@ss-word", "second-one"]
    text = "AUTH p@ss-word failed; tried second-one; api_secret=zzz auth_token=yyy"
    assert redact(text, url_secrets(url)) == "AUTH *** failed; tried ***; api_secret=*** auth_token=***"
    assert url_secrets("redis://:ab@h/0") == []  # too short to mask everywhere; the URL itself is still redacted


def test_settings_never_show_the_password():
    s = load_settings(environ={"REDIS_URL": f"redis://u:{SECRET}@h:1/0?password={WRONG}"})
    text = repr(s) + str(s.redacted())
    assert SECRET not in text and WRONG not in text


def test_redaction_module_needs_no_pipecat():
    code = "import sys, supervisor.cli; assert not [m for m in sys.modules if m.startswith('pipecat')]"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(), check=True, timeout=60)


