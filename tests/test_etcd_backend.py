"""Tests of the etcd backend alone: values, transactions, recovery.

The tests that restart etcd or cut connections start an etcd of their
own (private_etcd); the others use the session's etcd (etcd_endpoint).
"""

import asyncio
import json
import logging
import queue
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import datasync
from datasync import Op
from datasync.events import ChangeEvent, ResyncEvent
from datasync.examples import netagent_pb2
from datasync.keyval.etcd import (BINARY, EtcdStore, EtcdUnavailableError,
                                  Serializer, TooManyOperationsError)
from datasync.keyval.etcd import etcd_messages_pb2 as pb
from datasync.keyval.etcd.client import (TO_END, Client, parse_endpoints,
                                         prefix_end)
from datasync.keyval.etcd.txn import DELETE, PUT, Plan
from etcd_support import (Proxy, etcd_endpoint,  # noqa: F401 (fixtures)
                          free_port, private_etcd)

pytestmark = pytest.mark.etcd

#: Seconds to wait for an event that should come; only a failing test
#: waits this long.
EVENT_TIMEOUT = 20.0


@pytest.fixture
def open_store(etcd_endpoint):
    """Return a function that opens an EtcdStore on the session's etcd.

    ``open_store(endpoint=None, **options)``; every store it opened is
    closed at teardown.
    """
    stores = []

    def open_(endpoint=None, **options):
        store = EtcdStore(endpoint or etcd_endpoint, **options)
        stores.append(store)
        return store

    yield open_
    for store in reversed(stores):
        store.close()


@pytest.fixture
def store(open_store):
    """An EtcdStore on the session's etcd."""
    return open_store()


@pytest.fixture
def prefix():
    """A key prefix that no other test uses."""
    return f"/etcd-backend/{uuid.uuid4().hex[:12]}/"


def next_event(chan, timeout=EVENT_TIMEOUT):
    """Return the next event of ``chan``, marked done()."""
    try:
        event = chan.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"no event within {timeout} s")
    event.done()
    return event


def view_of(resync):
    """Return {key: value} of a resync event."""
    return {kv.key: kv.value for values in resync.values.values()
            for kv in values}


def raw_value(endpoint, key):
    """Return the bytes etcd stores under ``key``, read without datasync's
    value handling."""
    client = Client(endpoint, 10.0)
    try:
        response = client.kv.Range(pb.RangeRequest(key=key.encode()),
                                   timeout=10.0)
    finally:
        client.close()
    return response.kvs[0].value


class LogWatcher(logging.Handler):
    """Counts the datasync.etcd records whose message contains a text,
    and lets a test wait until a count is reached."""

    def __init__(self, text):
        super().__init__(logging.DEBUG)
        self.text = text
        self.count = 0
        self.times = []
        self._cond = threading.Condition()

    def emit(self, record):
        if self.text in record.getMessage():
            with self._cond:
                self.count += 1
                self.times.append(time.process_time())
                self._cond.notify_all()

    def wait_for(self, count, timeout=EVENT_TIMEOUT):
        with self._cond:
            if not self._cond.wait_for(lambda: self.count >= count,
                                       timeout):
                pytest.fail(f"{count} log records with {self.text!r} "
                            f"expected within {timeout} s, got "
                            f"{self.count}")


@pytest.fixture
def etcd_log():
    """Return a function that starts counting datasync.etcd log records
    containing a text; it returns the LogWatcher."""
    logger = logging.getLogger("datasync.etcd")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    watchers = []

    def watch_log(text):
        handler = LogWatcher(text)
        logger.addHandler(handler)
        watchers.append(handler)
        return handler

    yield watch_log
    for handler in watchers:
        logger.removeHandler(handler)
    logger.setLevel(level)


# Key ranges and endpoints --------------------------------------------------

