"""Tests of msgsync: publishing changes to a topic on NATS JetStream and
watching it, against real nats-server processes.

Tests reach NATS in one of three ways:

- a private nats-server started on a free port of 127.0.0.1 with a
  temporary store directory, when the ``nats-server`` binary exists (the
  tests that kill the server always use one of these);
- ``$DATASYNC_TEST_NATS`` (host:port), a running server with JetStream,
  as .ci/run starts one, for the tests that leave the server alone;
- otherwise the tests are skipped, unless ``$DATASYNC_REQUIRE_NATS`` is
  set (CI sets it), when they fail.
"""

import asyncio
import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid

import pytest
from google.protobuf import struct_pb2, wrappers_pb2
from hypothesis import given
from hypothesis import strategies as st

import datasync
from datasync import Op, cli
from datasync.events import ResyncEvent

nats = pytest.importorskip(
    "nats", reason="msgsync needs nats-py: pip install 'datasync[nats]'")

from datasync.msgsync import (AsyncTopicPublisher,  # noqa: E402
                              AsyncTopicWatcher, BrokerUnavailableError,
                              PublishTimeoutError, TopicPublisher,
                              TopicWatcher, wire)

ADDRESS_ENV = "DATASYNC_TEST_NATS"
REQUIRE_ENV = "DATASYNC_REQUIRE_NATS"

#: Seconds to wait for an event, a line or a server that should come; only
#: a failing test waits this long.
TIMEOUT = 30.0


# Servers -------------------------------------------------------------------

def nats_binary():
    """Path of the nats-server binary, or None."""
    return shutil.which("nats-server") or shutil.which(
        "nats-server", path="/usr/sbin:/usr/local/sbin")


def unavailable(reason):
    """Skip the test for ``reason``, or fail it when CI requires NATS."""
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{reason}, but ${REQUIRE_ENV} is set, so the NATS "
                    "tests must run")
    pytest.skip(f"{reason}; install Debian's nats-server or set "
                f"${ADDRESS_ENV}=host:port")


def free_port():
    """Return a TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NatsServer:
    """A private nats-server with JetStream on 127.0.0.1.

    It can be killed and started again on the same port and store, so
    tests can restart it under live clients.
    """

    def __init__(self, store_dir):
        self.store_dir = str(store_dir)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc = None
        self.output = []

    def start(self):
        """Start the server and wait until it logs that it is ready."""
        self.proc = subprocess.Popen(
            [nats_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-sd", self.store_dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ready = threading.Event()
        threading.Thread(target=self._read_log, args=(self.proc, ready),
                         daemon=True).start()
        if not ready.wait(TIMEOUT):
            self.kill()
            raise RuntimeError(
                f"nats-server on port {self.port} was not ready within "
                f"{TIMEOUT} s; its log: {''.join(self.output[-20:])}")
        return self

    def _read_log(self, proc, ready):
        for line in proc.stderr:
            self.output.append(line)
            if "Server is ready" in line:
                ready.set()
        proc.stderr.close()

    def kill(self):
        """Kill the server with SIGKILL and wait until it is reaped."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=TIMEOUT)
            self.proc = None


@pytest.fixture
def private_nats(tmp_path):
    """A nats-server of this test alone, killed at teardown."""
    if nats_binary() is None:
        unavailable("the nats-server binary is not installed")
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def nats_address(tmp_path_factory):
    """HOST:PORT of a nats-server with JetStream shared by this module."""
    address = os.environ.get(ADDRESS_ENV)
    if address:
        yield address
        return
    if nats_binary() is None:
        unavailable("the nats-server binary is not installed")
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server.address
    server.kill()


@pytest.fixture
def topic():
    """A topic name used by no other test."""
    return "t" + uuid.uuid4().hex[:16]


@pytest.fixture
def open_client():
    """Return a function that records a publisher or watcher to close."""
    clients = []

    def record(client):
        clients.append(client)
        return client

    yield record
    for client in reversed(clients):
        client.close()


def text(value):
    """A protobuf StringValue message of ``value``."""
    return wrappers_pb2.StringValue(value=value)


def get(chan, what):
    """Return the next event of ``chan``, failing after TIMEOUT seconds."""
    try:
        return chan.get(timeout=TIMEOUT)
    except queue.Empty:
        pytest.fail(f"no {what} within {TIMEOUT} s")


