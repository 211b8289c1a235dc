"""Durable commits from many threads against one thread.

Every commit is a one-put transaction with the default synced
durability: commit() returns only after LMDB has synced it to disk. The
figure is commits per second with 1 thread and with 8 threads in the
same run. The store can only reach a higher rate with 8 threads by
committing concurrent transactions together.
"""

import threading

import pytest

import datasync

PER_THREAD = 200

pytestmark = pytest.mark.benchmark(group="durable-commits", min_rounds=3,
                                   warmup=False)


def _run(store, threads):
    def writer(t):
        for i in range(PER_THREAD):
            store.put(f"/bench/durable/{t}/{i}", b"v" * 100)

    workers = [threading.Thread(target=writer, args=(t,))
               for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return threads * PER_THREAD


@pytest.mark.parametrize("threads", [1, 8])
def test_durable_one_put_commits(benchmark, tmp_path, threads):
    """Store: one-put synced commits from 1 or 8 threads."""
    store = datasync.Store(str(tmp_path / "store"))
    benchmark.extra_info["commits"] = threads * PER_THREAD
    commits = benchmark.pedantic(_run, args=(store, threads), rounds=3)
    assert commits == threads * PER_THREAD
    assert store.revision == 3 * commits
    store.close()
