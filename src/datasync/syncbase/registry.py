"""A registry of subscriptions for transports without a store.

A transport (gRPC, REST, local transactions) that receives changes from
elsewhere hands them to a Registry, which routes them to the watching
subscriptions and waits until each one has called done().

Locking: the registry's lock guards its subscriptions, the prefix index,
the revision counter and the previous values. It is held only while
events are built and offered, and offers never block, so register(),
unregister() and close() may be called from any thread, including a
consumer's callback, while a propagation waits for done(). The waits
themselves happen outside the lock, on a lock of each propagation.
"""

import asyncio
import bisect
import logging
import math
import threading
import time

from datasync._core.events import (Change, ChangeEvent, KeyVal, KVIterator,
                                   ResyncEvent)
from datasync._core.prefix import PrefixIndex, Subscriber
from datasync.channels import DEFAULT_MAX_PENDING, make_sink
from datasync.errors import (DatasyncError, DeliveryTimeoutError,
                             InvalidValueError, RegistrationError,
                             StoreClosedError)
from datasync.keyval.lmdb.store import encode_key, encode_prefix
from datasync.ops import Op
from datasync.syncbase.values import PrevRevisions

__all__ = ["Registry", "Registration", "DeliveryReport", "ChannelFullError",
           "DEFAULT_DONE_TIMEOUT"]

log = logging.getLogger("datasync.syncbase")

#: Seconds propagate_changes and propagate_resync wait for every
#: subscriber's done() before they report a DeliveryTimeoutError.
DEFAULT_DONE_TIMEOUT = 20.0


class ChannelFullError(DatasyncError):
    """A subscription's channel held too many events to take one more.

    The event was not delivered. The subscription has ``max_pending``
    events that it has not taken from its channel yet.
    """


class DeliveryReport(list):
    """The errors of one propagation, as a list, in subscription order.

    ``revision`` is the revision of the events sent, or None when no
    subscription had anything to receive.
    """

    def __init__(self, errors=(), revision=None):
        super().__init__(errors)
        self.revision = revision


class _Subscription(Subscriber):
    def __init__(self, name, prefixes, change_sink, resync_sink,
                 same_channel, loop):
        self.name = name
        self.prefixes = prefixes
        self.change_sink = change_sink
        self.resync_sink = resync_sink
        self.same_channel = same_channel
        self.loop = loop
        self.closed = False


# States of one event inside a propagation.
_PENDING = "pending"
_DONE = "done"
_FORGOTTEN = "forgotten"


class _Propagation:
    """The events of one propagation call and their done() outcomes."""

    def __init__(self, kind, revision):
        self.kind = kind
        self.revision = revision
        self._cond = threading.Condition()
        self._entries = {}
        self._pending = 0
        self._finished = False

    def expect(self, event, sub):
        with self._cond:
            self._entries[event] = [sub, _PENDING, None]
            self._pending += 1

    def on_done(self, event, error):
        with self._cond:
            entry = self._entries.get(event)
            if entry is None or entry[1] != _PENDING:
                return
            if self._finished:
                log.debug("subscription %r called done() on the %s at "
                          "revision %d after the timeout", entry[0].name,
                          self.kind, self.revision)
                return
            entry[1] = _DONE
            entry[2] = error
            self._pending -= 1
            if self._pending == 0:
                self._cond.notify_all()

    def forget(self, sub):
        """Stop waiting for the events of a closed subscription."""
        with self._cond:
            for entry in self._entries.values():
                if entry[0] is sub and entry[1] == _PENDING:
                    entry[1] = _FORGOTTEN
                    self._pending -= 1
            if self._pending == 0:
                self._cond.notify_all()

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._finished = True
            return [self._error_of(sub, state, error, timeout)
                    for sub, state, error in self._entries.values()
                    if state == _PENDING or (state == _DONE and
                                             error is not None)]

    def _error_of(self, sub, state, error, timeout):
        where = f"the {self.kind} at revision {self.revision}"
        if state == _PENDING:
            log.warning("subscription %r did not call done() on %s within "
                        "%.1f s", sub.name, where, timeout)
            exc = DeliveryTimeoutError(
                f"subscription {sub.name!r} did not call done() on {where} "
                f"within {timeout:g} s")
            exc.resync_name = sub.name
            exc.revision = self.revision
            return exc
        if not isinstance(error, BaseException):
            return DatasyncError(
                f"subscription {sub.name!r} reported {error!r} for {where}")
        error.add_note(f"reported by subscription {sub.name!r} for {where}")
        return error


