"""One suite over both backends: the embedded store and etcd.

Every test runs against a Store in tmp_path and against an EtcdStore.
The etcd may be shared with other tests, so each test keeps to keys
under a prefix of its own and compares revisions relative to each other:
etcd's revisions start at 1 for the empty store and are global.
"""

import queue
import uuid

import pytest

import datasync
from datasync import Op
from datasync.events import ChangeEvent, ResyncEvent
from datasync.examples import netagent_pb2
from datasync.keyval.etcd import EtcdStore
from etcd_support import etcd_endpoint  # noqa: F401 (fixture)

#: Seconds to wait for an event that should come; only a failing test
#: waits this long. etcd expires leases up to about a second late.
EVENT_TIMEOUT = 15.0

#: Options per backend: etcd's shortest lease TTL is 2 s by default.
LIFETIME_OPTIONS = {"embedded": {}, "etcd": {"lifetime_ttl": 2}}

#: Seconds a client-lifetime key must outlive its lease TTL (etcd) or the
#: reaper's interval (embedded) while its client lives.
SURVIVE_SECONDS = {"embedded": 2.5, "etcd": 5.0}


class Backend:
    """Opens clients of one backend and closes them at teardown."""

    def __init__(self, kind, tmp_path, endpoint):
        self.kind = kind
        self._tmp_path = tmp_path
        self._endpoint = endpoint
        self._opened = []

    def open(self, **options):
        """Open a new client of the backend's store."""
        if self.kind == "embedded":
            store = datasync.Store(self._tmp_path / "store", **options)
        else:
            store = EtcdStore(self._endpoint, **options)
        self._opened.append(store)
        return store

    def close(self):
        for store in reversed(self._opened):
            store.close()


@pytest.fixture(params=["embedded", "etcd"])
def backend(request, tmp_path):
    """A Backend: the embedded store in tmp_path, or the shared etcd."""
    endpoint = None
    if request.param == "etcd":
        endpoint = request.getfixturevalue("etcd_endpoint")
    opened = Backend(request.param, tmp_path, endpoint)
    yield opened
    opened.close()


@pytest.fixture
def store(backend):
    """A client of the backend under test."""
    return backend.open()


@pytest.fixture
def prefix():
    """A key prefix that no other test uses."""
    return f"/conformance/{uuid.uuid4().hex[:12]}/"


def next_event(chan, timeout=EVENT_TIMEOUT):
    """Return the next event of ``chan``.

    A change event is marked done() at once. A resync event is returned
    with its values read into ``.view`` ({key: value}), then done(),
    because the embedded store releases the values at done().
    """
    try:
        event = chan.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"no event within {timeout} s")
    if isinstance(event, ResyncEvent):
        view = {kv.key: kv.value for values in event.values.values()
                for kv in values}
        event.done()
        return _Resync(event, view)
    event.done()
    return event


class _Resync:
    """A resync event whose values were read into ``view``."""

    def __init__(self, event, view):
        self.event = event
        self.view = view
        self.revision = event.revision
        self.values = event.values


def summarize(changes, base):
    """Return (revision - base, op, key, value, prev value) tuples."""
    return [(c.revision - base, c.change_type, c.key, c.value,
             c.prev_value) for c in changes]


def watch(store, prefix, name="sub"):
    """Watch ``prefix`` on one queue; return (queue, registration,
    resync event), the resync already read."""
    chan = queue.Queue()
    registration = store.watch(name, chan, chan, prefix)
    resync = next_event(chan)
    assert isinstance(resync, _Resync)
    return chan, registration, resync


# Writing and reading -------------------------------------------------------

def test_put_revisions_increase(store, prefix):
    first = store.put(prefix + "a", b"1")
    second = store.put(prefix + "b", b"2")
    third = store.put(prefix + "a", b"3")
    assert second > first
    assert third > second
    assert store.revision >= third


def test_get_returns_revisions_and_version(store, prefix):
    created = store.put(prefix + "a", b"1")
    updated = store.put(prefix + "a", b"2")
    kv = store.get(prefix + "a")
    assert kv.key == prefix + "a"
    assert kv.value == b"2"
    assert kv.revision == updated
    assert kv.create_revision == created
    assert kv.version == 2


def test_get_missing_key_returns_none(store, prefix):
    assert store.get(prefix + "missing") is None


def test_txn_commits_one_revision(store, prefix):
    with store.txn() as txn:
        txn.put(prefix + "a", b"1")
        txn.put(prefix + "b", b"2")
    assert store.get(prefix + "a").revision == txn.revision
    assert store.get(prefix + "b").revision == txn.revision


