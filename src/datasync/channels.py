"""Delivery of events to the channels that subscribers pass to watch().

A channel is a ``queue.Queue``, an ``asyncio.Queue`` or a callable. Each
becomes a sink whose ``offer(event)`` never blocks: it returns False when
the consumer already has ``max_pending`` events waiting, and the producer
keeps its place and offers again later. Producers therefore never wait for
a consumer and never drop an event.
"""

import asyncio
import collections
import logging
import queue
import threading

log = logging.getLogger("datasync.channels")

#: Seconds a producer waits for a subscriber's done() before it reports a
#: timeout or moves on.
DEFAULT_NOTIF_TIMEOUT = 2.0

#: Events a channel may hold before the producer stops offering more and
#: lets the consumer catch up (the revision log is then the buffer).
DEFAULT_MAX_PENDING = 10_000


class Sink:
    """Non-blocking event sink in front of one channel."""

    #: Called with no arguments when a full sink has room again; the
    #: producer sets it to wake itself.
    on_space = None

    def offer(self, event):
        """Hand ``event`` over; return False if the channel is full."""
        raise NotImplementedError

    def close(self):
        """Stop delivering; events not yet handed over are discarded."""


class QueueSink(Sink):
    """Sink for a ``queue.Queue`` read by consumer threads."""

    def __init__(self, chan, max_pending):
        self.chan = chan
        limit = chan.maxsize if chan.maxsize > 0 else max_pending
        self._limit = min(limit, max_pending)

    def offer(self, event):
        if self.chan.qsize() >= self._limit:
            return False
        try:
            self.chan.put_nowait(event)
        except queue.Full:
            return False
        return True


class AsyncioSink(Sink):
    """Sink for an ``asyncio.Queue``, fed thread-safely on its loop."""

    def __init__(self, chan, loop, max_pending):
        self.chan = chan
        self._loop = loop
        self._limit = max_pending
        self._pending = collections.deque()
        self._scheduled = False
        self._closed = False
        self._waiting = None

    def offer(self, event):
        if self._closed:
            return True
        if len(self._pending) >= self._limit:
            return False
        self._pending.append(event)
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:
                self._closed = True
                log.error("event loop of an asyncio.Queue channel is "
                          "closed; its subscription receives nothing more "
                          "until it is closed and watched again")
        return True

    def _drain(self):
        # Runs on the loop. Moves pending events into the queue, waiting
        # for room when the queue is bounded and full.
        while True:
            while self._pending:
                if self._closed:
                    self._pending.clear()
                    break
                if self.chan.full():
                    if self._waiting is None:
                        self._waiting = self._loop.create_task(
                            self._put_when_room())
                    return
                self.chan.put_nowait(self._pending.popleft())
                self._notify_space()
            self._scheduled = False
            # An offer between the loop above and the flag reset saw the
            # flag still set and did not schedule a drain, so look again.
            if not self._pending:
                return
            self._scheduled = True

    async def _put_when_room(self):
        try:
            await self.chan.put(self._pending.popleft())
        finally:
            self._waiting = None
        self._notify_space()
        self._drain()

    def _notify_space(self):
        if self.on_space is not None and len(self._pending) == \
                self._limit // 2:
            self.on_space()

    def close(self):
        self._closed = True
        waiting = self._waiting
        if waiting is not None:
            try:
                self._loop.call_soon_threadsafe(waiting.cancel)
            except RuntimeError:
                pass


class CallbackSink(Sink):
    """Sink for a callable, run on a thread of its own.

    The callable gets one event at a time, in order. An exception from it
    is logged with its traceback and reported as the event's error, and
    the next event is delivered as usual.
    """

    def __init__(self, callback, name, max_pending):
        self.callback = callback
        self._name = name
        self._limit = max_pending
        self._pending = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = None

    def offer(self, event):
        with self._cond:
            if self._closed:
                return True
            if len(self._pending) >= self._limit:
                return False
            self._pending.append(event)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"datasync-callback-{self._name}",
                    daemon=True)
                self._thread.start()
            self._cond.notify()
        return True

    def _run(self):
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                event = self._pending.popleft()
                space = len(self._pending) == self._limit // 2
            if space and self.on_space is not None:
                self.on_space()
            self._deliver(event)

    def _deliver(self, event):
        try:
            self.callback(event)
        except Exception as exc:
            log.exception("callback of subscription %r failed on %r",
                          self._name, event)
            done = getattr(event, "done", None)
            if done is not None:
                done(exc)

    def close(self):
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
            if thread.is_alive():
                log.warning("callback of subscription %r is still running "
                            "5 s after close()", self._name)


def make_sink(chan, name, max_pending=DEFAULT_MAX_PENDING, loop=None):
    """Wrap a channel in the matching sink.

    An ``asyncio.Queue`` is fed on ``loop``, by default the loop running
    in the calling thread. Raises TypeError for anything else than a
    ``queue.Queue``, an ``asyncio.Queue`` or a callable.
    """
    if max_pending < 1:
        raise ValueError(f"max_pending must be >= 1, got {max_pending}")
    if isinstance(chan, asyncio.Queue):
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise TypeError(
                    f"an asyncio.Queue channel of subscription {name!r} "
                    "needs watch() to be called from its running event "
                    "loop, or loop= to be given") from None
        return AsyncioSink(chan, loop, max_pending)
    if isinstance(chan, queue.Queue) or (
            hasattr(chan, "put_nowait") and hasattr(chan, "qsize")):
        if not hasattr(chan, "maxsize"):
            raise TypeError(f"channel {chan!r} is queue-like but has no "
                            "maxsize; pass a queue.Queue")
        return QueueSink(chan, max_pending)
    if callable(chan):
        return CallbackSink(chan, name, max_pending)
    raise TypeError(
        f"channel of subscription {name!r} must be a queue.Queue, an "
        f"asyncio.Queue or a callable, got {type(chan).__name__}")
