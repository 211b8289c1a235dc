"""Tests of datasync.syncbase: the Registry and its supporting pieces."""

import logging
import gc
import os
import queue
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import datasync
from datasync import Op
from datasync.errors import (AggregateError, DatasyncError,
                             DeliveryTimeoutError, InvalidKeyError,
                             InvalidValueError, RegistrationError,
                             StoreClosedError)
from datasync.syncbase import (Change, ChangeEvent, ChannelFullError,
                               DoneCallback, DoneChannel, KeyVal,
                               KeyValBytes, KVIterator, PrevRevisions,
                               Registry, ResyncEvent, aggregate_done)

#: Seconds to wait for something that should happen; only a failing test
#: waits this long.
WAIT = 10.0


class Recorder:
    """Callable channel: keeps every event on a queue, then calls done().

    ``error`` is passed to done(), so a test can make a subscriber fail.
    """

    def __init__(self, error=None):
        self.events = queue.Queue()
        self.error = error

    def __call__(self, event):
        self.events.put(event)
        event.done(self.error)

    def take(self):
        """Return the next event, failing the test if none comes."""
        try:
            return self.events.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"no event within {WAIT} s")

    def taken_all(self):
        """Return every event received so far."""
        out = []
        while not self.events.empty():
            out.append(self.events.get_nowait())
        return out


def put(key, value, revision=0):
    return Change(key, Op.PUT, value, revision=revision)


def delete(key):
    return Change(key, Op.DELETE)


def summary(event):
    return [(c.change_type, c.key, c.value, c.prev_value, c.revision)
            for c in event.changes]


def resync_summary(event):
    return {prefix: [(kv.key, kv.value) for kv in values]
            for prefix, values in event.values.items()}


@pytest.fixture
def registry():
    reg = Registry(timeout=WAIT)
    yield reg
    reg.close()


# The two scenarios of the original registry's tests -----------------------

def test_delete_never_seen_sends_nothing(registry):
    rec = Recorder()
    registry.watch("agent", rec, rec, "/cfg/")

    report = registry.propagate_changes([delete("/cfg/absent")])

    assert report == []
    assert report.revision is None
    assert rec.taken_all() == []
    assert registry.revision == 0


def test_resync_forgets_dropped_keys(registry):
    rec = Recorder()
    registry.watch("agent", rec, rec, "/cfg/")
    registry.propagate_changes([put("/cfg/a", b"a1"), put("/cfg/b", b"b1")])
    rec.take()

    assert registry.propagate_resync({"/cfg/a": b"a1"}) == []
    rec.take()
    registry.propagate_changes([put("/cfg/b", b"b2")])
    first = rec.take()
    registry.propagate_changes([put("/cfg/b", b"b3")])
    second = rec.take()

    assert first.changes[0].prev_value is None
    assert second.changes[0].prev_value == b"b2"


# Changes -------------------------------------------------------------------

def test_propagate_attaches_prev_values(registry):
    rec = Recorder()
    registry.watch("agent", rec, rec, "/cfg/")
    registry.propagate_changes([put("/cfg/a", b"1")])
    registry.propagate_changes([put("/cfg/a", b"2")])
    registry.propagate_changes([delete("/cfg/a")])

    events = [rec.take() for _ in range(3)]

    assert summary(events[0]) == [(Op.PUT, "/cfg/a", b"1", None, 1)]
    assert summary(events[1]) == [(Op.PUT, "/cfg/a", b"2", b"1", 2)]
    assert summary(events[2]) == [(Op.DELETE, "/cfg/a", None, b"2", 3)]


def test_propagate_counts_versions(registry):
    rec = Recorder()
    registry.watch("agent", rec, rec, "/")
    for value in (b"1", b"2", b"3"):
        registry.propagate_changes([put("/k", value)])
    registry.propagate_changes([delete("/k")])
    registry.propagate_changes([put("/k", b"4")])

    changes = [rec.take().changes[0] for _ in range(5)]

    assert [c.version for c in changes] == [1, 2, 3, 0, 1]
    assert [c.create_revision for c in changes] == [1, 1, 1, 1, 5]


def test_propagate_one_revision_per_call(registry):
    rec = Recorder()
    registry.watch("agent", rec, rec, "/")

    first = registry.propagate_changes([put("/a", b"1"), put("/b", b"1")])
    second = registry.propagate_changes([put("/a", b"2")])
    event = rec.take()

    assert first.revision == 1
    assert second.revision == 2
    assert event.revision == 1
    assert [c.revision for c in event.changes] == [1, 1]


