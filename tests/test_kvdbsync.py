"""Tests of KVDBSync over the embedded store, with and without resync."""

import asyncio
import gc
import os
import queue
import threading
import time
import uuid

import pytest
from google.protobuf import wrappers_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import datasync
from datasync.errors import (AggregateError, DeliveryTimeoutError,
                             InvalidOptionError, InvalidValueError,
                             NotReadyError, RegistrationError,
                             StoreClosedError)
from datasync.events import ChangeEvent, ResyncEvent
from datasync.kvdbsync import Backend, KVDBSync
from datasync.resync import Resync
from etcd_support import etcd_endpoint  # noqa: F401 (a fixture)

#: Seconds to wait for something that should happen; only a failing test
#: waits this long.
WAIT = 10.0


@pytest.fixture
def open_store(tmp_path):
    """Return a function that opens a store under tmp_path.

    Every store it opened is closed at teardown.
    """
    stores = []

    def open_(name="store", **options):
        store = datasync.Store(tmp_path / name, **options)
        stores.append(store)
        return store

    yield open_
    for store in reversed(stores):
        store.close()


@pytest.fixture
def store(open_store):
    """A new, empty store in tmp_path, without fsync per commit."""
    return open_store(durable=False)


@pytest.fixture
def closing():
    """Return a function that registers objects to close at teardown."""
    objects = []

    def add(obj):
        objects.append(obj)
        return obj

    yield add
    for obj in reversed(objects):
        obj.close()


def next_event(chan, kind=None):
    """Return the next event of ``chan``, failing after WAIT seconds."""
    try:
        event = chan.get(timeout=WAIT)
    except queue.Empty:
        pytest.fail(f"no event within {WAIT} s")
    if kind is not None:
        assert isinstance(event, kind), event
    return event


def snapshot_of(event):
    """Return {key: value} of a resync event, reading every iterator."""
    return {kv.key: kv.value for values in event.values.values()
            for kv in values}


def change_tuples(event):
    """Return (key, op, value, prev value) of each change of an event."""
    return [(c.key, c.change_type.value, c.value, c.prev_value)
            for c in event.changes]


def wait_for_revision(chan, revision):
    """Read change events of ``chan`` up to ``revision``; return them."""
    events = []
    while True:
        event = next_event(chan)
        event.done()
        events.append(event)
        if event.revision >= revision:
            return events


# Watching without an orchestrator -----------------------------------------


def test_watch_resyncs_then_sends_changes(store, closing):
    store.put("a/1", b"one")
    store.put("b/1", b"other")
    sync = closing(KVDBSync(store))
    chan = queue.Queue()

    sync.watch("sub", chan, chan, "a/")
    resync = next_event(chan, ResyncEvent)
    snapshot = snapshot_of(resync)
    resync.done()
    revision = sync.put("a/2", b"two")
    change = next_event(chan, ChangeEvent)

    assert resync.revision == 2
    assert snapshot == {"a/1": b"one"}
    assert change.revision == revision
    assert change_tuples(change) == [("a/2", "put", b"two", None)]


def test_change_carries_previous_value(store, closing):
    sync = closing(KVDBSync(store))
    chan = queue.Queue()
    sync.watch("sub", chan, chan, "a/")
    next_event(chan, ResyncEvent).done()

    sync.put("a/1", b"first")
    sync.put("a/1", b"second")
    revision = sync.delete("a/1").revision
    events = wait_for_revision(chan, revision)

    assert [change_tuples(e) for e in events] == [
        [("a/1", "put", b"first", None)],
        [("a/1", "put", b"second", b"first")],
        [("a/1", "delete", None, b"second")],
    ]


def test_protobuf_value_stored_binary(store, closing):
    sync = closing(KVDBSync(store))
    chan = queue.Queue()
    sync.watch("sub", chan, chan, "if/")
    next_event(chan, ResyncEvent).done()
    message = wrappers_pb2.StringValue(value="eth0")

    sync.put("if/eth0", message)
    change = next_event(chan, ChangeEvent).changes[0]

    assert store.get("if/eth0").value == message.SerializeToString()
    assert change.get_value(wrappers_pb2.StringValue()) == message


def test_put_raw_bytes_allowed(store, closing):
    sync = closing(KVDBSync(store))

    sync.put("raw", b"\x00\xff")

    assert store.get("raw").value == b"\x00\xff"


