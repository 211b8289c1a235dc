"""Crash test: a committed transaction survives SIGKILL of its writer.

A child process commits transactions in a loop and prints each revision
once commit() has returned. The parent kills it with SIGKILL at a
varying point, reopens the store and checks that every printed revision
is there with its keys and values, and that the revision log has no hole.
"""

import pytest

import datasync

RUNS = 20

WRITER = """
import sys

import datasync

store = datasync.Store(sys.argv[1])
while True:
    n = store.revision + 1
    with store.txn() as txn:
        txn.put("/crash/counter", b"%d" % n)
        txn.put("/crash/key/%02d" % (n % 16), b"value-%d" % n)
        if n % 5 == 0:
            txn.delete("/crash/key/%02d" % ((n * 7) % 16))
    print(txn.revision, flush=True)
"""


def replay(changes):
    """Return the key-values that applying ``changes`` in order leaves."""
    state = {}
    for change in changes:
        if change.value is None:
            state.pop(change.key, None)
        else:
            state[change.key] = change.value
    return state


@pytest.mark.parametrize("run", range(RUNS))
def test_committed_revisions_survive_sigkill(tmp_path, spawn_python, run):
    path = tmp_path / "store"
    writer = spawn_python(WRITER, path)
    # Kill after a different number of commits in each run, so the kill
    # lands at different points of a commit.
    commits = 3 + (run * 13) % 60
    reported = [int(writer.readline()) for _ in range(commits)]
    writer.kill()

    assert reported == list(range(1, commits + 1))
    with datasync.Store(path) as store:
        last = store.revision
        assert last >= reported[-1]
        log = store.changes(0)
        revisions = sorted({change.revision for change in log})
        assert revisions == list(range(1, last + 1))
        stat = store.stat()
        assert stat["log_entries"] == last
        assert stat["log_first_revision"] == 1
        assert stat["log_last_revision"] == last

        for revision in reported:
            changes = {(c.key, c.value) for c in log
                       if c.revision == revision}
            assert ("/crash/counter", b"%d" % revision) in changes
            key = "/crash/key/%02d" % (revision % 16)
            assert (key, b"value-%d" % revision) in changes

        counter = store.get("/crash/counter")
        assert counter.value == b"%d" % last
        assert counter.version == last
        stored = {kv.key: kv.value for kv in store.list_values("/")}
        assert stored == replay(log)
        assert store.put("/crash/after", b"ok") == last + 1