def test_propagate_keeps_carried_revisions(registry):
    rec = Recorder()
    registry.watch("agent", rec, rec, "/")

    carried = registry.propagate_changes([put("/a", b"1", revision=40)])
    assigned = registry.propagate_changes([put("/a", b"2")])
    first, second = rec.take(), rec.take()

    assert carried.revision == 40
    assert first.revision == 40
    assert assigned.revision == 41
    assert second.changes[0].revision == 41


def test_propagate_one_event_per_subscription(registry):
    both = Recorder()
    only_a = Recorder()
    other = Recorder()
    registry.watch("both", both, both, "/a/", "/b/", "/a/x")
    registry.watch("only-a", only_a, only_a, "/a/")
    registry.watch("other", other, other, "/c/")

    registry.propagate_changes([put("/a/x", b"1"), put("/b/y", b"2"),
                                put("/d/z", b"3")])

    events = both.taken_all()
    assert len(events) == 1
    assert [c.key for c in events[0].changes] == ["/a/x", "/b/y"]
    assert [c.key for c in only_a.take().changes] == ["/a/x"]
    assert other.taken_all() == []


def test_propagate_rejects_non_changes(registry):
    with pytest.raises(TypeError, match="Change objects"):
        registry.propagate_changes([("/a", b"1")])


def test_propagate_rejects_bad_timeout(registry):
    with pytest.raises(ValueError, match="timeout"):
        registry.propagate_changes([put("/a", b"1")], timeout=0)


def test_get_returns_last_value(registry):
    registry.propagate_changes([put("/a", b"1")])
    registry.propagate_changes([put("/a", b"2")])

    kv = registry.get("/a")

    assert kv.value == b"2"
    assert kv.revision == 2
    assert registry.get("/missing") is None


# Resync --------------------------------------------------------------------

def test_resync_sends_prefixes_in_order(registry):
    rec = Recorder()
    registry.watch("agent", rec, rec, "/cfg/", "/state/")
    snapshot = {"/cfg/b": b"2", "/cfg/a": b"1", "/other/c": b"3"}

    report = registry.propagate_resync(snapshot)
    event = rec.take()

    assert report == []
    assert isinstance(event, ResyncEvent)
    assert event.revision == report.revision
    assert resync_summary(event) == {
        "/cfg/": [("/cfg/a", b"1"), ("/cfg/b", b"2")],
        "/state/": [],
    }


def test_resync_accepts_keyvals(registry):
    rec = Recorder()
    registry.watch("agent", rec, rec, "/")

    registry.propagate_resync([KeyVal("/a", b"1", 7, 3, 2),
                               KeyValBytes("/b", b"2")], revision=9)
    event = rec.take()
    kvs = {kv.key: kv for kv in event.values["/"]}

    assert event.revision == 9
    assert kvs["/a"].revision == 7
    assert kvs["/a"].version == 2
    assert kvs["/b"].revision == 9
    assert registry.revision == 9


def test_resync_keeps_unchanged_metadata(registry):
    registry.propagate_changes([put("/a", b"1")])
    registry.propagate_changes([put("/a", b"1")])

    registry.propagate_resync({"/a": b"1", "/b": b"2"})

    assert registry.get("/a").revision == 2
    assert registry.get("/a").version == 2
    assert registry.get("/b").revision == 3


def test_resync_change_then_put(registry):
    rec = Recorder()
    registry.watch("agent", rec, rec, "/")
    registry.propagate_changes([put("/a", b"1")])
    registry.propagate_resync({"/a": b"2"})
    registry.propagate_changes([put("/a", b"3")])

    events = [rec.take() for _ in range(3)]

    assert summary(events[2]) == [(Op.PUT, "/a", b"3", b"2", 3)]


def test_resync_rejects_bad_entries(registry):
    rec = Recorder()
    registry.watch("agent", rec, rec, "/")

    with pytest.raises(InvalidKeyError):
        registry.propagate_resync({"": b"1"})
    with pytest.raises(InvalidValueError, match="'/a'"):
        registry.propagate_resync({"/a": "text"})
    with pytest.raises(InvalidValueError, match="no value"):
        registry.propagate_resync([delete("/a")])
    assert rec.taken_all() == []


# Registrations -------------------------------------------------------------

def test_watch_duplicate_name_raises(registry):
    registry.watch("agent", Recorder(), Recorder(), "/a/")

    with pytest.raises(RegistrationError, match="'agent'"):
        registry.watch("agent", Recorder(), Recorder(), "/b/")