def test_txn_rejected_op_commits_nothing(store, prefix):
    txn = store.txn()
    txn.put(prefix + "a", b"1")
    with pytest.raises(datasync.InvalidValueError):
        txn.put(prefix + "b", "text is not bytes")
    with pytest.raises(datasync.InvalidValueError):
        txn.commit()
    assert store.get(prefix + "a") is None


def test_delete_returns_prev_value(store, prefix):
    store.put(prefix + "a", b"old")
    result = store.delete(prefix + "a")
    assert result.existed
    assert result.prev_value == b"old"
    assert [c.key for c in result.deleted] == [prefix + "a"]
    assert result.deleted[0].change_type is Op.DELETE
    assert result.deleted[0].revision == result.revision
    assert store.get(prefix + "a") is None


def test_delete_missing_key_changes_nothing(store, prefix):
    before = store.put(prefix + "a", b"1")
    result = store.delete(prefix + "missing")
    assert not result.existed
    assert result.prev_value is None
    assert result.revision >= before
    assert store.get(prefix + "a").revision == before


def test_delete_prefix_returns_each_prev(store, prefix):
    store.put(prefix + "dir/a", b"1")
    store.put(prefix + "dir/b", b"2")
    store.put(prefix + "dir/c/d", b"3")
    kept = store.put(prefix + "other", b"x")
    result = store.delete(prefix + "dir/", datasync.with_prefix())
    assert [(c.key, c.prev_value) for c in result.deleted] == [
        (prefix + "dir/a", b"1"), (prefix + "dir/b", b"2"),
        (prefix + "dir/c/d", b"3")]
    assert {c.revision for c in result.deleted} == {result.revision}
    assert store.list_keys(prefix) == [prefix + "other"]
    assert store.get(prefix + "other").revision == kept


def test_list_values_sorted_one_revision(store, prefix):
    for key in ("c", "a", "b/x", "b"):
        last = store.put(prefix + key, key.encode())
    listing = store.list_values(prefix)
    assert [kv.key for kv in listing] == [
        prefix + k for k in ("a", "b", "b/x", "c")]
    assert [kv.value for kv in listing] == [b"a", b"b", b"b/x", b"c"]
    assert listing.revision >= last
    keys = store.list_keys(prefix)
    assert keys == [kv.key for kv in listing]
    assert keys.revision >= last


def test_put_message_reads_back(store, prefix):
    sent = netagent_pb2.Interface(name="eth0", mtu=1500, enabled=True,
                                  ip_addresses=["10.0.0.1/24"])
    store.put(prefix + "if", sent)
    got = store.get(prefix + "if").get_value(netagent_pb2.Interface())
    assert got == sent


def test_invalid_input_raises(store, prefix):
    with pytest.raises(datasync.InvalidKeyError):
        store.put("", b"1")
    with pytest.raises(datasync.InvalidKeyError):
        store.get(42)
    with pytest.raises(datasync.InvalidValueError):
        store.put(prefix + "a", 42)
    with pytest.raises(datasync.InvalidOptionError):
        store.put(prefix + "a", b"1", datasync.with_prefix())
    with pytest.raises(datasync.InvalidOptionError):
        store.delete(prefix + "a", datasync.with_ttl(1))


# History -------------------------------------------------------------------

def test_changes_lists_revisions_in_order(store, prefix):
    base = store.put(prefix + "a", b"1")
    store.put(prefix + "a", b"2")
    store.put("/elsewhere/" + prefix, b"ignored")
    with store.txn() as txn:
        txn.put(prefix + "b", b"3")
        txn.delete(prefix + "a")
    got = store.changes(base, prefix)
    assert summarize(got, base) == [
        (1, Op.PUT, prefix + "a", b"2", b"1"),
        (3, Op.PUT, prefix + "b", b"3", None),
        (3, Op.DELETE, prefix + "a", None, b"2"),
    ]


def test_changes_after_compaction_raises(store, prefix):
    store.put(prefix + "a", b"1")
    floor = store.put(prefix + "a", b"2")
    store.put(prefix + "a", b"3")
    assert store.compact(floor) >= floor
    with pytest.raises(datasync.CompactedError) as info:
        store.changes(floor - 1, prefix)
    assert info.value.oldest_revision == floor + 1
    after = store.changes(floor, prefix)
    assert [c.value for c in after] == [b"3"]


def test_compact_future_revision_raises(store):
    with pytest.raises(ValueError):
        store.compact(store.revision + 10)


# Watching ------------------------------------------------------------------

def test_watch_resync_then_changes(store, prefix):
    store.put(prefix + "a", b"1")
    chan, registration, resync = watch(store, prefix)
    assert resync.view == {prefix + "a": b"1"}
    assert list(resync.values) == [prefix]
    updated = store.put(prefix + "a", b"2")
    event = next_event(chan)
    assert event.revision == updated
    assert summarize(event.changes, updated) == [
        (0, Op.PUT, prefix + "a", b"2", b"1")]
    registration.close()