def resync_values(event):
    """Return {prefix: [(key, value bytes, revision)]} of a resync."""
    return {prefix: [(kv.key, kv.value, kv.revision) for kv in values]
            for prefix, values in event.values.items()}


def change_tuple(event):
    """Return (revision, op, key, value, prev value) of a 1-change event."""
    change = event.changes[0]
    return (change.revision, change.change_type, change.key, change.value,
            change.prev_value)


def expected_changes(published, prefix, after):
    """Return the change tuples a watcher of ``prefix`` gets after a
    revision, from (revision, op, key, value) tuples in stream order."""
    latest = {}
    out = []
    for revision, op, key, value in published:
        prev = latest.get(key)
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = value
        if revision <= after or not key.startswith(prefix):
            continue
        if op is Op.PUT or prev is not None:
            out.append((revision, op, key, value, prev))
    return out


# The wire format ------------------------------------------------------------

@given(st.binary(min_size=1, max_size=wire.MAX_KEY_SIZE))
def test_key_token_round_trip(data):
    token = wire.encode_token(data)
    assert wire.decode_token(token) == data
    assert not set(token) & set(". \t\r\n*>")


def test_key_token_keeps_readable_keys():
    assert wire.encode_token(b"config/iface/eth0") == "config/iface/eth0"
    assert wire.encode_token(b"a.b c%") == "a%2Eb%20c%25"


def test_key_token_rejects_other_spellings():
    with pytest.raises(ValueError):
        wire.decode_token("a%2eb")
    with pytest.raises(ValueError):
        wire.decode_token("a b")


def test_consumer_name_escapes_path_chars():
    name = wire.consumer_name("agent/one.x_y")
    assert name == "ds_agent_2Fone_2Ex_5Fy"


def test_topic_name_rejects_dots():
    with pytest.raises(datasync.InvalidOptionError):
        wire.check_topic("a.b")


# Publishing and watching ---------------------------------------------------

def test_publish_ten_thousand_changes(nats_address, topic, open_client):
    publisher = open_client(TopicPublisher(nats_address, topic))
    watcher = open_client(TopicWatcher(nats_address, topic))
    changes, resyncs = queue.Queue(), queue.Queue()
    watcher.watch("ten-thousand", changes, resyncs, "k/")
    resync = get(resyncs, "resync")
    resync.done()
    assert resync_values(resync) == {"k/": []}

    published = []
    for i in range(10_000):
        key = f"k/{i % 97}"
        if i % 13 == 12:
            published.append((publisher.delete(key), Op.DELETE, key, None))
        else:
            revision = publisher.put(key, text(f"value {i}"))
            published.append((revision, Op.PUT, key,
                              text(f"value {i}").SerializeToString()))
    expected = expected_changes(published, "k/", 0)

    received = []
    for _ in expected:
        event = get(changes, f"change {len(received) + 1}")
        received.append(change_tuple(event))
        event.done()
    assert received == expected
    assert len(received) > 9000
    assert changes.empty()


def test_watch_gets_json_values(nats_address, topic, open_client):
    publisher = open_client(TopicPublisher(nats_address, topic,
                                           encoding="json"))
    watcher = open_client(TopicWatcher(nats_address, topic))
    first = struct_pb2.Struct()
    first.update({"mtu": 1500, "name": "eth0"})
    second = struct_pb2.Struct()
    second.update({"mtu": 9000, "name": "eth0"})
    publisher.put("if/eth0", first)
    changes, resyncs = queue.Queue(), queue.Queue()
    watcher.watch("json", changes, resyncs, "if/")
    resync = get(resyncs, "resync")
    resync.done()
    publisher.put("if/eth0", second)
    event = get(changes, "change")

    snapshot = [kv for values in resync.values.values() for kv in values]
    assert snapshot[0].get_value(struct_pb2.Struct()) == first
    change = event.changes[0]
    assert change.get_value(struct_pb2.Struct()) == second
    prev = struct_pb2.Struct()
    assert change.get_prev_value(prev) is True
    assert prev == first


def with_jetstream(address, call):
    """Return ``await call(js)`` with a JetStream context of a new
    connection to ``address``, the way a foreign client sees the topic."""
    async def run():
        client = await nats.connect(f"nats://{address}")
        try:
            return await call(client.jetstream())
        finally:
            await client.close()

    return asyncio.run(run())