def test_watch_without_prefix_raises(registry):
    with pytest.raises(RegistrationError, match="prefix"):
        registry.watch("agent", Recorder(), Recorder())


def test_register_wrong_name_raises(registry):
    reg = registry.watch("agent", Recorder(), Recorder(), "/a/")

    with pytest.raises(RegistrationError, match="'other'"):
        reg.register("other", "/b/")


def test_register_twice_raises(registry):
    reg = registry.watch("agent", Recorder(), Recorder(), "/a/")

    with pytest.raises(RegistrationError, match="already watches"):
        reg.register("agent", "/a/")


def test_unregister_unknown_prefix_raises(registry):
    reg = registry.watch("agent", Recorder(), Recorder(), "/a/")

    with pytest.raises(RegistrationError, match="does not watch"):
        reg.unregister("/b/")


def test_register_adds_routing(registry):
    rec = Recorder()
    reg = registry.watch("agent", rec, rec, "/a/")

    reg.register("agent", "/b/")
    reg.unregister("/a/")
    registry.propagate_changes([put("/a/1", b"1"), put("/b/1", b"1")])

    assert [c.key for c in rec.take().changes] == ["/b/1"]
    assert reg.prefixes == ["/b/"]


def test_closed_registration_raises(registry):
    reg = registry.watch("agent", Recorder(), Recorder(), "/a/")
    reg.close()
    reg.close()

    with pytest.raises(StoreClosedError):
        reg.register("agent", "/b/")
    with pytest.raises(StoreClosedError):
        reg.unregister("/a/")


def test_closed_name_can_watch_again(registry):
    registry.watch("agent", Recorder(), Recorder(), "/a/").close()
    rec = Recorder()
    registry.watch("agent", rec, rec, "/a/")

    registry.propagate_changes([put("/a/1", b"1")])

    assert rec.take().revision == 1


def test_closed_registry_raises():
    registry = Registry()
    registry.close()

    with pytest.raises(StoreClosedError):
        registry.watch("agent", Recorder(), Recorder(), "/a/")
    with pytest.raises(StoreClosedError):
        registry.propagate_changes([put("/a", b"1")])


# Re-entrancy ---------------------------------------------------------------

def test_callback_reregisters_on_registry(registry):
    received = queue.Queue()
    holder = {}

    def callback(event):
        reg = holder["reg"]
        if event.revision == 1:
            reg.register("agent", "/new/")
            reg.unregister("/old/")
        received.put(event)
        event.done()

    holder["reg"] = registry.watch("agent", callback, callback, "/old/")

    first = registry.propagate_changes([put("/old/a", b"1")])
    second = registry.propagate_changes([put("/old/a", b"2"),
                                         put("/new/a", b"1")])

    assert first == []
    assert second == []
    assert received.get(timeout=WAIT).revision == 1
    assert [c.key for c in received.get(timeout=WAIT).changes] == ["/new/a"]
    assert holder["reg"].prefixes == ["/new/"]


def test_callback_closes_own_registration(registry):
    holder = {}

    def callback(event):
        holder["reg"].close()

    holder["reg"] = registry.watch("agent", callback, callback, "/a/")

    report = registry.propagate_changes([put("/a/1", b"1")])

    assert report == []
    with pytest.raises(StoreClosedError):
        holder["reg"].register("agent", "/b/")


def test_callback_reregisters_on_store(tmp_path):
    received = queue.Queue()
    holder = {}

    def callback(event):
        if isinstance(event, ChangeEvent) and holder["switch"]:
            holder["switch"] = False
            reg = holder["reg"]
            reg.register("agent", "/new/")
            reg.unregister("/old/")
        received.put(event)
        event.done()

    holder["switch"] = True
    with datasync.Store(tmp_path / "store") as store:
        holder["reg"] = store.watch("agent", callback, callback, "/old/")
        assert isinstance(received.get(timeout=WAIT),
                          ResyncEvent)
        first = store.put("/old/a", b"1")
        assert received.get(timeout=WAIT).revision == first
        store.put("/old/a", b"2")
        last = store.put("/new/a", b"1")

        event = received.get(timeout=WAIT)

        assert event.revision == last
        assert [c.key for c in event.changes] == ["/new/a"]
        assert holder["reg"].prefixes == ["/new/"]


# done() and failing consumers ----------------------------------------------