@pytest.mark.parametrize("prefix_bytes, end", [
    (b"/a/", b"/a0"),
    (b"a", b"b"),
    (b"a\xff", b"b"),
    (b"a\xff\xff", b"b"),
    (b"\xff", TO_END),
    (b"\xff\xff", TO_END),
    (b"", TO_END),
])
def test_prefix_end_cases(prefix_bytes, end):
    assert prefix_end(prefix_bytes) == end


@pytest.mark.parametrize("endpoints, target", [
    ("127.0.0.1:2379", "127.0.0.1:2379"),
    ("http://127.0.0.1:23790/", "127.0.0.1:23790"),
    ("localhost", "localhost:2379"),
    ("[::1]:2379", "[::1]:2379"),
    ("10.0.0.1:1,10.0.0.2:2", "ipv4:10.0.0.1:1,10.0.0.2:2"),
    (["::1", "[::2]:5"], "ipv6:[::1]:2379,[::2]:5"),
])
def test_parse_endpoints_cases(endpoints, target):
    assert parse_endpoints(endpoints)[0] == target


@pytest.mark.parametrize("endpoints", [
    "", "https://127.0.0.1:2379", "host:port", "127.0.0.1:0",
    "a.example:1,b.example:2", "10.0.0.1:1,[::1]:2",
])
def test_parse_endpoints_invalid_raises(endpoints):
    with pytest.raises(ValueError):
        parse_endpoints(endpoints)


def test_unreachable_endpoint_raises():
    started = time.monotonic()
    with pytest.raises(EtcdUnavailableError) as info:
        EtcdStore(f"127.0.0.1:{free_port()}", dial_timeout=0.5)
    assert "unavailable" in str(info.value)
    assert time.monotonic() - started < EVENT_TIMEOUT


# Transaction plans ---------------------------------------------------------

def test_plan_put_twice_keeps_last():
    plan = Plan()
    plan.put(b"k", b"1", None)
    plan.put(b"j", b"2", None)
    plan.put(b"k", b"3", 5)
    assert plan.ops == [(PUT, b"j", None, b"2", None),
                        (PUT, b"k", None, b"3", 5)]


def test_plan_put_splits_deleted_range():
    plan = Plan()
    plan.delete(b"/d/", b"/d0")
    plan.put(b"/d/m", b"1", None)
    assert plan.ops == [(DELETE, b"/d/", b"/d/m", None, None),
                        (DELETE, b"/d/m\0", b"/d0", None, None),
                        (PUT, b"/d/m", None, b"1", None)]


def test_plan_put_drops_single_delete():
    plan = Plan()
    plan.delete(b"k")
    plan.put(b"k", b"1", None)
    assert plan.ops == [(PUT, b"k", None, b"1", None)]


def test_plan_put_at_range_edges():
    plan = Plan()
    plan.delete(b"a", TO_END)
    plan.put(b"a", b"1", None)
    assert plan.ops == [(DELETE, b"a\0", TO_END, None, None),
                        (PUT, b"a", None, b"1", None)]


def test_plan_delete_drops_covered_puts():
    plan = Plan()
    plan.put(b"/d/a", b"1", None)
    plan.put(b"/e", b"2", None)
    plan.delete(b"/d/", b"/d0")
    assert plan.ops == [(PUT, b"/e", None, b"2", None),
                        (DELETE, b"/d/", b"/d0", None, None)]


def test_txn_put_inside_deleted_prefix(store, prefix):
    store.put(prefix + "d/a", b"1")
    store.put(prefix + "d/b", b"2")
    with store.txn() as txn:
        txn.delete(prefix + "d/", datasync.with_prefix())
        txn.put(prefix + "d/b", b"new")
        txn.put(prefix + "d/c", b"3")
    assert [c.key for c in txn.changes] == [prefix + "d/a"]
    listing = store.list_values(prefix)
    assert [(kv.key, kv.value) for kv in listing] == [
        (prefix + "d/b", b"new"), (prefix + "d/c", b"3")]
    assert {kv.revision for kv in listing} == {txn.revision}


