"""Settings: defaults < TOML file < environment < command-line overrides; secrets never printed."""

from __future__ import annotations

import pytest

from supervisor.settings import Settings, SettingsError, load_settings


def write(tmp_path, text: str):
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def test_defaults_need_nothing():
    s = load_settings(environ={})
    assert s == Settings()
    assert s.daemon.drain_timeout > 0 and s.daemon.default_pipeline == "listen"


def test_precedence_file_then_env_then_overrides(tmp_path):
    path = write(tmp_path, '[daemon]\ndrain_timeout = 7.5\nmax_rooms = 3\n[redis]\nprefix = "file"\n')
    env = {"RS_DAEMON_MAX_ROOMS": "4", "RS_REDIS_PREFIX": "env"}
    s = load_settings(path, environ=env, overrides={"redis": {"prefix": "flag"}})
    assert s.daemon.drain_timeout == 7.5  # file only
    assert s.daemon.max_rooms == 4  # env beats file, converted from text
    assert s.redis.prefix == "flag"  # flag beats env


def test_config_path_from_environment(tmp_path):
    path = write(tmp_path, "[daemon]\nmax_rooms = 9\n")
    assert load_settings(environ={"ROOM_SUPERVISOR_CONFIG": str(path)}).daemon.max_rooms == 9


def test_well_known_variables(tmp_path):
    env = {"LIVEKIT_URL": "wss://lk.example.com", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s3cr3t-value",
           "REDIS_URL": "redis://:pw@127.0.0.1:6390/2"}
    s = load_settings(environ=env)
    assert (s.livekit.url, s.livekit.api_key, s.livekit.api_secret) == ("wss://lk.example.com", "k", "s3cr3t-value")
    assert s.redis.url == "redis://:pw@127.0.0.1:6390/2"
    shown = repr(s)
    assert "s3cr3t-value" not in shown and ":pw@" not in shown