def _check_timeout(timeout):
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(
            f"timeout must be a finite number of seconds > 0, got "
            f"{timeout!r}")
    return float(timeout)


def _value_bytes(key, value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise InvalidValueError(
        f"value of key {key!r} must be bytes, got {type(value).__name__}; "
        "serialize messages with SerializeToString() first")


class Registry:
    """Subscriptions of a transport that has no store of its own.

    ``timeout`` is the default number of seconds the propagate methods
    wait for every subscriber's done(). ``max_pending`` is the default
    number of events a channel may hold; an event offered to a fuller
    channel is reported as a ChannelFullError.

    The registry assigns revisions from a counter of its own and keeps
    the last value of every key it propagated, to attach as the previous
    value of the next change of that key.
    """

    def __init__(self, *, timeout=DEFAULT_DONE_TIMEOUT,
                 max_pending=DEFAULT_MAX_PENDING):
        self.timeout = _check_timeout(timeout)
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._index = PrefixIndex()
        self._subs = {}
        self._prev = PrevRevisions()
        self._revision = 0
        self._propagations = set()
        self._closed = False

    @property
    def revision(self):
        """The last revision propagated; 0 before the first."""
        return self._revision

    def get(self, key):
        """Return the last propagated KeyVal of ``key``, or None."""
        with self._lock:
            return self._prev.get(encode_key(key))

    def list_values(self, prefix=""):
        """Return (revision, KeyVals) of the keys under ``prefix``.

        The KeyVals are the last propagated value of each key, in key
        order, read under one lock with the revision they are at.
        """
        start = encode_prefix(prefix)
        with self._lock:
            keys = self._prev.keys()
            values = []
            for key in keys[bisect.bisect_left(keys, start):]:
                if not key.startswith(start):
                    break
                values.append(self._prev.get(key))
            return self._revision, values

    # Subscriptions --------------------------------------------------------

    def watch(self, resync_name, change_chan, resync_chan, *key_prefixes,
              loop=None, max_pending=None):
        """Subscribe to changes and resyncs of keys under ``key_prefixes``.

        Channels are a queue.Queue, an asyncio.Queue (fed on ``loop``, by
        default the loop running in the calling thread) or a callable
        run on a thread of its own. Passing the same channel twice keeps
        resyncs and changes in one ordered stream. The empty prefix
        matches every key.

        Returns a Registration. Raises RegistrationError for an empty
        name, no prefixes, or a name that is already subscribed, and
        StoreClosedError after close().
        """
        if not isinstance(resync_name, str) or not resync_name:
            raise RegistrationError(
                f"resync_name must be a non-empty str, got {resync_name!r}")
        if not key_prefixes:
            raise RegistrationError(
                f"watch {resync_name!r} needs at least one key prefix")
        prefixes = list(dict.fromkeys(encode_prefix(p) for p in key_prefixes))
        limit = self.max_pending if max_pending is None else max_pending
        loop = _loop_of(change_chan, resync_chan, loop)
        change_sink = make_sink(change_chan, resync_name, limit, loop)
        same = resync_chan is change_chan
        resync_sink = change_sink if same else make_sink(
            resync_chan, resync_name, limit, loop)
        sub = _Subscription(resync_name, prefixes, change_sink, resync_sink,
                            same, loop)
        try:
            with self._lock:
                self._check_open()
                if resync_name in self._subs:
                    raise RegistrationError(
                        f"a subscription named {resync_name!r} already "
                        "watches this registry; close it first or choose "
                        "another name")
                self._subs[resync_name] = sub
                for prefix in prefixes:
                    self._index.add(prefix, sub)
        except Exception:
            _close_sinks(sub)
            raise
        return Registration(self, sub)

    def _add_prefix(self, sub, prefix):
        with self._lock:
            _check_sub_open(sub)
            if prefix in sub.prefixes:
                raise RegistrationError(
                    f"subscription {sub.name!r} already watches prefix "
                    f"{prefix!r}")
            sub.prefixes.append(prefix)
            self._index.add(prefix, sub)

    def _remove_prefix(self, sub, prefix):
        with self._lock:
            _check_sub_open(sub)
            if prefix not in sub.prefixes:
                raise RegistrationError(
                    f"subscription {sub.name!r} does not watch prefix "
                    f"{prefix!r}; it watches {sub.prefixes!r}")
            sub.prefixes.remove(prefix)
            self._index.remove(prefix, sub)

    def _remove(self, sub):
        with self._lock:
            if sub.closed:
                return
            sub.closed = True
            for prefix in sub.prefixes:
                self._index.remove(prefix, sub)
            del self._subs[sub.name]
            propagations = list(self._propagations)
        # Outside the lock: closing a callback sink joins its thread, and
        # that callback may be waiting for the lock in register().
        for propagation in propagations:
            propagation.forget(sub)
        _close_sinks(sub)

    def close(self):
        """Close every registration; later calls raise StoreClosedError."""
        with self._lock:
            self._closed = True
            subs = list(self._subs.values())
        for sub in subs:
            self._remove(sub)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _check_open(self):
        if self._closed:
            raise StoreClosedError("registry is closed")

    def _check_loop(self):
        # A propagation blocks its thread until done(), so on the loop
        # that feeds an asyncio.Queue channel it could never be delivered.
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        for sub in self._subs.values():
            if sub.loop is running:
                raise RuntimeError(
                    f"subscription {sub.name!r} is fed on the event loop "
                    "running in this thread, which this blocking call "
                    "would stall; call it through asyncio.to_thread()")

    # Changes ---------------------------------------------------------------

    def propagate_changes(self, changes, timeout=None):
        """Send ``changes`` to the subscriptions whose prefixes match.

        ``changes`` is an iterable of Change objects. Each subscription
        gets one ChangeEvent with its matching changes, in the given
        order. Every change carries the previous value this registry
        recorded for its key, and the value given as prev_value is
        ignored. A delete of a key this registry has not seen is dropped.

        Changes with revision 0 get the call's revision: the highest
        revision carried by the changes, or else the next value of the
        registry's counter. Carried revisions are passed on unchanged.

        Waits up to ``timeout`` seconds (default: the registry's) for
        every subscriber's done(). Returns a DeliveryReport: the errors
        reported through done(), a DeliveryTimeoutError (with
        ``resync_name`` and ``revision``) for each event not done in
        time, and a ChannelFullError for each event that was not
        delivered. Events of a subscription closed meanwhile are not
        waited for. Called from a subscriber's own callback, it waits
        the full timeout for that subscriber, whose next event is
        delivered only after the callback returns.

        Raises TypeError for anything but Change objects, StoreClosedError
        after close(), and RuntimeError on the event loop that feeds one
        of the subscriptions.
        """
        changes = list(changes)
        for change in changes:
            if not isinstance(change, Change):
                raise TypeError(
                    "propagate_changes takes Change objects, got "
                    f"{type(change).__name__}")
        timeout = self.timeout if timeout is None else _check_timeout(
            timeout)
        with self._lock:
            self._check_open()
            self._check_loop()
            revision, changed = self._record_changes(changes)
            if not changed:
                return DeliveryReport()
            propagation = _Propagation("change", revision)
            self._propagations.add(propagation)
            for sub, matched in self._index.route(changed):
                event = ChangeEvent(matched, revision, propagation.on_done)
                self._offer(propagation, sub, sub.change_sink, event)
        return self._finish(propagation, timeout)

    def _record_changes(self, changes):
        carried = [c.revision for c in changes if c.revision]
        if carried:
            revision = max(carried)
        else:
            revision = self._revision + 1
        changed = []
        for change in changes:
            out = self._record_change(change, change.revision or revision)
            if out is not None:
                changed.append(out)
        if changed or carried:
            self._revision = max(self._revision, revision)
        return revision, changed

    def _record_change(self, change, revision):
        key = change.key_bytes
        if change.change_type is Op.DELETE:
            prev = self._prev.delete(key)
            if prev is None:
                return None
            return Change(key, Op.DELETE, None, prev.value, revision,
                          prev.create_revision, 0)
        prev = self._prev.get(key)
        created = change.create_revision
        version = change.version
        if not created:
            created = revision if prev is None else prev.create_revision
        if not version:
            version = 1 if prev is None else prev.version + 1
        value = change.value
        self._prev.put_keyval(KeyVal(key, value, revision, created, version))
        return Change(key, Op.PUT, value,
                      None if prev is None else prev.value, revision,
                      created, version)

    # Resync ----------------------------------------------------------------

    def propagate_resync(self, snapshot, timeout=None, revision=None):
        """Send every subscription a ResyncEvent of its prefixes.

        ``snapshot`` is a mapping of key to value bytes, or an iterable of
        KeyVal objects. It is the whole data set: it replaces the values
        the registry recorded, so a key missing from it has no previous
        value afterwards. ``revision`` is the revision of the
        snapshot, by default the next value of the registry's counter. A
        KeyVal with revision 0, or a mapping entry, keeps the metadata the
        registry recorded for the key when the value is unchanged, and is
        otherwise stamped with the snapshot's revision.

        Each subscription gets a ResyncEvent whose ``values`` map each of
        its prefixes to a KVIterator over the keys under it, in byte
        order. Waits for done() and returns a DeliveryReport like
        propagate_changes.

        Raises InvalidKeyError or InvalidValueError for a bad entry (and
        then sends nothing), StoreClosedError after close(), and
        RuntimeError on the event loop that feeds one of the
        subscriptions.
        """
        entries = _snapshot_entries(snapshot)
        timeout = self.timeout if timeout is None else _check_timeout(
            timeout)
        with self._lock:
            self._check_open()
            self._check_loop()
            if revision is None:
                revision = self._revision + 1
            elif isinstance(revision, bool) or not isinstance(
                    revision, int) or revision < 0:
                raise ValueError(
                    f"revision must be an int >= 0, got {revision!r}")
            self._revision = max(self._revision, revision)
            keyvals = [self._snapshot_keyval(key, value, kv, revision)
                       for key, (value, kv) in sorted(entries.items())]
            self._prev.replace(keyvals)
            keys = [kv.key_bytes for kv in keyvals]
            propagation = _Propagation("resync", revision)
            self._propagations.add(propagation)
            for sub in list(self._subs.values()):
                values = {}
                for prefix in sub.prefixes:
                    name = prefix.decode("utf-8", "surrogateescape")
                    values[name] = KVIterator(
                        _under_prefix(keys, keyvals, prefix))
                event = ResyncEvent(values, revision, propagation.on_done)
                self._offer(propagation, sub, sub.resync_sink, event)
        return self._finish(propagation, timeout)

    def _snapshot_keyval(self, key, value, kv, revision):
        if kv is not None and kv.revision:
            return kv
        prev = self._prev.get(key)
        if prev is not None and prev.value == value:
            return prev
        if prev is None:
            return KeyVal(key, value, revision, revision, 1)
        return KeyVal(key, value, revision, prev.create_revision,
                      prev.version + 1)

    # Delivery --------------------------------------------------------------

    def _offer(self, propagation, sub, sink, event):
        propagation.expect(event, sub)
        if sink.offer(event):
            return
        log.error("channel of subscription %r is full; the %s at revision "
                  "%d was not delivered", sub.name, propagation.kind,
                  propagation.revision)
        propagation.on_done(event, ChannelFullError(
            f"channel of subscription {sub.name!r} is full (max_pending "
            f"events are waiting); the {propagation.kind} at revision "
            f"{propagation.revision} was not delivered. Take events from "
            "the channel sooner, or watch with a larger max_pending"))

    def _finish(self, propagation, timeout):
        try:
            errors = propagation.wait(timeout)
        finally:
            with self._lock:
                self._propagations.discard(propagation)
        return DeliveryReport(errors, propagation.revision)


class Registration:
    """Handle of one subscription of a Registry (a WatchRegistration).

    Its methods are safe from any thread, including the subscription's
    own callback.
    """

    def __init__(self, registry, sub):
        self._registry = registry
        self._sub = sub

    @property
    def resync_name(self):
        """Name of the subscription."""
        return self._sub.name

    @property
    def prefixes(self):
        """Prefixes watched, as str."""
        return [p.decode("utf-8", "surrogateescape")
                for p in self._sub.prefixes]

    def register(self, resync_name, key_prefix):
        """Add ``key_prefix``; changes under it arrive from the next
        propagation.

        Raises RegistrationError for another subscription's name or a
        prefix already watched, and StoreClosedError after close().
        """
        if resync_name != self._sub.name:
            raise RegistrationError(
                f"registration is for {self._sub.name!r}, not "
                f"{resync_name!r}")
        self._registry._add_prefix(self._sub, encode_prefix(key_prefix))

    def unregister(self, key_prefix):
        """Stop watching ``key_prefix``.

        Raises RegistrationError if it is not watched, and
        StoreClosedError after close().
        """
        self._registry._remove_prefix(self._sub, encode_prefix(key_prefix))

    def close(self):
        """End the subscription; calling it again does nothing.

        A propagation waiting for this subscription's done() stops
        waiting for it.
        """
        self._registry._remove(self._sub)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _check_sub_open(sub):
    if sub.closed:
        raise StoreClosedError(
            f"subscription {sub.name!r} is closed; watch again")


def _close_sinks(sub):
    sub.change_sink.close()
    if not sub.same_channel:
        sub.resync_sink.close()


def _loop_of(change_chan, resync_chan, loop):
    """Return the loop that feeds an asyncio.Queue channel, or None."""
    if not (isinstance(change_chan, asyncio.Queue) or
            isinstance(resync_chan, asyncio.Queue)):
        return None
    if loop is not None:
        return loop
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _snapshot_entries(snapshot):
    """Return {key bytes: (value bytes, KeyVal or None)}; last one wins."""
    entries = {}
    if hasattr(snapshot, "items"):
        for key, value in snapshot.items():
            entries[encode_key(key)] = (_value_bytes(key, value), None)
        return entries
    for kv in snapshot:
        if not isinstance(kv, KeyVal):
            raise TypeError(
                "a snapshot is a mapping of key to bytes or an iterable "
                f"of KeyVal, got an item of type {type(kv).__name__}")
        value = kv.value
        if value is None:
            raise InvalidValueError(
                f"snapshot entry of key {kv.key!r} has no value; leave "
                "deleted keys out of a snapshot")
        entries[encode_key(kv.key_bytes)] = (value, kv)
    return entries


def _under_prefix(keys, keyvals, prefix):
    start = bisect.bisect_left(keys, prefix)
    out = []
    for i in range(start, len(keys)):
        if not keys[i].startswith(prefix):
            break
        out.append(keyvals[i])
    return out