def test_publish_sets_headers(nats_address, topic, open_client):
    publisher = open_client(TopicPublisher(nats_address, topic))
    revision = publisher.put("a b/c", text("x"), msg_id="fixed-id")
    msg = with_jetstream(nats_address, lambda js: js.get_last_msg(
        wire.stream_name(topic), f"datasync.{topic}.a%20b/c"))
    assert msg.seq == revision
    assert msg.headers["Nats-Msg-Id"] == "fixed-id"
    assert msg.headers["Datasync-Op"] == "put"
    assert msg.headers["Datasync-Key"] == "a%20b/c"
    assert msg.headers["Content-Type"] == "application/x-protobuf"
    assert msg.headers["Datasync-Message-Type"] == \
        "google.protobuf.StringValue"
    assert msg.data == text("x").SerializeToString()


def test_retried_publish_stored_once(nats_address, topic, open_client):
    publisher = open_client(TopicPublisher(nats_address, topic))
    first = publisher.put("k", text("one"), msg_id="change-1")
    again = publisher.put("k", text("one, sent again"), msg_id="change-1")
    other = publisher.put("k", text("two"), msg_id="change-2")
    assert again == first
    assert other == first + 1

    watcher = open_client(TopicWatcher(nats_address, topic))
    changes, resyncs = queue.Queue(), queue.Queue()
    watcher.watch("dedup", changes, resyncs, "")
    resync = get(resyncs, "resync")
    assert resync.revision == other
    assert resync_values(resync) == {
        "": [("k", text("two").SerializeToString(), other)]}


def test_resync_latest_value_per_key(nats_address, topic, open_client):
    publisher = open_client(TopicPublisher(nats_address, topic))
    publisher.put("cfg/a", text("a1"))
    publisher.put("cfg/b", text("b1"))
    publisher.put("other/x", text("x1"))
    a2 = publisher.put("cfg/a", text("a2"))
    publisher.put("cfg/c", text("c1"))
    publisher.delete("cfg/c")
    b2 = publisher.put("cfg/b", text("b2"))
    publisher.put("cfgx", text("outside the prefix"))
    last = publisher.put("other/x", text("x2"))

    watcher = open_client(TopicWatcher(nats_address, topic))
    changes, resyncs = queue.Queue(), queue.Queue()
    watcher.watch("latest", changes, resyncs, "cfg/")
    resync = get(resyncs, "resync")
    assert resync.revision == last
    assert resync_values(resync) == {"cfg/": [
        ("cfg/a", text("a2").SerializeToString(), a2),
        ("cfg/b", text("b2").SerializeToString(), b2),
    ]}
    resync.done()


def test_topic_keeps_no_versions(nats_address, topic, open_client):
    publisher = open_client(TopicPublisher(nats_address, topic))
    publisher.put("v/a", text("1"))
    second = publisher.put("v/a", text("2"))
    watcher = open_client(TopicWatcher(nats_address, topic))
    changes, resyncs = queue.Queue(), queue.Queue()
    watcher.watch("versions", changes, resyncs, "v/")
    kv = list(get(resyncs, "resync").values["v/"])[0]
    assert kv.revision == second
    assert kv.create_revision == 0
    assert kv.version == 0


def test_changes_follow_resync_exactly(nats_address, topic, open_client):
    publisher = open_client(TopicPublisher(nats_address, topic))
    for i in range(50):
        publisher.put(f"r/{i % 5}", text(f"before {i}"))
    watcher = open_client(TopicWatcher(nats_address, topic))
    chan = queue.Queue()
    watcher.watch("race", chan, chan, "r/")
    after = [publisher.put(f"r/{i % 5}", text(f"after {i}"))
             for i in range(50)]

    resync = get(chan, "resync")
    resync.done()
    state = {kv.key: kv.value for values in resync.values.values()
             for kv in values}
    revisions = []
    while not revisions or revisions[-1] < after[-1]:
        event = get(chan, "change")
        change = event.changes[0]
        assert change.revision > resync.revision
        assert change.prev_value == state[change.key]
        state[change.key] = change.value
        revisions.append(change.revision)
        event.done()
    assert revisions == [r for r in after if r > resync.revision]
    assert state == {f"r/{i}": text(f"after {45 + i}").SerializeToString()
                     for i in range(5)}


