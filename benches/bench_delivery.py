"""Delivery rate: changes reaching a consumer thread through a queue.

The log contains 10,000 commits of 100 changes each (1,000,000
changes). A subscription that resumes from revision 0 receives them all
through a queue.Queue read by a consumer thread. The figure is changes
per second from watch() to the last change received. The baseline is the same
consumer thread reading the same number of pre-built events from a
queue.Queue filled by a producer thread, which is the floor set by
Python's queue alone.
"""

import queue
import threading

import pytest

import datasync

COMMITS = 10_000
PER_COMMIT = 100
TOTAL = COMMITS * PER_COMMIT

pytestmark = pytest.mark.benchmark(group="delivery-1M", min_rounds=3,
                                   warmup=False)


@pytest.fixture(scope="module")
def loaded_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("delivery") / "store"
    store = datasync.Store(str(path), map_size=1 << 32, durable=False)
    value = b"x" * 100
    for c in range(COMMITS):
        with store.txn() as txn:
            for i in range(PER_COMMIT):
                txn.put(f"/bench/delivery/{i:04d}", value)
    yield store
    store.close()


def _consume(events, total):
    received = 0
    while received < total:
        event = events.get(timeout=60)
        received += len(event.changes)
    return received


def test_store_delivery_queue(benchmark, loaded_store):
    """Store: 1,000,000 changes from the log to a consumer thread."""
    rounds = iter(range(1000))

    def deliver():
        events = queue.Queue()
        result = []
        consumer = threading.Thread(
            target=lambda: result.append(_consume(events, TOTAL)))
        consumer.start()
        registration = loaded_store.watch(
            f"delivery-{next(rounds)}", events, events, "/bench/",
            from_revision=0)
        consumer.join(timeout=120)
        registration.close()
        return result[0]

    benchmark.extra_info["changes"] = TOTAL
    received = benchmark.pedantic(deliver, rounds=3)
    assert received == TOTAL


def test_queue_only_baseline(benchmark):
    """Baseline: pre-built events of 100 changes through a queue.Queue."""
    batch = [object()] * PER_COMMIT

    class Event:
        changes = batch

    def deliver():
        events = queue.Queue()
        result = []
        consumer = threading.Thread(
            target=lambda: result.append(_consume(events, TOTAL)))
        consumer.start()
        for _ in range(COMMITS):
            events.put(Event)
        consumer.join(timeout=120)
        return result[0]

    benchmark.extra_info["changes"] = TOTAL
    received = benchmark.pedantic(deliver, rounds=3)
    assert received == TOTAL
