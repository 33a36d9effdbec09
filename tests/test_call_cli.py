"""``room-supervisor call ROOM --say TEXT``: a test caller that joins a real LiveKit room, sends a text stream
(and a data packet with ``--data``), leaves, and says what it did; bad input is exit 2 before LiveKit's native
library is loaded; an unreachable LiveKit or a refused key is a clear exit 1.

The command runs as a real process (it loads rtc, a native library); the listener is a real rtc participant.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from daemonproc import REPO, cli_env
from harness.util import async_wait_until, free_port
from supervisor.cli import main

pytestmark = pytest.mark.timeout(240)


async def call(url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "supervisor.cli", "call", *args, cwd=REPO,
        env=cli_env({"LIVEKIT_URL": url, **(env or {})}), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(("argv", "says"), [
    (["", "--say", "hi"], "room name must be a non-empty string"),
    (["   ", "--say", "hi"], "room name must be a non-empty string"),
    (["tab\there", "--say", "hi"], "contains control characters"),
    (["x" * 1025, "--say", "hi"], "at most 1024 are allowed"),
    (["\udcff broken", "--say", "hi"], "is not valid unicode text"),
    (["r", "--say", ""], "--say needs something to say: the text is empty"),
    (["r", "--say", " \n\t "], "--say needs something to say: the text is empty"),
    (["r", "--say", "bad \udcff utf-8"], "--say: the text is not valid UTF-8"),
    (["r", "--say", "x" * 70_000], "--say: the text is 70000 bytes; at most 65536 are sent"),
    (["r", "--say", "ü" * 32_769], "--say: the text is 65538 bytes; at most 65536 are sent"),
    (["r", "--say", "x" * 15_001, "--data"], "one data packet holds at most 15000"),
    (["r", "--say", "hi", "--identity", "rs-bot-impostor"], "marks the daemon's own bots"),
    (["r", "--say", "hi", "--identity", ""], "--identity must be printable text of 1 to 128 characters"),
    (["r", "--say", "hi", "--identity", "two\nlines"], "--identity must be printable text"),
    (["r", "--say", "hi", "--identity", "x" * 129], "--identity must be printable text"),
    (["r", "--say", "hi", "--topic", ""], "--topic must be printable text"),
    (["r", "--say", "hi", "--topic", "a\tb"], "--topic must be printable text"),
    (["r", "--say", "hi", "--wait", "-1"], "--wait must be 0 to 600 seconds"),
    (["r", "--say", "hi", "--wait", "601"], "--wait must be 0 to 600 seconds"),
    (["r", "--say", "hi", "--wait", "nan"], "--wait must be 0 to 600 seconds"),
])
def test_garbage_input_is_exit_2_with_a_clear_message(capsys, argv, says):
    code = main(["call", *argv])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and len(err) < 400  # the text itself is not echoed back


@pytest.mark.parametrize("argv", [["r"], ["r", "--say"], ["--say", "hi"], ["r", "--say", "hi", "--wait", "soon"],
                                  ["r", "--say", "hi", "--bogus"]])
def test_garbage_arguments_are_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(["call", *argv])
    assert exc.value.code == 2 and "usage:" in capsys.readouterr().err


def test_bad_input_never_loads_livekits_native_library():
    code = ("import sys\nfrom supervisor.cli import main\ncode = main(['call', 'r', '--say', ''])\n"
            "assert 'livekit.rtc' not in sys.modules, 'rtc loaded'\nsys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr


async def test_livekit_unreachable_is_exit_1():
    url = f"ws://127.0.0.1:{free_port()}"
    code, out, err = await call(url, "some room", "--say", "hi")
    assert (code, out) == (1, "")
    assert err.startswith(f"room-supervisor: cannot reach LiveKit at {url} (") and "Connection refused" in err
    assert "check livekit.url (LIVEKIT_URL)" in err and "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("credentials", [{"LIVEKIT_API_SECRET": "not-the-secret-at-all"},
                                         {"LIVEKIT_API_KEY": "nokey"}])
async def test_a_refused_key_is_exit_1_and_the_token_is_not_printed(livekit_server, room_name, credentials):
    code, out, err = await call(livekit_server.url, room_name, "--say", "hi", env=credentials)
    assert (code, out) == (1, "")
    assert err.startswith(f"room-supervisor: LiveKit at {livekit_server.url} refused the API key or secret (")
    assert "401" in err and "LIVEKIT_API_KEY, LIVEKIT_API_SECRET" in err
    assert "eyJ" not in err and "not-the-secret" not in err and "Traceback" not in err


async def test_call_says_text_and_data_to_whoever_is_in_the_room(livekit_server, participant_factory, room_name):
    listener = await participant_factory("listener")
    texts: list[tuple[str, str, str]] = []
    reads: list[asyncio.Task] = []

    def on_text(reader, sender: str) -> None:
        async def read() -> None:
            texts.append((sender, reader.info.topic, await reader.read_all()))

        reads.append(asyncio.get_running_loop().create_task(read()))

    assert listener.room is not None
    listener.room.register_text_stream_handler("chat", on_text)
    try:
        code, out, err = await call(livekit_server.api_url, room_name, "--say", "hello ü {1}", "--data",
                                    "--topic", "chat", "--identity", "tester")
        assert code == 0, err
        await async_wait_until(lambda: texts and listener.received, 20, "the text and the data at the listener")
        await asyncio.gather(*reads)
    finally:
        listener.room.unregister_text_stream_handler("chat")
    assert texts == [("tester", "chat", "hello ü {1}")]
    [packet] = listener.received
    assert (packet.payload, packet.topic, packet.reliable) == ("hello ü {1}".encode(), "chat", True)
    lines = out.splitlines()
    assert lines[0] == f"joined '{room_name}' at {livekit_server.url} as tester (in the room: listener)"
    assert lines[1].startswith("sent 'hello ü {1}' as a text stream: 12 bytes, topic 'chat', stream ")
    assert lines[2] == "sent 'hello ü {1}' as a data packet: 12 bytes, topic 'chat', reliable"
    assert lines[3].startswith(f"left '{room_name}' after ") and len(lines) == 4
    assert "Traceback" not in err and "panic" not in err


async def test_an_empty_room_is_said_and_wait_gives_up_or_sees_a_bot(livekit_server, participant_factory,
                                                                     room_name):
    code, out, err = await call(livekit_server.url, room_name, "--say", "anyone?")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"joined '{room_name}' at {livekit_server.url} as rs-caller-")
    assert lines[0].endswith(" (nobody else is in the room)")
    assert lines[1] == "  (nobody receives what is sent now: join the room with a bot first, or use --wait SECONDS)"

    await participant_factory("a-person")
    code, out, err = await call(livekit_server.url, room_name, "--say", "bot?", "--wait", "1")
    assert code == 0, err
    assert out.splitlines()[1] == "no bot of ours joined within 1s; sending anyway"

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "supervisor.cli", "call", room_name, "--say", "now", "--wait", "60", cwd=REPO,
        env=cli_env({"LIVEKIT_URL": livekit_server.url}), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    assert proc.stdout is not None
    first = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    assert first.endswith("(in the room: a-person)\n"), first  # in the room, waiting: now the bot comes
    await participant_factory("rs-bot-pretend")
    rest, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err
    assert rest.decode().splitlines()[0] == "a bot joined: a-person, rs-bot-pretend"