def test_put_text_value_rejected(store, closing):
    sync = closing(KVDBSync(store))

    with pytest.raises(InvalidValueError, match="'k'"):
        sync.put("k", "text")


def test_delete_missing_key_sends_nothing(store, closing):
    sync = closing(KVDBSync(store))
    chan = queue.Queue()
    sync.watch("sub", chan, chan, "a/")
    next_event(chan, ResyncEvent).done()

    result = sync.delete("a/missing")
    revision = sync.put("a/after", b"x")
    change = next_event(chan, ChangeEvent)

    assert not result.existed
    assert change.revision == revision
    assert change_tuples(change) == [("a/after", "put", b"x", None)]


def test_delete_with_prefix_option(store, closing):
    sync = closing(KVDBSync(store))
    sync.put("a/1", b"one")
    sync.put("a/2", b"two")
    sync.put("b/1", b"keep")
    chan = queue.Queue()
    sync.watch("sub", chan, chan, "a/", "b/")
    next_event(chan, ResyncEvent).done()

    result = sync.delete("a/", datasync.with_prefix())
    change = next_event(chan, ChangeEvent)

    assert sorted(c.key for c in result.deleted) == ["a/1", "a/2"]
    assert sorted(change_tuples(change)) == [
        ("a/1", "delete", None, b"one"), ("a/2", "delete", None, b"two")]
    assert store.list_keys("") == ["b/1"]


def test_put_with_ttl_expires(store, closing):
    sync = closing(KVDBSync(store))
    chan = queue.Queue()
    sync.watch("sub", chan, chan, "t/")
    next_event(chan, ResyncEvent).done()

    sync.put("t/1", b"short", datasync.with_ttl(0.2))
    put = next_event(chan, ChangeEvent)
    expired = next_event(chan, ChangeEvent)

    assert change_tuples(put) == [("t/1", "put", b"short", None)]
    assert change_tuples(expired) == [("t/1", "delete", None, b"short")]
    assert store.get("t/1") is None


def test_lifetime_key_deleted_on_close(tmp_path, open_store, closing):
    path = tmp_path / "store"
    observer = open_store()
    sync = KVDBSync(open_backend=lambda: datasync.Store(path))
    sync.init()
    chan = queue.Queue()
    closing(observer.watch("observer", chan, chan, "live/"))
    next_event(chan, ResyncEvent).done()

    sync.put("live/agent", b"up", datasync.with_client_lifetime_ttl())
    put = next_event(chan, ChangeEvent)
    sync.close()
    removed = next_event(chan, ChangeEvent)

    assert change_tuples(put) == [("live/agent", "put", b"up", None)]
    assert change_tuples(removed) == [("live/agent", "delete", None, b"up")]
    assert observer.get("live/agent") is None


def test_put_delete_option_rejected(store, closing):
    sync = closing(KVDBSync(store))

    with pytest.raises(InvalidOptionError):
        sync.put("k", b"v", datasync.with_prefix())


def test_delete_put_option_rejected(store, closing):
    sync = closing(KVDBSync(store))

    with pytest.raises(InvalidOptionError):
        sync.delete("k", datasync.with_ttl(1))


# Readiness ------------------------------------------------------------------


def test_put_before_connect_not_ready(closing):
    sync = closing(KVDBSync())

    with pytest.raises(NotReadyError, match="connect"):
        sync.put("k", b"v")


def test_delete_before_connect_not_ready(closing):
    sync = closing(KVDBSync())

    with pytest.raises(NotReadyError):
        sync.delete("k")


def test_init_without_opener_not_ready(closing):
    sync = closing(KVDBSync())

    with pytest.raises(NotReadyError, match="open_backend"):
        sync.init()


def test_connect_makes_writes_ready(store, closing):
    sync = closing(KVDBSync())
    before = sync.ready

    sync.connect(store)
    revision = sync.put("k", b"v")

    assert not before
    assert sync.ready
    assert store.get("k").revision == revision


def test_connect_twice_rejected(store, closing):
    sync = closing(KVDBSync(store))

    with pytest.raises(RuntimeError, match="already connected"):
        sync.connect(store)


def test_connect_non_backend_rejected(closing):
    sync = closing(KVDBSync())

    with pytest.raises(TypeError, match="backend"):
        sync.connect(object())


def test_store_is_a_backend(store):
    assert isinstance(store, Backend)


