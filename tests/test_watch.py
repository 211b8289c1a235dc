"""Watching a store: resync, ordering, slow consumers and channels."""

import asyncio
import logging
import os
import queue
import threading

import pytest

import datasync
from datasync.events import ChangeEvent, ResyncEvent
from datasync.keyval.lmdb import watch as watch_module

EVENT_TIMEOUT = 10.0


def states_by_revision(changes):
    """Return {revision: key-values after it} by replaying ``changes``."""
    states = {0: {}}
    current = {}
    for change in changes:
        if change.value is None:
            current.pop(change.key, None)
        else:
            current[change.key] = change.value
        states[change.revision] = dict(current)
    return states


def snapshot_of(resync):
    """Return {key: value} of every key-value in a resync event, then
    report it done."""
    snapshot = {kv.key: kv.value for iterator in resync.values.values()
                for kv in iterator}
    resync.done()
    return snapshot


def under(state, prefix):
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def start_watch(store, drain, name="w", *prefixes, **options):
    """Watch with one queue for both channels; return it after the
    resync, whose done() has been called."""
    chan = queue.Queue()
    store.watch(name, chan, chan, *(prefixes or ("/",)), **options)
    resync = drain(chan, 0)[0]
    assert isinstance(resync, ResyncEvent)
    return chan


# Resync then changes --------------------------------------------------------


def test_resync_then_changes_race_writers(store, drain, summary):
    # Worker 0 lets a new watch start after these numbers of its commits.
    marks = {5: 0, 60: 1, 120: 2, 180: 3}
    started = [threading.Event() for _ in marks]

    def write(worker):
        for i in range(240):
            with store.txn() as txn:
                txn.put(f"/race/{worker}/{i % 10}", b"%d-%d" % (worker, i))
                if i % 7 == 0:
                    txn.delete(f"/race/{1 - worker}/{i % 10}")
            if worker == 0 and i in marks:
                started[marks[i]].set()

    writers = [threading.Thread(target=write, args=(w,)) for w in (0, 1)]
    for writer in writers:
        writer.start()
    watchers = []
    for n, ready in enumerate(started):
        assert ready.wait(EVENT_TIMEOUT)
        prefix = "/race/" if n % 2 == 0 else "/race/0/"
        chan = queue.Queue()
        store.watch(f"racer-{n}", chan, chan, prefix)
        watchers.append((prefix, chan))
    for writer in writers:
        writer.join(timeout=60)
        assert not writer.is_alive()

    final = store.revision
    log = store.changes(0)
    states = states_by_revision(log)
    for prefix, chan in watchers:
        expected_revisions = sorted({c.revision for c in log
                                     if c.key.startswith(prefix)})
        last = max(expected_revisions)
        resync, *events = drain(chan, last, done=False)
        for event in events:
            event.done()
        assert isinstance(resync, ResyncEvent)
        start = resync.revision
        view = snapshot_of(resync)
        assert view == under(states[start], prefix)
        received = [e.revision for e in events]
        assert received == [r for r in expected_revisions if r > start]
        for event in events:
            expected = [c for c in log if c.revision == event.revision
                        and c.key.startswith(prefix)]
            assert summary(event.changes) == summary(expected)
            for change in event.changes:
                if change.value is None:
                    view.pop(change.key)
                else:
                    view[change.key] = change.value
            assert view == under(states[event.revision], prefix)
        assert view == under(states[final], prefix)


def test_resync_values_are_lazy_iterators(store, drain):
    store.put("/r/a", b"1")
    store.put("/r/b", b"2")
    store.put("/s/c", b"3")
    chan = queue.Queue()
    store.watch("lazy", chan, chan, "/r/", "/s/")
    resync = drain(chan, 3, done=False)[0]
    assert resync.revision == 3
    assert sorted(resync.values) == ["/r/", "/s/"]

    iterator = resync.values["/r/"]
    kv, all_received = iterator.get_next()
    assert (kv.key, kv.value, all_received) == ("/r/a", b"1", False)
    kv, all_received = iterator.get_next()
    assert (kv.key, kv.value, all_received) == ("/r/b", b"2", False)
    assert iterator.get_next() == (None, True)
    assert iterator.get_next() == (None, True)
    assert [kv.key for kv in resync.values["/s/"]] == ["/s/c"]
    resync.done()
    assert resync.is_done is True
    assert resync.error is None


