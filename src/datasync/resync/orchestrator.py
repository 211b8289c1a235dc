"""The resync orchestrator: one resync of every registration, in order."""

import dataclasses
import logging
import math
import threading

from datasync.errors import (AggregateError, DeliveryTimeoutError,
                             RegistrationError, StoreClosedError)
from datasync.resync.status import Status, StatusEvent, StatusQueue

__all__ = ["Resync", "Registration", "ResyncReport",
           "DEFAULT_ACCEPT_TIMEOUT", "DEFAULT_ACK_TIMEOUT"]

log = logging.getLogger("datasync.resync")

#: Seconds a registration has to take a Started event from its channel.
DEFAULT_ACCEPT_TIMEOUT = 1.0

#: Seconds a registration has to ack() a Started event it took.
DEFAULT_ACK_TIMEOUT = 10.0

# Seconds close() waits for an idle callback thread to end. A thread
# inside a callback is not waited for.
_JOIN_TIMEOUT = 1.0

# Outcomes of one registration's turn in a resync.
_ACKED = "acked"
_NOT_ACCEPTED = "not accepted"
_NOT_ACKED = "not acked"
_SKIPPED = "skipped"


def _check_timeout(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got "
                        f"{value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, "
                         f"got {value!r}")
    return float(value)


@dataclasses.dataclass
class ResyncReport:
    """Outcome of one do_resync(), registration by registration.

    Each list contains registration names in registration order.
    """

    #: Registrations that took the Started event and acked it in time.
    acked: list = dataclasses.field(default_factory=list)
    #: Registrations that did not take the event within the accept
    #: timeout; the event was withdrawn from their channel.
    not_accepted: list = dataclasses.field(default_factory=list)
    #: Registrations that took the event but did not ack it within the
    #: ack timeout.
    not_acked: list = dataclasses.field(default_factory=list)
    #: Registrations closed, or reached after the orchestrator closed,
    #: before their turn ended.
    skipped: list = dataclasses.field(default_factory=list)
    #: Registration name mapped to the error it gave to ack().
    errors: dict = dataclasses.field(default_factory=dict)

    @property
    def timed_out(self):
        """Names of the registrations that hit either timeout."""
        return self.not_accepted + self.not_acked

    @property
    def ok(self):
        """True when every registration acked in time without an error."""
        return not (self.timed_out or self.errors or self.skipped)

    def raise_on_failure(self):
        """Raise AggregateError listing each failure, unless ok.

        A timeout is a DeliveryTimeoutError naming the registration; an
        error given to ack() is included as it was given.
        """
        if self.ok:
            return
        failures = [DeliveryTimeoutError(
            f"registration {name!r} did not take the Started event within "
            "the accept timeout") for name in self.not_accepted]
        failures += [DeliveryTimeoutError(
            f"registration {name!r} did not ack its resync within the ack "
            "timeout") for name in self.not_acked]
        failures += [DeliveryTimeoutError(
            f"registration {name!r} was closed during the resync")
            for name in self.skipped]
        failures += list(self.errors.values())
        raise AggregateError(
            f"resync failed for {len(failures)} registrations", failures)

    def _add(self, name, outcome, error):
        if outcome == _ACKED:
            self.acked.append(name)
            if error is not None:
                self.errors[name] = error
        elif outcome == _NOT_ACCEPTED:
            self.not_accepted.append(name)
        elif outcome == _NOT_ACKED:
            self.not_acked.append(name)
        else:
            self.skipped.append(name)