# Random transactions give the same keys and values on both backends.
_KEYS = ["a", "a/x", "a/y", "b", "b/x"]
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(_KEYS),
                  st.binary(max_size=3)),
        st.tuples(st.just("delete"), st.sampled_from(_KEYS)),
        st.tuples(st.just("delete_prefix"), st.sampled_from(["a", "b"]))),
    min_size=1, max_size=6)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(txns=st.lists(_OPS, min_size=1, max_size=4))
def test_txns_match_embedded_store(store, tmp_path_factory, txns):
    prefix = f"/etcd-model/{uuid.uuid4().hex[:12]}/"
    embedded = datasync.Store(tmp_path_factory.mktemp("model"))
    try:
        for ops in txns:
            for target in (embedded, store):
                with target.txn() as txn:
                    for op in ops:
                        if op[0] == "put":
                            txn.put(prefix + op[1], op[2])
                        elif op[0] == "delete":
                            txn.delete(prefix + op[1])
                        else:
                            txn.delete(prefix + op[1],
                                       datasync.with_prefix())
            expected = [(kv.key, kv.value)
                        for kv in embedded.list_values(prefix)]
            assert [(kv.key, kv.value)
                    for kv in store.list_values(prefix)] == expected
    finally:
        embedded.close()


def test_txn_above_etcd_limit_raises(store, prefix):
    with pytest.raises(TooManyOperationsError) as info:
        with store.txn() as txn:
            for i in range(129):
                txn.put(prefix + str(i), b"x")
    assert "--max-txn-ops" in str(info.value)
    assert store.list_keys(prefix) == []


def test_value_above_limit_raises(open_store, prefix):
    store = open_store(max_value_size=100)
    with pytest.raises(datasync.InvalidValueError):
        store.put(prefix + "a", b"x" * 101)
    unlimited = open_store(max_value_size=1 << 30)
    with pytest.raises(datasync.InvalidValueError) as info:
        unlimited.put(prefix + "a", b"x" * (2 << 20))
    assert "--max-request-bytes" in str(info.value)


# Values --------------------------------------------------------------------

def test_json_serializer_is_default(store, prefix, etcd_endpoint):
    sent = netagent_pb2.Interface(name="eth0", mtu=1500,
                                  ip_addresses=["10.0.0.1/24"])
    store.put(prefix + "if", sent)
    stored = raw_value(etcd_endpoint, prefix + "if")
    assert stored == (b'{"name":"eth0","mtu":1500,'
                      b'"ipAddresses":["10.0.0.1/24"]}')
    kv = store.get(prefix + "if")
    assert kv.value == stored
    assert kv.get_value(netagent_pb2.Interface()) == sent


@pytest.mark.skipif(shutil.which("etcdctl") is None,
                    reason="etcdctl (Debian's etcd-client) not installed")
def test_json_value_readable_by_etcdctl(store, prefix, etcd_endpoint):
    store.put(prefix + "if", netagent_pb2.Interface(name="eth1"))
    output = subprocess.run(
        ["etcdctl", "--endpoints", etcd_endpoint, "get",
         "--print-value-only", prefix + "if"],
        env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        capture_output=True, check=True, timeout=30).stdout
    assert output.strip() == b'{"name":"eth1"}'


def test_binary_serializer_stores_wire(open_store, prefix, etcd_endpoint):
    store = open_store(serializer="binary")
    sent = netagent_pb2.Interface(name="eth0", mtu=1500)
    store.put(prefix + "if", sent)
    assert raw_value(etcd_endpoint, prefix + "if") == \
        sent.SerializeToString()
    assert store.get(prefix + "if").get_value(
        netagent_pb2.Interface()) == sent
    assert store.serializer is BINARY


def test_bytes_stored_as_is(store, prefix, etcd_endpoint):
    store.put(prefix + "raw", b"\x00not json")
    assert raw_value(etcd_endpoint, prefix + "raw") == b"\x00not json"
    assert store.get(prefix + "raw").value == b"\x00not json"