def test_resync_read_after_done_raises(store, drain):
    store.put("/r/a", b"1")
    store.put("/r/b", b"2")
    chan = queue.Queue()
    store.watch("early", chan, chan, "/r/")
    resync = drain(chan, 2, done=False)[0]
    iterator = resync.values["/r/"]
    assert next(iterator).key == "/r/a"
    resync.done()
    with pytest.raises(datasync.StoreClosedError, match="done()"):
        next(iterator)


def test_resync_read_after_store_close_raises(store, drain):
    store.put("/r/a", b"1")
    store.put("/r/b", b"2")
    chan = queue.Queue()
    store.watch("orphan", chan, chan, "/r/")
    resync = drain(chan, 2, done=False)[0]
    iterator = resync.values["/r/"]
    assert next(iterator).key == "/r/a"
    store.close()
    with pytest.raises(datasync.StoreClosedError, match="closed"):
        next(iterator)


def test_resync_of_empty_prefixes(store, drain):
    store.put("/a", b"1")
    chan = queue.Queue()
    store.watch("empty", chan, chan, "/m/", "/x/", "/z/")
    resync = drain(chan, 1, done=False)[0]
    assert {p: list(it) for p, it in resync.values.items()} == {
        "/m/": [], "/x/": [], "/z/": []}
    resync.done()


def test_empty_prefix_watches_every_key(store, drain):
    store.put("a", b"1")
    store.put(b"\xff", b"2")
    chan = queue.Queue()
    store.watch("everything", chan, chan, "")
    resync = drain(chan, 2, done=False)[0]
    assert [kv.key_bytes for kv in resync.values[""]] == [b"a", b"\xff"]
    resync.done()
    revision = store.put("z", b"3")
    assert [c.key for c in drain(chan, revision)[-1].changes] == ["z"]


def test_overlapping_prefixes_deliver_once(store, drain):
    chan = start_watch(store, drain, "overlap", "/o/", "/o/a", "/")
    revision = store.put("/o/a/1", b"v")
    event = drain(chan, revision)[-1]
    assert [c.key for c in event.changes] == ["/o/a/1"]


def test_one_event_per_commit(store, drain, summary):
    chan = start_watch(store, drain, "txn", "/t/")
    store.put("/t/a", b"0")
    with store.txn() as txn:
        txn.put("/t/a", b"1")
        txn.put("/u/skip", b"x")
        txn.put("/t/b", b"2")
        txn.delete("/t/a")
    events = drain(chan, txn.revision)
    assert [e.revision for e in events] == [1, 2]
    assert summary(events[1].changes) == [
        (2, "put", "/t/a", b"1", b"0"),
        (2, "put", "/t/b", b"2", None),
        (2, "delete", "/t/a", None, b"1"),
    ]


# from_revision --------------------------------------------------------------


def test_watch_from_revision_skips_resync(store, drain):
    for i in range(5):
        store.put(f"/f/{i}", b"%d" % i)
    chan = queue.Queue()
    store.watch("from", chan, chan, "/f/", from_revision=2)
    events = drain(chan, 5)
    assert all(isinstance(e, ChangeEvent) for e in events)
    assert [e.revision for e in events] == [3, 4, 5]
    assert [e.changes[0].key for e in events] == ["/f/2", "/f/3", "/f/4"]

    revision = store.put("/f/5", b"5")
    assert [e.revision for e in drain(chan, revision)] == [6]


def test_watch_from_current_revision(store, drain):
    store.put("/f/a", b"1")
    chan = queue.Queue()
    store.watch("now", chan, chan, "/f/", from_revision=1)
    revision = store.put("/f/b", b"2")
    events = drain(chan, revision)
    assert [e.revision for e in events] == [2]


def test_watch_from_floor_works(store, drain):
    for i in range(4):
        store.put(f"/f/{i}", b"v")
    store.compact(2)
    chan = queue.Queue()
    store.watch("floor", chan, chan, "/f/", from_revision=2)
    assert [e.revision for e in drain(chan, 4)] == [3, 4]
    with pytest.raises(datasync.CompactedError) as caught:
        store.watch("below", queue.Queue(), queue.Queue(), "/f/",
                    from_revision=1)
    assert caught.value.oldest_revision == 3


def test_watch_from_negative_revision_raises(store):
    with pytest.raises(ValueError, match="-1"):
        store.watch("neg", queue.Queue(), queue.Queue(), "/",
                    from_revision=-1)


# Slow consumers -------------------------------------------------------------


