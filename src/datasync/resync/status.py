"""Status events of a resync and the channel that carries them."""

import enum
import queue
import threading

__all__ = ["Status", "StatusEvent", "StatusQueue"]


class Status(str, enum.Enum):
    """State of a resync orchestrator (NotActive and Started originally)."""

    NOT_ACTIVE = "NotActive"
    STARTED = "Started"


class StatusEvent:
    """One status of a resync, sent to one registration.

    The subscriber takes it from its status channel, resyncs when
    ``status`` is Status.STARTED, and calls ``ack()``. The orchestrator
    waits for both steps, each with its own timeout.
    """

    def __init__(self, status, registration_name):
        self._status = Status(status)
        self._name = registration_name
        self._cond = threading.Condition()
        self._taken = False
        self._acked = False
        self._error = None
        self._interrupted = False

    @property
    def status(self):
        """The Status this event reports."""
        return self._status

    @property
    def registration_name(self):
        """Name of the registration the event was sent to."""
        return self._name

    @property
    def is_acked(self):
        """True once ack() was called."""
        return self._acked

    @property
    def error(self):
        """The error given to ack(), or None."""
        return self._error

    def ack(self, error=None):
        """Report that the resync of this registration is finished.

        ``error`` is None on success, else the exception that made the
        resync fail; the orchestrator lists it in its report. Only the
        first call counts. An ack after the ack timeout is ignored.
        """
        with self._cond:
            if self._acked:
                return
            self._acked = True
            self._error = error
            self._cond.notify_all()

    def _mark_taken(self):
        with self._cond:
            self._taken = True
            self._cond.notify_all()

    def _interrupt(self):
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()

    def _wait_taken(self, timeout):
        """Wait until taken or interrupted; return True if taken."""
        with self._cond:
            self._cond.wait_for(lambda: self._taken or self._interrupted,
                                timeout)
            return self._taken

    def _wait_acked(self, timeout):
        """Wait until acked or interrupted; return True if acked."""
        with self._cond:
            self._cond.wait_for(lambda: self._acked or self._interrupted,
                                timeout)
            return self._acked

    @property
    def _was_interrupted(self):
        return self._interrupted

    def __repr__(self):
        return (f"StatusEvent({self._status.value}, "
                f"registration={self._name!r}, acked={self._acked})")


class StatusQueue(queue.Queue):
    """Status channel of a registration read by a consumer thread.

    A ``queue.Queue`` that marks each StatusEvent as taken the moment a
    ``get`` removes it, which starts the orchestrator's ack timeout. An
    event that no consumer took within the accept timeout is withdrawn,
    so a late reader never acts on a resync that was given up.
    """

    def _get(self):
        # queue.Queue calls _get with self.mutex held, so taking an event
        # and withdrawing it cannot both succeed.
        item = super()._get()
        if isinstance(item, StatusEvent):
            item._mark_taken()
        return item

    def _withdraw(self, item):
        """Remove ``item`` unless a consumer took it; return True if
        removed."""
        # self.queue and self.mutex are the storage and lock of CPython's
        # queue.Queue. Its own subclasses (PriorityQueue, LifoQueue)
        # build on the same two attributes.
        with self.mutex:
            try:
                self.queue.remove(item)
            except ValueError:
                return False
            self.not_full.notify()
            return True