def test_watch_before_connect_waits(store, closing):
    store.put("a/1", b"one")
    sync = closing(KVDBSync())
    chan = queue.Queue()
    registration = sync.watch("sub", chan, chan, "a/")
    waiting = registration.active

    sync.connect(store)
    resync = next_event(chan, ResyncEvent)

    assert not waiting
    assert registration.active
    assert snapshot_of(resync) == {"a/1": b"one"}


def test_put_after_close_rejected(store):
    sync = KVDBSync(store)
    sync.close()

    with pytest.raises(StoreClosedError):
        sync.put("k", b"v")


def test_init_opened_store_closed(tmp_path):
    opened = []

    def open_backend():
        opened.append(datasync.Store(tmp_path / "store"))
        return opened[0]

    sync = KVDBSync(open_backend=open_backend)
    sync.init()
    sync.put("k", b"v")
    sync.close()

    with pytest.raises(StoreClosedError):
        opened[0].get("k")


def test_connected_store_stays_open(store):
    sync = KVDBSync(store)
    sync.put("k", b"v")

    sync.close()

    assert store.get("k").value == b"v"


# Registrations ----------------------------------------------------------


def test_watch_duplicate_name_rejected(store, closing):
    sync = closing(KVDBSync(store))
    sync.watch("sub", queue.Queue(), queue.Queue(), "a/")

    with pytest.raises(RegistrationError, match="'sub'"):
        sync.watch("sub", queue.Queue(), queue.Queue(), "b/")


def test_watch_without_prefix_rejected(store, closing):
    sync = closing(KVDBSync(store))

    with pytest.raises(RegistrationError, match="prefix"):
        sync.watch("sub", queue.Queue(), queue.Queue())


def test_watch_bad_channel_rejected(store, closing):
    sync = closing(KVDBSync(store))

    with pytest.raises(TypeError, match="channel"):
        sync.watch("sub", "not a channel", queue.Queue(), "a/")


def test_watch_invalid_prefix_frees_name(store, closing):
    sync = closing(KVDBSync(store))

    with pytest.raises(datasync.InvalidKeyError, match="600 bytes"):
        sync.watch("sub", queue.Queue(), queue.Queue(), "a" * 600)
    chan = queue.Queue()
    registration = sync.watch("sub", chan, chan, "a/")

    assert registration.active
    assert next_event(chan, ResyncEvent).revision == 0


def test_watch_name_free_after_close(store, closing):
    sync = closing(KVDBSync(store))
    first = sync.watch("sub", queue.Queue(), queue.Queue(), "a/")
    first.close()

    second = sync.watch("sub", queue.Queue(), queue.Queue(), "a/")

    assert second.active
    assert not first.active


def test_register_adds_prefix(store, closing):
    sync = closing(KVDBSync(store))
    chan = queue.Queue()
    registration = sync.watch("sub", chan, chan, "a/")
    next_event(chan, ResyncEvent).done()

    registration.register("sub", "b/")
    revision = sync.put("b/1", b"x")
    change = next_event(chan, ChangeEvent)

    assert registration.prefixes == ["a/", "b/"]
    assert change.revision == revision


def test_register_other_name_rejected(store, closing):
    sync = closing(KVDBSync(store))
    registration = sync.watch("sub", queue.Queue(), queue.Queue(), "a/")

    with pytest.raises(RegistrationError, match="'other'"):
        registration.register("other", "b/")


def test_unregister_unknown_prefix_rejected(store, closing):
    sync = closing(KVDBSync(store))
    registration = sync.watch("sub", queue.Queue(), queue.Queue(), "a/")

    with pytest.raises(RegistrationError, match="'b/'"):
        registration.unregister("b/")


def test_register_after_close_rejected(store, closing):
    sync = closing(KVDBSync(store))
    registration = sync.watch("sub", queue.Queue(), queue.Queue(), "a/")
    registration.close()

    with pytest.raises(StoreClosedError):
        registration.register("sub", "b/")


def test_registration_resync_sends_snapshot(store, closing):
    sync = closing(KVDBSync(store))
    chan = queue.Queue()
    registration = sync.watch("sub", chan, chan, "a/")
    next_event(chan, ResyncEvent).done()
    revision = sync.put("a/1", b"x")
    wait_for_revision(chan, revision)

    registration.resync()
    resync = next_event(chan, ResyncEvent)

    assert resync.revision == revision
    assert snapshot_of(resync) == {"a/1": b"x"}


# Channels -------------------------------------------------------------------