def test_lagging_consumer_gets_every_change(open_store, drain):
    store = open_store(durable=False)
    chan = queue.Queue(maxsize=2)
    store.watch("slow", chan, chan, "/lag/")
    drain(chan, 0)

    count = 200
    writer = threading.Thread(target=lambda: [
        store.put(f"/lag/{i % 5}", b"%d" % i) for i in range(count)])
    writer.start()
    writer.join(timeout=60)
    # The writer finished every commit while the consumer read nothing.
    assert not writer.is_alive()
    assert store.revision == count
    assert chan.qsize() <= 2

    events = drain(chan, count)
    assert [e.revision for e in events] == list(range(1, count + 1))
    assert [e.changes[0].value for e in events] == [
        b"%d" % i for i in range(count)]


def test_slow_subscription_does_not_delay_others(store, drain):
    stuck = queue.Queue(maxsize=1)
    store.watch("stuck", stuck, stuck, "/")
    fast = start_watch(store, drain, "fast", "/")
    for i in range(20):
        store.put(f"/k/{i}", b"v")
    events = drain(fast, 20)
    assert [e.revision for e in events] == list(range(1, 21))
    assert stuck.qsize() == 1


# Watches with a queue of one event that is never read, commits three
# revisions, prints "ready", then waits on stdin.
STUCK_CONSUMER = """
import queue
import sys

import datasync

store = datasync.Store(sys.argv[1])
chan = queue.Queue(maxsize=1)
store.watch("stuck", chan, chan, "/")
for i in range(3):
    store.put("/k/%d" % i, b"v")
print("ready", flush=True)
sys.stdin.read()
"""


def context_switches(pid):
    """Voluntary context switches of each thread of process ``pid``."""
    counts = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    counts[task] = int(line.split()[1])
    return counts


def test_stuck_consumer_wakes_dispatcher_rarely(tmp_path, spawn_python):
    child = spawn_python(STUCK_CONSUMER, tmp_path / "store")
    assert child.readline() == "ready"
    # The dispatcher retries every 5 ms until the queue has taken nothing
    # for STALL_AFTER seconds, then every STALLED_RETRY seconds.
    with pytest.raises(queue.Empty):
        child.lines.get(timeout=watch_module.STALL_AFTER + 0.1)
    # Each retry is one wake-up of the dispatcher thread, so retrying
    # every 5 ms would make about 200 in this second.
    # Count per thread: the dispatcher's own wake-ups, not the GIL
    # hand-offs of other threads, which grow with the machine's load.
    before = context_switches(child.pid)
    with pytest.raises(queue.Empty):
        child.lines.get(timeout=1.0)
    after = context_switches(child.pid)
    busiest = max(after[t] - before.get(t, 0) for t in after)
    assert busiest < 60


def test_compaction_past_lagging_gives_resync(open_store, drain):
    store = open_store(durable=False)
    chan = queue.Queue(maxsize=2)
    store.watch("behind", chan, chan, "/c/")
    drain(chan, 0)
    for i in range(20):
        store.put(f"/c/{i % 4}", b"%d" % i)
    store.compact(store.revision)

    events = drain(chan, 20, done=False)
    resyncs = [i for i, e in enumerate(events)
               if isinstance(e, ResyncEvent)]
    assert resyncs == [len(events) - 1]
    changes = events[:-1]
    assert [e.revision for e in changes] == list(
        range(1, len(changes) + 1))
    for event in changes:
        event.done()
    resync = events[-1]
    assert resync.revision == 20
    assert snapshot_of(resync) == {
        kv.key: kv.value for kv in store.list_values("/c/")}

    revision = store.put("/c/next", b"n")
    assert [e.revision for e in drain(chan, revision)] == [21]


# Channels -------------------------------------------------------------------


def test_asyncio_queue_channel(store):
    store.put("/as/a", b"1")

    async def consume():
        chan = asyncio.Queue()
        registration = store.watch("async", chan, chan, "/as/")
        resync = await asyncio.wait_for(chan.get(), EVENT_TIMEOUT)
        keys = [kv.key for kv in resync.values["/as/"]]
        resync.done()
        loop = asyncio.get_running_loop()
        revision = await loop.run_in_executor(
            None, store.put, "/as/b", b"2")
        change = await asyncio.wait_for(chan.get(), EVENT_TIMEOUT)
        change.done()
        registration.close()
        return keys, revision, change

    keys, revision, change = asyncio.run(consume())
    assert keys == ["/as/a"]
    assert change.revision == revision
    assert [c.key for c in change.changes] == ["/as/b"]


