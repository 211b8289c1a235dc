"""Tests of the embedded store: Store, Txn, Registration, DeleteResult."""

import json
import os
import queue
import random
import subprocess
import sys
import threading

import lmdb
import pytest

import datasync
from datasync import Op
from datasync.keyval.lmdb import DeleteResult, Listing, Txn

MIB = 1 << 20


# Revisions -----------------------------------------------------------------


def test_new_store_at_revision_zero(store):
    assert store.revision == 0


def test_put_revisions_strictly_increase(store):
    revisions = [store.put(f"/r/{i}", b"v") for i in range(5)]
    assert revisions == [1, 2, 3, 4, 5]
    assert store.revision == 5


def test_revision_one_per_transaction(store):
    with store.txn() as txn:
        txn.put("/t/a", b"1")
        txn.put("/t/b", b"2")
        txn.delete("/t/a")
    assert txn.revision == 1
    assert store.revision == 1
    assert [c.revision for c in store.changes(0)] == [1, 1, 1]


def test_revision_persists_across_reopen(open_store, tmp_path):
    first = open_store("db")
    for i in range(3):
        first.put(f"/p/{i}", b"v")
    first.close()

    second = open_store("db")
    assert second.revision == 3
    assert second.put("/p/next", b"v") == 4
    assert second.get("/p/1").value == b"v"


def test_empty_txn_takes_no_revision(store):
    store.put("/k", b"v")
    txn = store.txn()
    assert txn.commit() == 1
    assert store.revision == 1


def test_delete_missing_takes_no_revision(store):
    store.put("/k", b"v")
    result = store.delete("/missing")
    assert result.revision == 1
    assert result.deleted == []
    assert store.revision == 1
    assert store.changes(1) == []


def test_prefix_delete_of_nothing_takes_no_revision(store):
    store.put("/k", b"v")
    result = store.delete("/none/", datasync.with_prefix())
    assert result.existed is False
    assert store.revision == 1


def test_noop_txn_sends_no_event(store, drain):
    chan = queue.Queue()
    store.put("/w/a", b"1")
    store.watch("noop", chan, chan, "/w/")
    drain(chan, 1)
    store.delete("/w/missing")
    revision = store.put("/w/b", b"2")
    event = drain(chan, revision)
    assert [e.revision for e in event] == [2]


# Keys, versions and values ---------------------------------------------------


def test_put_sets_create_mod_version(store):
    store.put("/a", b"1")
    store.put("/b", b"x")
    store.put("/a", b"2")
    kv = store.get("/a")
    assert kv.key == "/a"
    assert kv.value == b"2"
    assert kv.create_revision == 1
    assert kv.revision == 3
    assert kv.version == 2


def test_put_after_delete_restarts_version(store):
    store.put("/a", b"1")
    store.put("/a", b"2")
    store.delete("/a")
    store.put("/a", b"3")
    kv = store.get("/a")
    assert kv.create_revision == 4
    assert kv.revision == 4
    assert kv.version == 1


def test_get_missing_returns_none(store):
    assert store.get("/nothing") is None


def test_get_bytes_key(store):
    store.put(b"/bin/\xff", b"raw")
    kv = store.get(b"/bin/\xff")
    assert kv.key_bytes == b"/bin/\xff"
    assert kv.value == b"raw"
    assert store.get("/bin/\udcff").value == b"raw"


def test_put_accepts_bytearray_and_empty(store):
    store.put("/ba", bytearray(b"abc"))
    store.put("/empty", b"")
    assert store.get("/ba").value == b"abc"
    assert store.get("/empty").value == b""


def test_put_change_carries_prev_value(store, summary):
    store.put("/a", b"1")
    store.put("/a", b"2")
    assert summary(store.changes(0)) == [
        (1, "put", "/a", b"1", None),
        (2, "put", "/a", b"2", b"1"),
    ]


def test_changes_carry_create_and_version(store):
    store.put("/a", b"1")
    store.put("/a", b"2")
    store.delete("/a")
    changes = store.changes(0)
    assert [c.create_revision for c in changes] == [1, 1, 1]
    assert [c.version for c in changes] == [1, 2, 0]


# Delete ---------------------------------------------------------------------