def test_delete_of_missing_key_silent(nats_address, topic, open_client):
    publisher = open_client(TopicPublisher(nats_address, topic))
    watcher = open_client(TopicWatcher(nats_address, topic))
    changes, resyncs = queue.Queue(), queue.Queue()
    watcher.watch("missing", changes, resyncs, "")
    get(resyncs, "resync").done()
    publisher.delete("never-written")
    revision = publisher.put("written", text("x"))
    event = get(changes, "change")
    assert change_tuple(event) == (
        revision, Op.PUT, "written", text("x").SerializeToString(), None)


def test_delete_with_prefix(nats_address, topic, open_client):
    publisher = open_client(TopicPublisher(nats_address, topic))
    publisher.put("p/a", text("a"))
    publisher.put("p/b", text("b"))
    publisher.put("p/c", text("c"))
    publisher.delete("p/b")
    publisher.put("q/a", text("q"))
    last = publisher.delete("p/", datasync.with_prefix())
    assert publisher.live_keys() == [b"q/a"]

    watcher = open_client(TopicWatcher(nats_address, topic))
    changes, resyncs = queue.Queue(), queue.Queue()
    watcher.watch("prefix", changes, resyncs, "")
    resync = get(resyncs, "resync")
    assert resync.revision == last
    assert [kv.key for kv in resync.values[""]] == ["q/a"]


def test_registration_resync_sends_snapshot(nats_address, topic,
                                            open_client):
    publisher = open_client(TopicPublisher(nats_address, topic))
    watcher = open_client(TopicWatcher(nats_address, topic))
    changes, resyncs = queue.Queue(), queue.Queue()
    registration = watcher.watch("again", changes, resyncs, "s/")
    get(resyncs, "resync").done()
    revision = publisher.put("s/a", text("a"))
    get(changes, "change").done()
    registration.resync()
    resync = get(resyncs, "second resync")
    assert resync.revision == revision
    assert resync_values(resync) == {
        "s/": [("s/a", text("a").SerializeToString(), revision)]}


def test_resync_before_done_acks_all(nats_address, topic, open_client,
                                     caplog):
    publisher = open_client(TopicPublisher(nats_address, topic))
    watcher = open_client(TopicWatcher(nats_address, topic))
    changes, resyncs = queue.Queue(), queue.Queue()
    registration = watcher.watch("pending", changes, resyncs, "a/")
    get(resyncs, "resync").done()
    publisher.put("a/1", text("one"))
    publisher.put("a/2", text("two"))
    first = get(changes, "first change")
    second = get(changes, "second change")
    # The resync comes at the revision of a change not yet done.
    registration.resync()
    resync = get(resyncs, "second resync")
    first.done()
    second.done()
    resync.done()
    revision = publisher.put("a/3", text("three"))
    get(changes, "third change").done()
    assert resync.revision == second.revision
    assert registration.flush() == revision
    assert [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR] == []


def test_register_adds_prefix(nats_address, topic, open_client):
    publisher = open_client(TopicPublisher(nats_address, topic))
    watcher = open_client(TopicWatcher(nats_address, topic))
    changes, resyncs = queue.Queue(), queue.Queue()
    registration = watcher.watch("grow", changes, resyncs, "a/")
    get(resyncs, "resync").done()
    publisher.put("b/1", text("before"))
    # The watch handled "before" once the change of a/1 after it arrives.
    marker = publisher.put("a/1", text("marker"))
    assert get(changes, "marker").revision == marker
    registration.register("grow", "b/")
    second = publisher.put("b/1", text("after"))
    event = get(changes, "change")
    assert change_tuple(event) == (
        second, Op.PUT, "b/1", text("after").SerializeToString(),
        text("before").SerializeToString())
    assert registration.prefixes == ["a/", "b/"]


def test_callback_channel_gets_changes(nats_address, topic, open_client):
    publisher = open_client(TopicPublisher(nats_address, topic))
    watcher = open_client(TopicWatcher(nats_address, topic))
    seen = queue.Queue()

    def on_event(event):
        seen.put(event)
        event.done()

    watcher.watch("callback", on_event, on_event, "")
    assert isinstance(get(seen, "resync"), ResyncEvent)
    revision = publisher.put("c", text("x"))
    assert get(seen, "change").revision == revision