class _CallbackWorker:
    """Thread that passes status events to a callable, one at a time.

    It reads a StatusQueue, so an event counts as taken when the thread
    gets to it. While the callable is busy with an earlier event, the
    next one stays untaken, as with a consumer that does not read.
    """

    _STOP = object()

    def __init__(self, callback, name):
        self.callback = callback
        self.queue = StatusQueue()
        self._name = name
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False
        self._thread = None

    def send(self, event):
        with self._lock:
            if self._closed:
                return False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"datasync-resync-{self._name}",
                    daemon=True)
                self._thread.start()
        self.queue.put_nowait(event)
        return True

    def _run(self):
        while True:
            event = self.queue.get()
            with self._lock:
                if event is self._STOP or self._closed:
                    return
                self._busy = True
            try:
                self.callback(event)
            except Exception:
                log.exception("status callback of registration %r failed "
                              "on %r", self._name, event)
            finally:
                with self._lock:
                    self._busy = False

    def close(self):
        with self._lock:
            self._closed = True
            busy = self._busy
            thread = self._thread
        self.queue.put_nowait(self._STOP)
        if thread is None or thread is threading.current_thread():
            return
        if busy:
            log.warning("status callback of registration %r is still "
                        "running at close(); its thread ends when the "
                        "callback returns", self._name)
            return
        thread.join(timeout=_JOIN_TIMEOUT)


