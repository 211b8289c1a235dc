"""Tests of datasync.kvdbsync.local: transactions over a Registry."""

import queue

import pytest
from google.protobuf import wrappers_pb2

from datasync import Op
from datasync.errors import (DeliveryTimeoutError, InvalidKeyError,
                             InvalidValueError, StoreClosedError)
from datasync.kvdbsync.local import BytesTxn, ProtoTxn
from datasync.syncbase import Registry

#: Seconds to wait for something that should happen; only a failing test
#: waits this long.
WAIT = 10.0


class Recorder:
    """Callable channel: keeps every event on a queue, then calls done()."""

    def __init__(self, error=None):
        self.events = queue.Queue()
        self.error = error

    def __call__(self, event):
        self.events.put(event)
        event.done(self.error)

    def taken_all(self):
        """Return every event received so far."""
        out = []
        while not self.events.empty():
            out.append(self.events.get_nowait())
        return out


@pytest.fixture
def registry():
    reg = Registry(timeout=WAIT)
    yield reg
    reg.close()


def summary(event):
    return [(c.change_type, c.key, c.value, c.prev_value)
            for c in event.changes]


def test_commit_sends_one_event_each(registry):
    cfg = Recorder()
    everything = Recorder()
    registry.watch("cfg", cfg, cfg, "/cfg/")
    registry.watch("all", everything, everything, "/")
    txn = BytesTxn(registry)
    txn.put("/cfg/a", b"1").put("/state/b", b"2").put("/cfg/c", b"3")

    report = txn.commit()
    cfg_events = cfg.taken_all()
    all_events = everything.taken_all()

    assert report == []
    assert txn.revision == 1
    assert len(cfg_events) == 1
    assert [c.key for c in cfg_events[0].changes] == ["/cfg/a", "/cfg/c"]
    assert len(all_events) == 1
    assert [c.key for c in all_events[0].changes] == [
        "/cfg/a", "/state/b", "/cfg/c"]
    assert all_events[0].revision == 1


def test_commit_attaches_prev_values(registry):
    rec = Recorder()
    registry.watch("agent", rec, rec, "/")
    BytesTxn(registry).put("/a", b"1").commit()

    BytesTxn(registry).put("/a", b"2").delete("/a").delete("/b").commit()
    events = rec.taken_all()

    assert summary(events[1]) == [(Op.PUT, "/a", b"2", b"1"),
                                  (Op.DELETE, "/a", None, b"2")]


def test_commit_delete_unknown_sends_nothing(registry):
    rec = Recorder()
    registry.watch("agent", rec, rec, "/")
    txn = BytesTxn(registry).delete("/never")

    report = txn.commit()

    assert report == []
    assert txn.revision is None
    assert rec.taken_all() == []


def test_commit_returns_subscriber_errors(registry):
    failure = ValueError("cannot apply")
    registry.watch("failing", Recorder(failure), Recorder(failure), "/")
    registry.watch("fine", Recorder(), Recorder(), "/")

    report = BytesTxn(registry).put("/a", b"1").commit()

    assert report == [failure]


def test_commit_reports_done_timeout(registry):
    chan = queue.Queue()
    registry.watch("silent", chan, chan, "/")

    report = BytesTxn(registry).put("/a", b"1").commit(timeout=0.2)

    assert [type(e) for e in report] == [DeliveryTimeoutError]
    assert report[0].resync_name == "silent"


def test_commit_twice_raises(registry):
    txn = BytesTxn(registry).put("/a", b"1")
    txn.commit()

    with pytest.raises(StoreClosedError, match="already committed"):
        txn.commit()
    with pytest.raises(StoreClosedError):
        txn.put("/b", b"2")


def test_bytes_put_rejects_message(registry):
    txn = BytesTxn(registry)

    with pytest.raises(InvalidValueError, match="ProtoTxn"):
        txn.put("/a", wrappers_pb2.StringValue(value="x"))


def test_bytes_put_rejects_text(registry):
    with pytest.raises(InvalidValueError, match="'/a'"):
        BytesTxn(registry).put("/a", "text")


def test_put_rejects_invalid_key(registry):
    with pytest.raises(InvalidKeyError, match="empty"):
        BytesTxn(registry).put("", b"1")
    with pytest.raises(InvalidKeyError, match="511"):
        BytesTxn(registry).delete("k" * 600)


def test_put_rejects_large_value(registry):
    txn = BytesTxn(registry, max_value_size=4)

    with pytest.raises(InvalidValueError, match="5 bytes"):
        txn.put("/a", b"12345")


def test_rejected_op_blocks_commit(registry):
    rec = Recorder()
    registry.watch("agent", rec, rec, "/")
    txn = BytesTxn(registry).put("/a", b"1")
    with pytest.raises(InvalidKeyError):
        txn.put(b"", b"2")

    with pytest.raises(InvalidKeyError, match="not committed"):
        txn.commit()
    assert rec.taken_all() == []
    assert registry.get("/a") is None


def test_proto_put_serializes_message(registry):
    rec = Recorder()
    registry.watch("agent", rec, rec, "/")
    message = wrappers_pb2.StringValue(value="up")
    txn = ProtoTxn(registry).put("/if/eth0", message)
    message.value = "changed after put"

    txn.commit()
    change = rec.taken_all()[0].changes[0]

    assert change.get_value(wrappers_pb2.StringValue()).value == "up"
    assert change.get_prev_value(wrappers_pb2.StringValue()) is False


def test_proto_put_rejects_bytes(registry):
    with pytest.raises(InvalidValueError, match="BytesTxn"):
        ProtoTxn(registry).put("/a", b"raw")


def test_txn_on_closed_registry_raises():
    registry = Registry()
    txn = BytesTxn(registry).put("/a", b"1")
    registry.close()

    with pytest.raises(StoreClosedError, match="registry"):
        txn.commit()
