"""Ways for a producer to learn that a consumer called done().

A CallbackResult is anything with ``done(error=None)``. The classes here
are CallbackResults that forward the outcome: to a queue, to a function,
or, through aggregate_done, to one target once several parts are done.
Each of them is also callable as ``(event, error)``, so it can be given
as the ``on_done`` hook of a ChangeEvent or ResyncEvent.
"""

import asyncio
import queue
import threading

from datasync.errors import AggregateError, DatasyncError

__all__ = ["DoneChannel", "DoneCallback", "AggregateDone", "aggregate_done"]


class _DoneOnce:
    """A CallbackResult whose first done() counts and later ones do not."""

    def __init__(self):
        self._lock = threading.Lock()
        self.is_done = False
        self.error = None

    def done(self, error=None):
        """Report None when the event was applied, else the error.

        Only the first call counts; later calls are ignored.
        """
        with self._lock:
            if self.is_done:
                return
            self.is_done = True
            self.error = error
        self._report(error)

    def __call__(self, event, error):
        self.done(error)

    def _report(self, error):
        raise NotImplementedError


class DoneChannel(_DoneOnce):
    """A CallbackResult that puts the reported error on a queue.

    ``chan`` is a ``queue.Queue`` (a new unbounded one by default) or an
    ``asyncio.Queue``; the error, or None for success, is put on it once.
    An ``asyncio.Queue`` is fed on ``loop``, by default the loop running
    in the calling thread, so done() may be called from any thread.
    Raises TypeError when an ``asyncio.Queue`` is given and no loop is
    known.
    """

    def __init__(self, chan=None, loop=None):
        super().__init__()
        if chan is None:
            chan = queue.Queue()
        self.chan = chan
        self._loop = None
        if isinstance(chan, asyncio.Queue):
            if loop is None:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    raise TypeError(
                        "a DoneChannel on an asyncio.Queue needs to be "
                        "created on its running event loop, or loop= to "
                        "be given") from None
            self._loop = loop

    def _report(self, error):
        if self._loop is None:
            # put_nowait, so that done() never blocks: a full bounded
            # queue raises queue.Full to the caller of done().
            self.chan.put_nowait(error)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self.chan.put_nowait(error)
        else:
            self._loop.call_soon_threadsafe(self.chan.put_nowait, error)


class DoneCallback(_DoneOnce):
    """A CallbackResult that calls ``callback(error)`` once.

    The callback runs on the thread that calls done(); an exception from
    it propagates to that caller.
    """

    def __init__(self, callback):
        super().__init__()
        if not callable(callback):
            raise TypeError(
                f"callback must be callable, got {type(callback).__name__}")
        self.callback = callback

    def _report(self, error):
        self.callback(error)


class AggregateDone:
    """Several parts whose outcome is reported to one target.

    ``parts`` is a list of ``count`` CallbackResults. Once every part is done,
    ``target.done(error)`` is called once, with None when no part failed,
    else an AggregateError that lists the error of every failed part in
    part order. ``target`` is a CallbackResult or a function that takes
    the error.
    """

    def __init__(self, target, count):
        if isinstance(count, bool) or not isinstance(count, int) or \
                count < 0:
            raise ValueError(f"count must be an int >= 0, got {count!r}")
        report = getattr(target, "done", None)
        if report is None:
            if not callable(target):
                raise TypeError(
                    "target must have done() or be callable, got "
                    f"{type(target).__name__}")
            report = target
        self._report = report
        self._lock = threading.Lock()
        self._errors = [None] * count
        self._remaining = count
        self.parts = [DoneCallback(self._part_reporter(i))
                      for i in range(count)]
        if count == 0:
            self._finish()

    def _part_reporter(self, index):
        def part_done(error):
            with self._lock:
                self._errors[index] = error
                self._remaining -= 1
                last = self._remaining == 0
            if last:
                self._finish()
        return part_done

    def _finish(self):
        failed = [_as_exception(error, index)
                  for index, error in enumerate(self._errors)
                  if error is not None]
        if not failed:
            self._report(None)
            return
        self._report(AggregateError(
            f"{len(failed)} of {len(self._errors)} parts failed", failed))


def _as_exception(error, index):
    # An ExceptionGroup accepts only exceptions, but done() takes any value.
    if isinstance(error, Exception):
        return error
    return DatasyncError(f"part {index} reported {error!r}")


def aggregate_done(target, count):
    """Split one outcome into ``count`` parts; return the AggregateDone.

    Hand ``aggregate.parts[i]`` to the i-th consumer (or pass it as the
    ``on_done`` hook of the i-th event). ``target`` gets one report,
    after the last part is done, with every failure in one
    AggregateError. With ``count`` 0 it gets None at once.
    """
    return AggregateDone(target, count)
