"""Commit throughput against batch size, the store beside raw LMDB.

Each round writes 10,000 changes to existing keys in transactions of 1,
10, 100, 1,000 or 10,000 puts. Both sides run with sync disabled
(durable=False, LMDB sync=False), so the figure shows the CPU cost of a
commit rather than the disk's sync latency, which durable commits
measure separately. The store's side includes its revision log and one
subscriber receiving every change.
"""

import queue
import random

import lmdb
import pytest

import datasync
from conftest import VALUE_SIZE, make_keys

TOTAL = 10_000
BATCHES = [1, 10, 100, 1_000, 10_000]


@pytest.fixture(scope="module")
def keys():
    return make_keys(TOTAL, seed=11)


@pytest.mark.benchmark(group="batch-raw", warmup=False)
@pytest.mark.parametrize("batch", BATCHES)
def test_raw_lmdb_batches(benchmark, keys, tmp_path, batch):
    """Raw LMDB: 10,000 puts in transactions of ``batch`` puts."""
    env = lmdb.open(str(tmp_path / "raw"), map_size=1 << 30, sync=False)
    value = random.Random(2).randbytes(VALUE_SIZE)
    with env.begin(write=True) as txn:
        for key in keys:
            txn.put(key, value)

    def commit():
        for start in range(0, TOTAL, batch):
            with env.begin(write=True) as txn:
                for key in keys[start:start + batch]:
                    txn.put(key, value)

    benchmark.extra_info.update(changes=TOTAL, batch=batch)
    benchmark.pedantic(commit, rounds=3)
    env.close()


@pytest.mark.benchmark(group="batch-store", warmup=False)
@pytest.mark.parametrize("batch", BATCHES)
def test_store_batches(benchmark, keys, tmp_path, batch):
    """Store: 10,000 puts in transactions of ``batch`` puts, watched."""
    store = datasync.Store(str(tmp_path / "store"), durable=False)
    value = random.Random(2).randbytes(VALUE_SIZE)
    with store.txn() as txn:
        for key in keys:
            txn.put(key, value)
    events = queue.Queue()
    registration = store.watch("batch", events, events, "/vnf-agent/")
    events.get(timeout=60).done()

    def commit():
        for start in range(0, TOTAL, batch):
            with store.txn() as txn:
                for key in keys[start:start + batch]:
                    txn.put(key, value)
        received = 0
        while received < TOTAL:
            received += len(events.get(timeout=60).changes)

    benchmark.extra_info.update(changes=TOTAL, batch=batch)
    benchmark.pedantic(commit, rounds=3)
    registration.close()
    store.close()
