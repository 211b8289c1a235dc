"""Group commit: concurrent transactions committed in one LMDB sync."""

import threading

import pytest

from datasync.keyval.lmdb.env import _WriteRequest


def test_threads_get_distinct_revisions(open_store):
    store = open_store()
    revisions = []
    lock = threading.Lock()

    def writer(number):
        for i in range(100):
            revision = store.put(f"/g/{number}/{i}", b"%d" % i)
            with lock:
                revisions.append(revision)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(revisions) == list(range(1, 801))
    assert store.revision == 800
    assert len(store.list_keys("/g/")) == 800
    assert [c.revision for c in store.changes(0)] == list(range(1, 801))


def test_failing_writer_rolled_back_alone(open_store):
    store = open_store()
    shared = store._shared

    def put(key):
        def apply(txn):
            txn.put(key, b"v", db=shared.meta)
            return key
        return apply

    def fail(txn):
        txn.put(b"broken", b"v", db=shared.meta)
        raise ValueError("rejected by this writer")

    batch = [_WriteRequest(put(b"first")), _WriteRequest(fail),
             _WriteRequest(put(b"third"))]
    shared._commit_batch(batch)

    assert batch[0].outcome() == b"first"
    assert batch[2].outcome() == b"third"
    with pytest.raises(ValueError, match="rejected by this writer"):
        batch[1].outcome()
    with shared.read() as txn:
        assert txn.get(b"first", db=shared.meta) == b"v"
        assert txn.get(b"third", db=shared.meta) == b"v"
        assert txn.get(b"broken", db=shared.meta) is None
