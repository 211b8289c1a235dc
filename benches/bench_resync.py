"""Resync iteration: a subscriber reads a snapshot of 1,000,000 keys.

The figure is keys per second from receiving the resync event to the
end of its iterator, reading each key and the unparsed value bytes. The
baseline is a raw LMDB cursor over the same table in the same run.
"""

import queue

import lmdb
import pytest

import datasync

KEYS = 1_000_000

pytestmark = pytest.mark.benchmark(group="resync-1M", min_rounds=3,
                                   warmup=False)


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("resync") / "store"
    store = datasync.Store(str(path), map_size=1 << 33, durable=False)
    value = b"v" * 100
    batch = 100_000
    for start in range(0, KEYS, batch):
        with store.txn() as txn:
            for i in range(start, start + batch):
                txn.put(f"/bench/resync/{i:08d}", value)
    yield store
    store.close()


def test_store_resync_iteration(benchmark, big_store):
    """Store: iterate a 1,000,000-key resync, key and value bytes."""
    names = iter(range(1000))

    def resync():
        events = queue.Queue()
        registration = big_store.watch(f"resync-{next(names)}", events,
                                       events, "/bench/resync/")
        event = events.get(timeout=60)
        count = 0
        for values in event.values.values():
            for kv in values:
                kv.key
                kv.value
                count += 1
        event.done()
        registration.close()
        return count

    benchmark.extra_info["keys"] = KEYS
    assert benchmark.pedantic(resync, rounds=3) == KEYS


def test_raw_lmdb_cursor_baseline(benchmark, big_store):
    """Baseline: a raw LMDB cursor over the same 1,000,000 keys."""
    env = big_store._shared.env
    table = big_store._shared.kv

    def scan():
        count = 0
        with env.begin(db=table) as txn:
            for key, value in txn.cursor():
                count += 1
        return count

    benchmark.extra_info["keys"] = KEYS
    assert benchmark.pedantic(scan, rounds=3) == KEYS


WATCHER = r"""
import queue, sys
import datasync
store = datasync.Store(sys.argv[1])
events = queue.Queue()
registration = store.watch("memory", events, events, "/bench/resync/")
event = events.get(timeout=120)
count = sum(1 for values in event.values.values() for kv in values)
event.done()
print("ready", count, flush=True)
sys.stdin.readline()
event = events.get(timeout=60)
assert event.changes[0].key == "/bench/resync/extra"
status = open("/proc/self/status").read()
peak = [line for line in status.splitlines() if line.startswith("VmHWM")]
print(peak[0].split()[1], flush=True)
"""

BARE = r"""
import datasync
status = open("/proc/self/status").read()
peak = [line for line in status.splitlines() if line.startswith("VmHWM")]
print(peak[0].split()[1], flush=True)
"""


def test_watcher_process_memory(benchmark, big_store):
    """Peak RSS of a watcher process over the 1,000,000-key store.

    The watcher takes the resync (reading every key, no value) and one
    change. The baseline is a process that only imports datasync.
    """
    import subprocess
    import sys

    def measure():
        child = subprocess.Popen(
            [sys.executable, "-c", WATCHER, big_store.path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = child.stdout.readline().split()
        assert ready == ["ready", str(KEYS)]
        big_store.put("/bench/resync/extra", b"x")
        child.stdin.write("go\n")
        child.stdin.flush()
        peak_kib = int(child.stdout.readline())
        child.wait(timeout=60)
        big_store.delete("/bench/resync/extra")
        bare = subprocess.run([sys.executable, "-c", BARE],
                              capture_output=True, text=True, check=True)
        return peak_kib, int(bare.stdout)

    peak_kib, bare_kib = benchmark.pedantic(measure, rounds=1)
    benchmark.extra_info.update(peak_rss_mib=peak_kib / 1024,
                                bare_import_rss_mib=bare_kib / 1024)
