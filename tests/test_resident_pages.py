"""Dropping the store's mapped pages from the resident set."""

import queue

from datasync.keyval.lmdb import env as env_module


def test_mappings_of_store_file(open_store):
    store = open_store()
    store.put("/cfg/a", b"1")

    mappings = list(env_module._mappings_of(f"{store.path}/data.mdb"))

    assert len(mappings) == 1
    start, end = mappings[0]
    assert end - start == store.stat()["map_size"]


def test_mappings_of_other_file_empty(tmp_path):
    assert list(env_module._mappings_of(str(tmp_path / "none.mdb"))) == []


def test_values_survive_dropped_pages(open_store):
    store = open_store(durable=False)
    with store.txn() as txn:
        for i in range(5000):
            txn.put(f"/cfg/{i:05d}", b"%d" % i)

    store._shared.drop_resident_pages()

    assert store.get("/cfg/04999").value == b"4999"
    assert len(store.list_values("/cfg/")) == 5000


def test_resync_reads_across_drops(open_store):
    # More keys than one drop interval, so the scan drops the pages
    # under its own cursor while it reads.
    store = open_store(durable=False)
    count = 2 * 65536 + 10
    with store.txn() as txn:
        for i in range(count):
            txn.put(f"/big/{i:07d}", i.to_bytes(4, "big"))
    events = queue.Queue()
    store.watch("reader", events, events, "/big/")

    resync = events.get(timeout=30)
    values = [kv.value for kv in resync.values["/big/"]]
    resync.done()

    assert len(values) == count
    assert values == [i.to_bytes(4, "big") for i in range(count)]