def test_delete_reports_prev_value(store):
    store.put("/a", b"old")
    result = store.delete("/a")
    assert isinstance(result, DeleteResult)
    assert result.revision == 2
    assert result.existed is True
    assert result.prev_value == b"old"
    assert [c.key for c in result.deleted] == ["/a"]
    assert result.deleted[0].change_type is Op.DELETE
    assert store.get("/a") is None


def test_delete_missing_reports_nothing(store):
    result = store.delete("/a")
    assert result.existed is False
    assert result.prev_value is None
    assert result.deleted == []


def test_delete_prefix_reports_each_key(store, summary):
    store.put("/d/a", b"1")
    store.put("/d/b", b"2")
    store.put("/d/c/x", b"3")
    store.put("/dz", b"outside")
    store.put("/c", b"before")
    result = store.delete("/d/", datasync.with_prefix())
    assert result.revision == 6
    assert result.existed is True
    assert result.prev_value == b"1"
    assert summary(result.deleted) == [
        (6, "delete", "/d/a", None, b"1"),
        (6, "delete", "/d/b", None, b"2"),
        (6, "delete", "/d/c/x", None, b"3"),
    ]
    assert store.list_keys("/") == ["/c", "/dz"]


def test_delete_without_prefix_option_is_exact(store):
    store.put("/d", b"1")
    store.put("/d/a", b"2")
    result = store.delete("/d")
    assert [c.key for c in result.deleted] == ["/d"]
    assert store.get("/d/a").value == b"2"


def test_delete_in_txn_reports_changes(store, summary):
    store.put("/a", b"1")
    store.put("/b", b"2")
    with store.txn() as txn:
        txn.put("/c", b"3")
        txn.delete("/a")
        txn.delete("/missing")
    assert summary(txn.changes) == [(3, "delete", "/a", None, b"1")]


# Listing --------------------------------------------------------------------


def test_list_keys_under_prefix(store):
    for key in ("/l/b", "/l/a", "/l/c/d", "/m/a", "/k"):
        store.put(key, b"v")
    listing = store.list_keys("/l/")
    assert isinstance(listing, Listing)
    assert listing == ["/l/a", "/l/b", "/l/c/d"]
    assert listing.revision == 5


def test_list_keys_all(store):
    store.put("/b", b"v")
    store.put("/a", b"v")
    assert store.list_keys() == ["/a", "/b"]


def test_list_values_under_prefix(store):
    store.put("/l/a", b"1")
    store.put("/l/b", b"2")
    store.put("/l/a", b"3")
    listing = store.list_values("/l/")
    assert [(kv.key, kv.value, kv.revision) for kv in listing] == [
        ("/l/a", b"3", 3), ("/l/b", b"2", 2)]
    assert listing.revision == 3


def test_list_empty_prefix_returns_empty(store):
    store.put("/a", b"1")
    listing = store.list_values("/none/")
    assert listing == []
    assert listing.revision == 1


def test_list_values_at_one_revision(store):
    # Each transaction rewrites every key with its own number, so a listing
    # read in one transaction has equal values, all at its revision.
    keys = [f"/one/{i:02d}" for i in range(20)]
    with store.txn() as txn:
        for key in keys:
            txn.put(key, b"0")
    stop = threading.Event()

    def write():
        n = 0
        while not stop.is_set():
            n += 1
            with store.txn() as txn:
                for key in keys:
                    txn.put(key, b"%d" % n)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(50):
            listing = store.list_values("/one/")
            assert len(listing) == len(keys)
            assert len({kv.value for kv in listing}) == 1
            assert {kv.revision for kv in listing} == {listing.revision}
    finally:
        stop.set()
        writer.join()


# Changes and stat -----------------------------------------------------------


def test_changes_after_revision(store, summary):
    store.put("/a", b"1")
    store.put("/b", b"2")
    store.delete("/a")
    assert summary(store.changes(1)) == [
        (2, "put", "/b", b"2", None),
        (3, "delete", "/a", None, b"1"),
    ]
    assert store.changes(3) == []


def test_changes_filtered_by_prefixes(store):
    store.put("/x/1", b"1")
    store.put("/y/1", b"2")
    store.put("/z/1", b"3")
    keys = [c.key for c in store.changes(0, "/x/", "/z/")]
    assert keys == ["/x/1", "/z/1"]