def test_asyncio_queue_consumer(store, closing):
    sync = closing(KVDBSync(store))
    store.put("a/1", b"one")

    async def consume():
        chan = asyncio.Queue()
        sync.watch("sub", chan, chan, "a/")
        resync = await asyncio.wait_for(chan.get(), WAIT)
        snapshot = snapshot_of(resync)
        resync.done()
        revision = sync.put("a/2", b"two")
        change = await asyncio.wait_for(chan.get(), WAIT)
        change.done()
        return snapshot, revision, change

    snapshot, revision, change = asyncio.run(consume())

    assert snapshot == {"a/1": b"one"}
    assert change.revision == revision
    assert change_tuples(change) == [("a/2", "put", b"two", None)]


def test_callable_consumer_gets_events(store, closing):
    sync = closing(KVDBSync(store))
    received = queue.Queue()

    def callback(event):
        received.put(event)
        event.done()

    sync.watch("sub", callback, callback, "a/")
    resync = next_event(received, ResyncEvent)
    revision = sync.put("a/1", b"x")
    change = next_event(received, ChangeEvent)

    assert resync.is_done
    assert change.revision == revision


def test_failing_callback_isolated(store, closing, caplog):
    sync = closing(KVDBSync(store))
    healthy = queue.Queue()
    failed = queue.Queue()

    def broken(event):
        failed.put(event)
        raise RuntimeError("cannot apply")

    sync.watch("broken", broken, broken, "a/")
    sync.watch("healthy", healthy, healthy, "a/")
    next_event(failed, ResyncEvent)
    next_event(healthy, ResyncEvent).done()
    revisions = [sync.put("a/1", b"x"), sync.put("a/2", b"y")]
    first = next_event(failed, ChangeEvent)
    # Events reach a callback one at a time, so the first one is done
    # with its error once the second arrives.
    second = next_event(failed, ChangeEvent)
    others = wait_for_revision(healthy, revisions[-1])

    assert [e.revision for e in others] == revisions
    assert second.revision == revisions[1]
    assert isinstance(first.error, RuntimeError)
    assert "cannot apply" in caplog.text


def test_separate_channels_hold_changes(open_store, closing):
    store = open_store(durable=False)
    sync = closing(KVDBSync(store, notif_timeout=WAIT))
    resyncs = queue.Queue()
    changes = queue.Queue()
    sync.watch("sub", changes, resyncs, "a/")
    resync = next_event(resyncs, ResyncEvent)
    # A plain store watch on the same prefix shows when the dispatcher
    # has passed the revision on.
    probe = queue.Queue()
    closing(store.watch("probe", probe, probe, "a/"))
    next_event(probe, ResyncEvent).done()

    revision = sync.put("a/1", b"x")
    wait_for_revision(probe, revision)
    # The change is due by now; it must stay back until done().
    with pytest.raises(queue.Empty):
        changes.get(timeout=0.5)
    resync.done()
    change = next_event(changes, ChangeEvent)

    assert change.revision == revision


# Orchestrated resync ------------------------------------------------------


@pytest.fixture
def orchestrator():
    """A Resync, closed at teardown."""
    resync = Resync(accept_timeout=2.0, ack_timeout=WAIT)
    yield resync
    resync.close()


def start_consumer(chan, log):
    """Read ``chan`` in a thread until None, calling done() on each event.

    Appends (event, snapshot) to ``log``; the snapshot of a change event
    is None.
    """
    def run():
        while True:
            event = chan.get(timeout=WAIT * 3)
            if event is None:
                return
            snapshot = None
            if isinstance(event, ResyncEvent):
                snapshot = snapshot_of(event)
            log.append((event, snapshot))
            event.done()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_orchestrator_starts_first_resync(store, orchestrator, closing):
    sync = closing(KVDBSync(store, resync=orchestrator))
    chan = queue.Queue()
    registration = sync.watch("sub", chan, chan, "a/")
    revision = sync.put("a/1", b"x")
    waiting = registration.active
    received = []
    consumer = start_consumer(chan, received)

    report = orchestrator.do_resync()
    chan.put(None)
    consumer.join(timeout=WAIT)

    assert not waiting
    assert report.acked == ["kvdbsync"]
    assert report.ok
    # The put before the first resync is part of the snapshot, not a
    # change sent ahead of it.
    assert len(received) == 1
    event, snapshot = received[0]
    assert isinstance(event, ResyncEvent)
    assert event.revision == revision
    assert snapshot == {"a/1": b"x"}


