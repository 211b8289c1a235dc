"""Tests of datasync.consume and of the consumer examples in the docs.

Every consumer kind (thread with queue.Queue, asyncio.Queue with async
for, callable) is run against the embedded Store and the Registry.
"""

import asyncio
import os
import pathlib
import queue
import re
import subprocess
import sys
import threading

import pytest

import datasync
from datasync import Op, consume
from datasync.events import ChangeEvent, ResyncEvent
from datasync.kvdbsync.local import BytesTxn
from datasync.syncbase import Change, Registry

#: Seconds to wait for something that should happen; only a failing test
#: waits this long.
WAIT = 10.0

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


# The iterators -------------------------------------------------------------

def test_events_stop_at_close():
    chan = queue.Queue()
    for item in ("a", "b"):
        chan.put(item)
    consume.close(chan)
    chan.put("after close")

    assert list(consume.events(chan, timeout=WAIT)) == ["a", "b"]
    assert chan.get_nowait() == "after close"


def test_events_timeout_raises():
    with pytest.raises(TimeoutError, match="0.01 s"):
        next(consume.events(queue.Queue(), timeout=0.01))


def test_events_reject_asyncio_queue():
    with pytest.raises(TypeError, match="async_events"):
        consume.events(asyncio.Queue())


def test_async_events_reject_thread_queue():
    with pytest.raises(TypeError, match="events()"):
        consume.async_events(queue.Queue())


def test_close_rejects_other_types():
    with pytest.raises(TypeError, match="list"):
        consume.close([])


def test_async_events_stop_at_close():
    async def run():
        chan = asyncio.Queue()
        for item in ("a", "b"):
            chan.put_nowait(item)
        consume.close(chan)
        return [item async for item in consume.async_events(chan)]

    assert asyncio.run(run()) == ["a", "b"]


def test_async_close_from_thread():
    async def run():
        loop = asyncio.get_running_loop()
        chan = asyncio.Queue()
        closer = threading.Thread(target=consume.close, args=(chan, loop))
        closer.start()
        async with asyncio.timeout(WAIT):
            items = [item async for item in consume.async_events(chan)]
        closer.join(timeout=WAIT)
        return items

    assert asyncio.run(run()) == []


# Consumer kinds against the Store -----------------------------------------

def test_store_thread_consumer(tmp_path):
    chan = queue.Queue()
    seen = queue.Queue()

    def work():
        for event in consume.events(chan, timeout=WAIT):
            seen.put(event)
            event.done()

    worker = threading.Thread(target=work)
    worker.start()
    with datasync.Store(tmp_path / "store") as store:
        with store.watch("agent", chan, chan, "/cfg/"):
            resync = seen.get(timeout=WAIT)
            revision = store.put("/cfg/a", b"1")
            change = seen.get(timeout=WAIT)
        consume.close(chan)
        worker.join(timeout=WAIT)

    assert isinstance(resync, ResyncEvent)
    assert change.revision == revision
    assert change.changes[0].value == b"1"
    assert not worker.is_alive()


def test_store_async_consumer(tmp_path):
    async def run(store):
        chan = asyncio.Queue()
        with store.watch("agent", chan, chan, "/cfg/"):
            revision = await asyncio.to_thread(store.put, "/cfg/a", b"1")
            received = []
            async with asyncio.timeout(WAIT):
                async for event in consume.async_events(chan):
                    received.append(event)
                    event.done()
                    if event.revision >= revision:
                        break
        return revision, received

    with datasync.Store(tmp_path / "store") as store:
        revision, received = asyncio.run(run(store))

    assert isinstance(received[0], ResyncEvent)
    assert isinstance(received[-1], ChangeEvent)
    assert received[-1].revision == revision


def test_store_raising_callable_others_receive(tmp_path, caplog):
    good = queue.Queue()

    def broken(event):
        raise RuntimeError("consumer bug")

    def fine(event):
        good.put(event)
        event.done()

    with datasync.Store(tmp_path / "store") as store:
        store.watch("broken", broken, broken, "/cfg/")
        store.watch("fine", fine, fine, "/cfg/")
        assert isinstance(good.get(timeout=WAIT), ResyncEvent)
        revision = store.put("/cfg/a", b"1")
        event = good.get(timeout=WAIT)

    assert event.revision == revision
    logged = [r for r in caplog.records if "'broken'" in r.getMessage()
              and r.exc_info is not None]
    assert logged
    assert logged[0].exc_info[0] is RuntimeError


# Consumer kinds against the Registry --------------------------------------

def test_registry_async_consumer():
    async def run():
        chan = asyncio.Queue()
        received = []

        async def take():
            async for event in consume.async_events(chan):
                received.append(event)
                event.done()

        with Registry(timeout=WAIT) as registry:
            registry.watch("agent", chan, chan, "/cfg/")
            consumer = asyncio.create_task(take())
            txn = BytesTxn(registry).put("/cfg/a", b"1")
            report = await asyncio.to_thread(txn.commit)
            consume.close(chan)
            async with asyncio.timeout(WAIT):
                await consumer
        return report, received

    report, received = asyncio.run(run())

    assert report == []
    assert [c.key for c in received[0].changes] == ["/cfg/a"]


def test_registry_on_own_loop_raises():
    async def run():
        with Registry(timeout=WAIT) as registry:
            registry.watch("agent", asyncio.Queue(), asyncio.Queue(), "/")
            registry.propagate_changes([Change("/a", Op.PUT, b"1")])

    with pytest.raises(RuntimeError, match="asyncio.to_thread"):
        asyncio.run(run())


def test_registry_thread_consumer():
    chan = queue.Queue()

    def work():
        for event in consume.events(chan, timeout=WAIT):
            event.done(ValueError(f"rejected {event.revision}"))

    worker = threading.Thread(target=work)
    worker.start()
    with Registry(timeout=WAIT) as registry:
        registry.watch("agent", chan, chan, "/")
        report = BytesTxn(registry).put("/a", b"1").commit()
    consume.close(chan)
    worker.join(timeout=WAIT)

    assert [str(e) for e in report] == ["rejected 1"]


# The documented examples ---------------------------------------------------

def documented_examples():
    """Return (title, program, expected output) for each example."""
    text = (DOCS / "consumers.md").read_text()
    pattern = re.compile(
        r"^### (?P<title>.+?)\n.*?```python\n(?P<code>.*?)```\n\s*"
        r"```text\n(?P<out>.*?)```", re.S | re.M)
    examples = []
    section = ""
    for match in pattern.finditer(text):
        heading = text.rfind("\n## ", 0, match.start())
        section = text[heading + 4:text.index("\n", heading + 4)]
        examples.append(pytest.param(
            match["code"], match["out"],
            id=f"{section} / {match['title']}"))
    return examples


def test_docs_have_six_examples():
    assert len(documented_examples()) == 6


@pytest.mark.parametrize("program, expected", documented_examples())
def test_documented_example_runs(tmp_path, program, expected):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)

    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60,
                            env=env)

    assert result.returncode == 0, result.stderr
    assert result.stdout == expected
