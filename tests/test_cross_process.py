"""Watching a store from another process.

The watcher child prints one JSON object per event. Wake-ups between
processes go through Unix datagram sockets, so an idle watcher sleeps in
select() instead of polling the store.
"""

import json
import os
import queue

from datasync.keyval.lmdb.notify import Notifier

# Prints each event as a JSON line: {"type": "resync", "revision": R,
# "values": {key: value}} or {"type": "change", "revision": R, "changes":
# [[op, key, value, prev value], ...]}. Values are decoded as UTF-8.
WATCHER = """
import json
import queue
import sys

import datasync
from datasync.events import ResyncEvent


def text(value):
    return None if value is None else value.decode()


store = datasync.Store(sys.argv[1])
from_revision = None if sys.argv[2] == "-" else int(sys.argv[2])
chan = queue.Queue()
store.watch("remote", chan, chan, "/cfg/", from_revision=from_revision)
while True:
    event = chan.get()
    if isinstance(event, ResyncEvent):
        values = {kv.key: text(kv.value)
                  for iterator in event.values.values() for kv in iterator}
        line = {"type": "resync", "revision": event.revision,
                "values": values}
    else:
        changes = [[c.change_type.value, c.key, text(c.value),
                    text(c.prev_value)] for c in event.changes]
        line = {"type": "change", "revision": event.revision,
                "changes": changes}
    print(json.dumps(line), flush=True)
    event.done()
"""

WRITER = """
import sys

import datasync

with datasync.Store(sys.argv[1]) as store:
    for i in range(int(sys.argv[2])):
        store.put("/cfg/remote/%d" % (i % 3), b"%d" % i)
"""


def cpu_seconds(pid):
    """User plus system CPU time of process ``pid``, in seconds.

    Fields 14 and 15 of /proc/PID/stat, in clock ticks (proc(5)).
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def read_event(child):
    return json.loads(child.readline())


def test_remote_watcher_sees_every_commit(store, spawn_python):
    store.put("/cfg/a", b"1")
    store.put("/other", b"x")
    child = spawn_python(WATCHER, store.path, "-")
    assert read_event(child) == {"type": "resync", "revision": 2,
                                 "values": {"/cfg/a": "1"}}

    store.put("/cfg/b", b"2")
    store.put("/cfg/a", b"3")
    store.put("/other", b"y")
    store.delete("/cfg/b")
    with store.txn() as txn:
        txn.put("/cfg/c", b"4")
        txn.put("/other", b"z")
        txn.put("/cfg/d", b"5")
    expected = [
        {"type": "change", "revision": 3,
         "changes": [["put", "/cfg/b", "2", None]]},
        {"type": "change", "revision": 4,
         "changes": [["put", "/cfg/a", "3", "1"]]},
        {"type": "change", "revision": 6,
         "changes": [["delete", "/cfg/b", None, "2"]]},
        {"type": "change", "revision": 7,
         "changes": [["put", "/cfg/c", "4", None],
                     ["put", "/cfg/d", "5", None]]},
    ]
    assert [read_event(child) for _ in expected] == expected


def test_remote_watcher_idle_then_woken(store, spawn_python):
    child = spawn_python(WATCHER, store.path, "-")
    assert read_event(child)["type"] == "resync"
    store.put("/cfg/warm", b"1")
    assert read_event(child)["revision"] == 1

    # While nothing is written the watcher prints nothing and should sit
    # in select(); 0.2 s of CPU in one second is a generous bound for
    # that, far below what a polling loop burns.
    before = cpu_seconds(child.pid)
    try:
        line = child.lines.get(timeout=1.0)
    except queue.Empty:
        line = None
    used = cpu_seconds(child.pid) - before
    assert line is None
    assert used < 0.2

    store.put("/cfg/late", b"2")
    assert read_event(child) == {
        "type": "change", "revision": 2,
        "changes": [["put", "/cfg/late", "2", None]]}


def test_remote_watcher_from_revision(store, spawn_python):
    for i in range(4):
        store.put(f"/cfg/{i}", b"%d" % i)
    child = spawn_python(WATCHER, store.path, 2)
    assert [read_event(child) for _ in range(2)] == [
        {"type": "change", "revision": 3,
         "changes": [["put", "/cfg/2", "2", None]]},
        {"type": "change", "revision": 4,
         "changes": [["put", "/cfg/3", "3", None]]},
    ]


def test_local_watcher_sees_remote_writer(store, drain, spawn_python):
    chan = queue.Queue()
    store.watch("local", chan, chan, "/cfg/")
    drain(chan, 0)
    writer = spawn_python(WRITER, store.path, 30)

    events = drain(chan, 30)
    assert writer.proc.wait(timeout=30) == 0, writer.error_output()
    assert [e.revision for e in events] == list(range(1, 31))
    values = [e.changes[0].value for e in events]
    assert values == [b"%d" % i for i in range(30)]
    prevs = [e.changes[0].prev_value for e in events]
    assert prevs == [None] * 3 + [b"%d" % i for i in range(27)]


def test_writer_processes_share_revisions(store, spawn_python):
    writers = [spawn_python(WRITER, store.path, 40) for _ in range(3)]
    for writer in writers:
        assert writer.proc.wait(timeout=60) == 0, writer.error_output()
    log = store.changes(0)
    assert store.revision == 120
    assert [c.revision for c in log] == list(range(1, 121))
    values = {kv.key: kv.value for kv in store.list_values("/cfg/")}
    assert sorted(values) == ["/cfg/remote/0", "/cfg/remote/1",
                              "/cfg/remote/2"]


def test_remote_growth_of_map_adopted(open_store, spawn_python):
    # Another process grows the map past this process's size; this
    # process must adopt the new size to read and write again.
    store = open_store(map_size=1 << 20, max_map_size=1 << 26)
    store.put("/cfg/small", b"1")
    grower = spawn_python(
        "import sys, datasync\n"
        "with datasync.Store(sys.argv[1], map_size=1 << 20,"
        " max_map_size=1 << 26) as s:\n"
        "    s.put('/cfg/big', bytes(8 << 20))\n", store.path)
    assert grower.proc.wait(timeout=30) == 0, grower.error_output()

    assert len(store.get("/cfg/big").value) == 8 << 20
    assert store.put("/cfg/after", b"2") == 3
    assert store.stat()["map_size"] >= 8 << 20


def test_notifier_finds_socket_bound_same_tick(tmp_path):
    generations = [0]
    sender = Notifier(str(tmp_path))
    sender.broadcast(generations[0])
    mtime = os.stat(sender.directory).st_mtime_ns
    receiver = Notifier(str(tmp_path))
    receiver.listen(lambda: generations.append(generations[-1] + 1))
    # On a file system with coarse timestamps the bind can leave the
    # directory's mtime unchanged. The listener generation, not the
    # mtime, must make the sender list the directory again.
    os.utime(sender.directory, ns=(mtime, mtime))
    try:
        sender.broadcast(generations[-1])
        assert receiver.wait(5.0) is True
    finally:
        receiver.close()
        sender.close()
