"""Keys with a TTL and keys bound to the lifetime of their writer."""

import gc
import queue

import pytest

import datasync
from datasync.keyval.lmdb import store as store_module

# Writes two client-lifetime keys, prints "ready", then waits to be killed.
LIFETIME_WRITER = """
import sys

import datasync

store = datasync.Store(sys.argv[1])
store.put("/life/a", b"A", datasync.with_client_lifetime_ttl())
store.put("/life/b", b"B", datasync.with_client_lifetime_ttl())
store.put("/plain", b"P")
print("ready", flush=True)
sys.stdin.read()
"""

# Opens the store (which reaps the keys of dead writers) and prints its
# keys, one line, comma-separated.
LIST_KEYS = """
import sys

import datasync

with datasync.Store(sys.argv[1]) as store:
    print(",".join(store.list_keys("/")), flush=True)
"""


def watch_all(store, drain, name="leases"):
    chan = queue.Queue()
    store.watch(name, chan, chan, "/")
    drain(chan, store.revision)
    return chan


def test_ttl_key_expires_with_delete_event(store, drain, summary):
    chan = watch_all(store, drain)
    revision = store.put("/ttl/a", b"short", datasync.with_ttl(0.2))
    store.put("/ttl/keep", b"stays")

    events = drain(chan, revision + 2)
    assert summary(events[-1].changes) == [
        (revision + 2, "delete", "/ttl/a", None, b"short")]
    assert store.get("/ttl/a") is None
    assert store.get("/ttl/keep").value == b"stays"


def test_ttl_keys_of_one_put_expire_together(store, drain):
    chan = watch_all(store, drain)
    with store.txn() as txn:
        txn.put("/ttl/a", b"1", datasync.with_ttl(0.2))
        txn.put("/ttl/b", b"2", datasync.with_ttl(0.2))
    events = drain(chan, txn.revision + 1)
    deleted = {(c.key, c.prev_value) for c in events[-1].changes}
    assert deleted == {("/ttl/a", b"1"), ("/ttl/b", b"2")}
    assert store.list_keys("/ttl/") == []


def test_put_without_ttl_detaches_key(store, drain):
    chan = watch_all(store, drain)
    store.put("/ttl/a", b"first", datasync.with_ttl(0.2))
    store.put("/ttl/a", b"second")
    # The marker expires after the first TTL would have, so once its
    # delete arrives the detached key has outlived its old deadline.
    marker = store.put("/ttl/marker", b"m", datasync.with_ttl(0.4))

    events = drain(chan, marker + 1)
    deleted = [c.key for e in events for c in e.changes
               if c.change_type is datasync.Op.DELETE]
    assert deleted == ["/ttl/marker"]
    assert store.get("/ttl/a").value == b"second"


def test_put_with_longer_ttl_renews_key(store, drain):
    chan = watch_all(store, drain)
    store.put("/ttl/a", b"first", datasync.with_ttl(0.2))
    store.put("/ttl/a", b"second", datasync.with_ttl(60))
    marker = store.put("/ttl/marker", b"m", datasync.with_ttl(0.4))

    drain(chan, marker + 1)
    assert store.get("/ttl/a").value == b"second"


def test_delete_of_ttl_key_ends_lease(store, drain):
    chan = watch_all(store, drain)
    store.put("/ttl/a", b"1", datasync.with_ttl(0.2))
    store.delete("/ttl/a")
    revision = store.put("/ttl/a", b"again")
    marker = store.put("/ttl/marker", b"m", datasync.with_ttl(0.4))

    events = drain(chan, marker + 1)
    assert events[-1].changes[0].key == "/ttl/marker"
    assert store.get("/ttl/a").revision == revision


def test_prefix_delete_of_ttl_keys_ends_lease(store, drain):
    chan = watch_all(store, drain)
    store.put("/ttl/a", b"1", datasync.with_ttl(0.2))
    store.put("/ttl/b", b"2", datasync.with_ttl(0.2))
    store.delete("/ttl/", datasync.with_prefix())
    store.put("/ttl/a", b"again")
    marker = store.put("/ttl/marker", b"m", datasync.with_ttl(0.4))

    events = drain(chan, marker + 1)
    assert [c.key for c in events[-1].changes] == ["/ttl/marker"]
    assert store.list_keys("/ttl/") == ["/ttl/a"]