def test_async_publish_and_watch(nats_address, topic):
    async def scenario():
        async with AsyncTopicPublisher(nats_address, topic) as publisher, \
                AsyncTopicWatcher(nats_address, topic) as watcher:
            chan = asyncio.Queue()
            registration = await watcher.watch("asyncio", chan, chan, "")
            resync = await asyncio.wait_for(chan.get(), TIMEOUT)
            resync.done()
            revision = await publisher.put("k", text("v"))
            event = await asyncio.wait_for(chan.get(), TIMEOUT)
            event.done()
            acked = await registration.flush()
            return resync.revision, revision, change_tuple(event), acked

    resync_revision, revision, change, acked = asyncio.run(scenario())
    assert resync_revision == 0
    assert change == (revision, Op.PUT, "k", text("v").SerializeToString(),
                      None)
    assert acked == revision


def test_foreign_message_is_skipped(nats_address, topic, open_client):
    publisher = open_client(TopicPublisher(nats_address, topic))
    watcher = open_client(TopicWatcher(nats_address, topic))
    changes, resyncs = queue.Queue(), queue.Queue()
    registration = watcher.watch("foreign", changes, resyncs, "")
    get(resyncs, "resync").done()
    foreign = with_jetstream(nats_address, lambda js: js.publish(
        f"datasync.{topic}.k", b"no datasync headers"))
    revision = publisher.put("k", text("v"))
    event = get(changes, "change")
    event.done()
    assert foreign.seq == revision - 1
    assert change_tuple(event) == (
        revision, Op.PUT, "k", text("v").SerializeToString(), None)
    assert registration.flush() == revision


def test_foreign_last_message_ends_resync(nats_address, topic,
                                          open_client):
    publisher = open_client(TopicPublisher(nats_address, topic))
    revision = publisher.put("k", text("v"))
    foreign = with_jetstream(nats_address, lambda js: js.publish(
        f"datasync.{topic}.other", b"no datasync headers"))
    watcher = open_client(TopicWatcher(nats_address, topic))
    chan = queue.Queue()
    watcher.watch("foreign-last", chan, chan, "")
    resync = get(chan, "resync")
    assert resync.revision == foreign.seq
    assert resync_values(resync) == {
        "": [("k", text("v").SerializeToString(), revision)]}


def test_publish_timeout_within_window(nats_address, topic, open_client):
    open_client(TopicPublisher(nats_address, topic, duplicate_window=5.0,
                               publish_timeout=1.0))
    with pytest.raises(datasync.InvalidOptionError) as info:
        TopicPublisher(nats_address, topic, publish_timeout=10.0)
    assert "duplicate window" in str(info.value)


def test_ephemeral_watch_deletes_consumer(nats_address, topic,
                                          open_client):
    watcher = open_client(TopicWatcher(nats_address, topic))
    chan = queue.Queue()
    registration = watcher.watch("passing", chan, chan, "", durable=False)
    get(chan, "resync").done()
    stream = wire.stream_name(topic)
    names = with_jetstream(nats_address, lambda js: js.consumers_info(
        stream))
    assert len(names) == 1
    assert names[0].name.startswith("dse_passing_")
    registration.close()
    names = with_jetstream(nats_address, lambda js: js.consumers_info(
        stream))
    assert names == []


def test_watch_without_resume_resyncs(nats_address, topic, open_client):
    publisher = open_client(TopicPublisher(nats_address, topic))
    watcher = open_client(TopicWatcher(nats_address, topic))
    chan = queue.Queue()
    registration = watcher.watch("restart", chan, chan, "")
    get(chan, "resync").done()
    revision = publisher.put("k", text("v"))
    get(chan, "change").done()
    registration.flush()
    registration.close()

    again = watcher.watch("restart", chan, chan, "", resume=False)
    resync = get(chan, "second resync")
    assert resync.revision == revision
    assert resync_values(resync) == {
        "": [("k", text("v").SerializeToString(), revision)]}
    again.close()


def test_watcher_is_keyvalprotowatcher(nats_address, topic, open_client):
    watcher = open_client(TopicWatcher(nats_address, topic))
    publisher = open_client(TopicPublisher(nats_address, topic))
    assert isinstance(watcher, datasync.KeyValProtoWatcher)
    assert isinstance(publisher, datasync.KeyProtoValWriter)


def test_duplicate_watch_name_rejected(nats_address, topic, open_client):
    watcher = open_client(TopicWatcher(nats_address, topic))
    watcher.watch("twice", queue.Queue(), queue.Queue(), "")
    with pytest.raises(datasync.RegistrationError):
        watcher.watch("twice", queue.Queue(), queue.Queue(), "")


def test_put_rejects_ttl_option(nats_address, topic, open_client):
    publisher = open_client(TopicPublisher(nats_address, topic))
    with pytest.raises(datasync.InvalidOptionError):
        publisher.put("k", text("v"), datasync.with_ttl(5))