def test_orchestrator_resyncs_active_watch(store, orchestrator, closing):
    sync = closing(KVDBSync(store, resync=orchestrator))
    chan = queue.Queue()
    sync.watch("sub", chan, chan, "a/")
    received = []
    consumer = start_consumer(chan, received)
    orchestrator.do_resync()
    revision = sync.put("a/1", b"x")

    report = orchestrator.do_resync()
    chan.put(None)
    consumer.join(timeout=WAIT)

    assert report.acked == ["kvdbsync"]
    resyncs = [(e, snapshot) for e, snapshot in received
               if isinstance(e, ResyncEvent)]
    assert len(resyncs) == 2
    last, snapshot = resyncs[-1]
    assert last.revision >= revision
    assert snapshot == {"a/1": b"x"}


def test_watch_after_first_resync_immediate(store, orchestrator,
                                            closing):
    sync = closing(KVDBSync(store, resync=orchestrator))
    orchestrator.do_resync()
    chan = queue.Queue()

    registration = sync.watch("late", chan, chan, "a/")
    resync = next_event(chan, ResyncEvent)

    assert registration.active
    assert resync.revision == store.revision


def test_missing_done_reported_to_orchestrator(store, orchestrator,
                                               closing):
    sync = closing(KVDBSync(store, resync=orchestrator, notif_timeout=0.3))
    silent = queue.Queue()
    sync.watch("silent", silent, silent, "a/")

    report = orchestrator.do_resync()

    assert report.acked == ["kvdbsync"]
    error = report.errors["kvdbsync"]
    assert isinstance(error, AggregateError)
    assert len(error.exceptions) == 1
    assert isinstance(error.exceptions[0], DeliveryTimeoutError)
    assert "'silent'" in str(error.exceptions[0])


def test_resync_done_error_reported(store, orchestrator, closing):
    sync = closing(KVDBSync(store, resync=orchestrator))
    failure = ValueError("bad snapshot")

    def callback(event):
        event.done(failure if isinstance(event, ResyncEvent) else None)

    sync.watch("sub", callback, callback, "a/")
    report = orchestrator.do_resync()

    error = report.errors["kvdbsync"]
    assert list(error.exceptions) == [failure]


def test_orchestrator_name_conflict_rejected(store, orchestrator, closing):
    closing(KVDBSync(store, resync=orchestrator, name="sync"))

    with pytest.raises(RegistrationError, match="'sync'"):
        KVDBSync(store, resync=orchestrator, name="sync")


def test_close_during_resync_wait_returns(store, orchestrator):
    sync = KVDBSync(store, resync=orchestrator, notif_timeout=WAIT)
    silent = queue.Queue()
    sync.watch("silent", silent, silent, "a/")
    results = queue.Queue()
    resyncing = threading.Thread(
        target=lambda: results.put(orchestrator.do_resync()), daemon=True)
    resyncing.start()
    next_event(silent, ResyncEvent)

    closer = threading.Thread(target=sync.close, daemon=True)
    closer.start()
    closer.join(timeout=WAIT / 2)
    closed_in_time = not closer.is_alive()
    resyncing.join(timeout=WAIT / 2)

    assert closed_in_time
    assert not resyncing.is_alive()
    report = results.get(timeout=WAIT)
    assert report.not_accepted == []
    assert report.not_acked == []


def test_resync_before_connect_defers(store, orchestrator, closing):
    sync = closing(KVDBSync(resync=orchestrator))
    chan = queue.Queue()
    registration = sync.watch("sub", chan, chan, "a/")

    report = orchestrator.do_resync()
    waiting = registration.active
    sync.connect(store)
    resync = next_event(chan, ResyncEvent)

    assert report.acked == ["kvdbsync"]
    assert not waiting
    assert registration.active
    assert resync.revision == store.revision