def test_done_timeout_reported_as_error():
    registry = Registry(timeout=0.2)
    chan = queue.Queue()
    registry.watch("silent", chan, chan, "/")

    report = registry.propagate_changes([put("/a", b"1")])
    registry.close()

    assert len(report) == 1
    assert isinstance(report[0], DeliveryTimeoutError)
    assert report[0].resync_name == "silent"
    assert report[0].revision == 1
    assert "'silent'" in str(report[0])


def test_done_timeout_per_call(registry):
    chan = queue.Queue()
    registry.watch("silent", chan, chan, "/")

    report = registry.propagate_resync({"/a": b"1"}, timeout=0.2)

    assert [type(e) for e in report] == [DeliveryTimeoutError]
    assert "resync at revision 1" in str(report[0])


def test_done_error_is_returned(registry):
    failure = ValueError("cannot apply")
    registry.watch("failing", Recorder(failure), Recorder(failure), "/")
    registry.watch("fine", Recorder(), Recorder(), "/")

    report = registry.propagate_changes([put("/a", b"1")])

    assert report == [failure]
    assert "'failing'" in report[0].__notes__[-1]


def test_raising_consumer_logged_others_receive(registry, caplog):
    def broken(event):
        raise RuntimeError("consumer bug")

    good = Recorder()
    registry.watch("broken", broken, broken, "/")
    registry.watch("good", good, good, "/")

    with caplog.at_level(logging.ERROR, logger="datasync.channels"):
        report = registry.propagate_changes([put("/a", b"1")])

    assert [str(e) for e in report] == ["consumer bug"]
    assert good.take().revision == 1
    logged = [r for r in caplog.records if "'broken'" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info[0] is RuntimeError


def test_full_channel_reported(registry):
    chan = queue.Queue()
    registry.watch("stuck", chan, chan, "/", max_pending=1)

    first = registry.propagate_changes([put("/a", b"1")], timeout=0.1)
    second = registry.propagate_changes([put("/a", b"2")], timeout=0.1)

    assert [type(e) for e in first] == [DeliveryTimeoutError]
    assert [type(e) for e in second] == [ChannelFullError]
    assert chan.qsize() == 1


def test_close_stops_waiting_for_done(registry):
    chan = queue.Queue()
    reg = registry.watch("leaving", chan, chan, "/")
    result = queue.Queue()
    worker = threading.Thread(target=lambda: result.put(
        registry.propagate_changes([put("/a", b"1")], timeout=60)))
    worker.start()

    chan.get(timeout=WAIT)
    reg.close()
    worker.join(timeout=WAIT)

    assert result.get(timeout=WAIT) == []


def test_late_done_is_ignored():
    registry = Registry(timeout=0.1)
    chan = queue.Queue()
    registry.watch("late", chan, chan, "/")
    report = registry.propagate_changes([put("/a", b"1")])

    chan.get(timeout=WAIT).done(ValueError("too late"))
    registry.close()

    assert [type(e) for e in report] == [DeliveryTimeoutError]


def test_concurrent_propagations_keep_order(registry):
    rec = Recorder()
    registry.watch("agent", rec, rec, "/")

    def write(writer):
        for i in range(25):
            registry.propagate_changes([put(f"/{writer}", b"%d" % i)])

    writers = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(timeout=WAIT)
    revisions = [event.revision for event in rec.taken_all()]

    assert revisions == list(range(1, 101))


# No leaks ------------------------------------------------------------------

def join_callback_threads():
    for thread in threading.enumerate():
        if thread.name.startswith("datasync-callback-"):
            thread.join(timeout=WAIT)


def test_hundred_watchers_leave_no_threads():
    join_callback_threads()
    threads_before = threading.active_count()
    gc.collect()
    fds_before = len(os.listdir("/proc/self/fd"))
    registry = Registry(timeout=WAIT)
    recorders = [Recorder() for _ in range(100)]
    registrations = [registry.watch(f"agent-{i}", rec, rec, f"/{i}/", "/all")
                     for i, rec in enumerate(recorders)]

    report = registry.propagate_changes([put("/all", b"1")])
    for registration in registrations:
        registration.close()
    registry.close()
    join_callback_threads()

    assert report == []
    assert all(rec.take().revision == 1 for rec in recorders)
    assert threading.active_count() == threads_before
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == fds_before


# A model check -------------------------------------------------------------

operations = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from(["/a/1", "/a/2", "/b/1"]),
              st.binary(min_size=1, max_size=3)),
    st.tuples(st.just("delete"), st.sampled_from(["/a/1", "/a/2", "/b/1"]),
              st.none()),
    st.tuples(st.just("resync"),
              st.dictionaries(st.sampled_from(["/a/1", "/a/2", "/b/1"]),
                              st.binary(min_size=1, max_size=3)),
              st.none()),
), max_size=20)


