"""10,000 puts with one watcher: the embedded store beside etcd.

Each round puts 10,000 keys one put (one transaction) at a time and ends
when a watcher of their prefix has received all 10,000 changes. etcd
runs on 127.0.0.1 (Debian's etcd-server, started privately unless
$DATASYNC_TEST_ETCD names one) and syncs its write-ahead log on every
commit; etcd 3.4 has no switch to turn that off. The embedded store runs
both synced (the default) and with durable=False.
"""

import pathlib
import queue
import sys
import uuid

import pytest

import datasync

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "tests"))
from etcd_support import etcd_endpoint  # noqa: E402,F401

PUTS = 10_000

pytestmark = pytest.mark.benchmark(group="etcd-10k-puts", min_rounds=1,
                                   warmup=False)


def _put_and_receive(store, prefix, events):
    value = b"v" * 100
    for i in range(PUTS):
        store.put(f"{prefix}{i:05d}", value)
    received = 0
    while received < PUTS:
        received += len(events.get(timeout=120).changes)
    return received


def _watched_round(store, prefix):
    events = queue.Queue()
    registration = store.watch(f"bench-{uuid.uuid4().hex}", events, events,
                               prefix)
    events.get(timeout=60).done()
    try:
        return _put_and_receive(store, prefix, events)
    finally:
        registration.close()


@pytest.mark.parametrize("durable", [True, False],
                         ids=["synced", "not-synced"])
def test_embedded_puts_with_watcher(benchmark, tmp_path, durable):
    """Embedded store: 10,000 single puts with one watcher."""
    store = datasync.Store(str(tmp_path / "store"), durable=durable)
    rounds = iter(range(100))

    def run():
        return _watched_round(store, f"/bench/etcd/{next(rounds)}/")

    benchmark.extra_info["puts"] = PUTS
    assert benchmark.pedantic(run, rounds=2) == PUTS
    store.close()


def test_etcd_puts_with_watcher(benchmark, etcd_endpoint):  # noqa: F811
    """etcd on loopback through the etcd backend, same puts and watcher."""
    from datasync.keyval.etcd import EtcdStore

    store = EtcdStore(etcd_endpoint, serializer="binary")
    prefix = f"/bench/etcd/{uuid.uuid4().hex}/"
    benchmark.extra_info["puts"] = PUTS
    assert benchmark.pedantic(_watched_round, args=(store, prefix),
                              rounds=1) == PUTS
    store.delete(prefix, datasync.with_prefix())
    store.close()