def test_changes_rejects_bad_revision(store):
    with pytest.raises(ValueError, match="-1"):
        store.changes(-1)
    with pytest.raises(ValueError, match="'1'"):
        store.changes("1")


def test_stat_reports_counts(store):
    store.put("/a", b"1")
    store.put("/b", b"2")
    store.delete("/a")
    stat = store.stat()
    assert stat["path"] == store.path
    assert stat["revision"] == 3
    assert stat["keys"] == 1
    assert stat["log_entries"] == 3
    assert stat["log_first_revision"] == 1
    assert stat["log_last_revision"] == 3
    assert stat["compacted_revision"] == 0
    assert stat["file_size"] > 0
    assert stat["map_size"] >= stat["file_size"]


def test_store_context_manager_closes(tmp_path):
    with datasync.Store(tmp_path / "db") as store:
        store.put("/a", b"1")
    with pytest.raises(datasync.StoreClosedError):
        store.get("/a")


def test_store_repr_names_path(store):
    assert repr(store) == f"Store({store.path!r})"


def test_store_path_accepts_str(tmp_path):
    with datasync.Store(str(tmp_path / "db")) as store:
        assert store.path == os.path.realpath(tmp_path / "db")


# Transactions ---------------------------------------------------------------


def test_txn_commit_returns_revision(store):
    txn = store.txn()
    assert isinstance(txn, Txn)
    assert txn.put("/a", b"1") is txn
    assert txn.delete("/b") is txn
    assert txn.commit() == 1
    assert txn.revision == 1
    assert store.get("/a").value == b"1"


def test_txn_commit_twice_raises(store):
    txn = store.txn()
    txn.put("/a", b"1")
    txn.commit()
    with pytest.raises(datasync.StoreClosedError, match="already"):
        txn.commit()


def test_txn_discard_writes_nothing(store):
    txn = store.txn()
    txn.put("/a", b"1")
    txn.discard()
    assert store.get("/a") is None
    assert store.revision == 0
    with pytest.raises(datasync.StoreClosedError):
        txn.commit()


def test_txn_block_exception_discards(store):
    with pytest.raises(RuntimeError):
        with store.txn() as txn:
            txn.put("/a", b"1")
            raise RuntimeError("abort")
    assert store.get("/a") is None
    assert store.revision == 0


def test_txn_ops_apply_in_order(store, summary):
    with store.txn() as txn:
        txn.put("/a", b"1")
        txn.put("/a", b"2")
        txn.delete("/a")
        txn.put("/a", b"3")
    assert summary(store.changes(0)) == [
        (1, "put", "/a", b"1", None),
        (1, "put", "/a", b"2", b"1"),
        (1, "delete", "/a", None, b"2"),
        (1, "put", "/a", b"3", None),
    ]
    assert store.get("/a").version == 1


BAD_OPS = {
    "empty key": lambda txn: txn.put("", b"v"),
    "long key": lambda txn: txn.put("k" * 512, b"v"),
    "int key": lambda txn: txn.put(7, b"v"),
    "str value": lambda txn: txn.put("/k", "text"),
    "delete option on put": lambda txn: txn.put(
        "/k", b"v", datasync.with_prefix()),
    "put option on delete": lambda txn: txn.delete(
        "/k", datasync.with_ttl(1)),
    "empty delete key": lambda txn: txn.delete(""),
}


@pytest.mark.parametrize("bad_op", BAD_OPS.values(), ids=BAD_OPS.keys())
def test_txn_with_invalid_op_commits_nothing(store, drain, bad_op):
    chan = queue.Queue()
    store.put("/keep", b"old")
    store.watch("all", chan, chan, "/")
    drain(chan, 1)

    txn = store.txn()
    txn.put("/new", b"1")
    txn.delete("/keep")
    with pytest.raises(datasync.DatasyncError):
        bad_op(txn)
    txn.put("/also", b"2")
    with pytest.raises(datasync.DatasyncError,
                       match="transaction not committed"):
        txn.commit()

    assert store.revision == 1
    assert store.get("/new") is None
    assert store.get("/also") is None
    assert store.get("/keep").value == b"old"
    # The next event must be the next commit's: the failed one sent none.
    revision = store.put("/probe", b"p")
    events = drain(chan, revision)
    assert [e.revision for e in events] == [2]
    assert [c.key for c in events[0].changes] == ["/probe"]