@pytest.mark.etcd
def test_etcd_backend_plugs_in(etcd_endpoint, orchestrator,  # noqa: F811
                               closing):
    from datasync.keyval.etcd import EtcdStore

    prefix = f"/kvdbsync/{uuid.uuid4().hex[:12]}/"
    store = closing(EtcdStore(etcd_endpoint, serializer="binary"))
    sync = closing(KVDBSync(store, resync=orchestrator))
    store.put(prefix + "1", b"one")
    chan = queue.Queue()
    sync.watch("sub", chan, chan, prefix)
    received = []
    consumer = start_consumer(chan, received)

    report = orchestrator.do_resync()
    chan.put(None)
    consumer.join(timeout=WAIT)
    message = wrappers_pb2.StringValue(value="eth0")
    revision = sync.put(prefix + "2", message)
    deleted = sync.delete(prefix + "1").revision
    events = wait_for_revision(chan, deleted)

    assert report.ok
    assert len(received) == 1
    resync, snapshot = received[0]
    assert isinstance(resync, ResyncEvent)
    assert snapshot == {prefix + "1": b"one"}
    assert [event.revision for event in events] == [revision, deleted]
    assert change_tuples(events[0]) == [
        (prefix + "2", "put", message.SerializeToString(), None)]
    assert change_tuples(events[1]) == [
        (prefix + "1", "delete", None, b"one")]


# Re-entrancy ------------------------------------------------------------


def test_callback_swaps_prefix_without_deadlock(store, closing):
    sync = closing(KVDBSync(store))
    seen = queue.Queue()
    registrations = []

    def callback(event):
        if isinstance(event, ResyncEvent):
            seen.put("resync")
        else:
            keys = [c.key for c in event.changes]
            if keys == ["old/switch"]:
                registrations[0].register("sub", "new/")
                registrations[0].unregister("old/")
            seen.put(keys)
        event.done()

    registrations.append(sync.watch("sub", callback, callback, "old/"))
    assert next_event(seen) == "resync"
    sync.put("old/switch", b"x")
    switched = next_event(seen)
    sync.put("old/ignored", b"x")
    sync.put("new/seen", b"x")
    after = next_event(seen)

    assert switched == ["old/switch"]
    assert after == ["new/seen"]
    assert registrations[0].prefixes == ["new/"]


def test_callback_closes_own_registration(store, closing):
    sync = closing(KVDBSync(store))
    closed = threading.Event()
    registrations = []

    resynced = threading.Event()

    def callback(event):
        event.done()
        if isinstance(event, ResyncEvent):
            resynced.set()
        else:
            registrations[0].close()
            closed.set()

    registrations.append(sync.watch("sub", callback, callback, "a/"))
    assert resynced.wait(WAIT)
    sync.put("a/1", b"x")

    assert closed.wait(WAIT)
    assert not registrations[0].active
    assert sync.watch("sub", callback, callback, "a/").active


def test_status_callback_may_watch(store, orchestrator, closing):
    sync = closing(KVDBSync(store, resync=orchestrator))
    added = queue.Queue()

    def on_event(event):
        event.done()

    def status_callback(event):
        added.put(sync.watch("from-callback", on_event, on_event, "a/"))
        event.ack()

    orchestrator.register("other", status_callback)
    report = orchestrator.do_resync()

    assert report.acked == ["kvdbsync", "other"]
    assert next_event(added).active


# Slow consumer ------------------------------------------------------------


def test_slow_consumer_does_not_block_writer(store, closing):
    count = 200
    sync = closing(KVDBSync(store))
    writer_done = threading.Event()
    resynced = threading.Event()
    finished = threading.Event()
    processed = []

    def slow(event):
        if isinstance(event, ChangeEvent):
            # The first change waits for the writer, so every commit
            # below is made while this consumer is behind.
            writer_done.wait(WAIT)
            time.sleep(0.005)  # the work of applying one event
            processed.append(change_tuples(event) + [event.revision])
            if len(processed) == count:
                finished.set()
        else:
            resynced.set()
        event.done()

    sync.watch("slow", slow, slow, "k/")
    assert resynced.wait(WAIT)
    revisions = [sync.put("k/key", str(n).encode()) for n in range(count)]
    processed_when_written = len(processed)
    writer_done.set()

    assert finished.wait(WAIT * 3)
    assert processed_when_written < count // 2
    assert [p[-1] for p in processed] == revisions
    expected = [[("k/key", "put", str(n).encode(),
                  str(n - 1).encode() if n else None), revisions[n]]
                for n in range(count)]
    assert processed == expected


# No leaks -------------------------------------------------------------------


def open_fds():
    """Number of file descriptors this process has open.

    Garbage from earlier tests (say, a gRPC channel) may still hold a
    descriptor, so collect it before counting.
    """
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def watch_and_close(sync, name):
    """Watch with callable channels, take the resync, then close."""
    received = queue.Queue()

    def callback(event):
        event.done()
        received.put(event)

    sync.watch(name, callback, callback, "a/")
    next_event(received, ResyncEvent)
    sync.close()