def test_invalid_json_raises_parse_error(store, prefix):
    store.put(prefix + "raw", b"\x00not json")
    with pytest.raises(datasync.ValueParseError) as info:
        store.get(prefix + "raw").get_value(netagent_pb2.Interface())
    assert prefix + "raw" in str(info.value)


def test_custom_serializer_used(open_store, prefix, etcd_endpoint):
    class Upper(Serializer):
        name = "upper-text"

        def encode(self, message):
            return message.name.upper().encode()

        def decode(self, data, message):
            message.Clear()
            message.name = data.decode().lower()

    store = open_store(serializer=Upper())
    store.put(prefix + "if", netagent_pb2.Interface(name="eth0"))
    assert raw_value(etcd_endpoint, prefix + "if") == b"ETH0"
    got = store.get(prefix + "if").get_value(netagent_pb2.Interface())
    assert got.name == "eth0"


def test_unknown_serializer_raises(etcd_endpoint):
    with pytest.raises(ValueError):
        EtcdStore(etcd_endpoint, serializer="yaml")


def test_stat_reports_revision_keys(store, prefix):
    revision = store.put(prefix + "a", b"1")
    stat = store.stat()
    assert stat["revision"] >= revision
    assert stat["keys"] >= 1
    assert stat["serializer"] == "json"
    assert stat["compacted_revision"] <= stat["revision"]


# Channels ------------------------------------------------------------------

def test_asyncio_queue_channel(store, prefix):
    async def run():
        chan = asyncio.Queue()
        registration = store.watch("async", chan, chan, prefix)
        resync = await asyncio.wait_for(chan.get(), EVENT_TIMEOUT)
        resync.done()
        revision = await asyncio.to_thread(store.put, prefix + "a", b"1")
        event = await asyncio.wait_for(chan.get(), EVENT_TIMEOUT)
        event.done()
        registration.close()
        return resync, revision, event

    resync, revision, event = asyncio.run(run())
    assert isinstance(resync, ResyncEvent)
    assert event.revision == revision


def test_callback_channel_gets_events(store, prefix):
    received = queue.Queue()
    registration = store.watch("callback", received.put, received.put,
                               prefix)
    assert isinstance(next_event(received), ResyncEvent)
    revision = store.put(prefix + "a", b"1")
    assert next_event(received).revision == revision
    registration.close()


# Recovery ------------------------------------------------------------------

def collect(chan, until_revision):
    """Read events until a change event reaches ``until_revision``."""
    events = []
    while True:
        event = next_event(chan)
        events.append(event)
        if isinstance(event, ChangeEvent) and \
                event.revision >= until_revision:
            return events


def test_slow_consumer_gets_every_change(store, prefix):
    chan = queue.Queue(maxsize=2)
    registration = store.watch("slow", chan, chan, prefix)
    next_event(chan)
    written = [store.put(prefix + f"k{i}", str(i).encode())
               for i in range(30)]
    events = collect(chan, written[-1])
    assert [e.revision for e in events] == written
    assert [e.changes[0].value for e in events] == [
        str(i).encode() for i in range(30)]
    registration.close()


def test_slow_consumer_compacted_gets_resync(open_store, prefix):
    writer, watcher = open_store(), open_store()
    chan = queue.Queue(maxsize=3)
    registration = watcher.watch("slow", chan, chan, prefix)
    next_event(chan)
    written = [writer.put(prefix + f"k{i % 4}", str(i).encode())
               for i in range(12)]
    writer.delete(prefix + "k0")
    writer.compact(writer.revision)
    events = []
    while not isinstance(events[-1:] and events[-1], ResyncEvent):
        chan_event = chan.get(timeout=EVENT_TIMEOUT)
        if isinstance(chan_event, ResyncEvent):
            resync_view = view_of(chan_event)
        chan_event.done()
        events.append(chan_event)
    changes, resync = events[:-1], events[-1]
    assert [e.revision for e in changes] == written[:len(changes)]
    assert resync.revision >= written[-1]
    assert resync_view == {kv.key: kv.value
                           for kv in writer.list_values(prefix)}
    later = writer.put(prefix + "after", b"x")
    assert next_event(chan).revision == later
    registration.close()