def test_txn_block_with_invalid_op_raises(store):
    with pytest.raises(datasync.InvalidKeyError, match="not committed"):
        with store.txn() as txn:
            txn.put("/a", b"1")
            try:
                txn.put("", b"v")
            except datasync.InvalidKeyError:
                pass
    assert store.get("/a") is None
    assert store.revision == 0


# Bad input ------------------------------------------------------------------


def test_put_empty_key_raises(store):
    with pytest.raises(datasync.InvalidKeyError, match="empty"):
        store.put("", b"v")
    with pytest.raises(datasync.InvalidKeyError, match="empty"):
        store.put(b"", b"v")


def test_put_key_of_511_bytes_works(store):
    key = "/" + "k" * 510
    store.put(key, b"v")
    assert store.get(key).value == b"v"


def test_put_key_of_512_bytes_raises(store):
    key = "/long-key-" + "k" * 502
    with pytest.raises(datasync.InvalidKeyError) as caught:
        store.put(key, b"v")
    message = str(caught.value)
    assert "'/long-key-" in message
    assert "512 bytes" in message
    assert "511" in message


def test_put_key_over_limit_in_utf8_raises(store):
    key = "\u00e9" * 256  # 256 characters, 512 bytes in UTF-8
    with pytest.raises(datasync.InvalidKeyError, match="512 bytes"):
        store.put(key, b"v")


@pytest.mark.parametrize("key", [12345, 1.5, None, ["/a"]])
def test_put_non_str_key_raises(store, key):
    with pytest.raises(datasync.InvalidKeyError) as caught:
        store.put(key, b"v")
    message = str(caught.value)
    assert type(key).__name__ in message
    assert repr(key) in message


@pytest.mark.parametrize("method", ["get", "delete", "list_keys",
                                    "list_values"])
def test_read_with_int_key_raises(store, method):
    with pytest.raises(datasync.InvalidKeyError, match="int 42"):
        getattr(store, method)(42)


@pytest.mark.parametrize("value", ["text", 5, None, {"a": 1}])
def test_put_non_bytes_value_raises(store, value):
    with pytest.raises(datasync.InvalidValueError) as caught:
        store.put("/named-key", value)
    message = str(caught.value)
    assert "'/named-key'" in message
    assert type(value).__name__ in message


def test_put_value_above_max_raises(open_store):
    store = open_store(max_value_size=100)
    store.put("/fits", b"x" * 100)
    with pytest.raises(datasync.InvalidValueError) as caught:
        store.put("/too-big", b"x" * 101)
    message = str(caught.value)
    assert "'/too-big'" in message
    assert "101 bytes" in message
    assert "100 bytes" in message
    assert "max_value_size" in message
    assert store.get("/too-big") is None


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"),
                                 "5", None, True])
def test_with_ttl_bad_value_raises(ttl):
    with pytest.raises(datasync.InvalidOptionError) as caught:
        datasync.with_ttl(ttl)
    assert repr(ttl) in str(caught.value)


def test_put_ttl_above_max_raises(store):
    with pytest.raises(datasync.InvalidOptionError) as caught:
        store.put("/forever", b"v", datasync.with_ttl(1e300))
    message = str(caught.value)
    assert "1e+300" in message
    assert "'/forever'" in message
    assert store.revision == 0


def test_put_with_delete_option_raises(store):
    with pytest.raises(datasync.InvalidOptionError, match="WithPrefixOpt"):
        store.put("/a", b"v", datasync.with_prefix())
    assert store.revision == 0


def test_delete_with_put_option_raises(store):
    store.put("/a", b"v")
    with pytest.raises(datasync.InvalidOptionError, match="WithTTLOpt"):
        store.delete("/a", datasync.with_ttl(5))
    with pytest.raises(datasync.InvalidOptionError,
                       match="WithClientLifetimeTTLOpt"):
        store.delete("/a", datasync.with_client_lifetime_ttl())
    assert store.get("/a").value == b"v"