def test_asyncio_bounded_queue_lags(open_store):
    store = open_store(durable=False)
    count = 100

    async def consume():
        chan = asyncio.Queue(maxsize=2)
        store.watch("async-slow", chan, chan, "/as/", max_pending=5)
        resync = await asyncio.wait_for(chan.get(), EVENT_TIMEOUT)
        resync.done()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: [
            store.put(f"/as/{i % 3}", b"%d" % i) for i in range(count)])
        events = []
        while len(events) < count:
            event = await asyncio.wait_for(chan.get(), EVENT_TIMEOUT)
            event.done()
            events.append(event)
        return events

    events = asyncio.run(consume())
    assert [e.revision for e in events] == list(range(1, count + 1))
    assert [e.changes[0].value for e in events] == [
        b"%d" % i for i in range(count)]


def test_asyncio_queue_outside_loop_raises(store):
    with pytest.raises(TypeError, match="event loop"):
        store.watch("noloop", asyncio.Queue(), asyncio.Queue(), "/")


def test_callable_channel(store, drain):
    received = queue.Queue()
    store.put("/cb/a", b"1")
    store.watch("callable", received.put, received.put, "/cb/")
    resync = drain(received, 1)[0]
    assert isinstance(resync, ResyncEvent)
    revision = store.put("/cb/b", b"2")
    event = drain(received, revision)[-1]
    assert [c.key for c in event.changes] == ["/cb/b"]


def test_failing_callable_logged_and_continues(store, drain, caplog):
    caplog.set_level(logging.ERROR, logger="datasync")
    received = queue.Queue()
    failed = []

    def callback(event):
        if isinstance(event, ChangeEvent) and event.revision == 1:
            failed.append(event)
            raise RuntimeError("callback broke on purpose")
        received.put(event)

    store.watch("fragile", callback, callback, "/cb/")
    drain(received, 0)
    store.put("/cb/a", b"1")
    revision = store.put("/cb/b", b"2")

    events = drain(received, revision)
    assert [e.revision for e in events] == [2]
    assert failed[0].is_done is True
    assert isinstance(failed[0].error, RuntimeError)
    records = [r for r in caplog.records
               if "callback of subscription 'fragile' failed" in
               r.getMessage()]
    assert len(records) == 1
    assert records[0].exc_info[0] is RuntimeError


def test_done_with_error_is_logged(store, drain, caplog):
    caplog.set_level(logging.ERROR, logger="datasync")
    chan = start_watch(store, drain, "reporter", "/e/")
    revision = store.put("/e/a", b"1")
    event = drain(chan, revision, done=False)[-1]
    event.done(ValueError("cannot apply"))
    event.done()
    assert isinstance(event.error, ValueError)
    messages = [r.getMessage() for r in caplog.records
                if "'reporter'" in r.getMessage()]
    assert len(messages) == 1
    assert "cannot apply" in messages[0]


def test_separate_channels_hold_changes(open_store, drain):
    store = open_store(notif_timeout=60.0)
    store.put("/h/a", b"1")
    resyncs = queue.Queue()
    changes = queue.Queue()
    store.watch("held", changes, resyncs, "/h/")
    probe = start_watch(store, drain, "probe", "/h/")
    resync = drain(resyncs, 1, done=False)[0]

    revision = store.put("/h/b", b"2")
    # Two more commits seen by the probe: by then the dispatcher has
    # finished the step that handled the held subscription's revision.
    store.put("/h/c", b"3")
    last = store.put("/h/d", b"4")
    drain(probe, last)
    assert changes.empty()

    resync.done()
    events = drain(changes, last)
    assert [e.revision for e in events] == [revision, revision + 1, last]


def test_held_changes_released_after_timeout(open_store, drain, caplog):
    caplog.set_level(logging.WARNING, logger="datasync")
    store = open_store(notif_timeout=0.2)
    resyncs = queue.Queue()
    changes = queue.Queue()
    store.watch("forgetful", changes, resyncs, "/h/")
    resync = drain(resyncs, 0, done=False)[0]
    revision = store.put("/h/a", b"1")

    events = drain(changes, revision)
    assert [e.revision for e in events] == [revision]
    assert resync.is_done is False
    assert any("'forgetful' did not call done()" in r.getMessage()
               for r in caplog.records)


# Registration ---------------------------------------------------------------


def test_register_adds_prefix(store, drain):
    chan = queue.Queue()
    registration = store.watch("reg", chan, chan, "/a/")
    drain(chan, 0)
    registration.register("reg", "/b/")
    assert registration.prefixes == ["/a/", "/b/"]
    revision = store.put("/b/x", b"1")
    event = drain(chan, revision)[-1]
    assert [c.key for c in event.changes] == ["/b/x"]