def test_missing_prev_value_sends_resync(open_store, prefix):
    writer, watcher = open_store(), open_store()
    first = writer.put(prefix + "k", b"v0")
    chan = queue.Queue(maxsize=1)
    registration = watcher.watch("prev", chan, chan, prefix,
                                 from_revision=first)
    revisions = [writer.put(prefix + "k", f"v{i}".encode())
                 for i in range(1, 4)]
    # Compacting to the last revision drops every older value of the key,
    # so a watcher that resumes there gets its change without the
    # previous value.
    writer.compact(revisions[-1])
    events = []
    while not events or not isinstance(events[-1], ResyncEvent):
        event = chan.get(timeout=EVENT_TIMEOUT)
        if isinstance(event, ResyncEvent):
            resync_view = view_of(event)
        event.done()
        events.append(event)
    for event in events[:-1]:
        for change in event.changes:
            assert change.prev_value is not None
    assert resync_view == {prefix + "k": b"v3"}
    later = writer.put(prefix + "k", b"v4")
    event = next_event(chan)
    assert event.revision == later
    assert event.changes[0].prev_value == b"v3"
    registration.close()


def test_restart_resumes_without_loss(private_etcd):
    watcher = EtcdStore(private_etcd.endpoint, resync_on_reconnect=False)
    writer = EtcdStore(private_etcd.endpoint)
    chan = queue.Queue()
    registration = watcher.watch("restart", chan, chan, "/r/")
    assert isinstance(next_event(chan), ResyncEvent)

    before = [writer.put(f"/r/{i % 3}", f"a{i}".encode())
              for i in range(20)]
    writer.close()
    # Some of these changes may not have reached the watcher yet.
    private_etcd.kill()
    private_etcd.start()
    writer = EtcdStore(private_etcd.endpoint)
    after = [writer.put(f"/r/{i % 3}", f"b{i}".encode())
             for i in range(20)]

    events = collect(chan, after[-1])
    assert all(isinstance(e, ChangeEvent) for e in events)
    assert [e.revision for e in events] == before + after
    prev = {}
    for event in events:
        change = event.changes[0]
        assert change.prev_value == prev.get(change.key)
        prev[change.key] = change.value

    registration.close()
    writer.close()
    watcher.close()


def test_restart_sends_resync_once_back(private_etcd):
    watcher = EtcdStore(private_etcd.endpoint)
    writer = EtcdStore(private_etcd.endpoint)
    chan = queue.Queue()
    registration = watcher.watch("restart", chan, chan, "/r/")
    first = chan.get(timeout=EVENT_TIMEOUT)
    view = view_of(first)
    first.done()

    before = [writer.put(f"/r/{i % 3}", f"a{i}".encode())
              for i in range(10)]
    writer.close()
    private_etcd.kill()
    private_etcd.start()
    writer = EtcdStore(private_etcd.endpoint)
    after = [writer.put(f"/r/{i % 3}", f"b{i}".encode())
             for i in range(10)]

    changes, resyncs = [], []
    # A resync may come after the last put, which then is no change.
    while max(changes[-1:] + resyncs[-1:] + [0]) < after[-1]:
        event = chan.get(timeout=EVENT_TIMEOUT)
        if isinstance(event, ResyncEvent):
            resyncs.append(event.revision)
            view = view_of(event)
        else:
            changes.append(event.revision)
            for change in event.changes:
                view[change.key] = change.value
        event.done()

    assert len(resyncs) == 1
    assert resyncs[0] >= before[-1]
    assert changes == sorted(set(changes))
    assert [r for r in changes if r > resyncs[0]] == [
        r for r in after if r > resyncs[0]]
    delivered_before = [r for r in changes if r <= before[-1]]
    assert delivered_before == before[:len(delivered_before)]
    assert view == {kv.key: kv.value for kv in writer.list_values("/r/")}

    registration.close()
    writer.close()
    watcher.close()