def test_watch_delivers_in_revision_order(store, prefix):
    chan, registration, resync = watch(store, prefix)
    revisions = [store.put(prefix + f"k{i % 3}", str(i).encode())
                 for i in range(20)]
    got = [next_event(chan).revision for _ in revisions]
    assert got == revisions
    assert revisions[0] > resync.revision
    registration.close()


def test_watch_delete_carries_prev(store, prefix):
    store.put(prefix + "a", b"old")
    chan, registration, _ = watch(store, prefix)
    result = store.delete(prefix + "a")
    event = next_event(chan)
    assert summarize(event.changes, result.revision) == [
        (0, Op.DELETE, prefix + "a", None, b"old")]
    registration.close()


def test_watch_message_prev_value_parses(store, prefix):
    old = netagent_pb2.Interface(name="eth0", mtu=1500)
    new = netagent_pb2.Interface(name="eth0", mtu=9000)
    store.put(prefix + "if", old)
    chan, registration, _ = watch(store, prefix)
    store.put(prefix + "if", new)
    change = next_event(chan).changes[0]
    assert change.get_value(netagent_pb2.Interface()) == new
    prev = netagent_pb2.Interface()
    assert change.get_prev_value(prev)
    assert prev == old
    store.delete(prefix + "if")
    change = next_event(chan).changes[0]
    assert change.get_value(netagent_pb2.Interface()) is None
    prev = netagent_pb2.Interface()
    assert change.get_prev_value(prev)
    assert prev == new
    registration.close()


def test_watch_delete_prefix_each_prev(store, prefix):
    store.put(prefix + "d/a", b"1")
    store.put(prefix + "d/b", b"2")
    chan, registration, _ = watch(store, prefix)
    result = store.delete(prefix + "d/", datasync.with_prefix())
    event = next_event(chan)
    assert event.revision == result.revision
    assert summarize(event.changes, result.revision) == [
        (0, Op.DELETE, prefix + "d/a", None, b"1"),
        (0, Op.DELETE, prefix + "d/b", None, b"2")]
    registration.close()


def test_txn_two_puts_one_event(store, prefix):
    chan, registration, _ = watch(store, prefix)
    with store.txn() as txn:
        txn.put(prefix + "a", b"1")
        txn.put(prefix + "b", b"2")
    event = next_event(chan)
    assert event.revision == txn.revision
    assert [(c.key, c.value) for c in event.changes] == [
        (prefix + "a", b"1"), (prefix + "b", b"2")]
    store.put(prefix + "c", b"3")
    assert next_event(chan).revision > txn.revision
    registration.close()


def test_watch_ignores_other_prefixes(store, prefix):
    chan, registration, _ = watch(store, prefix + "in/")
    store.put(prefix + "out/a", b"1")
    inside = store.put(prefix + "in/a", b"2")
    event = next_event(chan)
    assert event.revision == inside
    assert [c.key for c in event.changes] == [prefix + "in/a"]
    registration.close()


def test_watch_two_prefixes_one_event(store, prefix):
    chan = queue.Queue()
    registration = store.watch("sub", chan, chan, prefix + "x/",
                               prefix + "y/")
    resync = next_event(chan)
    assert sorted(resync.values) == [prefix + "x/", prefix + "y/"]
    with store.txn() as txn:
        txn.put(prefix + "x/a", b"1")
        txn.put(prefix + "between", b"skipped")
        txn.put(prefix + "y/a", b"2")
    event = next_event(chan)
    assert event.revision == txn.revision
    assert [c.key for c in event.changes] == [prefix + "x/a",
                                              prefix + "y/a"]
    registration.close()


def test_watch_from_revision_skips_resync(store, prefix):
    start = store.put(prefix + "a", b"1")
    second = store.put(prefix + "a", b"2")
    chan = queue.Queue()
    registration = store.watch("sub", chan, chan, prefix,
                               from_revision=start)
    event = next_event(chan)
    assert isinstance(event, ChangeEvent)
    assert event.revision == second
    assert event.changes[0].prev_value == b"1"
    registration.close()


def test_watch_from_compacted_revision_raises(store, prefix):
    first = store.put(prefix + "a", b"1")
    floor = store.put(prefix + "a", b"2")
    store.compact(floor)
    with pytest.raises(datasync.CompactedError):
        store.watch("sub", queue.Queue(), queue.Queue(), prefix,
                    from_revision=first)


