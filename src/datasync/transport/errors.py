"""Result codes and errors shared by the gRPC and REST transports.

A change or resync that a transport accepted is reported back to its
sender with a result code: 0 when every watcher applied it, otherwise
the code of the first kind of failure in this order of precedence:

====  =================  ====================================================
code  name               meaning
====  =================  ====================================================
0     OK                 applied: every watcher called done() without error,
                         or the store committed it
1     SUBSCRIBER_ERROR   a watcher called done(error); the change was still
                         recorded and delivered to the other watchers
2     DELIVERY_TIMEOUT   a watcher did not call done() within the timeout
3     CHANNEL_FULL       a watcher's channel was full, so the event was not
                         delivered to it
4     NOT_APPLIED        the store could not commit it (full map, closed
                         store, value above the store's limit); nothing of
                         it was written
====  =================  ====================================================

SUBSCRIBER_ERROR takes precedence over CHANNEL_FULL, which takes
precedence over DELIVERY_TIMEOUT. A request that is malformed is not a
result: it is rejected as a whole with a ProtocolError (gRPC status
INVALID_ARGUMENT, HTTP 400 or 413), and nothing of it is applied.
"""

import enum
import threading
import time

from datasync.errors import DatasyncError, DeliveryTimeoutError

__all__ = ["Result", "ProtocolError", "ResultError", "TransportError",
           "result_of", "RejectionLog"]


class Result(enum.IntEnum):
    """Result code of a change or resync, as sent on the wire."""

    OK = 0
    SUBSCRIBER_ERROR = 1
    DELIVERY_TIMEOUT = 2
    CHANNEL_FULL = 3
    NOT_APPLIED = 4


_MEANINGS = {
    Result.OK: "applied",
    Result.SUBSCRIBER_ERROR: "a watcher reported an error from done()",
    Result.DELIVERY_TIMEOUT: "a watcher did not call done() in time",
    Result.CHANNEL_FULL: "a watcher's channel was full, so the event "
                         "was not delivered to it",
    Result.NOT_APPLIED: "the store could not commit it; nothing was "
                        "written",
}


def describe(code):
    """Return the meaning of a result code, for messages."""
    try:
        return _MEANINGS[Result(code)]
    except ValueError:
        return f"unknown result code {code}"


class ProtocolError(DatasyncError, ValueError):
    """A request was malformed and rejected as a whole.

    The message names the key, field or header at fault. ``http_status``
    is 400, or 413 for a payload above a size limit. Nothing of a
    rejected request is applied.
    """

    def __init__(self, message, http_status=400):
        super().__init__(message)
        self.http_status = http_status


class ResultError(DatasyncError):
    """The server accepted a change or resync and reported a failure.

    ``code`` is the Result, ``key`` the key (None for a resync) and
    ``operation`` "put", "delete" or "resync". ``results`` maps each key
    of a resync to its code.
    """

    def __init__(self, message, code, key=None, operation=None,
                 results=None):
        super().__init__(message)
        self.code = code
        self.key = key
        self.operation = operation
        self.results = results


class TransportError(DatasyncError):
    """The transport failed: the server is unreachable, rejected the
    credentials, or ended the call.

    ``code`` is the gRPC status code or the HTTP status. Whether the
    request was applied is unknown unless the error message states it.
    """

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


def result_of(errors):
    """Return the Result for the errors reported by the watchers."""
    # Imported here because only servers without a store need the
    # registry, and clients import this module too.
    from datasync.syncbase import ChannelFullError

    code = Result.OK
    for error in errors:
        if isinstance(error, DeliveryTimeoutError):
            found = Result.DELIVERY_TIMEOUT
        elif isinstance(error, ChannelFullError):
            found = Result.CHANNEL_FULL
        else:
            return Result.SUBSCRIBER_ERROR
        if code == Result.OK or found == Result.CHANNEL_FULL:
            code = found
    return code


class RejectionLog:
    """Logs rejected requests, at most ``limit`` per ``interval`` seconds.

    Rejections beyond the limit are counted and reported in the next
    message that is logged, so a client that floods the server with bad
    requests cannot flood the log.
    """

    def __init__(self, logger, limit=20, interval=1.0):
        self._log = logger
        self._limit = limit
        self._interval = interval
        self._lock = threading.Lock()
        self._window = 0.0
        self._count = 0
        self._suppressed = 0

    def reject(self, peer, what, reason):
        """Log that the request ``what`` from ``peer`` was rejected."""
        now = time.monotonic()
        with self._lock:
            if now - self._window >= self._interval:
                self._window = now
                self._count = 0
            if self._count >= self._limit:
                self._suppressed += 1
                return
            self._count += 1
            suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            self._log.warning("%d more rejected requests were not logged",
                              suppressed)
        self._log.warning("rejected %s from %s: %s", what, peer, reason)
