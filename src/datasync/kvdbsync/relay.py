"""Relay of one subscription's events from a backend to its channels.

KVDBSync gives the backend one callable, a Relay, as both channels of a
watch, so the backend delivers resync and change events to it in one
ordered stream, on one thread. The relay passes each event on to the
subscriber's own channels. On the way it wraps each resync event to
learn when the subscriber calls done(), which an orchestrated resync
waits for. When the subscriber has separate change and resync channels,
the relay also keeps later events back until that done() (or the
notification timeout), so that no change after a snapshot reaches the
subscriber before the snapshot is applied.
"""

import asyncio
import logging
import queue
import threading

from datasync.channels import DEFAULT_MAX_PENDING, make_sink
from datasync.events import ResyncEvent

log = logging.getLogger("datasync.kvdbsync")

# Seconds between two tries to put into a full bounded queue.Queue or a
# full asyncio channel. Only a consumer that lags behind causes retries.
_FULL_RETRY = 0.05


class _QueueOutput:
    """Puts events into a ``queue.Queue``, waiting while it is full."""

    def __init__(self, chan):
        self.chan = chan

    def deliver(self, event, closed):
        while not closed.is_set():
            try:
                self.chan.put(event, timeout=_FULL_RETRY)
                return
            except queue.Full:
                continue

    def close(self):
        pass


class _AsyncioOutput:
    """Hands events to an ``asyncio.Queue`` on its event loop."""

    def __init__(self, chan, name):
        self._sink = make_sink(chan, name, DEFAULT_MAX_PENDING)
        self._space = threading.Event()
        self._sink.on_space = self._space.set

    def deliver(self, event, closed):
        while not closed.is_set():
            self._space.clear()
            if self._sink.offer(event):
                return
            self._space.wait(_FULL_RETRY)

    def close(self):
        self._sink.close()


class _CallableOutput:
    """Calls a callable with each event, on the relay's thread."""

    def __init__(self, callback, name):
        self.callback = callback
        self._name = name

    def deliver(self, event, closed):
        try:
            self.callback(event)
        except Exception as exc:
            log.exception("callback of subscription %r failed on %r",
                          self._name, event)
            event.done(exc)

    def close(self):
        pass


def make_output(chan, name):
    """Return the output for a subscriber's channel.

    Raises TypeError for anything but a ``queue.Queue``, an
    ``asyncio.Queue`` (then this must run on its event loop) or a
    callable.
    """
    if isinstance(chan, asyncio.Queue):
        return _AsyncioOutput(chan, name)
    if isinstance(chan, queue.Queue):
        return _QueueOutput(chan)
    if callable(chan):
        return _CallableOutput(chan, name)
    raise TypeError(
        f"channel of subscription {name!r} must be a queue.Queue, an "
        f"asyncio.Queue or a callable, got {type(chan).__name__}")


class Relay:
    """Callable channel that passes a backend's events to a subscriber.

    Parameters:
        name: resync name of the subscription, for logs.
        change_chan, resync_chan: the subscriber's channels.
        notif_timeout: seconds to hold events back after a resync sent
            to a separate resync channel, while waiting for its done().
    """

    def __init__(self, name, change_chan, resync_chan, notif_timeout):
        self.name = name
        self.notif_timeout = notif_timeout
        self._change_out = make_output(change_chan, name)
        self._separate = resync_chan is not change_chan
        self._resync_out = (make_output(resync_chan, name) if self._separate
                            else self._change_out)
        self._closed = threading.Event()
        self._cond = threading.Condition()
        # Resync events received so far, and the sequence number, revision
        # and error of the latest-received one that is done.
        self._resyncs_received = 0
        self._done_seq = 0
        self._done_revision = -1
        self._done_error = None

    @property
    def resyncs_received(self):
        """Number of resync events received from the backend."""
        return self._resyncs_received

    def __call__(self, event):
        if self._closed.is_set():
            return
        if not isinstance(event, ResyncEvent):
            self._change_out.deliver(event, self._closed)
            return
        with self._cond:
            self._resyncs_received += 1
            seq = self._resyncs_received
        wrapped = ResyncEvent(
            event.values, event.revision,
            lambda done_event, error: self._resync_done(
                event, seq, done_event.revision, error))
        self._resync_out.deliver(wrapped, self._closed)
        if self._separate:
            self._hold_until_done(wrapped)

    def _resync_done(self, original, seq, revision, error):
        # Lets the backend end the snapshot's read transaction and go on.
        original.done(error)
        with self._cond:
            if seq > self._done_seq:
                self._done_seq = seq
                self._done_revision = revision
                self._done_error = error
            self._cond.notify_all()

    def _hold_until_done(self, event):
        with self._cond:
            done = self._cond.wait_for(
                lambda: event.is_done or self._closed.is_set(),
                self.notif_timeout)
        if not done:
            log.warning("subscription %r did not call done() on its resync "
                        "at revision %d within %.1f s; sending the changes "
                        "after it", self.name, event.revision,
                        self.notif_timeout)

    def wait_resync_done(self, after_seq, min_revision, timeout):
        """Wait for done() on a resync received after ``after_seq`` resync
        events and taken at ``min_revision`` or later.

        Returns (True, error given to done()) or, after ``timeout``
        seconds or close(), (False, None).
        """
        def finished():
            return (self._closed.is_set() or (
                self._done_seq > after_seq and
                self._done_revision >= min_revision))

        with self._cond:
            self._cond.wait_for(finished, timeout)
            if (self._done_seq > after_seq and
                    self._done_revision >= min_revision):
                return True, self._done_error
            return False, None

    def close(self):
        """Stop passing events on and end every wait."""
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        self._change_out.close()
        if self._separate:
            self._resync_out.close()
