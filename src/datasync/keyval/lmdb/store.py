"""The embedded store: a revisioned key-value store in LMDB files.

A store is a directory holding LMDB's data.mdb and lock.mdb. Every
committed transaction that changes something gets the next revision and
one record in the revision log, written in the same LMDB transaction as
the keys, so the log and the keys never disagree, even after a crash.
Any number of processes may open the same store; LMDB lets one of them
write at a time and the others read without locks.
"""

import dataclasses
import logging
import os
import threading
import time
import weakref

from datasync._core import commit as _commit
from datasync._core.events import (decode_log_record, keyval_from_stored)
from datasync._core.prefix import PrefixIndex, Subscriber
from datasync.channels import (DEFAULT_MAX_PENDING, DEFAULT_NOTIF_TIMEOUT,
                               make_sink)
from datasync.errors import (CompactedError, InvalidOptionError,
                             RegistrationError, StoreClosedError)
from datasync.keyval.lmdb import env as _env
from datasync.keyval.lmdb import leases as _leases
from datasync.keyval.lmdb.env import (META_COMPACTED, META_REVISION,
                                      pack_u64, rev_key)
from datasync.keyval.keys import (MAX_KEY_SIZE, encode_key, encode_prefix,
                                  encode_value)
from datasync.keyval.lmdb.notify import Notifier
from datasync.keyval.lmdb.watch import Dispatcher, Subscription
from datasync.keyval.registration import Registration as _Registration
from datasync.options import has_prefix_option, split_put_options

log = logging.getLogger("datasync.store")

# Stand-in subscriber for filtering changes by prefix with a PrefixIndex.
_SELECT = Subscriber()

#: Default largest value accepted by put; log records count lengths in
#: 32-bit fields, which caps any value below 4 GiB.
DEFAULT_MAX_VALUE_SIZE = 64 << 20

#: Records of recent commits kept for this process's dispatcher at most;
#: beyond it the dispatcher reads them from the log.
HANDOFF_LIMIT = 64

#: Seconds between checks for client-lifetime keys of writer processes
#: that died. A store that opens also checks once, at once.
REAP_INTERVAL = 1.0


class Listing(list):
    """A list read in one transaction, with the revision it was read at."""

    revision = 0


@dataclasses.dataclass(frozen=True)
class DeleteResult:
    """Outcome of a delete: the revision and every key it deleted."""

    revision: int
    deleted: list

    @property
    def existed(self):
        """True if at least one key was deleted."""
        return bool(self.deleted)

    @property
    def prev_value(self):
        """Value of the first deleted key, or None if none existed."""
        return self.deleted[0].prev_value if self.deleted else None


class _Services:
    """Per-process helpers of one environment: notifier, dispatcher,
    and the housekeeping that expires TTL keys and reaps dead owners."""

    def __init__(self, shared):
        self.shared = shared
        self.notifier = Notifier(shared.path)
        self.dispatcher = None
        self.next_reap = 0.0
        self._stale = True
        self._changed = False
        self._next_check = 0.0
        self._deadline = None

    def ensure_dispatcher(self):
        with self.shared.lock:
            if self.dispatcher is None:
                self.shared.handoff = {}
                self.dispatcher = Dispatcher(self.shared, self.notifier,
                                             self.housekeeping)
            return self.dispatcher

    def invalidate(self):
        """Make the next housekeeping() look at the lease tables again."""
        self._stale = True

    def housekeeping(self, changed=True):
        """Expire due TTL keys and reap dead owners' keys.

        The lease tables are read when a deadline is due, after
        invalidate(), or when ``changed`` (new revisions were seen) and
        REAP_INTERVAL has passed since the last read. Otherwise the last
        deadline is returned at no cost. So a TTL key written by another
        process that has since ended expires at most REAP_INTERVAL late.

        Returns the wall-clock time of the next thing to do, or None.
        """
        now = time.time()
        if changed:
            self._changed = True
        if not self._stale:
            due = self._deadline is not None and now >= self._deadline
            if not due and not (self._changed and now >= self._next_check):
                return self._wake_at()
        self._stale = False
        self._changed = False
        self._next_check = now + REAP_INTERVAL
        self._deadline = self._look_after_leases(now)
        return self._wake_at()

    def _wake_at(self):
        # A deferred look at changed lease tables is due at _next_check.
        times = [t for t in (self._deadline,
                             self._next_check if self._changed else None)
                 if t is not None]
        return min(times) if times else None

    def _look_after_leases(self, now):
        with self.shared.read() as txn:
            expiry = _leases.next_expiry(self.shared, txn)
            owners = _leases.owner_leases(self.shared, txn)
        if expiry is not None and expiry <= now:
            revision = commit_ops(self.shared, self.notifier,
                                  lambda txn, rev: _leases.due_ops(
                                      self.shared, txn, time.time()))[0]
            log.debug("expired TTL keys at revision %d", revision)
            with self.shared.read() as txn:
                expiry = _leases.next_expiry(self.shared, txn)
        if owners and now >= self.next_reap:
            self.reap()
            self.next_reap = now + REAP_INTERVAL
        deadlines = [t for t in (expiry, self.next_reap if owners else None)
                     if t is not None]
        return min(deadlines) if deadlines else None

    def reap(self):
        with self.shared.read() as txn:
            dead = _leases.dead_owner_leases(self.shared, txn)
        for lease in dead:
            revision = commit_ops(
                self.shared, self.notifier,
                lambda txn, rev, lease=lease: _leases.revoke_ops(
                    self.shared, txn, lease))[0]
            log.info("deleted the keys of lease %d, whose writer process "
                     "ended, at revision %d", lease, revision)

    def close(self):
        if self.dispatcher is not None:
            self.dispatcher.stop()
            self.dispatcher = None
            self.shared.handoff = None
        self.notifier.close()


