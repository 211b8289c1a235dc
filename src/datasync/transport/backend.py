"""Backends: the place where transports apply what clients send.

A backend applies puts, deletes and resyncs one at a time, in the order
they arrive from every transport and connection, on a thread of its own.
``submit`` queues an operation and returns a concurrent Future of its
outcome, so a transport can accept the next request of a stream while
the watchers are still busy with the previous one.

MemoryBackend
    No store: a Registry routes each change to the watchers of the
    adapter, with a revision from its own counter and the previous value
    it recorded, and the outcome is what the watchers report through
    done(). Values live in memory only.
StoreBackend
    The embedded store: each change is one committed transaction, so
    watchers of the store in any process receive it. The outcome is
    whether the commit succeeded; watchers of a store report done() to
    the store, not to the client.
"""

import concurrent.futures
import dataclasses
import logging

from datasync._core.events import Change
from datasync.errors import DatasyncError
from datasync.ops import Op
from datasync.options import with_prefix
from datasync.syncbase import DEFAULT_DONE_TIMEOUT, Registry
from datasync.transport.errors import Result, result_of

__all__ = ["Put", "Delete", "Outcome", "ResyncOutcome", "Backend",
           "MemoryBackend", "StoreBackend"]

log = logging.getLogger("datasync.transport")


@dataclasses.dataclass(frozen=True)
class Put:
    """A put of ``value`` (bytes) under ``key`` (bytes)."""

    key: bytes
    value: bytes


@dataclasses.dataclass(frozen=True)
class Delete:
    """A delete of ``key`` (bytes), or of every key under it."""

    key: bytes
    prefix: bool = False


@dataclasses.dataclass
class Outcome:
    """Outcome of one put or delete.

    ``revision`` is the revision of the change, or the current revision
    when nothing changed (a delete of a missing key). ``deleted`` lists
    the keys a delete removed. ``errors`` are the failures behind a
    non-zero ``code``.
    """

    code: Result
    revision: int
    errors: list = dataclasses.field(default_factory=list)
    deleted: list = dataclasses.field(default_factory=list)

    @property
    def message(self):
        """The errors as one line, or "" when there are none."""
        return "; ".join(_describe(error) for error in self.errors)


@dataclasses.dataclass
class ResyncOutcome:
    """Outcome of one resync: a code for it and one per key."""

    code: Result
    revision: int
    results: dict
    errors: list = dataclasses.field(default_factory=list)

    @property
    def message(self):
        """The errors as one line, or "" when there are none."""
        return "; ".join(_describe(error) for error in self.errors)


def _describe(error):
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else \
        type(error).__name__


class Backend:
    """Base class of backends: a single thread applies every operation.

    Subclasses implement ``apply``, ``resync``, ``get``, ``list_values``
    and ``watch``. Reads may be called from any thread.
    """

    def __init__(self):
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="datasync-apply")

    def submit(self, operation):
        """Queue a Put, a Delete or a resync dict; return a Future.

        The future's result is an Outcome, or a ResyncOutcome for a dict
        of key bytes to value bytes. Operations run one at a time in the
        order submitted. Raises RuntimeError after close().
        """
        if isinstance(operation, dict):
            return self._executor.submit(self.resync, operation)
        return self._executor.submit(self.apply, operation)

    def apply(self, operation):
        """Apply a Put or Delete now; return its Outcome."""
        raise NotImplementedError

    def resync(self, values):
        """Replace every key with ``values``; return a ResyncOutcome."""
        raise NotImplementedError

    def get(self, key):
        """Return the KeyVal of ``key`` (bytes), or None."""
        raise NotImplementedError

    def list_values(self, prefix):
        """Return (revision, [KeyVal]) of the keys under ``prefix``."""
        raise NotImplementedError

    def watch(self, resync_name, change_chan, resync_chan, *key_prefixes,
              **options):
        """Subscribe to changes under ``key_prefixes``; see the subclass."""
        raise NotImplementedError

    def close(self):
        """Finish the queued operations, then stop the thread."""
        self._executor.shutdown(wait=True)