def test_register_errors(store):
    registration = store.watch("reg", queue.Queue(), queue.Queue(), "/a/")
    with pytest.raises(datasync.RegistrationError, match="'other'"):
        registration.register("other", "/b/")
    with pytest.raises(datasync.RegistrationError, match="already"):
        registration.register("reg", "/a/")
    with pytest.raises(datasync.RegistrationError, match="does not watch"):
        registration.unregister("/zzz/")


def test_unregister_stops_prefix(store, drain):
    chan = queue.Queue()
    registration = store.watch("unreg", chan, chan, "/a/", "/b/")
    drain(chan, 0)
    registration.unregister("/b/")
    assert registration.prefixes == ["/a/"]
    store.put("/b/x", b"1")
    revision = store.put("/a/y", b"2")
    events = drain(chan, revision)
    assert [e.revision for e in events] == [revision]
    assert [c.key for c in events[0].changes] == ["/a/y"]


def test_unregister_then_register_again(store, drain):
    chan = queue.Queue()
    registration = store.watch("toggle", chan, chan, "/a/", "/b/")
    drain(chan, 0)
    registration.unregister("/b/")
    store.put("/b/missed", b"1")
    registration.register("toggle", "/b/")
    revision = store.put("/b/seen", b"2")
    events = drain(chan, revision)
    assert [c.key for e in events for c in e.changes] == ["/b/seen"]


def test_registration_resync_sends_snapshot(store, drain):
    chan = queue.Queue()
    registration = store.watch("again", chan, chan, "/a/")
    drain(chan, 0)
    store.put("/a/x", b"1")
    drain(chan, 1)
    registration.register("again", "/b/")
    store.put("/b/y", b"2")
    drain(chan, 2)

    registration.resync()
    resync = drain(chan, 2, done=False)[0]
    assert isinstance(resync, ResyncEvent)
    assert resync.revision == 2
    assert snapshot_of(resync) == {"/a/x": b"1", "/b/y": b"2"}
    revision = store.put("/a/z", b"3")
    assert [e.revision for e in drain(chan, revision)] == [3]


def test_registration_close_stops_events(store, drain):
    chan = queue.Queue()
    with store.watch("closing", chan, chan, "/") as registration:
        drain(chan, 0)
    assert registration is not None
    probe = start_watch(store, drain, "probe", "/")
    revision = store.put("/a", b"1")
    drain(probe, revision)
    assert chan.empty()
    with pytest.raises(datasync.StoreClosedError):
        registration.register("closing", "/b/")


def test_duplicate_resync_name_raises(store):
    registration = store.watch("dup", queue.Queue(), queue.Queue(), "/")
    with pytest.raises(datasync.RegistrationError, match="'dup'"):
        store.watch("dup", queue.Queue(), queue.Queue(), "/other/")
    registration.close()
    store.watch("dup", queue.Queue(), queue.Queue(), "/")


def test_registration_calls_from_callback(store, drain):
    received = queue.Queue()
    holder = {}

    def callback(event):
        if isinstance(event, ChangeEvent) and event.revision == 1:
            registration = holder["registration"]
            registration.register("inside", "/b/")
            registration.unregister("/a/")
            registration.resync()
        received.put(event)

    holder["registration"] = store.watch("inside", callback, callback,
                                         "/a/")
    drain(received, 0)
    store.put("/a/1", b"1")
    assert [e.revision for e in drain(received, 1)] == [1]
    resync = drain(received, 1, done=False)[0]
    assert isinstance(resync, ResyncEvent)
    assert {p: list(it) for p, it in resync.values.items()} == {"/b/": []}
    resync.done()

    store.put("/b/1", b"2")
    store.put("/a/2", b"3")
    revision = store.put("/b/2", b"4")
    events = drain(received, revision)
    assert [e.revision for e in events] == [2, 4]
    assert [c.key for e in events for c in e.changes] == ["/b/1", "/b/2"]


def test_registration_close_from_callback(store, drain):
    received = queue.Queue()
    holder = {}

    def callback(event):
        received.put(event)
        if isinstance(event, ChangeEvent):
            holder["registration"].close()

    holder["registration"] = store.watch("self-close", callback, callback,
                                         "/")
    drain(received, 0)
    store.put("/a", b"1")
    assert [e.revision for e in drain(received, 1)] == [1]
    store.watch("self-close", queue.Queue(), queue.Queue(), "/")