def test_put_with_foreign_option_raises(store):
    with pytest.raises(datasync.InvalidOptionError, match="'fast'"):
        store.put("/a", b"v", "fast")


def test_put_with_two_lifetimes_raises(store):
    with pytest.raises(datasync.InvalidOptionError, match="combined"):
        store.put("/a", b"v", datasync.with_ttl(5),
                  datasync.with_client_lifetime_ttl())


def test_open_with_max_below_map_size_raises(tmp_path):
    with pytest.raises(ValueError, match="max_map_size"):
        datasync.Store(tmp_path / "db", map_size=2 * MIB,
                       max_map_size=MIB)


# A full map -----------------------------------------------------------------


def test_full_map_grows_and_write_succeeds(open_store):
    store = open_store(map_size=256 * 1024, max_map_size=64 * MIB)
    before = store.stat()["map_size"]
    revision = store.put("/big", os.urandom(2 * MIB))
    assert revision == 1
    assert len(store.get("/big").value) == 2 * MIB
    assert store.stat()["map_size"] > before


def test_full_map_at_max_raises(open_store, drain):
    store = open_store("db", map_size=MIB, max_map_size=MIB)
    chan = queue.Queue()
    store.watch("full", chan, chan, "/")
    drain(chan, 0)
    committed = {}
    for i in range(5):
        key = f"/small/{i}"
        committed[key] = os.urandom(1000)
        store.put(key, committed[key])

    with pytest.raises(datasync.MapFullError) as caught:
        store.put("/huge", os.urandom(4 * MIB))
    assert "max_map_size" in str(caught.value)
    assert caught.value.map_size == MIB
    assert store.revision == 5

    # The store stays usable, and the failed put sent no event.
    revision = store.put("/after", b"a")
    events = drain(chan, revision)
    assert events[-1].revision == 6
    assert [e.revision for e in events] == [1, 2, 3, 4, 5, 6]
    store.close()

    reopened = open_store("db", map_size=MIB, max_map_size=MIB)
    assert reopened.revision == 6
    assert reopened.get("/huge") is None
    for key, value in committed.items():
        assert reopened.get(key).value == value
    assert [c.revision for c in reopened.changes(0)] == [1, 2, 3, 4, 5, 6]


def test_full_map_txn_writes_nothing(open_store):
    store = open_store(map_size=MIB, max_map_size=MIB)
    store.put("/a", b"1")
    txn = store.txn()
    txn.put("/b", b"2")
    txn.delete("/a")
    txn.put("/c", os.urandom(4 * MIB))
    with pytest.raises(datasync.MapFullError):
        txn.commit()
    assert store.list_keys() == ["/a"]
    assert store.revision == 1


# Paths that are not stores --------------------------------------------------


def test_open_regular_file_raises(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"not a store")
    with pytest.raises(datasync.InvalidStoreError, match="is a file"):
        datasync.Store(path)
    assert path.read_bytes() == b"not a store"


def test_open_foreign_directory_raises(tmp_path):
    path = tmp_path / "docs"
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    with pytest.raises(datasync.InvalidStoreError) as caught:
        datasync.Store(path)
    assert str(path) in str(caught.value)
    assert os.listdir(path) == ["notes.txt"]


def test_open_missing_without_create_raises(tmp_path):
    with pytest.raises(datasync.InvalidStoreError, match="create=True"):
        datasync.Store(tmp_path / "none", create=False)


def test_open_foreign_lmdb_env_raises(tmp_path):
    path = tmp_path / "other"
    env = lmdb.open(str(path))
    with env.begin(write=True) as txn:
        txn.put(b"user-key", b"user-value")
    env.close()

    with pytest.raises(datasync.InvalidStoreError,
                       match="not a datasync store"):
        datasync.Store(path)

    env = lmdb.open(str(path), readonly=True)
    with env.begin() as txn:
        assert list(txn.cursor()) == [(b"user-key", b"user-value")]
    env.close()


def test_open_lmdb_with_wrong_format_raises(tmp_path):
    path = tmp_path / "other"
    env = lmdb.open(str(path), max_dbs=2)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"format", b"someone-else-3", db=meta)
    env.close()
    with pytest.raises(datasync.InvalidStoreError,
                       match="someone-else-3"):
        datasync.Store(path)


