"""KVDBSync: datasync over a key-value backend, with orchestrated resync."""

import logging
import threading
import time

from datasync.channels import DEFAULT_NOTIF_TIMEOUT
from datasync.errors import (AggregateError, DeliveryTimeoutError,
                             NotReadyError, RegistrationError,
                             StoreClosedError)
from datasync.kvdbsync.backend import Backend
from datasync.kvdbsync.relay import Relay
from datasync.options import has_prefix_option, split_put_options
from datasync.resync import Status

__all__ = ["KVDBSync", "KVDBRegistration"]

log = logging.getLogger("datasync.kvdbsync")


def _check_prefix(prefix):
    # NOTE: key length limits belong to the backend, so a subscription
    # that is not active yet learns of a too long prefix only when it
    # becomes active, where the error is logged or reported to the
    # orchestrator.
    if not isinstance(prefix, (str, bytes)):
        raise RegistrationError(
            f"key prefix must be str or bytes, got "
            f"{type(prefix).__name__} {prefix!r}")
    return prefix


class KVDBRegistration:
    """Handle of one subscription of a KVDBSync (a WatchRegistration).

    Until the subscription is active on the backend (see KVDBSync), its
    prefixes are only recorded; register() and unregister() work in
    both states.
    """

    def __init__(self, sync, name, prefixes, relay):
        self._sync = sync
        self._name = name
        self._prefixes = list(prefixes)
        self._relay = relay
        # _lock guards the prefixes, the backend watch and the closed
        # flag. It is taken before any lock of the backend, and never
        # held while the backend watch closes, because closing waits for
        # the delivery thread, whose callback may be waiting for _lock.
        self._lock = threading.Lock()
        self._watch = None
        self._closed = False

    @property
    def resync_name(self):
        """Name of the subscription."""
        return self._name

    @property
    def prefixes(self):
        """Prefixes watched, in the order they were added."""
        with self._lock:
            return list(self._prefixes)

    @property
    def active(self):
        """True once the subscription watches the backend."""
        return self._watch is not None

    def register(self, resync_name, key_prefix):
        """Add ``key_prefix``; its changes arrive from the next revision.

        Its current keys arrive with the next resync; call resync() to
        get them now. Safe from any thread and from inside a callback.
        Raises RegistrationError for another resync name or a prefix
        already watched, StoreClosedError after close().
        """
        if resync_name != self._name:
            raise RegistrationError(
                f"registration is for {self._name!r}, not "
                f"{resync_name!r}")
        _check_prefix(key_prefix)
        with self._lock:
            self._check_open()
            if key_prefix in self._prefixes:
                raise RegistrationError(
                    f"subscription {self._name!r} already watches prefix "
                    f"{key_prefix!r}")
            if self._watch is not None:
                self._watch.register(resync_name, key_prefix)
            self._prefixes.append(key_prefix)

    def unregister(self, key_prefix):
        """Stop watching ``key_prefix``.

        Safe from any thread and from inside a callback. Raises
        RegistrationError if it is not watched, StoreClosedError after
        close().
        """
        with self._lock:
            self._check_open()
            if key_prefix not in self._prefixes:
                raise RegistrationError(
                    f"subscription {self._name!r} does not watch prefix "
                    f"{key_prefix!r}; it watches {self._prefixes!r}")
            if self._watch is not None:
                self._watch.unregister(key_prefix)
            self._prefixes.remove(key_prefix)

    def resync(self):
        """Request a new resync of this subscription alone.

        Does nothing while the subscription is not active yet, because
        activation sends a resync. Raises StoreClosedError after close().
        """
        with self._lock:
            self._check_open()
            if self._watch is not None:
                self._watch.resync()

    def close(self):
        """End the subscription; calling it again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watch, self._watch = self._watch, None
        self._relay.close()
        if watch is not None:
            watch.close()
        self._sync._forget(self)

    def _check_open(self):
        if self._closed:
            raise StoreClosedError(
                f"subscription {self._name!r} is closed; watch again")

    def _activate(self, backend):
        with self._lock:
            if not self._closed and self._watch is None:
                self._activate_locked(backend)

    def _activate_locked(self, backend):
        self._watch = backend.watch(self._name, self._relay, self._relay,
                                    *self._prefixes)
        log.debug("subscription %r watches %r", self._name, self._prefixes)

    def _start_resync(self, backend):
        """Activate or resync the subscription for an orchestrated resync.

        Returns the ticket to pass to _wait_resync, or None if closed.
        """
        with self._lock:
            if self._closed:
                return None
            ticket = (self._relay.resyncs_received, backend.revision)
            if self._watch is None:
                self._activate_locked(backend)
            else:
                self._watch.resync()
            return ticket

    def _wait_resync(self, ticket, timeout):
        after_seq, min_revision = ticket
        return self._relay.wait_resync_done(after_seq, min_revision,
                                            timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        state = ("closed" if self._closed else
                 "active" if self._watch is not None else "waiting")
        return (f"KVDBRegistration({self._name!r}, {self._prefixes!r}, "
                f"{state})")


class KVDBSync:
    """datasync over a key-value backend: watch, put and delete.

    Parameters:
        backend: the backend, for example a ``datasync.Store``; None to
            connect one later with connect() or init().
        resync: a ``datasync.resync.Resync`` orchestrator, or None.
        name: name under which this KVDBSync registers with ``resync``.
        notif_timeout: seconds to wait for a subscriber's done() on a
            resync event, before sending the changes after it and before
            acking an orchestrated resync without it.
        open_backend: callable with no arguments that init() calls to
            open the backend; KVDBSync then closes it in close().

    A subscription is active, meaning it watches the backend, once the
    backend is connected and, when an orchestrator is attached, once it
    started its first resync. Until then watch() only records it. On
    activation the subscriber gets a resync (a snapshot taken at a
    revision R), then only the changes above R, each with its previous
    value. Each resync the orchestrator starts afterwards sends every
    active subscription a new snapshot in the same way, and this
    KVDBSync acks it once every subscriber called done() on its snapshot
    or ``notif_timeout`` passed.

    Raises RegistrationError if ``name`` is taken in ``resync``.
    """

    def __init__(self, backend=None, *, resync=None, name="kvdbsync",
                 notif_timeout=DEFAULT_NOTIF_TIMEOUT, open_backend=None):
        self.name = name
        self.notif_timeout = notif_timeout
        self._open_backend = open_backend
        # _lock guards the backend, the registrations and the flags. No
        # backend call or wait happens while it is held.
        self._lock = threading.Lock()
        self._backend = None
        self._owns_backend = False
        self._registrations = {}
        self._primed = resync is None
        self._closed = False
        if backend is not None:
            self.connect(backend)
        self._status_registration = None
        if resync is not None:
            self._status_registration = resync.register(name,
                                                        self._on_status)

    # Lifetime --------------------------------------------------------------

    @property
    def ready(self):
        """True when a backend is connected and close() was not called."""
        return self._backend is not None and not self._closed

    def init(self):
        """Open the backend with ``open_backend`` and connect it.

        Raises NotReadyError when no ``open_backend`` was given, and
        whatever ``open_backend`` raises.
        """
        if self._open_backend is None:
            raise NotReadyError(
                f"{self.name!r} has no open_backend to call; pass "
                "open_backend= to KVDBSync, or call connect(store)")
        self._attach(self._open_backend(), owned=True)

    def connect(self, backend):
        """Use ``backend`` from now on; it stays open after close().

        Activates the subscriptions waiting for a backend unless an
        orchestrator still has to start its first resync. Raises
        TypeError for an object that is not a backend, RuntimeError if
        one is already connected, StoreClosedError after close().
        """
        self._attach(backend, owned=False)

    def _attach(self, backend, owned):
        if not isinstance(backend, Backend):
            raise TypeError(
                f"backend must have revision, put, delete, watch and "
                f"close, like datasync.Store; got {type(backend).__name__}")
        with self._lock:
            if self._closed:
                raise StoreClosedError(f"{self.name!r} is closed")
            if self._backend is not None:
                raise RuntimeError(
                    f"{self.name!r} is already connected to "
                    f"{self._backend!r}")
            self._backend = backend
            self._owns_backend = owned
            waiting = (list(self._registrations.values()) if self._primed
                       else [])
        log.debug("%r connected to %r", self.name, backend)
        self._activate_all(backend, waiting)

    def close(self):
        """Close every subscription and leave the orchestrator.

        Closes the backend if init() opened it; a backend given to
        connect() stays open. Calling it again does nothing.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            registrations = list(self._registrations.values())
            backend = self._backend if self._owns_backend else None
        # Subscriptions close first, so an orchestrated resync waiting
        # for them ends before its registration closes.
        for registration in registrations:
            registration.close()
        if self._status_registration is not None:
            self._status_registration.close()
        if backend is not None:
            backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # Writing ---------------------------------------------------------------

    def put(self, key, message, *opts):
        """Store ``message`` under ``key``; return the revision.

        ``message`` is a protobuf message, stored in its binary encoding,
        or bytes. Options: with_ttl(seconds), with_client_lifetime_ttl(),
        which ties the key to the backend's client (the Store object).
        Raises InvalidOptionError for another option, NotReadyError
        before a backend is connected, and the backend's InvalidKeyError
        or InvalidValueError.
        """
        split_put_options(opts)
        return self._ready_backend().put(key, message, *opts)

    def delete(self, key, *opts):
        """Delete ``key``, or with with_prefix() every key under it.

        Returns the backend's result: for a Store, a DeleteResult whose
        ``existed`` is True if anything was deleted. Raises
        InvalidOptionError for another option, NotReadyError before a
        backend is connected.
        """
        has_prefix_option(opts)
        return self._ready_backend().delete(key, *opts)

    def _ready_backend(self):
        backend = self._backend
        if self._closed:
            raise StoreClosedError(f"{self.name!r} is closed")
        if backend is None:
            raise NotReadyError(
                f"{self.name!r} has no backend yet; call connect(store) or "
                "init() before writing")
        return backend

    # Watching --------------------------------------------------------------

    def watch(self, resync_name, change_chan, resync_chan, *key_prefixes):
        """Subscribe to changes of keys under ``key_prefixes``.

        Channels are a queue.Queue, an asyncio.Queue (watch must then be
        called on its event loop) or a callable. Passing the same channel
        twice keeps resync and change events in one ordered stream. With
        two channels, each change after a resync is held back until the
        subscriber calls done() on it or ``notif_timeout`` passes. So the
        changes still in the change channel when a resync arrives are
        all older than its snapshot, and the consumer can drop them.

        Returns a KVDBRegistration. Raises RegistrationError for an empty
        or taken resync name or no prefixes, TypeError for a channel of
        another kind, StoreClosedError after close(), and what the
        backend raises for an invalid prefix.
        """
        if not isinstance(resync_name, str) or not resync_name:
            raise RegistrationError(
                f"resync_name must be a non-empty str, got {resync_name!r}")
        if not key_prefixes:
            raise RegistrationError(
                f"watch {resync_name!r} needs at least one key prefix")
        prefixes = list(dict.fromkeys(_check_prefix(p)
                                      for p in key_prefixes))
        relay = Relay(resync_name, change_chan, resync_chan,
                      self.notif_timeout)
        registration = KVDBRegistration(self, resync_name, prefixes, relay)
        with self._lock:
            if self._closed:
                raise StoreClosedError(f"{self.name!r} is closed")
            if resync_name in self._registrations:
                raise RegistrationError(
                    f"a subscription named {resync_name!r} already "
                    f"watches {self.name!r}; close it first or choose "
                    "another name")
            self._registrations[resync_name] = registration
            backend = self._backend if self._primed else None
        if backend is not None:
            try:
                registration._activate(backend)
            except BaseException:
                registration.close()
                raise
        return registration

    def _forget(self, registration):
        with self._lock:
            name = registration.resync_name
            if self._registrations.get(name) is registration:
                del self._registrations[name]

    def _activate_all(self, backend, registrations):
        for registration in registrations:
            try:
                registration._activate(backend)
            except Exception:
                log.exception("cannot start subscription %r on %r; it "
                              "receives nothing until it is watched again",
                              registration.resync_name, backend)

    # Orchestrated resync ---------------------------------------------------

    def _on_status(self, event):
        """Run one orchestrated resync, then ack the status event."""
        if event.status is not Status.STARTED:
            event.ack()
            return
        with self._lock:
            closed = self._closed
            self._primed = True
            backend = self._backend
            registrations = list(self._registrations.values())
        if closed:
            event.ack()
            return
        if backend is None:
            log.warning("resync started before %r has a backend; its "
                        "subscriptions get their resync on connect()",
                        self.name)
            event.ack()
            return
        event.ack(self._resync_all(backend, registrations))

    def _resync_all(self, backend, registrations):
        """Resync every subscription and wait for each done().

        Returns None, or an AggregateError of what went wrong.
        """
        started = time.monotonic()
        errors = []
        tickets = []
        for registration in registrations:
            try:
                ticket = registration._start_resync(backend)
            except Exception as exc:
                log.exception("cannot resync subscription %r",
                              registration.resync_name)
                errors.append(exc)
                continue
            if ticket is not None:
                tickets.append((registration, ticket))

        deadline = started + self.notif_timeout
        late = []
        for registration, ticket in tickets:
            remaining = max(0.0, deadline - time.monotonic())
            finished, error = registration._wait_resync(ticket, remaining)
            if error is not None:
                errors.append(error)
            if not finished and not registration._closed:
                late.append(registration.resync_name)
        if late:
            log.warning("subscriptions %s did not call done() on their "
                        "resync within %.1f s; acking the resync without "
                        "them", late, self.notif_timeout)
            errors.extend(DeliveryTimeoutError(
                f"subscription {name!r} did not call done() on its resync "
                f"within {self.notif_timeout} s") for name in late)
        log.debug("%r resynced %d subscriptions in %.3f s", self.name,
                  len(tickets), time.monotonic() - started)
        if errors:
            return AggregateError(
                f"resync of {self.name!r} failed for {len(errors)} "
                "subscriptions", errors)
        return None

    def __repr__(self):
        state = "closed" if self._closed else (
            "ready" if self._backend is not None else "not ready")
        return f"KVDBSync({self.name!r}, {state})"
