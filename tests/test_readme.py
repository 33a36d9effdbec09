"""The README stays true: its Python example runs, and its tables name every setting and record type."""

from __future__ import annotations

import re
import time
from pathlib import Path

import msgspec

from eventstore.connection import connect
from eventstore.records import RECORD_TYPES, DataReceived, ParticipantConnected, SessionStarted
from eventstore.writer import EventWriter
from supervisor.settings import ENV_ALIASES, SECTIONS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


async def test_readme_sdk_example_runs(redis_url, capsys):
    redis = connect(redis_url)
    writer = EventWriter(redis, producer="readme")
    await writer.start()
    now = time.time()
    await writer.append(SessionStarted(room="demo", session="s1", ts=now, pipeline="echo"))
    await writer.append(ParticipantConnected(room="demo", session="s1", ts=now, participant_id="caller"))
    await writer.append(DataReceived(room="demo", session="s1", ts=now, participant_id="caller", data=b"hi"))
    assert await writer.flush(10)
    await writer.aclose()
    await redis.aclose()
    [block] = python_blocks(README)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    await namespace["main"](redis_url)
    out = capsys.readouterr().out.splitlines()
    assert out == ["1 SessionStarted", "2 ParticipantConnected", "3 DataReceived", "['caller']"]


def test_readme_configuration_table_names_every_setting_with_its_env_var():
    rows = {line.split("|")[1].strip(): line for line in README.splitlines() if line.startswith("| `")}
    for section, struct in SECTIONS.items():
        for name in struct.__struct_fields__:
            row = rows.get(f"`{section}.{name}`")
            assert row is not None, f"{section}.{name} is missing from the README configuration table"
            env = next((k for k, v in ENV_ALIASES.items() if v == (section, name)), None)
            assert f"`{env or f'RS_{section.upper()}_{name.upper()}'}`" in row, row


def test_readme_record_table_names_every_record_type_and_field():
    envelope = set(msgspec.structs.fields(RECORD_TYPES[0].__mro__[1]) and
                   (f.name for f in msgspec.structs.fields(RECORD_TYPES[0].__mro__[1])))
    for cls in RECORD_TYPES:
        tag = cls.__struct_config__.tag
        row = next((line for line in README.splitlines() if line.startswith(f"| `{tag}` |")), None)
        assert row is not None, f"record {tag} is missing from the README"
        for field in msgspec.structs.fields(cls):
            if field.name not in envelope:
                assert f"`{field.name}`" in row, f"{tag}.{field.name} is missing from its README row"


def test_readme_cli_section_names_every_command_and_flag():
    from supervisor.cli.parser import build_parser

    section = README[README.index("### CLI"):README.index("### Python SDK")]
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in subparsers.choices.items():
        assert f"room-supervisor {name}" in section, name
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert flag in section, f"{name} {flag} is missing from the README's CLI section"