class Registration:
    """A subscriber of a resync orchestrator.

    ``status_chan`` is the StatusQueue to read status events from, or
    the callable given to Resync.register(), which then gets each event
    on a thread of its own.
    """

    def __init__(self, orchestrator, name, status_chan):
        self._orchestrator = orchestrator
        self._name = name
        self._lock = threading.Lock()
        self._closed = False
        self._pending = None
        if status_chan is None:
            self._worker = None
            self._queue = StatusQueue()
            self._chan = self._queue
        else:
            self._worker = _CallbackWorker(status_chan, name)
            self._queue = self._worker.queue
            self._chan = status_chan

    @property
    def name(self):
        """Name given to Resync.register()."""
        return self._name

    @property
    def status_chan(self):
        """The StatusQueue to read, or the callable that gets events."""
        return self._chan

    @property
    def closed(self):
        """True once the registration was closed."""
        return self._closed

    def close(self):
        """Remove the registration from its orchestrator.

        A resync in progress stops waiting for it. Returns promptly even
        when its consumer is stuck; calling it again does nothing.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending = self._pending
        self._orchestrator._forget(self)
        if pending is not None:
            pending._interrupt()
            self._queue._withdraw(pending)
        if self._worker is not None:
            self._worker.close()

    def _send(self, event):
        with self._lock:
            if self._closed:
                return False
            self._pending = event
        if self._worker is not None:
            return self._worker.send(event)
        self._queue.put_nowait(event)
        return True

    def _finish(self, event):
        """Withdraw ``event`` if still untaken; return True if withdrawn."""
        with self._lock:
            if self._pending is event:
                self._pending = None
        return self._queue._withdraw(event)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return f"Registration({self._name!r}, closed={self._closed})"


class Resync:
    """Orchestrator that starts a resync of its registrations, in order.

    Parameters:
        accept_timeout: seconds each registration has to take the
            Started event from its status channel.
        ack_timeout: seconds each registration has, once it took the
            event, to call ack().

    One stuck registration therefore delays the next ones by at most
    ``accept_timeout + ack_timeout``. Raises TypeError or ValueError for
    a timeout that is not a finite number of seconds > 0.
    """

    def __init__(self, accept_timeout=DEFAULT_ACCEPT_TIMEOUT,
                 ack_timeout=DEFAULT_ACK_TIMEOUT):
        self.accept_timeout = _check_timeout("accept_timeout",
                                             accept_timeout)
        self.ack_timeout = _check_timeout("ack_timeout", ack_timeout)
        # _lock guards the registrations, the status and the closed flag.
        # _resync_lock lets one do_resync() run at a time; it is taken
        # first when both are needed.
        self._lock = threading.Lock()
        self._resync_lock = threading.Lock()
        self._registrations = {}
        self._status = Status.NOT_ACTIVE
        self._in_flight = None
        self._closed = False

    @property
    def status(self):
        """Status.STARTED while do_resync() runs, else NOT_ACTIVE."""
        return self._status

    @property
    def registrations(self):
        """Names of the open registrations, in registration order."""
        with self._lock:
            return list(self._registrations)

    def register(self, name, status_chan=None):
        """Add a registration named ``name``; return its Registration.

        With ``status_chan`` None the registration gets a StatusQueue to
        read; a callable instead gets each StatusEvent on a thread of
        its own. Registrations resync in the order they were added.

        Raises RegistrationError for an empty or taken name, TypeError
        for a ``status_chan`` that is not callable, StoreClosedError
        after close().
        """
        if not isinstance(name, str) or not name:
            raise RegistrationError(
                f"resync registration name must be a non-empty str, got "
                f"{name!r}")
        if status_chan is not None and not callable(status_chan):
            raise TypeError(
                f"status_chan of registration {name!r} must be None (to "
                f"get a StatusQueue) or a callable, got "
                f"{type(status_chan).__name__}")
        with self._lock:
            self._check_open()
            if name in self._registrations:
                raise RegistrationError(
                    f"a resync registration named {name!r} already "
                    "exists; close it first or choose another name")
            registration = Registration(self, name, status_chan)
            self._registrations[name] = registration
        log.debug("registered %r for resync", name)
        return registration

    def do_resync(self):
        """Send Started to every registration in order and wait for each.

        For each registration in turn, waits up to ``accept_timeout`` for
        the event to be taken and then up to ``ack_timeout`` for ack().
        A timeout is logged as a warning and the next registration gets
        its turn. Calls run one at a time; a second call waits for the
        first. Registrations added during a resync join the next one.

        Returns a ResyncReport; call its raise_on_failure() to turn
        failures into an exception. Raises StoreClosedError after
        close().
        """
        with self._resync_lock:
            with self._lock:
                self._check_open()
                registrations = list(self._registrations.values())
                self._status = Status.STARTED
            log.info("resync started for %d registrations: %s",
                     len(registrations),
                     ", ".join(r.name for r in registrations))
            report = ResyncReport()
            try:
                for registration in registrations:
                    outcome, error = self._resync_one(registration)
                    report._add(registration.name, outcome, error)
            finally:
                with self._lock:
                    self._status = Status.NOT_ACTIVE
                    self._in_flight = None
        self._log_report(report)
        return report

    def _resync_one(self, registration):
        event = StatusEvent(Status.STARTED, registration.name)
        with self._lock:
            if self._closed:
                return _SKIPPED, None
            self._in_flight = event
        if not registration._send(event):
            return _SKIPPED, None

        taken = event._wait_taken(self.accept_timeout)
        if not taken and registration._finish(event):
            if event._was_interrupted:
                return _SKIPPED, None
            log.warning("resync registration %r did not take the Started "
                        "event within %.3g s; withdrew it and moved on",
                        registration.name, self.accept_timeout)
            return _NOT_ACCEPTED, None

        # Taken, possibly in the instant between the timeout and the
        # withdrawal, so the ack timeout applies from here.
        acked = event._wait_acked(self.ack_timeout)
        registration._finish(event)
        if acked:
            return _ACKED, event.error
        if event._was_interrupted:
            return _SKIPPED, None
        log.warning("resync registration %r took the Started event but "
                    "did not ack it within %.3g s; moved on",
                    registration.name, self.ack_timeout)
        return _NOT_ACKED, None

    def _log_report(self, report):
        for name, error in report.errors.items():
            log.error("resync registration %r acked with an error: %r",
                      name, error)
        if report.ok:
            log.info("resync finished: %d registrations acked",
                     len(report.acked))
        else:
            log.warning("resync finished: acked %s, not accepted %s, not "
                        "acked %s, skipped %s", report.acked,
                        report.not_accepted, report.not_acked,
                        report.skipped)

    def _forget(self, registration):
        with self._lock:
            if self._registrations.get(registration.name) is registration:
                del self._registrations[registration.name]

    def _check_open(self):
        if self._closed:
            raise StoreClosedError(
                "resync orchestrator is closed; create a new Resync")

    def close(self):
        """Close every registration and stop a resync in progress.

        Returns promptly even when a registration never reads its
        channel or never returns from its callback. Calling it again
        does nothing.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            in_flight = self._in_flight
            registrations = list(self._registrations.values())
        if in_flight is not None:
            in_flight._interrupt()
        for registration in registrations:
            registration.close()
        log.debug("resync orchestrator closed")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return (f"Resync(registrations={self.registrations!r}, "
                f"status={self._status.value})")
