"""Tests of the resync orchestrator: order, timeouts, status, close."""

import logging
import queue
import threading
import time

import pytest

from datasync.errors import (AggregateError, DeliveryTimeoutError,
                             RegistrationError, StoreClosedError)
from datasync.resync import Resync, Status, StatusEvent, StatusQueue

#: Seconds to wait for something that should happen; only a failing test
#: waits this long.
WAIT = 10.0

ACCEPT = 0.2
ACK = 0.5


@pytest.fixture
def orchestrator():
    """A Resync with short timeouts, closed at teardown."""
    resync = Resync(accept_timeout=ACCEPT, ack_timeout=ACK)
    yield resync
    resync.close()


def start_reader(registration, received, ack=True):
    """Read one event from ``registration`` in a thread.

    Appends (name, status) to ``received`` when the event is taken and
    acks it unless ``ack`` is False. Returns the thread.
    """
    def read():
        try:
            event = registration.status_chan.get(timeout=WAIT)
        except queue.Empty:
            return
        received.append((registration.name, event.status))
        if ack:
            event.ack()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def run_in_thread(function):
    """Run ``function`` in a daemon thread; return (thread, results)."""
    results = queue.Queue()

    def run():
        try:
            results.put(("ok", function()))
        except BaseException as exc:  # reported to the test thread
            results.put(("error", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, results


def test_resync_skips_stuck_reader(orchestrator):
    first = orchestrator.register("first")
    stuck = orchestrator.register("stuck")
    last = orchestrator.register("last")
    received = []
    readers = [start_reader(first, received), start_reader(last, received)]

    report = orchestrator.do_resync()

    for reader in readers:
        reader.join(timeout=WAIT)
    assert received == [("first", Status.STARTED), ("last", Status.STARTED)]
    assert report.acked == ["first", "last"]
    assert report.not_accepted == ["stuck"]
    assert report.not_acked == []
    assert report.timed_out == ["stuck"]
    assert not report.ok
    # The untaken event was withdrawn, so a late reader finds nothing.
    assert stuck.status_chan.empty()


def test_resync_moves_past_missing_ack(orchestrator):
    first = orchestrator.register("first")
    silent = orchestrator.register("silent")
    last = orchestrator.register("last")
    received = []
    readers = [start_reader(first, received),
               start_reader(silent, received, ack=False),
               start_reader(last, received)]

    started = time.monotonic()
    report = orchestrator.do_resync()
    elapsed = time.monotonic() - started

    for reader in readers:
        reader.join(timeout=WAIT)
    assert [name for name, _ in received] == ["first", "silent", "last"]
    assert report.acked == ["first", "last"]
    assert report.not_accepted == []
    assert report.not_acked == ["silent"]
    # A correctness bound, not a speed claim: one stuck registration may
    # cost at most both timeouts, and the margin absorbs a slow machine.
    assert elapsed < ACCEPT + ACK + 5.0


def test_resync_both_stuck_kinds_reported(orchestrator):
    names = ["a", "never-reads", "b", "never-acks", "c"]
    registrations = {name: orchestrator.register(name) for name in names}
    received = []
    readers = [start_reader(registrations[name], received)
               for name in ("a", "b", "c")]
    readers.append(start_reader(registrations["never-acks"], received,
                                ack=False))

    report = orchestrator.do_resync()

    for reader in readers:
        reader.join(timeout=WAIT)
    assert [name for name, _ in received] == ["a", "b", "never-acks", "c"]
    assert report.acked == ["a", "b", "c"]
    assert report.timed_out == ["never-reads", "never-acks"]


def test_status_started_only_during_resync(orchestrator):
    seen = []

    def callback(event):
        seen.append(orchestrator.status)
        event.ack()

    orchestrator.register("watcher", callback)
    before = orchestrator.status

    report = orchestrator.do_resync()

    assert before is Status.NOT_ACTIVE
    assert seen == [Status.STARTED]
    assert orchestrator.status is Status.NOT_ACTIVE
    assert report.acked == ["watcher"]
    assert report.ok


def test_status_names_match_original():
    assert Status.NOT_ACTIVE.value == "NotActive"
    assert Status.STARTED.value == "Started"


def test_register_duplicate_name_rejected(orchestrator):
    orchestrator.register("plugin")

    with pytest.raises(RegistrationError, match="'plugin'"):
        orchestrator.register("plugin")


def test_register_name_free_after_close(orchestrator):
    first = orchestrator.register("plugin")
    first.close()

    second = orchestrator.register("plugin")

    assert orchestrator.registrations == ["plugin"]
    assert second is not first
    assert first.closed


@pytest.mark.parametrize("name", ["", None, 3])
def test_register_invalid_name_rejected(orchestrator, name):
    with pytest.raises(RegistrationError):
        orchestrator.register(name)


def test_register_non_callable_channel_rejected(orchestrator):
    with pytest.raises(TypeError, match="callable"):
        orchestrator.register("plugin", queue.Queue())


@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan")])
def test_resync_invalid_timeout_rejected(value):
    with pytest.raises(ValueError, match="accept_timeout"):
        Resync(accept_timeout=value)


def test_resync_non_number_timeout_rejected():
    with pytest.raises(TypeError, match="ack_timeout"):
        Resync(ack_timeout="10")


def test_registration_default_channel_is_queue(orchestrator):
    registration = orchestrator.register("plugin")

    assert isinstance(registration.status_chan, StatusQueue)
    assert isinstance(registration.status_chan, queue.Queue)


def test_callback_registration_receives_event(orchestrator):
    events = queue.Queue()

    def callback(event):
        events.put(event)
        event.ack()

    registration = orchestrator.register("plugin", callback)
    report = orchestrator.do_resync()

    event = events.get(timeout=WAIT)
    assert isinstance(event, StatusEvent)
    assert event.status is Status.STARTED
    assert event.registration_name == "plugin"
    assert event.is_acked
    assert report.acked == ["plugin"]
    assert registration.status_chan is callback


def test_failing_callback_reported_not_acked(orchestrator, caplog):
    def callback(event):
        raise RuntimeError("cannot resync")

    orchestrator.register("broken", callback)
    with caplog.at_level(logging.ERROR, logger="datasync.resync"):
        report = orchestrator.do_resync()

    assert report.not_acked == ["broken"]
    assert "cannot resync" in caplog.text


def test_ack_error_listed_in_report(orchestrator):
    failure = ValueError("bad snapshot")
    orchestrator.register("plugin", lambda event: event.ack(failure))

    report = orchestrator.do_resync()

    assert report.acked == ["plugin"]
    assert report.errors == {"plugin": failure}
    assert not report.ok


def test_raise_on_failure_lists_each(orchestrator):
    failure = ValueError("bad snapshot")
    orchestrator.register("errs", lambda event: event.ack(failure))
    orchestrator.register("never-reads")
    report = orchestrator.do_resync()

    with pytest.raises(AggregateError) as raised:
        report.raise_on_failure()

    errors = raised.value.exceptions
    assert len(errors) == 2
    assert isinstance(errors[0], DeliveryTimeoutError)
    assert "'never-reads'" in str(errors[0])
    assert errors[1] is failure


def test_raise_on_failure_silent_when_ok(orchestrator):
    orchestrator.register("plugin", lambda event: event.ack())

    report = orchestrator.do_resync()

    assert report.raise_on_failure() is None


def test_timeouts_logged_as_warnings(orchestrator, caplog):
    orchestrator.register("never-reads")

    with caplog.at_level(logging.WARNING, logger="datasync.resync"):
        orchestrator.do_resync()

    messages = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING]
    timeouts = [m for m in messages if "did not take" in m]
    assert len(timeouts) == 1
    assert "'never-reads'" in timeouts[0]


def test_late_ack_ignored_after_timeout(orchestrator):
    registration = orchestrator.register("slow")
    taken = queue.Queue()
    reader = threading.Thread(
        target=lambda: taken.put(registration.status_chan.get(
            timeout=WAIT)), daemon=True)
    reader.start()

    report = orchestrator.do_resync()
    event = taken.get(timeout=WAIT)
    event.ack()

    assert report.not_acked == ["slow"]
    assert report.acked == []


def test_close_returns_with_stuck_callback():
    resync = Resync(accept_timeout=ACCEPT, ack_timeout=WAIT)
    release = threading.Event()
    entered = threading.Event()

    def stuck(event):
        entered.set()
        release.wait(WAIT)

    resync.register("stuck", stuck)
    resyncing, results = run_in_thread(resync.do_resync)
    assert entered.wait(WAIT)

    closing, _ = run_in_thread(resync.close)
    closing.join(timeout=WAIT / 2)
    closed_in_time = not closing.is_alive()
    resyncing.join(timeout=WAIT / 2)
    release.set()

    assert closed_in_time
    assert not resyncing.is_alive()
    kind, report = results.get(timeout=WAIT)
    assert kind == "ok"
    assert report.skipped == ["stuck"]


def test_close_returns_with_stuck_reader():
    resync = Resync(accept_timeout=WAIT, ack_timeout=WAIT)
    first_done = threading.Event()

    def first(event):
        event.ack()
        first_done.set()

    resync.register("first", first)
    resync.register("never-reads")
    resync.register("after")
    resyncing, results = run_in_thread(resync.do_resync)
    assert first_done.wait(WAIT)

    closing, _ = run_in_thread(resync.close)
    closing.join(timeout=WAIT / 2)
    closed_in_time = not closing.is_alive()
    resyncing.join(timeout=WAIT / 2)

    assert closed_in_time
    assert not resyncing.is_alive()
    kind, report = results.get(timeout=WAIT)
    assert kind == "ok"
    assert report.acked == ["first"]
    assert report.skipped == ["never-reads", "after"]


def test_closed_registration_skipped(orchestrator):
    first = orchestrator.register("first")
    orchestrator.register("second", lambda event: event.ack())

    def close_on_event(event):
        first.close()

    # The first registration is closed while the resync waits for it.
    reader = threading.Thread(
        target=lambda: close_on_event(first.status_chan.get(timeout=WAIT)),
        daemon=True)
    reader.start()
    report = orchestrator.do_resync()
    reader.join(timeout=WAIT)

    assert report.skipped == ["first"]
    assert report.acked == ["second"]
    assert orchestrator.registrations == ["second"]


def test_do_resync_after_close_raises():
    resync = Resync()
    resync.close()

    with pytest.raises(StoreClosedError, match="closed"):
        resync.do_resync()


def test_register_after_close_raises():
    resync = Resync()
    resync.close()

    with pytest.raises(StoreClosedError):
        resync.register("plugin")


def test_concurrent_resyncs_run_in_turn(orchestrator):
    active = []
    overlaps = []
    lock = threading.Lock()

    def callback(event):
        with lock:
            active.append(event)
            overlaps.append(len(active))
        event.ack()
        with lock:
            active.remove(event)

    orchestrator.register("plugin", callback)
    threads = [run_in_thread(orchestrator.do_resync) for _ in range(4)]
    reports = [results.get(timeout=WAIT) for _, results in threads]

    assert [kind for kind, _ in reports] == ["ok"] * 4
    assert [report.acked for _, report in reports] == [["plugin"]] * 4
    assert overlaps == [1, 1, 1, 1]


def test_registration_added_during_resync_waits(orchestrator):
    added = []

    def callback(event):
        if not added:
            added.append(orchestrator.register("late", lambda e: e.ack()))
        event.ack()

    orchestrator.register("early", callback)

    first = orchestrator.do_resync()
    second = orchestrator.do_resync()

    assert first.acked == ["early"]
    assert len(added) == 1
    assert orchestrator.registrations == ["early", "late"]
    assert second.acked == ["early", "late"]


def test_callback_threads_end_after_close():
    before = set(threading.enumerate())
    resync = Resync(accept_timeout=ACCEPT, ack_timeout=ACK)
    for number in range(20):
        resync.register(f"plugin-{number}", lambda event: event.ack())
    report = resync.do_resync()

    resync.close()

    assert len(report.acked) == 20
    assert set(threading.enumerate()) - before == set()