def commit_ops(shared, notifier, prepare):
    """Commit the operations that ``prepare(txn, revision)`` returns.

    ``prepare`` returns a list of (code, key, value, lease) tuples, or the
    same as four parallel lists (codes, keys, values, leases).

    Returns (revision, log record). When nothing changed, nothing is
    written and the current revision is returned with record None.
    """
    def apply(txn):
        revision = shared.revision(txn) + 1
        ops = prepare(txn, revision)
        applier = _commit.Applier(txn, shared.kv, shared.lease_keys,
                                  revision)
        if type(ops) is tuple:
            applier.apply_columns(*ops)
        else:
            applier.apply(ops)
        record = applier.finish()
        if record is None:
            return revision - 1, None, None
        txn.put(rev_key(revision), record, db=shared.log)
        txn.put(META_REVISION, pack_u64(revision), db=shared.meta)
        return revision, record, shared.listener_generation(txn)

    revision, record, listeners = shared.write(apply)
    if record is not None:
        handoff = shared.handoff
        if handoff is not None and len(handoff) < HANDOFF_LIMIT:
            handoff[revision] = record
        notifier.broadcast(listeners)
    return revision, record


class Store:
    """An embedded, revisioned key-value store with watches.

    Parameters:
        path: directory of the store; created when missing.
        map_size: initial size in bytes of LMDB's memory map.
        max_map_size: size up to which a full map is doubled and the
            transaction retried; beyond it, writes raise MapFullError.
        durable: sync to disk on every commit (LMDB sync and metasync).
            False is faster, but a system crash (not a process crash)
            can lose the last transactions.
        create: create the store if it does not exist.
        max_value_size: largest value accepted by put, in bytes.
        notif_timeout: seconds a resync event may stay without done()
            before the changes after it are sent anyway.

    Raises InvalidStoreError when ``path`` is not a store.
    """

    def __init__(self, path="datasync.lmdb", *, map_size=_env.DEFAULT_MAP_SIZE,
                 max_map_size=None, durable=True, create=True,
                 max_value_size=DEFAULT_MAX_VALUE_SIZE,
                 notif_timeout=DEFAULT_NOTIF_TIMEOUT):
        self._shared = _env.acquire(path, map_size, max_map_size, durable,
                                    create)
        with self._shared.lock:
            if self._shared.loop is None:
                self._shared.loop = _Services(self._shared)
        self._services = self._shared.loop
        self.path = self._shared.path
        self.max_value_size = max_value_size
        self.notif_timeout = notif_timeout
        self._owner_lease = None
        self._lock = threading.Lock()
        self._closed = False
        self._registrations = weakref.WeakSet()
        self._finalizer = weakref.finalize(
            self, _release, self._shared, self._services, None)
        self._services.invalidate()
        self._services.housekeeping()
        with self._shared.read() as txn:
            if (_leases.next_expiry(self._shared, txn) is not None or
                    _leases.owner_leases(self._shared, txn)):
                self._services.ensure_dispatcher()

    # Reading ---------------------------------------------------------------

    @property
    def revision(self):
        """The revision of the last committed transaction (0 if none)."""
        with self._read() as txn:
            return self._shared.revision(txn)

    def get(self, key):
        """Return the KeyVal stored under ``key``, or None."""
        data = encode_key(key)
        with self._read() as txn:
            stored = txn.get(data, db=self._shared.kv)
        return None if stored is None else keyval_from_stored(data, stored)

    def list_keys(self, prefix=""):
        """Return the keys under ``prefix`` as a Listing of str.

        All keys are read in one transaction; ``.revision`` is the revision
        they were read at.
        """
        start = encode_prefix(prefix)
        out = Listing()
        with self._read() as txn:
            out.revision = self._shared.revision(txn)
            with txn.cursor(db=self._shared.kv) as cursor:
                if cursor.set_range(start):
                    for key in cursor.iternext(values=False):
                        if not key.startswith(start):
                            break
                        out.append(key.decode("utf-8", "surrogateescape"))
        return out

    def list_values(self, prefix=""):
        """Return the KeyVal of every key under ``prefix`` as a Listing.

        All values are read in one transaction; ``.revision`` is the
        revision they were read at. Values stay bytes until get_value()
        is called.
        """
        start = encode_prefix(prefix)
        out = Listing()
        with self._read() as txn:
            out.revision = self._shared.revision(txn)
            with txn.cursor(db=self._shared.kv) as cursor:
                if cursor.set_range(start):
                    for key, stored in cursor.iternext():
                        if not key.startswith(start):
                            break
                        out.append(keyval_from_stored(key, stored))
        return out

    def changes(self, after_revision, *prefixes):
        """Return every change with a revision above ``after_revision``.

        With ``prefixes``, only changes of keys under them. Changes come
        in revision order, then commit order, each with its previous
        value. Raises CompactedError when the log no longer contains
        ``after_revision + 1``.
        """
        index = None
        if prefixes:
            index = PrefixIndex()
            for prefix in prefixes:
                index.add(encode_prefix(prefix), _SELECT)
        out = []
        with self._read() as txn:
            self._check_compacted(txn, after_revision)
            with txn.cursor(db=self._shared.log) as cursor:
                if not cursor.set_range(rev_key(after_revision + 1)):
                    return out
                for key, record in cursor.iternext():
                    changes = decode_log_record(
                        record, int.from_bytes(key, "big"))
                    if index is not None:
                        routed = index.route(changes)
                        changes = routed[0][1] if routed else []
                    out.extend(changes)
        return out

    def _check_compacted(self, txn, after_revision):
        if isinstance(after_revision, bool) or not isinstance(
                after_revision, int) or after_revision < 0:
            raise ValueError(
                f"revision must be an int >= 0, got {after_revision!r}")
        floor = self._shared.compacted(txn)
        if after_revision < floor:
            raise CompactedError(
                f"revisions up to {floor} were compacted, so the changes "
                f"after revision {after_revision} are gone; resume from "
                f"revision {floor} or later, or take a resync", floor + 1)

    def stat(self):
        """Return a dict: revision, keys, log range, file and map size."""
        with self._read() as txn:
            revision = self._shared.revision(txn)
            floor = self._shared.compacted(txn)
            keys = txn.stat(self._shared.kv)["entries"]
            log_entries = txn.stat(self._shared.log)["entries"]
            first = last = None
            with txn.cursor(db=self._shared.log) as cursor:
                if cursor.first():
                    first = int.from_bytes(cursor.key(), "big")
                    cursor.last()
                    last = int.from_bytes(cursor.key(), "big")
        info = self._shared.env.info()
        return {
            "path": self.path,
            "revision": revision,
            "keys": keys,
            "log_entries": log_entries,
            "log_first_revision": first,
            "log_last_revision": last,
            "compacted_revision": floor,
            "file_size": os.path.getsize(os.path.join(self.path,
                                                      "data.mdb")),
            "map_size": info["map_size"],
        }

    # Writing ---------------------------------------------------------------

    def put(self, key, value, *opts):
        """Store ``value`` (bytes or a protobuf message) under ``key``.

        Options: with_ttl(seconds), with_client_lifetime_ttl(). Returns
        the revision of the put.
        """
        with self.txn() as txn:
            txn.put(key, value, *opts)
        return txn.revision

    def delete(self, key, *opts):
        """Delete ``key``, or with with_prefix() every key under it.

        Returns a DeleteResult with the revision and each deleted key's
        previous value. Deleting a missing key changes nothing and sends
        no event.
        """
        with self.txn() as txn:
            txn.delete(key, *opts)
        return DeleteResult(txn.revision, txn.changes)

    def txn(self):
        """Return a transaction: puts and deletes committed as one revision.

        Use it as a context manager (it commits when the block ends
        without an exception) or call commit().
        """
        self._check_open()
        return Txn(self)

    def compact(self, revision):
        """Drop the log entries of revisions up to ``revision``.

        Watchers that resume from below it get a resync instead. Raises
        ValueError for a revision above the current one.
        """
        if isinstance(revision, bool) or not isinstance(revision, int):
            raise ValueError(f"revision must be an int, got {revision!r}")

        def apply(txn):
            current = self._shared.revision(txn)
            if revision < 0 or revision > current:
                raise ValueError(
                    f"cannot compact to revision {revision}: it must be "
                    f"between 0 and the current revision {current}")
            floor = self._shared.compacted(txn)
            listeners = self._shared.listener_generation(txn)
            if revision <= floor:
                return floor, listeners
            with txn.cursor(db=self._shared.log) as cursor:
                cursor.first()
                while True:
                    key = cursor.key()
                    if not key or int.from_bytes(key, "big") > revision:
                        break
                    cursor.delete()
            txn.put(META_COMPACTED, pack_u64(revision), db=self._shared.meta)
            return revision, listeners

        self._check_open()
        floor, listeners = self._shared.write(apply)
        self._services.notifier.broadcast(listeners)
        return floor

    def _commit(self, ops, leased):
        """Commit (code, key, value, lease) operations as one revision.

        A lease is 0 (none), "owner" (client lifetime) or a TTL in
        seconds; ``leased`` is True if any operation has one.
        """
        if not leased:
            return commit_ops(self._shared, self._services.notifier,
                              lambda txn, revision: ops)
        codes, keys, values, leases = ops
        owner_needed = "owner" in leases
        granted = {}

        def prepare(txn, revision):
            owner = self._owner_lease
            if owner_needed and owner is None:
                owner = _leases.grant_owner(self._shared, txn)
                granted["owner"] = owner
            now = time.time()
            resolved = []
            for lease in leases:
                if lease == "owner":
                    lease = owner
                elif lease:
                    lease = _leases.grant_ttl(self._shared, txn, lease, now)
                resolved.append(lease)
            return codes, keys, values, resolved

        revision, record = commit_ops(self._shared, self._services.notifier,
                                      prepare)
        if "owner" in granted:
            self._owner_lease = granted["owner"]
            # The finalizer was made before the lease existed. Replace it,
            # so that a store collected without close() still deletes
            # its client-lifetime keys.
            self._finalizer.detach()
            self._finalizer = weakref.finalize(
                self, _release, self._shared, self._services,
                self._owner_lease)
        # This process now expires and reaps leases while it runs.
        self._services.invalidate()
        self._services.ensure_dispatcher().notifier.wake_self()
        return revision, record

    # Watching --------------------------------------------------------------

    def watch(self, resync_name, change_chan, resync_chan, *key_prefixes,
              from_revision=None, max_pending=DEFAULT_MAX_PENDING):
        """Subscribe to changes of keys under ``key_prefixes``.

        Without ``from_revision`` the subscriber first gets a resync event
        (a snapshot taken at a revision R), then exactly the changes with
        revisions above R. With it, it gets every change after that
        revision; CompactedError is raised if the log no longer contains it.

        Channels are a queue.Queue, an asyncio.Queue (watch must then be
        called on its event loop) or a callable. Passing the same channel
        twice keeps resync and changes in one ordered stream. At most
        ``max_pending`` events wait in a channel; beyond that the
        subscription reads the revision log later instead.

        Returns a WatchRegistration. Raises RegistrationError if
        ``resync_name`` is already watching this store.
        """
        self._check_open()
        if not isinstance(resync_name, str) or not resync_name:
            raise RegistrationError(
                f"resync_name must be a non-empty str, got {resync_name!r}")
        if not key_prefixes:
            raise RegistrationError(
                f"watch {resync_name!r} needs at least one key prefix")
        prefixes = list(dict.fromkeys(encode_prefix(p) for p in key_prefixes))
        if from_revision is not None:
            with self._read() as txn:
                self._check_compacted(txn, from_revision)
        change_sink = make_sink(change_chan, resync_name, max_pending)
        same = resync_chan is change_chan
        resync_sink = change_sink if same else make_sink(
            resync_chan, resync_name, max_pending)
        sub = Subscription(resync_name, prefixes, change_sink, resync_sink,
                           same, self.notif_timeout)
        dispatcher = self._services.ensure_dispatcher()
        for sink in {change_sink, resync_sink}:
            sink.on_space = self._services.notifier.wake_self
        dispatcher.add(sub, from_revision)
        registration = Registration(dispatcher, sub)
        self._registrations.add(registration)
        return registration

    # Lifetime --------------------------------------------------------------

    def close(self):
        """Close the store.

        Deletes the keys this store wrote with with_client_lifetime_ttl(),
        closes its watch registrations, and closes the LMDB environment
        when no other Store of this process uses it.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for registration in list(self._registrations):
            registration.close()
        self._finalizer.detach()
        _release(self._shared, self._services, self._owner_lease)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _check_open(self):
        if self._closed:
            raise StoreClosedError(f"store {self.path} is closed")

    def _read(self):
        self._check_open()
        return self._shared.read()

    def __repr__(self):
        return f"Store({self.path!r})"


def _release(shared, services, owner_lease):
    if owner_lease is not None:
        try:
            revision = commit_ops(
                shared, services.notifier,
                lambda txn, rev: _leases.revoke_ops(shared, txn,
                                                    owner_lease))[0]
            log.debug("deleted client-lifetime keys at revision %d",
                      revision)
        except Exception:
            log.exception("cannot delete the client-lifetime keys of lease "
                          "%d; another process reaps them within %.0f s",
                          owner_lease, REAP_INTERVAL)
    if _env.release(shared):
        services.close()
        shared.env.close()


class Txn:
    """Puts and deletes that commit together as one revision.

    If one operation is rejected, the transaction refuses to commit, so
    nothing of it is written and no event is sent.
    """

    def __init__(self, store):
        self._store = store
        # Operations as four parallel lists rather than a tuple each, so
        # that a transaction of 100,000 puts creates no container objects
        # for the cyclic garbage collector to scan.
        self._ops = ([], [], [], [])
        self._leased = False
        self._deletes = False
        self._failed = None
        self._finished = False
        self.revision = None
        self.changes = []

    def put(self, key, value, *opts):
        """Add a put of ``value`` under ``key`` (see Store.put)."""
        # Fast path for the common case of a transaction of many plain
        # puts; anything unusual goes through the full checks below.
        if not opts and type(value) is bytes and \
                len(value) <= self._store.max_value_size:
            if type(key) is str:
                data = key.encode("utf-8", "surrogateescape")
            elif type(key) is bytes:
                data = key
            else:
                data = b""
            if 0 < len(data) <= MAX_KEY_SIZE:
                self._add(_commit.PUT, data, value, 0)
                return self
        try:
            data = encode_key(key)
            ttl, lifetime = split_put_options(opts)
            if ttl is not None and ttl > _leases.MAX_TTL:
                raise InvalidOptionError(
                    f"TTL of {ttl!r} s for key {key!r} is above the "
                    f"maximum of {_leases.MAX_TTL:.0e} s; use a shorter "
                    "TTL, or no TTL for a key that should stay")
            value = encode_value(value, key, self._store.max_value_size)
        except Exception as exc:
            self._failed = exc
            raise
        lease = "owner" if lifetime else ttl
        if lease is None:
            lease = 0
        else:
            self._leased = True
        self._add(_commit.PUT, data, value, lease)
        return self

    def delete(self, key, *opts):
        """Add a delete of ``key``, or with with_prefix() of its keys."""
        try:
            data = encode_key(key, "prefix" if has_prefix_option(opts)
                              else "key")
            code = (_commit.DELETE_PREFIX if has_prefix_option(opts)
                    else _commit.DELETE)
        except Exception as exc:
            self._failed = exc
            raise
        self._deletes = True
        self._add(code, data, None, 0)
        return self

    def _add(self, code, key, value, lease):
        codes, keys, values, leases = self._ops
        codes.append(code)
        keys.append(key)
        values.append(value)
        leases.append(lease)

    def commit(self):
        """Commit every operation as one revision; return the revision.

        A transaction that changes nothing returns the current revision.
        Raises InvalidKeyError or InvalidValueError again if one of its
        operations was rejected.
        """
        if self._finished:
            raise StoreClosedError("transaction was already committed "
                                   "or discarded")
        self._finished = True
        if self._failed is not None:
            raise type(self._failed)(
                f"transaction not committed because an operation was "
                f"rejected: {self._failed}") from self._failed
        self._store._check_open()
        self.revision, record = self._store._commit(self._ops,
                                                    self._leased)
        if record is not None and self._deletes:
            self.changes = [c for c in decode_log_record(record,
                                                         self.revision)
                            if c.value is None]
        return self.revision

    def discard(self):
        """Drop every operation without writing anything."""
        self._finished = True
        self._ops = ([], [], [], [])

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.discard()


class Registration(_Registration):
    """Handle of one subscription on a store (a WatchRegistration)."""