def test_put_rejects_non_message(nats_address, topic, open_client):
    publisher = open_client(TopicPublisher(nats_address, topic))
    with pytest.raises(datasync.InvalidValueError):
        publisher.put("k", {"not": "a message"})
    with pytest.raises(datasync.InvalidKeyError):
        publisher.put("", text("v"))


def test_connect_to_nothing_fails_fast():
    with pytest.raises(BrokerUnavailableError) as info:
        TopicPublisher(f"127.0.0.1:{free_port()}", "nowhere",
                       connect_timeout=1.0)
    assert "nats-server" in str(info.value)


# Restarts of watchers and of the server ------------------------------------

WATCH_CHILD = r"""
import queue, sys
from datasync.msgsync import TopicWatcher

address, topic, name, limit, last = sys.argv[1:6]
limit, last = int(limit), int(last)
watcher = TopicWatcher(address, topic)
changes, resyncs = queue.Queue(), queue.Queue()
registration = watcher.watch(name, changes, resyncs, "w/")
resync = resyncs.get(timeout=30)
resync.done()
print("resync", resync.revision, flush=True)
while True:
    event = changes.get(timeout=60)
    print("change", event.revision, flush=True)
    if event.revision <= limit:
        event.done()
    if event.revision == limit:
        print("acked", registration.flush(30), flush=True)
    if event.revision == last:
        print("held", flush=True)
        sys.stdin.readline()
"""