def test_open_random_data_file_raises(tmp_path):
    path = tmp_path / "corrupt"
    path.mkdir()
    noise = random.Random(20240601).randbytes(64 * 1024)
    (path / "data.mdb").write_bytes(noise)
    with pytest.raises(datasync.InvalidStoreError) as caught:
        datasync.Store(path)
    assert str(path) in str(caught.value)
    assert (path / "data.mdb").read_bytes() == noise


def test_failed_open_leaves_path_usable(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"x")
    with pytest.raises(datasync.InvalidStoreError):
        datasync.Store(path)
    path.unlink()
    with datasync.Store(path) as store:
        assert store.put("/a", b"1") == 1


# Fills a store per seed, overwrites about half of its pages after the two
# meta pages with random bytes, then opens, reads and writes it. Prints
# {seed: "phase:ExceptionName" or "ok"} as JSON. A child process runs it,
# so that a crash inside LMDB fails the test instead of ending pytest.
CORRUPT_PAGES = """
import json
import mmap
import os
import random
import sys

import datasync

outcomes = {}
for seed in range(int(sys.argv[2])):
    path = os.path.join(sys.argv[1], str(seed))
    with datasync.Store(path, durable=False) as store:
        with store.txn() as txn:
            for i in range(200):
                txn.put("/k/%03d" % i, bytes([i]) * 300)
    data_file = os.path.join(path, "data.mdb")
    with open(data_file, "rb") as f:
        data = bytearray(f.read())
    noise = random.Random(seed)
    size = mmap.PAGESIZE
    for page in range(2, len(data) // size):
        if noise.random() < 0.5:
            data[page * size:(page + 1) * size] = noise.randbytes(size)
    with open(data_file, "wb") as f:
        f.write(data)
    phase = "open"
    try:
        with datasync.Store(path) as store:
            phase = "read"
            store.list_values("/")
            store.changes(0)
            phase = "write"
            store.put("/new", b"x")
        outcomes[seed] = "ok"
    except Exception as exc:
        outcomes[seed] = phase + ":" + type(exc).__name__
print(json.dumps(outcomes))
"""


