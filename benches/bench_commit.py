"""Commit throughput of the store against raw LMDB puts, side by side.

Both sides write the same 100,000 random existing keys with 100-byte
values in one transaction, with LMDB's default synced durability, in the
same process and run. The store also writes its revision log and the
previous values, and the benchmark includes a subscriber thread that
receives every change: a round ends only when the subscriber has the
whole commit.
"""

import os
import queue
import random

import lmdb
import pytest

import datasync
from conftest import VALUE_SIZE, make_keys

KEYS = 100_000
pytestmark = pytest.mark.benchmark(group="commit-100k", min_rounds=5,
                                   warmup=False)


@pytest.fixture(scope="module")
def keys():
    return make_keys(KEYS)


def _values(count, rng):
    return [rng.randbytes(VALUE_SIZE) for _ in range(count)]


def test_raw_lmdb_puts(benchmark, keys, bench_dir):
    """Raw LMDB: the baseline, one put per key in one write txn."""
    env = lmdb.open(str(bench_dir / "raw"), map_size=1 << 32)
    rng = random.Random(1)
    with env.begin(write=True) as txn:
        for key in keys:
            txn.put(key, rng.randbytes(VALUE_SIZE))

    def commit(values):
        with env.begin(write=True) as txn:
            for key, value in zip(keys, values):
                txn.put(key, value)

    benchmark.extra_info["changes"] = KEYS
    benchmark.pedantic(commit, setup=lambda: ((_values(KEYS, rng),), {}),
                       rounds=5)
    env.close()


def test_store_commit_with_subscriber(benchmark, keys, bench_dir):
    """Store: one transaction of 100,000 puts, with log and subscriber."""
    store = datasync.Store(str(bench_dir / "store"), map_size=1 << 32)
    rng = random.Random(1)
    with store.txn() as txn:
        for key in keys:
            txn.put(key, rng.randbytes(VALUE_SIZE))
    events = queue.Queue()
    registration = store.watch("bench", events, events,
                               "/vnf-agent/bench/")
    events.get(timeout=60).done()

    def commit(values):
        with store.txn() as txn:
            for key, value in zip(keys, values):
                txn.put(key, value)
        received = 0
        while received < KEYS:
            event = events.get(timeout=60)
            received += len(event.changes)
            event.done()

    benchmark.extra_info["changes"] = KEYS
    benchmark.pedantic(commit, setup=lambda: ((_values(KEYS, rng),), {}),
                       rounds=5)
    registration.close()
    store.close()