def test_watchers_leave_no_threads(store):
    # The store's dispatcher thread and sockets start with its first
    # watch and live as long as the store, so start them first.
    watch_and_close(KVDBSync(store), "warm-up")
    threads = set(threading.enumerate())
    fds = open_fds()

    for number in range(100):
        watch_and_close(KVDBSync(store), f"sub-{number}")

    assert set(threading.enumerate()) - threads == set()
    assert open_fds() == fds


def test_orchestrated_watchers_leave_no_threads(store, orchestrator):
    watch_and_close(KVDBSync(store), "warm-up")
    threads = set(threading.enumerate())
    fds = open_fds()

    for number in range(100):
        sync = KVDBSync(store, resync=orchestrator, name=f"sync-{number}")
        received = queue.Queue()

        def callback(event, received=received):
            event.done()
            received.put(event)

        sync.watch("sub", callback, callback, "a/")
        report = orchestrator.do_resync()
        assert report.ok
        next_event(received, ResyncEvent)
        sync.close()

    assert set(threading.enumerate()) - threads == set()
    assert open_fds() == fds
    assert orchestrator.registrations == []


def test_owned_stores_leave_no_files(tmp_path):
    threads = set(threading.enumerate())
    fds = open_fds()

    for number in range(100):
        sync = KVDBSync(
            open_backend=lambda: datasync.Store(tmp_path / "store",
                                                durable=False))
        sync.init()
        watch_and_close(sync, f"sub-{number}")

    assert set(threading.enumerate()) - threads == set()
    assert open_fds() == fds


# Views under concurrent writes and resyncs ------------------------------

KEYS = ["a/1", "a/2", "b/1", "b/x1", "b/x2", "c/1"]

write_ops = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(KEYS),
              st.binary(max_size=3)),
    st.tuples(st.just("delete"), st.sampled_from(KEYS)),
    st.tuples(st.just("delete_prefix"), st.sampled_from(["a/", "b/",
                                                         "b/x"])),
    st.tuples(st.just("txn"), st.lists(
        st.tuples(st.sampled_from(KEYS), st.binary(max_size=3)),
        min_size=1, max_size=3)),
    st.tuples(st.just("resync")),
)


def under(key, prefixes):
    """True if ``key`` is under one of ``prefixes``."""
    return any(key.startswith(prefix) for prefix in prefixes)


class StoreModel:
    """Every state of a store, rebuilt from its revision log."""

    def __init__(self, store):
        self.changes = {}
        self.states = [{}]
        state = {}
        for change in store.changes(0):
            self.changes.setdefault(change.revision, []).append(
                (change.key, change.change_type.value, change.value,
                 change.prev_value))
        for revision in range(1, store.revision + 1):
            for key, op, value, _ in self.changes.get(revision, []):
                if op == "put":
                    state[key] = value
                else:
                    state.pop(key, None)
            self.states.append(dict(state))

    def state(self, revision, prefixes):
        """Keys and values under ``prefixes`` at ``revision``."""
        return {key: value for key, value in self.states[revision].items()
                if under(key, prefixes)}

    def changes_at(self, revision, prefixes):
        """Changes of ``revision`` under ``prefixes``, in commit order."""
        return [c for c in self.changes.get(revision, [])
                if under(c[0], prefixes)]

    def next_revision(self, after, prefixes):
        """First revision above ``after`` that changes ``prefixes``."""
        for revision in range(after + 1, len(self.states)):
            if self.changes_at(revision, prefixes):
                return revision
        return None


class Recorder:
    """What one subscriber received, in the order it applied it.

    Entries are ("resync", revision, {key: value}), ("change", revision,
    change tuples), and ("stale", revision, resync revision) for a change
    found in a separate change channel when a resync arrived.
    """

    def __init__(self, prefixes):
        self.prefixes = prefixes
        self.entries = []
        self.revision = -1
        self.cond = threading.Condition()

    def apply(self, event):
        if isinstance(event, ResyncEvent):
            entry = ("resync", event.revision, snapshot_of(event))
        else:
            entry = ("change", event.revision, change_tuples(event))
        self.record(entry, event.revision)
        event.done()

    def record(self, entry, revision):
        with self.cond:
            self.entries.append(entry)
            self.revision = max(self.revision, revision)
            self.cond.notify_all()

    def wait_for(self, revision):
        with self.cond:
            return self.cond.wait_for(lambda: self.revision >= revision,
                                      WAIT)