def test_ttl_key_expires_after_reopen(open_store, drain):
    writer = open_store("db")
    writer.put("/ttl/a", b"1", datasync.with_ttl(0.3))
    writer.close()

    reader = open_store("db")
    chan = watch_all(reader, drain)
    events = drain(chan, 2)
    assert events[-1].changes[0].key == "/ttl/a"
    assert events[-1].changes[0].prev_value == b"1"


def test_lifetime_keys_deleted_on_close(open_store, drain, summary):
    watcher = open_store("db")
    chan = watch_all(watcher, drain)
    writer = open_store("db")
    writer.put("/life/a", b"A", datasync.with_client_lifetime_ttl())
    writer.put("/life/b", b"B", datasync.with_client_lifetime_ttl())
    writer.put("/plain", b"P")
    assert watcher.list_keys("/") == ["/life/a", "/life/b", "/plain"]

    writer.close()
    events = drain(chan, 4)
    assert summary(events[-1].changes) == [
        (4, "delete", "/life/a", None, b"A"),
        (4, "delete", "/life/b", None, b"B"),
    ]
    assert watcher.list_keys("/") == ["/plain"]


def test_lifetime_keys_deleted_on_collect(open_store, drain):
    watcher = open_store("db")
    chan = watch_all(watcher, drain)
    writer = datasync.Store(watcher.path)
    writer.put("/life/a", b"A", datasync.with_client_lifetime_ttl())
    # Dropping the last reference without close() ends the client too.
    del writer
    gc.collect()

    events = drain(chan, 2)
    assert [(c.key, c.prev_value) for c in events[-1].changes] == [
        ("/life/a", b"A")]
    assert watcher.list_keys("/") == []


def test_lifetime_keys_survive_reaper(store, spawn_python):
    store.put("/life/a", b"A", datasync.with_client_lifetime_ttl())
    # Opening the store in another process runs its reaper, which must
    # keep the keys of a writer that still runs.
    child = spawn_python(LIST_KEYS, store.path)
    assert child.readline() == "/life/a"
    assert store.get("/life/a").value == b"A"


def test_lifetime_keys_reaped_on_open(tmp_path, spawn_python):
    path = tmp_path / "db"
    writer = spawn_python(LIFETIME_WRITER, path)
    assert writer.readline() == "ready"
    writer.kill()

    with datasync.Store(path) as store:
        assert store.list_keys("/") == ["/plain"]
        deleted = store.changes(3)
        assert [(c.key, c.prev_value) for c in deleted] == [
            ("/life/a", b"A"), ("/life/b", b"B")]
        assert {c.revision for c in deleted} == {4}


def test_lifetime_keys_reaped_by_watcher(store, drain, spawn_python):
    chan = watch_all(store, drain)
    writer = spawn_python(LIFETIME_WRITER, store.path)
    assert writer.readline() == "ready"
    drain(chan, 3)
    writer.kill()

    # The running store reaps dead writers every REAP_INTERVAL seconds.
    events = drain(chan, 4, timeout=store_module.REAP_INTERVAL + 10)
    assert [(c.key, c.prev_value) for c in events[-1].changes] == [
        ("/life/a", b"A"), ("/life/b", b"B")]
    assert store.list_keys("/") == ["/plain"]


def test_lifetime_key_detached_by_plain_put(open_store):
    writer = open_store("db")
    writer.put("/life/a", b"A", datasync.with_client_lifetime_ttl())
    writer.put("/life/a", b"plain")
    writer.close()
    reader = open_store("db")
    assert reader.get("/life/a").value == b"plain"
    assert reader.revision == 2


@pytest.mark.parametrize("option", [datasync.with_ttl(0.2),
                                    datasync.with_client_lifetime_ttl()])
def test_leased_put_in_failed_txn_leaves_nothing(open_store, option):
    store = open_store("db")
    txn = store.txn()
    txn.put("/lease/a", b"1", option)
    with pytest.raises(datasync.InvalidKeyError):
        txn.put("", b"bad")
    with pytest.raises(datasync.InvalidKeyError):
        txn.commit()
    store.close()
    reopened = open_store("db")
    assert reopened.revision == 0
    assert reopened.list_keys("/") == []
