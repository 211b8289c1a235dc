"""Tests of the aggregators: every failure is reported, not only the last.

Members are real Registries and Stores; a member fails because it is
closed or already has the name or prefix, as it would in an agent.
"""

import queue

import pytest

import datasync
from datasync import (AggregatedRegistration, KVProtoWatchers,
                      KVProtoWriters, Op)
from datasync.errors import (AggregateError, InvalidValueError,
                             RegistrationError, StoreClosedError)
from datasync.syncbase import Change, Registry

#: Seconds to wait for something that should happen; only a failing test
#: waits this long.
WAIT = 10.0


class Recorder:
    """Callable channel: keeps every event on a queue, then calls done()."""

    def __init__(self):
        self.events = queue.Queue()

    def __call__(self, event):
        self.events.put(event)
        event.done()

    def taken_all(self):
        """Return every event received so far."""
        out = []
        while not self.events.empty():
            out.append(self.events.get_nowait())
        return out


@pytest.fixture
def registries():
    regs = [Registry(timeout=WAIT) for _ in range(3)]
    yield regs
    for reg in regs:
        reg.close()


def put(key, value):
    return Change(key, Op.PUT, value)


# KVProtoWatchers -----------------------------------------------------------

def test_watchers_report_every_failure(registries):
    first, middle, last = registries
    first.watch("agent", Recorder(), Recorder(), "/taken/")
    last.watch("agent", Recorder(), Recorder(), "/taken/")
    rec = Recorder()

    with pytest.raises(AggregateError) as caught:
        KVProtoWatchers(registries).watch("agent", rec, rec, "/cfg/")

    errors = caught.value.exceptions
    assert len(errors) == 2
    assert all(isinstance(e, RegistrationError) for e in errors)
    assert "2 watch calls" in str(caught.value)


def test_watchers_close_partial_registrations(registries):
    first, middle, last = registries
    first.watch("agent", Recorder(), Recorder(), "/taken/")
    rec = Recorder()
    with pytest.raises(AggregateError):
        KVProtoWatchers(registries).watch("agent", rec, rec, "/cfg/")

    middle.propagate_changes([put("/cfg/a", b"1")])

    assert rec.taken_all() == []
    middle.watch("agent", Recorder(), Recorder(), "/cfg/")


def test_watchers_deliver_from_each(registries):
    rec = Recorder()
    with KVProtoWatchers(registries).watch("agent", rec, rec, "/cfg/"):
        for i, reg in enumerate(registries):
            reg.propagate_changes([put(f"/cfg/{i}", b"1")])

        keys = [e.changes[0].key for e in rec.taken_all()]

    assert keys == ["/cfg/0", "/cfg/1", "/cfg/2"]


# KVProtoWriters ------------------------------------------------------------

def test_writers_report_every_failure(tmp_path):
    stores = [datasync.Store(tmp_path / f"s{i}") for i in range(3)]
    stores[0].close()
    stores[2].close()

    with pytest.raises(AggregateError) as caught:
        KVProtoWriters(stores).put("/cfg/a", b"1")
    value = stores[1].get("/cfg/a").value
    stores[1].close()

    errors = caught.value.exceptions
    assert len(errors) == 2
    assert all(isinstance(e, StoreClosedError) for e in errors)
    assert value == b"1"


def test_writers_report_mixed_failures(tmp_path):
    stores = [datasync.Store(tmp_path / f"s{i}",
                             max_value_size=size)
              for i, size in enumerate([2, 100, 100])]
    stores[2].close()

    with pytest.raises(AggregateError) as caught:
        KVProtoWriters(stores).put("/cfg/a", b"12345")
    stored = stores[1].get("/cfg/a")
    stores[0].close()
    stores[1].close()

    assert [type(e) for e in caught.value.exceptions] == [
        InvalidValueError, StoreClosedError]
    assert stored.value == b"12345"


# AggregatedRegistration ----------------------------------------------------

def test_registration_register_reports_all(registries):
    regs = [reg.watch("agent", Recorder(), Recorder(), "/a/")
            for reg in registries]
    regs[0].close()
    regs[1].register("agent", "/b/")
    aggregated = AggregatedRegistration(regs)

    with pytest.raises(AggregateError) as caught:
        aggregated.register("agent", "/b/")

    assert [type(e) for e in caught.value.exceptions] == [
        StoreClosedError, RegistrationError]
    assert regs[2].prefixes == ["/a/", "/b/"]


def test_registration_unregister_reports_all(registries):
    regs = [reg.watch("agent", Recorder(), Recorder(), "/a/", "/b/")
            for reg in registries]
    regs[1].unregister("/b/")
    regs[2].close()

    with pytest.raises(AggregateError) as caught:
        AggregatedRegistration(regs).unregister("/b/")

    assert [type(e) for e in caught.value.exceptions] == [
        RegistrationError, StoreClosedError]
    assert regs[0].prefixes == ["/a/"]


def test_registration_wrong_name_reports_all(registries):
    regs = [reg.watch("agent", Recorder(), Recorder(), "/a/")
            for reg in registries]

    with pytest.raises(AggregateError) as caught:
        AggregatedRegistration(regs).register("other", "/b/")

    assert len(caught.value.exceptions) == 3


def test_registration_close_closes_all(registries):
    recs = [Recorder() for _ in registries]
    regs = [reg.watch("agent", rec, rec, "/a/")
            for reg, rec in zip(registries, recs)]

    with AggregatedRegistration(regs):
        pass
    for reg in registries:
        reg.propagate_changes([put("/a/1", b"1")])

    assert all(rec.taken_all() == [] for rec in recs)