def test_watch_duplicate_name_raises(store, prefix):
    registration = store.watch("sub", queue.Queue(), queue.Queue(), prefix)
    with pytest.raises(datasync.RegistrationError):
        store.watch("sub", queue.Queue(), queue.Queue(), prefix)
    registration.close()


def test_register_adds_prefix_changes(store, prefix):
    chan, registration, _ = watch(store, prefix + "a/")
    registration.register("sub", prefix + "b/")
    assert registration.prefixes == [prefix + "a/", prefix + "b/"]
    revision = store.put(prefix + "b/x", b"1")
    event = next_event(chan)
    assert event.revision == revision
    with pytest.raises(datasync.RegistrationError):
        registration.register("sub", prefix + "b/")
    registration.unregister(prefix + "a/")
    store.put(prefix + "a/x", b"2")
    last = store.put(prefix + "b/y", b"3")
    event = next_event(chan)
    assert event.revision == last
    assert [c.key for c in event.changes] == [prefix + "b/y"]
    registration.close()


def test_resync_request_sends_snapshot(store, prefix):
    chan, registration, _ = watch(store, prefix)
    revision = store.put(prefix + "a", b"1")
    assert next_event(chan).revision == revision
    registration.resync()
    resync = next_event(chan)
    assert isinstance(resync, _Resync)
    assert resync.revision >= revision
    assert resync.view == {prefix + "a": b"1"}
    registration.close()


def test_separate_channels_hold_changes(store, prefix):
    changes, resyncs = queue.Queue(), queue.Queue()
    registration = store.watch("sub", changes, resyncs, prefix)
    resync = resyncs.get(timeout=EVENT_TIMEOUT)
    revision = store.put(prefix + "a", b"1")
    with pytest.raises(queue.Empty):
        changes.get(timeout=0.3)
    resync.done()
    event = next_event(changes)
    assert event.revision == revision
    registration.close()


# Leases --------------------------------------------------------------------

def test_ttl_expiry_sends_delete(store, prefix):
    chan, registration, _ = watch(store, prefix)
    put = store.put(prefix + "a", b"short", datasync.with_ttl(1))
    assert next_event(chan).revision == put
    event = next_event(chan)
    assert summarize(event.changes, event.revision) == [
        (0, Op.DELETE, prefix + "a", None, b"short")]
    assert store.get(prefix + "a") is None
    registration.close()


def test_ttl_keys_expire_together(store, prefix):
    chan, registration, _ = watch(store, prefix)
    with store.txn() as txn:
        for name in ("a", "b", "c"):
            txn.put(prefix + name, name.encode(), datasync.with_ttl(1))
    assert next_event(chan).revision == txn.revision
    deleted = {}
    while len(deleted) < 3:
        for change in next_event(chan).changes:
            assert change.change_type is Op.DELETE
            deleted[change.key] = change.prev_value
    assert deleted == {prefix + "a": b"a", prefix + "b": b"b",
                       prefix + "c": b"c"}
    registration.close()


def test_client_lifetime_key_outlives_ttl(backend, prefix):
    watcher = backend.open()
    writer = backend.open(**LIFETIME_OPTIONS[backend.kind])
    chan, registration, _ = watch(watcher, prefix)
    put = writer.put(prefix + "owned", b"mine",
                     datasync.with_client_lifetime_ttl())
    assert next_event(chan).revision == put
    with pytest.raises(queue.Empty):
        chan.get(timeout=SURVIVE_SECONDS[backend.kind])
    assert watcher.get(prefix + "owned").value == b"mine"
    writer.close()
    event = next_event(chan)
    assert summarize(event.changes, event.revision) == [
        (0, Op.DELETE, prefix + "owned", None, b"mine")]
    assert watcher.get(prefix + "owned") is None
    registration.close()


def test_closed_store_raises(backend, prefix):
    store = backend.open()
    store.close()
    with pytest.raises(datasync.StoreClosedError):
        store.put(prefix + "a", b"1")
    store.close()


def test_changes_two_prefixes_repeated(store, prefix):
    base = store.put(prefix + "x/1", b"1")
    store.put(prefix + "y/1", b"2")
    store.put(prefix + "z/1", b"3")
    for _ in range(3):
        got = store.changes(base - 1, prefix + "x/", prefix + "z/")
        assert [c.key for c in got] == [prefix + "x/1", prefix + "z/1"]


def test_watch_from_future_revision_waits(store, prefix):
    start = store.put(prefix + "a", b"1") + 2
    chan = queue.Queue()
    registration = store.watch("sub", chan, chan, prefix,
                               from_revision=start)
    written = [store.put(prefix + "a", str(i).encode()) for i in range(4)]
    event = next_event(chan)
    assert event.revision == start + 1
    assert event.revision == written[2]
    registration.close()