def test_compacted_while_cut_gets_resync(private_etcd, etcd_log):
    proxy = Proxy(private_etcd.endpoint)
    watcher = EtcdStore(proxy.endpoint, resync_on_reconnect=False)
    writer = EtcdStore(private_etcd.endpoint)
    chan = queue.Queue()
    registration = watcher.watch("cut", chan, chan, "/c/")
    next_event(chan)
    writer.put("/c/a", b"1")
    seen = writer.put("/c/b", b"2")
    assert collect(chan, seen)[-1].revision == seen

    lost = etcd_log("lost the connection")
    retries = etcd_log("still unreachable")
    proxy.cut()
    lost.wait_for(1)
    writer.put("/c/a", b"changed")
    writer.delete("/c/b")
    writer.put("/c/c", b"3")
    writer.compact(writer.revision)
    # From the 2nd to the 5th failed attempt the back-off waits 0.2 +
    # 0.4 + 0.8 s, so a retry loop that spun would burn that CPU time.
    retries.wait_for(4)
    cpu_seconds = retries.times[3] - retries.times[0]
    assert cpu_seconds < 0.5

    proxy.restore()
    events = []
    while not events or not isinstance(events[-1], ResyncEvent):
        event = chan.get(timeout=EVENT_TIMEOUT)
        if isinstance(event, ResyncEvent):
            resync_view = view_of(event)
        event.done()
        events.append(event)
    assert all(e.revision <= seen for e in events[:-1])
    assert resync_view == {kv.key: kv.value
                           for kv in writer.list_values("/c/")}
    live = writer.put("/c/d", b"4")
    assert next_event(chan).revision == live

    registration.close()
    writer.close()
    watcher.close()
    proxy.close()


def test_delete_at_compaction_not_missed(private_etcd, etcd_log):
    # The only change after the watcher's cursor is a delete at exactly
    # the compaction revision, which compaction drops from etcd's history.
    proxy = Proxy(private_etcd.endpoint)
    watcher = EtcdStore(proxy.endpoint, resync_on_reconnect=False)
    writer = EtcdStore(private_etcd.endpoint)
    chan = queue.Queue()
    registration = watcher.watch("edge", chan, chan, "/e/")
    next_event(chan)
    seen = writer.put("/e/a", b"1")
    assert collect(chan, seen)[-1].revision == seen

    lost = etcd_log("lost the connection")
    proxy.cut()
    lost.wait_for(1)
    deleted = writer.delete("/e/a").revision
    assert deleted == seen + 1
    writer.compact(deleted)
    proxy.restore()

    event = chan.get(timeout=EVENT_TIMEOUT)
    event.done()
    if isinstance(event, ResyncEvent):
        assert view_of(event) == {}
    else:
        assert event.revision == deleted
        assert event.changes[0].change_type is Op.DELETE

    registration.close()
    writer.close()
    watcher.close()
    proxy.close()