def test_booleans_and_numbers_from_environment():
    s = load_settings(environ={"RS_WRITER_SPOOL_FSYNC": "true", "RS_DAEMON_LEASE_TTL": "2.5"})
    assert s.writer.spool_fsync is True and s.daemon.lease_ttl == 2.5


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[daemon\nmax_rooms = 1", "not valid TOML"),
        ("[nope]\nx = 1", "unknown section [nope]"),
        ("daemon = 3", "must be a table"),
        ("[daemon]\nmax_rooms = 'many'", "max_rooms"),
        ("[daemon]\nno_such_key = 1", "no_such_key"),
        ("[daemon]\ndrain_timeout = -1", "daemon.drain_timeout must be positive"),
        ("[daemon]\nhttp_port = 70000", "http_port"),
        ("[daemon]\nrejoin_base = 5.0\nrejoin_max = 1.0", "rejoin_base"),
        ("[daemon]\nlog_level = 'LOUD'", "log_level"),
        ("[livekit]\nurl = 'ftp://x'", "livekit.url"),
        ("[livekit]\napi_secret = ''", "api_secret"),
        ("[redis]\nurl = 'http://127.0.0.1'", "redis.url"),
    ],
)
def test_garbage_in_the_file_is_named(tmp_path, text, says):
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, text), environ={})
    assert says in str(info.value)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"RS_DAEMON_DRAIN_TIMEOUT": "soon"}, "drain_timeout"),
        ({"RS_DAEMON_NO_SUCH": "1"}, "RS_DAEMON_NO_SUCH"),
        ({"REDIS_URL": "localhost:6379"}, "redis.url"),
        ({"RS_DAEMON_MAX_ROOMS": "0"}, "max_rooms"),
        ({"RS_DISPATCH_ENABLED": "sometimes"}, "dispatch.enabled"),
        ({"RS_DISPATCH_PIPELINE": "my bot"}, "dispatch.pipeline: 'my bot' is not a pipeline name"),
        ({"RS_DISPATCH_AGENT_NAME": "a\x00b"}, "dispatch.agent_name must be at most 128 printable characters"),
        ({"RS_DISPATCH_TARGET_LOAD": "1.5"}, "dispatch.target_load must be in (0, 1]"),
        ({"RS_WEBHOOKS_PATH": "webhook"}, "webhooks.path must be a path"),
        ({"RS_WEBHOOKS_PATH": "/metrics"}, "webhooks.path must be a path"),
        ({"RS_WEBHOOKS_ROOMS": "some"}, 'webhooks.rooms must be "supervised" or "all"'),
        ({"RS_WEBHOOKS_API_KEY": "key-without-secret"}, "webhooks.api_key and webhooks.api_secret are set together"),
        ({"RS_WEBHOOKS_ENABLED": "true", "RS_DAEMON_HTTP_PORT": "0"}, "webhooks.enabled needs the HTTP endpoint"),
        ({"RS_REDIS_WAIT_REPLICAS": "-1"}, "redis.wait_replicas must be 0..16"),
        ({"RS_REDIS_WAIT_REPLICAS": "two"}, "wait_replicas"),
        ({"RS_REDIS_WAIT_TIMEOUT": "0"}, "redis.wait_timeout must be in (0, 60]"),
        ({"RS_REDIS_WAIT_TIMEOUT": "nan"}, "redis.wait_timeout must be in (0, 60]"),
        ({"REDIS_URL": "redis+cluster://"}, "redis.url: cluster seed"),
        ({"REDIS_URL": "redis+cluster://127.0.0.1:7000,nohost"}, "cluster seed 'nohost' is not host:port"),
        ({"REDIS_URL": "redis+cluster://127.0.0.1:7000/3"}, "a cluster URL has database 0 only"),
        ({"REDIS_URL": "redis+cluster://127.0.0.1:99999"}, "is not host:port"),
        ({"RS_RETENTION_TOMBSTONE_TTL": "-1"}, "retention.tombstone_ttl must be at least 0"),
        ({"RS_RETENTION_TOMBSTONE_TTL": "nan"}, "retention.tombstone_ttl must be at least 0 and finite"),
        ({"RS_RETENTION_TOMBSTONE_TTL": "a day"}, "tombstone_ttl"),
        ({"RS_RETENTION_ARCHIVE_AFTER": "inf"}, "retention.archive_after must be at least 0 and finite"),
        ({"RS_RETENTION_KEEP_RECORDS": "-5"}, "retention.keep_records must be at least 0"),
        ({"RS_RETENTION_INTERVAL": "0"}, "retention.interval must be positive"),
        ({"RS_RETENTION_LOCK_TTL": "-1"}, "retention.lock_ttl must be positive"),
        ({"RS_RETENTION_PROJECTIONS": "participants,no such"}, "retention.projections"),
    ],
)
def test_garbage_in_the_environment_is_named(env, says):
    with pytest.raises(SettingsError) as info:
        load_settings(environ=env)
    assert says in str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", environ={})
    with pytest.raises(SettingsError, match="cannot be read"):
        load_settings(tmp_path, environ={})  # a directory
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SettingsError):
        load_settings(binary, environ={})


def test_redis_url_password_is_redacted_in_errors():
    with pytest.raises(SettingsError) as info:
        load_settings(environ={"REDIS_URL": "http://user:hunter2@host/0"})
    assert "hunter2" not in str(info.value)


def test_redis_passwords_never_show_in_the_redacted_settings():
    from supervisor.settings import load_settings, redact_url

    s = load_settings(environ={"REDIS_URL": "redis://user:hunter2@db:6379/0?password=hunter3",
                               "LIVEKIT_API_SECRET": "s3cr3t-value"})
    text = repr(s) + str(s.redacted())
    assert "hunter2" not in text and "hunter3" not in text and "s3cr3t-value" not in text
    assert redact_url("unix:///run/redis.sock?password=x&db=2") == "unix:///run/redis.sock?password=***&db=2"


def test_pipelines_table_and_environment(tmp_path):
    path = write(tmp_path, '[pipelines]\nmybot = "mypkg.bot:factory"\n"Support.v2-eu" = "mypkg.support:make"\n')
    s = load_settings(path, environ={"RS_PIPELINES_MY_BOT": "other.mod:build", "RS_PIPELINES_MYBOT": "a.b:c"})
    assert s.pipelines == {"mybot": "a.b:c", "Support.v2-eu": "mypkg.support:make", "my_bot": "other.mod:build"}
    assert load_settings(environ={}).pipelines == {}
    assert "mypkg.support:make" in repr(s)  # not a secret


