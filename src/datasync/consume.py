"""Loops over the events in a channel queue, until the queue is closed.

A ``queue.Queue`` or ``asyncio.Queue`` passed to ``watch()`` gets one
event per put. These helpers turn it into an iterator::

    async for event in consume.async_events(chan):
        apply(event)
        event.done()

and ``close(chan)`` ends the loop after the events already queued. The
iterators never call done() themselves: the consumer reports the
outcome of each event.
"""

import asyncio
import queue

__all__ = ["END", "close", "events", "async_events"]


class _End:
    def __repr__(self):
        return "datasync.consume.END"


#: Marker that close() puts on a queue; the iterators stop when they
#: take it.
END = _End()


def close(chan, loop=None):
    """Put END on ``chan`` so that its iterator stops there.

    An ``asyncio.Queue`` may be closed from another thread by giving the
    ``loop`` it is used on. Raises TypeError for anything but a
    ``queue.Queue`` or an ``asyncio.Queue``.
    """
    if isinstance(chan, asyncio.Queue):
        if loop is None:
            chan.put_nowait(END)
        else:
            loop.call_soon_threadsafe(chan.put_nowait, END)
        return
    if isinstance(chan, queue.Queue):
        chan.put(END)
        return
    raise TypeError(
        f"close() takes a queue.Queue or an asyncio.Queue, got "
        f"{type(chan).__name__}")


def events(chan, timeout=None):
    """Return an iterator over the events of a ``queue.Queue`` that ends
    when close() is called.

    ``timeout`` is the maximum number of seconds to wait for each event;
    when it passes, the iterator raises TimeoutError. None waits without
    limit. Raises TypeError for anything but a ``queue.Queue``.
    """
    if not isinstance(chan, queue.Queue):
        raise TypeError(
            f"events() takes a queue.Queue, got {type(chan).__name__}; "
            "use async_events() for an asyncio.Queue")
    return _iterate(chan, timeout)


def _iterate(chan, timeout):
    while True:
        try:
            event = chan.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no event within {timeout} s") from None
        if event is END:
            return
        yield event


def async_events(chan):
    """Return an async iterator over the events of an ``asyncio.Queue``
    that ends when close() is called.

    Wrap the loop in ``asyncio.timeout()`` to bound the wait. Raises
    TypeError for anything but an ``asyncio.Queue``.
    """
    if not isinstance(chan, asyncio.Queue):
        raise TypeError(
            f"async_events() takes an asyncio.Queue, got "
            f"{type(chan).__name__}; use events() for a queue.Queue")
    return _async_iterate(chan)


async def _async_iterate(chan):
    while True:
        event = await chan.get()
        if event is END:
            return
        yield event
