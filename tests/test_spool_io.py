"""The spool's file I/O: a write that fails part-way leaves the file as it was, and no spool file is opened,
renamed or truncated on the event loop's thread. Both run in a child process (a file-size limit and an audit hook
are process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from eventstore.codec import decode_entry
from eventstore.connection import connect
from eventstore.keys import Keys
from harness.util import free_port

ROOT = Path(__file__).resolve().parents[1]


def run_child(script: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


PARTIAL_WRITE = """
    import asyncio, json, os, resource, signal, sys
    from eventstore.spool import Spool, SpoolError, SpoolUnit

    def unit(n, size=0):
        return SpoolUnit("r", f"t{n}", 0, [("connected", b'{"type":"connected","seq":0}', b"d" + b"x" * size)])

    async def main(path):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        spool = Spool(path)
        await spool.append(unit(0))
        size = os.path.getsize(path)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 300, hard))  # room for part of the next write only
        try:
            await spool.append(*[unit(n, 100) for n in range(1, 6)])
            error = ""
        except SpoolError as exc:
            error = str(exc)
        after = os.path.getsize(path)
        await spool.append(unit(6))  # fits under the limit: the spool goes on
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        tokens = []
        while window := await spool.next_window(10):
            tokens += [b.token for b in window.batches]
            await spool.consumed(window)
        await spool.aclose()
        print(json.dumps({"error": error, "size": size, "after": after, "tokens": tokens}))

    asyncio.run(main(sys.argv[1]))
"""


def test_a_write_that_fails_part_way_is_cut_back(tmp_path):
    got = run_child(PARTIAL_WRITE, str(tmp_path / "s.spool"))
    assert "File too large" in got["error"]
    assert got["after"] == got["size"]
    assert got["tokens"] == ["t6"]  # t0 and t6 in one batch, under the token of the last


OFF_THE_LOOP = """
    import asyncio, json, os, sys, threading
    from eventstore.connection import connect
    from eventstore.records import ParticipantConnected
    from eventstore.spool import Spool
    from eventstore.writer import EventWriter

    dead_url, url, directory = sys.argv[1:]
    on_loop = []

    def hook(event, args):
        if threading.current_thread() is not threading.main_thread():
            return
        if event == "os.truncate" or (event in ("open", "os.rename", "os.remove") and isinstance(args[0], str)
                                      and args[0].startswith(directory)):
            on_loop.append([event, str(args[0])])

    async def write(redis_url, numbers, *, max_pending):
        redis = connect(redis_url, connect_timeout=0.5, socket_timeout=1.0)
        spool = await Spool.open(os.path.join(directory, "w.spool"), fsync=True)
        writer = EventWriter(redis, spool=spool, max_pending=max_pending, max_block=0.0)
        await writer.start()
        for n in numbers:
            await writer.append(ParticipantConnected(room="r", session="s", ts=0.0, participant_id=str(n)))
        flushed = await writer.flush(10) if redis_url == url else False
        await writer.aclose(timeout=0.5)
        await redis.aclose()
        return writer.stats, flushed

    async def main():
        sys.addaudithook(hook)
        down, _ = await write(dead_url, range(50), max_pending=5)  # memory fills, spills, then the spool takes all
        up, flushed = await write(url, range(50, 60), max_pending=5)  # replays it all, then the new ones
        print(json.dumps({"on_loop": on_loop, "spooled": down.spooled, "written": up.written, "flushed": flushed}))

    asyncio.run(main())
"""


async def test_no_spool_file_operation_runs_on_the_event_loop_thread(tmp_path, redis_url):
    dead_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: Redis is down for the first writer
    got = run_child(OFF_THE_LOOP, dead_url, redis_url, str(tmp_path))
    assert got["on_loop"] == [] and got["flushed"]
    assert got["spooled"] == 50 and got["written"] == 60
    r = connect(redis_url)
    try:
        entries = await r.xrange(Keys().events("r"))
        assert [decode_entry(f).participant_id for _, f in entries] == [str(n) for n in range(60)]
    finally:
        await r.aclose()