@pytest.mark.parametrize(
    ("text", "env", "says"),
    [
        ('[pipelines]\necho = "mypkg.bot:factory"', {}, "pipelines.echo: echo is built in"),
        ("", {"RS_PIPELINES_LISTEN": "mypkg.bot:factory"}, "pipelines.listen: listen is built in"),
        ('[pipelines]\nmybot = "mypkg.bot"', {}, "pipelines.mybot: 'mypkg.bot' is not module:function"),
        ('[pipelines]\nmybot = "mypkg.bot:fac:tory"', {}, "pipelines.mybot"),
        ('[pipelines]\nmybot = "1pkg:factory"', {}, "pipelines.mybot"),
        ("[pipelines]\nmybot = 3", {}, 'pipelines.mybot must be a "module:function" string'),
        ('[pipelines]\n"my bot" = "a.b:c"', {}, "'my bot' is not a pipeline name"),
        ('[pipelines]\n"a:b" = "a.b:c"', {}, "'a:b' is not a pipeline name"),
        ('pipelines = "a.b:c"', {}, "[pipelines] must be a table"),
        ("", {"RS_PIPELINES_MYBOT": "not a target"}, "pipelines.mybot"),
    ],
)
def test_garbage_pipelines_are_named(tmp_path, text, env, says):
    with pytest.raises(SettingsError) as info:
        load_settings(write(tmp_path, text), environ=env)
    assert says in str(info.value)


# ----- errors say where the value came from, and what was probably meant --------------------------------------


def _error(tmp_path, toml: str = "", environ: dict | None = None, overrides: dict | None = None) -> str:
    path = None
    if toml:
        path = tmp_path / "room-supervisor.toml"
        path.write_text(toml)
    with pytest.raises(SettingsError) as caught:
        load_settings(path, environ=environ or {}, overrides=overrides)
    return str(caught.value)


def test_a_typo_in_the_file_names_the_file_and_the_nearest_setting(tmp_path):
    said = _error(tmp_path, "[daemon]\nmax_room = 10\n")
    assert said == f"config file {tmp_path / 'room-supervisor.toml'}: [daemon] has no setting 'max_room' (did you mean max_rooms?)"
    assert "did you mean [daemon]?" in _error(tmp_path, "[deamon]\nid = 'x'\n")
    assert "did you mean" not in _error(tmp_path, "[daemon]\nzzzzzz = 1\n")


def test_a_typo_in_the_environment_names_the_variable_and_the_nearest_one(tmp_path):
    said = _error(tmp_path, environ={"RS_DAEMON_MAX_ROOM": "3"})
    assert said == ("environment variable RS_DAEMON_MAX_ROOM: there is no setting daemon.max_room "
                    "(did you mean RS_DAEMON_MAX_ROOMS?)")


@pytest.mark.parametrize("toml, environ, overrides, source", [
    ("[daemon]\nmax_rooms = 'ten'\n", {}, None, "config file"),
    ("", {"RS_DAEMON_LEASE_TTL": "abc"}, None, "environment variable RS_DAEMON_LEASE_TTL"),
    ("[daemon]\nlease_ttl = 1.0\n", {"RS_DAEMON_LEASE_TTL": "-2"}, None, "environment variable RS_DAEMON_LEASE_TTL"),
    ("", {"REDIS_URL": "localhost:6379"}, None, "environment variable REDIS_URL"),
    ("[redis]\nurl = 'redis://127.0.0.1/0'\n", {}, {"redis": {"url": "localhost:1"}}, "--redis-url"),
    ("[livekit]\nurl = '127.0.0.1:7880'\n", {}, None, "config file"),
])
def test_a_bad_value_names_where_it_came_from(tmp_path, toml, environ, overrides, source):
    assert f"(from {source}" in _error(tmp_path, toml, environ, overrides)


def test_a_url_without_a_scheme_is_refused_as_typed(tmp_path):
    said = _error(tmp_path, environ={"REDIS_URL": "localhost:6379"})
    assert "got 'localhost:6379'" in said and "redis://" in said