def consume_one_queue(chan, recorder, stop):
    while not stop.is_set():
        try:
            event = chan.get(timeout=0.05)
        except queue.Empty:
            continue
        recorder.apply(event)


def consume_two_queues(changes, resyncs, recorder, stop):
    while not stop.is_set():
        try:
            resync = resyncs.get_nowait()
        except queue.Empty:
            try:
                event = changes.get(timeout=0.01)
            except queue.Empty:
                continue
            recorder.apply(event)
            continue
        # Changes after the resync wait for its done(), so whatever the
        # change channel contains now comes from before the snapshot.
        while True:
            try:
                stale = changes.get_nowait()
            except queue.Empty:
                break
            recorder.record(("stale", stale.revision, resync.revision),
                            stale.revision)
            stale.done()
        recorder.apply(resync)


def check_view(recorder, model):
    """Replay a subscriber's entries against the model of the store."""
    prefixes = recorder.prefixes
    entries = recorder.entries
    assert entries[0][0] == "resync"
    view = {}
    last = 0
    for entry in entries:
        kind, revision, body = entry
        if kind == "stale":
            assert revision <= body
            continue
        if kind == "resync":
            assert revision >= last
            assert body == model.state(revision, prefixes)
            view = dict(body)
            last = revision
            continue
        assert revision == model.next_revision(last, prefixes)
        assert body == model.changes_at(revision, prefixes)
        for key, op, value, prev in body:
            assert prev == view.get(key)
            if op == "put":
                view[key] = value
            else:
                del view[key]
        assert view == model.state(revision, prefixes)
        last = revision


def run_writer(sync, store, orchestrator, ops, reports, errors):
    try:
        for op in ops:
            if op[0] == "put":
                sync.put(op[1], op[2])
            elif op[0] == "delete":
                sync.delete(op[1])
            elif op[0] == "delete_prefix":
                sync.delete(op[1], datasync.with_prefix())
            elif op[0] == "txn":
                with store.txn() as txn:
                    for key, value in op[1]:
                        txn.put(key, value)
            else:
                reports.append(orchestrator.do_resync())
    except Exception as exc:  # reported by the test thread
        errors.append(exc)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(writers=st.lists(st.lists(write_ops, max_size=12), min_size=1,
                        max_size=3))
def test_views_match_store_revisions(tmp_path_factory, writers):
    path = tmp_path_factory.mktemp("views") / "store"
    store = datasync.Store(path, durable=False)
    orchestrator = Resync(accept_timeout=WAIT, ack_timeout=WAIT)
    sync = KVDBSync(store, resync=orchestrator, notif_timeout=WAIT)
    stop = threading.Event()
    same_queue = Recorder(["a/"])
    callable_ = Recorder(["a/", "b/x"])
    two_queues = Recorder(["b/"])
    recorders = [same_queue, callable_, two_queues]
    consumers = []
    try:
        chan = queue.Queue()
        sync.watch("same-queue", chan, chan, *same_queue.prefixes)
        consumers.append(threading.Thread(
            target=consume_one_queue, args=(chan, same_queue, stop)))
        sync.watch("callable", callable_.apply, callable_.apply,
                   *callable_.prefixes)
        changes, resyncs = queue.Queue(), queue.Queue()
        sync.watch("two-queues", changes, resyncs, *two_queues.prefixes)
        consumers.append(threading.Thread(
            target=consume_two_queues,
            args=(changes, resyncs, two_queues, stop)))
        for consumer in consumers:
            consumer.start()

        reports = [orchestrator.do_resync()]
        errors = []
        threads = [threading.Thread(
            target=run_writer,
            args=(sync, store, orchestrator, ops, reports, errors))
            for ops in writers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=WAIT * 3)
        with store.txn() as txn:
            txn.put("a/end", b"end")
            txn.put("b/xend", b"end")
        final = txn.revision
        reached = [recorder.wait_for(final) for recorder in recorders]
    finally:
        stop.set()
        for consumer in consumers:
            consumer.join(timeout=WAIT)
        sync.close()
        orchestrator.close()
        model = StoreModel(store)
        store.close()

    assert errors == []
    assert reached == [True, True, True]
    assert [report.ok for report in reports] == [True] * len(reports)
    for recorder in recorders:
        resync_count = sum(1 for entry in recorder.entries
                           if entry[0] == "resync")
        assert resync_count >= len(reports)
        check_view(recorder, model)