class MemoryBackend(Backend):
    """Delivers changes to watchers through a Registry, without a store.

    ``timeout`` is how many seconds a change waits for every watcher's
    done() before its outcome is DELIVERY_TIMEOUT; ``max_pending`` is how
    many events a watcher's channel may hold (more are CHANNEL_FULL).
    """

    def __init__(self, *, timeout=DEFAULT_DONE_TIMEOUT, max_pending=None):
        super().__init__()
        options = {"timeout": timeout}
        if max_pending is not None:
            options["max_pending"] = max_pending
        self.registry = Registry(**options)

    def apply(self, operation):
        if isinstance(operation, Put):
            changes = [Change(operation.key, Op.PUT, operation.value)]
        elif operation.prefix:
            _, values = self.registry.list_values(operation.key)
            changes = [Change(kv.key_bytes, Op.DELETE) for kv in values]
        else:
            changes = [Change(operation.key, Op.DELETE)]
        try:
            report = self.registry.propagate_changes(changes)
        except DatasyncError as exc:
            return Outcome(Result.NOT_APPLIED, self.registry.revision,
                           [exc])
        errors = list(report)
        for error in errors:
            log.warning("change of key %r at revision %s: %s",
                        operation.key, report.revision, _describe(error))
        if report.revision is None:
            return Outcome(Result.OK, self.registry.revision)
        deleted = [] if isinstance(operation, Put) else [
            change.key_bytes for change in changes]
        return Outcome(result_of(errors), report.revision, errors, deleted)

    def resync(self, values):
        try:
            report = self.registry.propagate_resync(values)
        except DatasyncError as exc:
            results = {key: Result.NOT_APPLIED for key in values}
            return ResyncOutcome(Result.NOT_APPLIED, self.registry.revision,
                                 results, [exc])
        errors = list(report)
        code = result_of(errors)
        for error in errors:
            log.warning("resync at revision %s: %s", report.revision,
                        _describe(error))
        # NOTE: the registry reports errors without the subscription that
        # failed, so every key gets the result of the whole resync.
        results = {key: code for key in values}
        return ResyncOutcome(code, report.revision, results, errors)

    def get(self, key):
        return self.registry.get(key)

    def list_values(self, prefix):
        return self.registry.list_values(prefix)

    def watch(self, resync_name, change_chan, resync_chan, *key_prefixes,
              **options):
        """Subscribe to what clients send under ``key_prefixes``.

        Takes the options of Registry.watch (``loop``, ``max_pending``).
        The subscriber gets change events as clients send changes and a
        resync event when a client sends a resync. Its done() result is
        sent back to that client.
        """
        return self.registry.watch(resync_name, change_chan, resync_chan,
                                   *key_prefixes, **options)

    def close(self):
        # Closing the registry first ends the waits for done(), so the
        # queued operations finish at once.
        self.registry.close()
        super().close()


class StoreBackend(Backend):
    """Commits every change to an embedded store (datasync.Store).

    The store stays open after close(); its owner closes it.
    """

    def __init__(self, store):
        super().__init__()
        self.store = store

    def apply(self, operation):
        try:
            if isinstance(operation, Put):
                revision = self.store.put(operation.key, operation.value)
                return Outcome(Result.OK, revision)
            opts = (with_prefix(),) if operation.prefix else ()
            result = self.store.delete(operation.key, *opts)
        except DatasyncError as exc:
            log.error("store %s could not commit the change of key %r: %s",
                      self.store.path, operation.key, exc)
            return Outcome(Result.NOT_APPLIED, self.store.revision, [exc])
        return Outcome(Result.OK, result.revision, [],
                       [change.key_bytes for change in result.deleted])

    def resync(self, values):
        # One transaction deletes the keys missing from ``values`` and
        # puts those that are new or changed, so watchers of the store see
        # only the difference.
        # NOTE: the listing and the commit are two transactions; a write by
        # another process in between is not taken into account.
        try:
            current = {kv.key_bytes: kv.value
                       for kv in self.store.list_values("")}
            with self.store.txn() as txn:
                for key in current.keys() - values.keys():
                    txn.delete(key)
                for key, value in values.items():
                    if current.get(key) != value:
                        txn.put(key, value)
        except DatasyncError as exc:
            log.error("store %s could not commit a resync of %d keys: %s",
                      self.store.path, len(values), exc)
            results = {key: Result.NOT_APPLIED for key in values}
            return ResyncOutcome(Result.NOT_APPLIED, self.store.revision,
                                 results, [exc])
        return ResyncOutcome(Result.OK, txn.revision,
                             {key: Result.OK for key in values})

    def get(self, key):
        return self.store.get(key)

    def list_values(self, prefix):
        listing = self.store.list_values(prefix)
        return listing.revision, list(listing)

    def watch(self, resync_name, change_chan, resync_chan, *key_prefixes,
              **options):
        """Watch the store (see Store.watch); done() goes to the store."""
        return self.store.watch(resync_name, change_chan, resync_chan,
                                *key_prefixes, **options)