@settings(max_examples=60, deadline=None)
@given(operations)
def test_subscriber_view_matches_model(ops):
    registry = Registry(timeout=WAIT)
    rec = Recorder()
    registry.watch("agent", rec, rec, "/a/")
    model = {}
    view = {}
    last_revision = 0

    for op, key, value in ops:
        if op == "put":
            prev = model.get(key)
            model[key] = value
            registry.propagate_changes([put(key, value)])
        elif op == "delete":
            prev = model.pop(key, None)
            registry.propagate_changes([delete(key)])
        else:
            model = dict(key)
            registry.propagate_resync(model)
        for event in rec.taken_all():
            assert event.revision > last_revision
            last_revision = event.revision
            if isinstance(event, ResyncEvent):
                view = {kv.key: kv.value for kv in event.values["/a/"]}
                continue
            for change in event.changes:
                assert change.prev_value == prev
                if change.change_type is Op.PUT:
                    view[change.key] = change.value
                else:
                    del view[change.key]
        expected = {k: v for k, v in model.items() if k.startswith("/a/")}
        assert view == expected
    registry.close()


# PrevRevisions, values and done() helpers ---------------------------------

def test_prev_revisions_put_and_delete():
    prev = PrevRevisions()

    assert prev.put("/a", b"1", 4) is None
    assert prev.put("/a", b"2", 6).value == b"1"
    entry = prev.get("/a")
    assert (entry.revision, entry.create_revision, entry.version) == (6, 4, 2)
    assert prev.delete("/a").value == b"2"
    assert prev.delete("/a") is None
    assert len(prev) == 0


def test_prev_revisions_replace():
    prev = PrevRevisions([KeyVal("/a", b"1", 1)])

    prev.replace([KeyVal("/b", b"2", 2)])

    assert "/a" not in prev
    assert prev.keys() == [b"/b"]
    assert [kv.value for kv in prev] == [b"2"]


def test_keyvalbytes_requires_bytes():
    assert KeyValBytes("/a", bytearray(b"x")).value == b"x"
    with pytest.raises(TypeError, match="'/a'"):
        KeyValBytes("/a", None)


def test_kviterator_get_next():
    it = KVIterator([KeyVal("/a", b"1")])

    kv, last = it.get_next()

    assert kv.key == "/a"
    assert last is False
    assert it.get_next() == (None, True)


def test_done_channel_puts_first_error():
    chan = DoneChannel()
    failure = ValueError("bad")
    event = ChangeEvent([], 1, chan)

    event.done(failure)
    chan.done(None)

    assert chan.chan.get_nowait() is failure
    assert chan.chan.empty()


def test_done_callback_calls_once():
    calls = []
    callback = DoneCallback(calls.append)

    callback.done()
    callback.done(ValueError("ignored"))

    assert calls == [None]
    assert callback.is_done


def test_aggregate_done_reports_every_error():
    reports = DoneChannel()
    aggregate = aggregate_done(reports, 3)
    first, second = ValueError("one"), KeyError("two")

    aggregate.parts[2].done(second)
    aggregate.parts[0].done(first)
    assert reports.chan.empty()
    aggregate.parts[1].done()

    error = reports.chan.get_nowait()
    assert isinstance(error, AggregateError)
    assert list(error.exceptions) == [first, second]


def test_aggregate_done_success():
    calls = []
    aggregate = aggregate_done(calls.append, 2)

    for part in aggregate.parts:
        ChangeEvent([], 1, part).done()

    assert calls == [None]


def test_aggregate_done_zero_parts():
    calls = []

    aggregate_done(calls.append, 0)

    assert calls == [None]


def test_aggregate_done_wraps_non_exceptions():
    calls = []
    aggregate = aggregate_done(calls.append, 1)

    aggregate.parts[0].done("disk full")

    assert isinstance(calls[0].exceptions[0], DatasyncError)
    assert "disk full" in str(calls[0].exceptions[0])


def test_list_values_under_prefix():
    registry = Registry(timeout=WAIT)
    registry.propagate_changes([put("/a/1", b"1"), put("/a/2", b"2"),
                                put("/b/1", b"3")])

    revision, values = registry.list_values("/a/")
    registry.close()

    assert revision == 1
    assert [(kv.key, kv.value) for kv in values] == [("/a/1", b"1"),
                                                      ("/a/2", b"2")]