class Child:
    """A Python child process whose stdout lines are read with timeouts."""

    def __init__(self, script, *args):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *map(str, args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env)
        self.lines = queue.Queue()
        self.errors = []
        threading.Thread(target=self._copy, args=(self.proc.stdout,
                                                  self.lines.put),
                         daemon=True).start()
        threading.Thread(target=self._copy, args=(self.proc.stderr,
                                                  self.errors.append),
                         daemon=True).start()

    @staticmethod
    def _copy(stream, sink):
        for line in stream:
            sink(line)
        sink(None)

    def readline(self):
        """Return the next stdout line without its newline, failing if
        none comes."""
        try:
            line = self.lines.get(timeout=TIMEOUT)
        except queue.Empty:
            line = None
        if line is None:
            pytest.fail(f"child {self.proc.pid} wrote no line; stderr: "
                        f"{''.join(filter(None, self.errors))}")
        return line.rstrip("\n")

    def kill(self):
        """Kill the child with SIGKILL and wait until it is reaped."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()


@pytest.fixture
def spawn():
    """Return a function that starts a Child; all are killed at teardown."""
    children = []

    def start(script, *args):
        child = Child(script, *args)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()


def test_killed_watcher_resumes_after_ack(nats_address, topic, open_client,
                                          spawn):
    publisher = open_client(TopicPublisher(nats_address, topic))
    published = []

    def put(key, value):
        revision = publisher.put(key, text(value))
        published.append((revision, Op.PUT, key,
                          text(value).SerializeToString()))
        return revision

    for i in range(20):
        put(f"w/{i % 4}", f"v{i}")
    # The child acknowledges the changes up to revision 35, receives the
    # rest up to 50 without calling done(), and is killed.
    child = spawn(WATCH_CHILD, nats_address, topic, "resumer", 35, 50)
    assert child.readline() == "resync 20"
    for i in range(20, 50):
        put(f"w/{i % 4}" if i % 3 else f"other/{i}", f"v{i}")
    received = []
    while True:
        line = child.readline()
        if line == "held":
            break
        received.append(line)
    child.kill()
    assert "acked 35" in received
    assert "change 50" in received

    for i in range(50, 55):
        put(f"w/{i % 4}", f"v{i}")
    publisher.delete("w/1")
    published.append((published[-1][0] + 1, Op.DELETE, "w/1", None))
    watcher = open_client(TopicWatcher(nats_address, topic))
    changes, resyncs = queue.Queue(), queue.Queue()
    watcher.watch("resumer", changes, resyncs, "w/")
    expected = expected_changes(published, "w/", 35)
    resumed = []
    for _ in expected:
        event = get(changes, f"change {len(resumed) + 1} after the restart")
        resumed.append(change_tuple(event))
        event.done()
    assert resumed == expected
    assert resumed[0][0] == 36
    assert resyncs.empty()


def test_server_killed_mid_stream(private_nats, topic, open_client):
    publisher = open_client(TopicPublisher(private_nats.address, topic))
    watcher = open_client(TopicWatcher(private_nats.address, topic))
    changes, resyncs = queue.Queue(), queue.Queue()
    watcher.watch("survivor", changes, resyncs, "")
    get(resyncs, "resync").done()
    published = []
    failures = []
    halfway = threading.Event()

    def publish():
        try:
            for i in range(2000):
                key = f"s/{i % 50}"
                revision = publisher.put(key, text(f"v{i}"))
                published.append((revision, Op.PUT, key,
                                  text(f"v{i}").SerializeToString()))
                if i == 700:
                    halfway.set()
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
            halfway.set()

    received = []

    def consume():
        # Applies changes while the server dies, until the last one.
        while not received or received[-1][0] < 2000:
            try:
                event = changes.get(timeout=TIMEOUT)
            except queue.Empty:
                return
            received.append(change_tuple(event))
            event.done()

    threads = [threading.Thread(target=publish, daemon=True),
               threading.Thread(target=consume, daemon=True)]
    for thread in threads:
        thread.start()
    assert halfway.wait(TIMEOUT)
    private_nats.kill()
    private_nats.start()
    for thread in threads:
        thread.join(TIMEOUT * 2)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    # A lost acknowledged publish would let a later one reuse its
    # sequence, a duplicate would take one of its own: either breaks
    # this run of sequences.
    assert [p[0] for p in published] == list(range(1, 2001))
    assert received == expected_changes(published, "", 0)

    fresh = open_client(TopicWatcher(private_nats.address, topic))
    chan = queue.Queue()
    fresh.watch("after-restart", chan, chan, "")
    resync = get(chan, "resync")
    assert resync.revision == 2000
    assert len(list(resync.values[""])) == 50


def test_publish_while_down_times_out(private_nats, topic, open_client):
    publisher = open_client(TopicPublisher(
        private_nats.address, topic, publish_timeout=1.0))
    publisher.put("before", text("x"))
    private_nats.kill()
    with pytest.raises(PublishTimeoutError) as info:
        publisher.put("down", text("y"), msg_id="sent-while-down")
    assert info.value.msg_id == "sent-while-down"
    assert info.value.key == "down"

    # Another publisher, with the default timeout that outlasts the
    # reconnection, retries the change: the message id makes it one.
    private_nats.start()
    retrying = open_client(TopicPublisher(private_nats.address, topic))
    revision = retrying.put("down", text("y"), msg_id="sent-while-down")
    assert revision == 2
    assert retrying.put("after", text("z")) == 3


# The datasync command ---------------------------------------------------------

def run_command(capsys, *argv):
    """Run ``datasync ARGV`` in this process; return (status, JSON lines).
    """
    status = cli.main(list(argv))
    out = capsys.readouterr().out
    return status, [json.loads(line) for line in out.splitlines()]


def test_command_publishes_to_topic(nats_address, topic, capsys):
    target = ["--nats", nats_address, "--topic", topic]
    assert run_command(capsys, *target, "put", "a/1", "one") == (
        0, [{"revision": 1}])
    assert run_command(capsys, "put", *target, "a/2", "two") == (
        0, [{"revision": 2}])
    assert run_command(capsys, *target, "del", "--prefix", "a/") == (
        0, [{"revision": 4}])
    assert run_command(capsys, *target, "get", "a/1")[0] == cli.EXIT_USAGE
    assert run_command(capsys, "--nats", nats_address, "put", "k",
                       "v")[0] == cli.EXIT_USAGE


def test_command_watches_topic(nats_address, topic, capsys, spawn):
    target = ["--nats", nats_address, "--topic", topic]
    run_command(capsys, *target, "put", "w/1", "before")
    child = spawn("import sys\nfrom datasync.cli import main\n"
                  "sys.exit(main(sys.argv[1:]))", *target, "watch", "w/")
    assert json.loads(child.readline()) == {
        "revision": 1, "op": "resync", "key": "w/1", "value": "before",
        "prev_value": None}
    run_command(capsys, *target, "put", "w/1", "after")
    assert json.loads(child.readline()) == {
        "revision": 2, "op": "put", "key": "w/1", "value": "after",
        "prev_value": "before"}
    child.proc.send_signal(signal.SIGTERM)
    assert child.proc.wait(timeout=TIMEOUT) == 0