def test_lifetime_keys_go_with_process(store, prefix, etcd_endpoint):
    chan = queue.Queue()
    registration = store.watch("owner", chan, chan, prefix)
    next_event(chan)
    script = (
        "import sys\n"
        "import datasync\n"
        "from datasync.keyval.etcd import EtcdStore\n"
        "store = EtcdStore(sys.argv[1], lifetime_ttl=2)\n"
        "store.put(sys.argv[2], b'alive', "
        "datasync.with_client_lifetime_ttl())\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n")
    child = subprocess.Popen(
        [sys.executable, "-c", script, etcd_endpoint, prefix + "owned"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        put = next_event(chan)
        assert put.changes[0].value == b"alive"
        child.kill()
        child.wait(timeout=EVENT_TIMEOUT)
        event = next_event(chan)
        assert [(c.change_type, c.key, c.prev_value)
                for c in event.changes] == [
            (Op.DELETE, prefix + "owned", b"alive")]
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=EVENT_TIMEOUT)
        child.stdin.close()
        child.stdout.close()
    registration.close()


def test_watch_rounds_leave_no_threads(etcd_endpoint, prefix):
    before = set(threading.enumerate())
    for i in range(100):
        store = EtcdStore(etcd_endpoint)
        chan = queue.Queue()
        store.watch("round", chan, chan, prefix)
        next_event(chan)
        if i % 10 == 0:
            store.put(prefix + "k", str(i).encode(),
                      datasync.with_client_lifetime_ttl())
            next_event(chan)
        store.close()
    left = [t for t in threading.enumerate() if t not in before]
    for thread in left:
        thread.join(timeout=5.0)
    assert [t.name for t in left if t.is_alive()] == []


def test_changes_repeated_two_prefixes(store, prefix):
    base = store.put(prefix + "x/1", b"1")
    store.put(prefix + "y/1", b"2")
    store.put(prefix + "z/1", b"3")
    for _ in range(3):
        got = store.changes(base - 1, prefix + "x/", prefix + "z/")
        assert [c.key for c in got] == [prefix + "x/1", prefix + "z/1"]


# The datasync command -------------------------------------------------------

def run_cli(capsys, *argv):
    """Run the datasync command; return (exit status, stdout lines as
    JSON, stderr)."""
    from datasync import cli

    status = cli.main(list(argv))
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    return status, lines, captured.err


def test_cli_etcd_option_commands(capsys, etcd_endpoint, prefix, store):
    status, out, _ = run_cli(capsys, "--etcd", etcd_endpoint, "put",
                          prefix + "a", "hello")
    assert status == 0
    revision = out[0]["revision"]
    assert store.get(prefix + "a").revision == revision
    status, out, _ = run_cli(capsys, "get", "--etcd", etcd_endpoint,
                          prefix + "a")
    assert status == 0
    assert out == [{"key": prefix + "a", "value": "hello",
                    "revision": revision, "create_revision": revision,
                    "version": 1}]
    status, out, _ = run_cli(capsys, "--etcd", etcd_endpoint, "del",
                          "--prefix", prefix)
    assert status == 0
    assert out[0]["deleted"] == 1
    assert store.list_keys(prefix) == []


def test_cli_etcd_from_environment(capsys, monkeypatch, etcd_endpoint,
                                   prefix, store):
    monkeypatch.setenv("DATASYNC_ETCD", etcd_endpoint)
    monkeypatch.delenv("DATASYNC_DB", raising=False)
    store.put(prefix + "if", netagent_pb2.Interface(name="eth0", mtu=9000))
    status, out, _ = run_cli(capsys, "--type",
                          "datasync.examples.netagent.Interface", "list",
                          prefix)
    assert status == 0
    assert [line["value"] for line in out] == [{"name": "eth0",
                                                "mtu": 9000}]


def test_cli_db_overrides_etcd_env(capsys, monkeypatch, etcd_endpoint,
                                   tmp_path):
    monkeypatch.setenv("DATASYNC_ETCD", etcd_endpoint)
    status, out, _ = run_cli(capsys, "--db", str(tmp_path / "store"), "put",
                          "/k", "v")
    assert status == 0
    assert out == [{"revision": 1}]


def test_cli_db_and_etcd_rejected(capsys, etcd_endpoint, tmp_path):
    status, out, err = run_cli(capsys, "--db", str(tmp_path / "store"),
                               "--etcd", etcd_endpoint, "get", "/k")
    assert status == 2
    assert out == []
    assert "--db and --etcd" in err


def test_cli_unreachable_etcd_fails(capsys):
    status, _, err = run_cli(capsys, "--etcd",
                             f"127.0.0.1:{free_port()}", "get", "/k")
    assert status == 1
    assert "unavailable" in err