def test_damaged_pages_raise_invalid_store(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", CORRUPT_PAGES, str(tmp_path), "15"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    outcomes = json.loads(result.stdout)
    unexpected = {seed: outcome for seed, outcome in outcomes.items()
                  if outcome != "ok" and
                  not outcome.endswith(":InvalidStoreError")}
    assert unexpected == {}
    # Some stores must open and fail later, or the read path went untested.
    assert any(o.startswith("read:") for o in outcomes.values())


# Use after close ------------------------------------------------------------


CLOSED_CALLS = {
    "revision": lambda s: s.revision,
    "get": lambda s: s.get("/a"),
    "put": lambda s: s.put("/a", b"1"),
    "delete": lambda s: s.delete("/a"),
    "list_keys": lambda s: s.list_keys(),
    "list_values": lambda s: s.list_values(),
    "changes": lambda s: s.changes(0),
    "stat": lambda s: s.stat(),
    "compact": lambda s: s.compact(0),
    "txn": lambda s: s.txn(),
    "watch": lambda s: s.watch("w", queue.Queue(), queue.Queue(), "/"),
}


@pytest.mark.parametrize("call", CLOSED_CALLS.values(),
                         ids=CLOSED_CALLS.keys())
def test_use_after_close_raises(tmp_path, call):
    store = datasync.Store(tmp_path / "db")
    store.put("/a", b"1")
    store.close()
    with pytest.raises(datasync.StoreClosedError, match="closed"):
        call(store)


def test_close_twice_is_harmless(tmp_path):
    store = datasync.Store(tmp_path / "db")
    store.close()
    store.close()


def test_txn_commit_after_close_raises(tmp_path):
    store = datasync.Store(tmp_path / "db")
    txn = store.txn()
    txn.put("/a", b"1")
    store.close()
    with pytest.raises(datasync.StoreClosedError):
        txn.commit()
    with datasync.Store(tmp_path / "db") as reopened:
        assert reopened.revision == 0


def test_other_store_open_after_close(open_store):
    first = open_store("db")
    second = open_store("db")
    first.put("/a", b"1")
    first.close()
    assert second.get("/a").value == b"1"
    assert second.put("/b", b"2") == 2


# Compaction -----------------------------------------------------------------


def test_compact_drops_old_changes(store, summary):
    for i in range(5):
        store.put(f"/c/{i}", b"%d" % i)
    assert store.compact(3) == 3
    assert summary(store.changes(3)) == [
        (4, "put", "/c/3", b"3", None),
        (5, "put", "/c/4", b"4", None),
    ]
    stat = store.stat()
    assert stat["compacted_revision"] == 3
    assert stat["log_first_revision"] == 4
    assert store.get("/c/0").value == b"0"


def test_changes_below_compacted_raises(store):
    for i in range(5):
        store.put(f"/c/{i}", b"v")
    store.compact(3)
    with pytest.raises(datasync.CompactedError) as caught:
        store.changes(2)
    assert caught.value.oldest_revision == 4
    assert "3" in str(caught.value)


def test_compact_lower_keeps_floor(store):
    for i in range(4):
        store.put(f"/c/{i}", b"v")
    store.compact(3)
    assert store.compact(1) == 3
    assert store.stat()["compacted_revision"] == 3


def test_compact_above_current_raises(store):
    store.put("/a", b"1")
    with pytest.raises(ValueError, match="revision 5"):
        store.compact(5)
    with pytest.raises(ValueError, match="'2'"):
        store.compact("2")


def test_compact_takes_no_revision(store):
    store.put("/a", b"1")
    store.put("/a", b"2")
    store.compact(2)
    assert store.revision == 2
    assert store.put("/a", b"3") == 3


def test_compaction_persists_across_reopen(open_store):
    store = open_store("db")
    for i in range(4):
        store.put(f"/c/{i}", b"v")
    store.compact(2)
    store.close()
    reopened = open_store("db")
    with pytest.raises(datasync.CompactedError) as caught:
        reopened.changes(0)
    assert caught.value.oldest_revision == 3
    assert [c.revision for c in reopened.changes(2)] == [3, 4]


def test_watch_from_compacted_raises(store):
    for i in range(4):
        store.put(f"/c/{i}", b"v")
    store.compact(3)
    with pytest.raises(datasync.CompactedError) as caught:
        store.watch("late", queue.Queue(), queue.Queue(), "/",
                    from_revision=1)
    assert caught.value.oldest_revision == 4


# Registration and watch arguments -------------------------------------------


def test_registration_properties(store):
    chan = queue.Queue()
    with store.watch("props", chan, chan, "/a/", "/b/", "/a/") as reg:
        assert reg.resync_name == "props"
        assert reg.prefixes == ["/a/", "/b/"]
        assert isinstance(reg, datasync.WatchRegistration)


def test_registration_close_twice_is_harmless(store):
    reg = store.watch("twice", queue.Queue(), queue.Queue(), "/")
    reg.close()
    reg.close()


def test_registration_closed_by_store_close(tmp_path):
    store = datasync.Store(tmp_path / "db")
    reg = store.watch("w", queue.Queue(), queue.Queue(), "/")
    store.close()
    with pytest.raises(datasync.StoreClosedError, match="'w'"):
        reg.register("w", "/b/")


@pytest.mark.parametrize("name", ["", None, 5])
def test_watch_bad_name_raises(store, name):
    with pytest.raises(datasync.RegistrationError, match=repr(name)):
        store.watch(name, queue.Queue(), queue.Queue(), "/")


def test_watch_without_prefix_raises(store):
    with pytest.raises(datasync.RegistrationError, match="prefix"):
        store.watch("none", queue.Queue(), queue.Queue())


def test_watch_bad_channel_raises(store):
    with pytest.raises(TypeError, match="int"):
        store.watch("bad", 42, 42, "/")


def test_watch_int_prefix_raises(store):
    with pytest.raises(datasync.InvalidKeyError, match="prefix"):
        store.watch("bad", queue.Queue(), queue.Queue(), 7)


def test_put_two_ttls_rejected(open_store):
    store = open_store()

    with pytest.raises(datasync.InvalidOptionError, match="given twice"):
        store.put("/ttl/a", b"1", datasync.with_ttl(5), datasync.with_ttl(9))

    assert store.get("/ttl/a") is None
    assert store.revision == 0
