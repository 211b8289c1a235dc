"""The etcd store: the datasync store API over an etcd v3 cluster."""

import logging
import threading
import weakref

import grpc

from datasync._core.prefix import PrefixIndex, Subscriber
from datasync.channels import (DEFAULT_MAX_PENDING, DEFAULT_NOTIF_TIMEOUT,
                               make_sink)
from datasync.errors import (CompactedError, InvalidKeyError,
                             InvalidValueError, RegistrationError,
                             StoreClosedError)
from datasync.keyval.etcd import etcd_messages_pb2 as pb
from datasync.keyval.etcd import history
from datasync.keyval.etcd.client import TO_END, Client, prefix_end
from datasync.keyval.etcd.leases import (DEFAULT_LIFETIME_TTL,
                                         LifetimeLease, grant, revoke,
                                         ttl_seconds)
from datasync.keyval.etcd.serializer import event_classes, get_serializer
from datasync.keyval.etcd.txn import PUT, Plan
from datasync.keyval.etcd.watch import Subscription, WatchHub
from datasync.keyval.lmdb.store import DeleteResult, Listing
from datasync.keyval.registration import Registration as _Registration
from datasync.ops import Op
from datasync.options import has_prefix_option, split_put_options

log = logging.getLogger("datasync.etcd")

#: Default largest value accepted by put: etcd's default limit on one
#: request (its --max-request-bytes, 1.5 MiB), which a value cannot
#: exceed anyway.
DEFAULT_MAX_VALUE_SIZE = 1536 * 1024

def encode_key(key, what="key"):
    """Return ``key`` as bytes, or raise InvalidKeyError naming it."""
    if isinstance(key, str):
        data = key.encode("utf-8", "surrogateescape")
    elif isinstance(key, bytes):
        data = key
    else:
        raise InvalidKeyError(
            f"{what} must be str or bytes, got {type(key).__name__} "
            f"{key!r}")
    if not data:
        raise InvalidKeyError(f"{what} must not be empty")
    return data


def encode_prefix(prefix):
    """Return a watch prefix as bytes; the empty prefix matches all."""
    if prefix in ("", b""):
        return b""
    return encode_key(prefix, "prefix")


def _check_revision(revision, what="revision"):
    if isinstance(revision, bool) or not isinstance(revision, int) or \
            revision < 0:
        raise ValueError(f"{what} must be an int >= 0, got {revision!r}")


class EtcdStore:
    """The datasync store API over etcd v3.

    Methods, arguments, results and errors are those of the embedded
    ``datasync.Store``; revisions are etcd's revisions.

    Parameters:
        endpoints: "host:port" of an etcd member, or several (a list, or
            comma-separated) that are IP addresses.
        serializer: how protobuf messages are stored: "json" (protobuf
            JSON, as the Go original stores them), "binary" (the wire
            format) or a Serializer. Bytes are stored as they are.
        dial_timeout: seconds to wait for etcd's first response at start.
        request_timeout: seconds a request may take before it fails with
            EtcdUnavailableError.
        lifetime_ttl: TTL in seconds of the lease behind
            with_client_lifetime_ttl(): how long such keys outlive a
            client that ended without close().
        resync_on_reconnect: send every subscription a resync once etcd
            responds again after the connection was lost. False resumes
            each from its next revision instead.
        max_value_size: largest value accepted by put, in bytes.
        notif_timeout: seconds a resync event may stay without done()
            before the changes after it are sent anyway.

    Raises EtcdUnavailableError when etcd does not respond within
    ``dial_timeout``, and ValueError for an invalid endpoint or
    serializer.
    """

    def __init__(self, endpoints="127.0.0.1:2379", *, serializer="json",
                 dial_timeout=5.0, request_timeout=10.0,
                 lifetime_ttl=DEFAULT_LIFETIME_TTL,
                 resync_on_reconnect=True,
                 max_value_size=DEFAULT_MAX_VALUE_SIZE,
                 notif_timeout=DEFAULT_NOTIF_TIMEOUT):
        self.serializer = get_serializer(serializer)
        self._keyval_class, self._change_class = event_classes(
            self.serializer)
        self.max_value_size = max_value_size
        self.notif_timeout = notif_timeout
        self.resync_on_reconnect = resync_on_reconnect
        self._client = Client(endpoints, request_timeout)
        self.endpoint = self._client.endpoint
        # Code written for the embedded store names it by its path.
        self.path = f"etcd://{self.endpoint}"
        try:
            self._client.wait_ready(dial_timeout)
        except Exception:
            self._client.close()
            raise
        self._resources = _Resources(self._client,
                                     LifetimeLease(self._client,
                                                   lifetime_ttl))
        self._lock = threading.Lock()
        self._closed = False
        self._registrations = weakref.WeakSet()
        self._finalizer = weakref.finalize(self, self._resources.close)
        log.debug("connected to etcd at %s", self.endpoint)

    # Reading ---------------------------------------------------------------

    @property
    def revision(self):
        """etcd's current revision."""
        self._check_open()
        return self._client.current_revision()

    def get(self, key):
        """Return the KeyVal stored under ``key``, or None."""
        data = encode_key(key)
        self._check_open()
        response = self._client.call(self._client.kv.Range,
                                     pb.RangeRequest(key=data),
                                     f"reading key {key!r}")
        if not response.kvs:
            return None
        return self._keyval(response.kvs[0])

    def list_keys(self, prefix=""):
        """Return the keys under ``prefix`` as a Listing of str.

        All keys are read at one revision, stored in ``.revision``.
        """
        kvs, revision = self._range_prefix(prefix, keys_only=True)
        out = Listing(kv.key.decode("utf-8", "surrogateescape")
                      for kv in kvs)
        out.revision = revision
        return out

    def list_values(self, prefix=""):
        """Return the KeyVal of every key under ``prefix`` as a Listing.

        All values are read at one revision, stored in ``.revision``.
        Values stay bytes until get_value() is called.
        """
        kvs, revision = self._range_prefix(prefix)
        out = Listing(self._keyval(kv) for kv in kvs)
        out.revision = revision
        return out

    def _range_prefix(self, prefix, keys_only=False):
        start = encode_prefix(prefix)
        self._check_open()
        end = prefix_end(start) if start else TO_END
        return self._client.range_all(start or TO_END, end,
                                      keys_only=keys_only)

    def _keyval(self, kv):
        return self._keyval_class(kv.key, kv.value, kv.mod_revision,
                                  kv.create_revision, kv.version)

    def changes(self, after_revision, *prefixes):
        """Return every change with a revision above ``after_revision``.

        With ``prefixes``, only changes of keys under them. Changes come
        in revision order, then in etcd's order within a revision, each
        with its previous value. Raises CompactedError when etcd
        compacted its history past ``after_revision``.

        etcd serves history only through watches, so this reads every
        change of the whole key space after ``after_revision`` and keeps
        those under ``prefixes``.
        """
        _check_revision(after_revision)
        self._check_open()
        current = self._client.current_revision()
        if after_revision >= current:
            return []
        self._check_compacted(after_revision)
        index = None
        if prefixes:
            # The index routes each matching change to ``selected``.
            index = PrefixIndex()
            selected = Subscriber()
            for prefix in prefixes:
                index.add(encode_prefix(prefix), selected)
        try:
            changes = history.read(self._client, after_revision + 1,
                                   current, self._change_class)
        except CompactedError as exc:
            if exc.oldest_revision is None:
                exc.oldest_revision = self.compacted_revision() + 1
            raise
        if index is not None:
            routed = index.route(changes)
            changes = routed[0][1] if routed else []
        return changes

    def compacted_revision(self):
        """Return the revision up to which etcd compacted its history.

        Changes after it can still be read and watched; 0 when nothing
        was compacted. etcd does not report it directly, so this finds
        the oldest revision a read at a past revision accepts, in about
        log2(revision) requests.
        """
        self._check_open()
        low, high = 1, self._client.current_revision()
        if self._readable_at(low):
            return 0
        # Invariant: reads at ``low`` fail and reads at ``high`` succeed.
        while high - low > 1:
            middle = (low + high) // 2
            if self._readable_at(middle):
                high = middle
            else:
                low = middle
        return high

    def _readable_at(self, revision):
        request = pb.RangeRequest(key=TO_END, count_only=True,
                                  revision=revision)
        try:
            self._client.call(self._client.kv.Range, request,
                              "reading a past revision", revision)
        except CompactedError:
            return False
        except ValueError:
            # A future revision: nothing after it was compacted yet.
            return True
        return True

    def _check_compacted(self, after_revision):
        # Revision 1 is etcd's empty initial state, with no change in it,
        # so resuming after 0 needs revision 1 to be readable.
        if not self._readable_at(max(after_revision, 1)):
            floor = self.compacted_revision()
            raise CompactedError(
                f"etcd compacted its history up to revision {floor}, so "
                f"the changes after revision {after_revision} are gone; "
                f"resume from revision {floor} or later, or take a "
                "resync", floor + 1)

    def stat(self):
        """Return a dict: endpoint, revision, keys, compacted revision,
        etcd's cluster and member ids, raft term, serializer."""
        self._check_open()
        response = self._client.call(
            self._client.kv.Range,
            pb.RangeRequest(key=TO_END, range_end=TO_END, count_only=True),
            "counting keys")
        return {
            "endpoint": self.endpoint,
            "revision": response.header.revision,
            "keys": response.count,
            "compacted_revision": self.compacted_revision(),
            "cluster_id": response.header.cluster_id,
            "member_id": response.header.member_id,
            "raft_term": response.header.raft_term,
            "serializer": self.serializer.name,
        }

    # Writing ---------------------------------------------------------------

    def put(self, key, value, *opts):
        """Store ``value`` (bytes or a protobuf message) under ``key``.

        Messages are stored with the store's serializer. Options:
        with_ttl(seconds), rounded up to whole seconds and to etcd's
        minimum TTL; with_client_lifetime_ttl(). Returns the revision of
        the put.
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
        """Return a transaction: puts and deletes committed as one etcd
        revision (one etcd Txn).

        Use it as a context manager (it commits when the block ends
        without an exception) or call commit().
        """
        self._check_open()
        return Txn(self)

    def compact(self, revision):
        """Drop etcd's history of revisions before ``revision``.

        Watchers that resume from below it get a resync instead. Returns
        the revision etcd has compacted to, which is higher when it was
        already compacted further. Raises ValueError for a revision above
        the current one.
        """
        if isinstance(revision, bool) or not isinstance(revision, int):
            raise ValueError(f"revision must be an int, got {revision!r}")
        self._check_open()
        current = self._client.current_revision()
        if revision < 0 or revision > current:
            raise ValueError(
                f"cannot compact to revision {revision}: it must be "
                f"between 0 and the current revision {current}")
        if revision <= 1:
            return self.compacted_revision()
        try:
            self._client.call(
                self._client.kv.Compact,
                pb.CompactionRequest(revision=revision, physical=True),
                f"compacting to revision {revision}", revision)
        except CompactedError:
            return self.compacted_revision()
        return revision

    def _commit(self, plan):
        """Commit ``plan``; return (revision, deleted changes)."""
        granted = []
        try:
            leases = self._resolve_leases(plan, granted)
            return self._send(plan, leases)
        except BaseException:
            for lease in granted:
                try:
                    revoke(self._client, lease)
                except grpc.RpcError:
                    log.debug("could not revoke unused lease %x; it "
                              "expires by itself", lease)
            raise

    def _resolve_leases(self, plan, granted):
        """Return {lease option: etcd lease id}, granting one lease per
        distinct TTL, so keys put with one TTL expire together."""
        leases = {}
        for op in plan.ops:
            lease = op[4]
            if lease is None or lease in leases:
                continue
            if lease == "owner":
                leases[lease] = self._resources.lifetime.get()
            else:
                leases[lease] = grant(self._client, lease)
                granted.append(leases[lease])
        return leases

    def _send(self, plan, leases):
        client = self._client
        requests = []
        for kind, key, end, value, lease in plan.ops:
            if kind == PUT:
                requests.append(pb.RequestOp(request_put=pb.PutRequest(
                    key=key, value=value,
                    lease=leases[lease] if lease is not None else 0)))
            else:
                requests.append(pb.RequestOp(
                    request_delete_range=pb.DeleteRangeRequest(
                        key=key, range_end=end or b"", prev_kv=True)))
        response = client.call(client.kv.Txn,
                               pb.TxnRequest(success=requests),
                               f"committing {len(requests)} operations")
        revision = response.header.revision
        deleted = []
        for result in response.responses:
            if result.WhichOneof("response") != "response_delete_range":
                continue
            for prev in result.response_delete_range.prev_kvs:
                deleted.append(self._change_class(
                    prev.key, Op.DELETE, None, prev.value, revision,
                    prev.create_revision, 0))
        return revision, deleted

    # Watching --------------------------------------------------------------

    def watch(self, resync_name, change_chan, resync_chan, *key_prefixes,
              from_revision=None, max_pending=DEFAULT_MAX_PENDING):
        """Subscribe to changes of keys under ``key_prefixes``.

        Without ``from_revision`` the subscriber first gets a resync event
        (a snapshot taken at a revision R), then exactly the changes with
        revisions above R, one change event per etcd revision. With it,
        it gets every change after that revision; CompactedError is
        raised if etcd compacted its history past it.

        Channels are a queue.Queue, an asyncio.Queue (watch must then be
        called on its event loop) or a callable. Passing the same channel
        twice keeps resync and changes in one ordered stream. At most
        ``max_pending`` events wait in a channel; beyond that the
        subscription reads etcd's history later instead.

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
        prefixes = list(dict.fromkeys(encode_prefix(p)
                                      for p in key_prefixes))
        if from_revision is not None:
            _check_revision(from_revision, "from_revision")
            self._check_compacted(from_revision)
        change_sink = make_sink(change_chan, resync_name, max_pending)
        same = resync_chan is change_chan
        resync_sink = change_sink if same else make_sink(
            resync_chan, resync_name, max_pending)
        sub = Subscription(resync_name, prefixes, change_sink, resync_sink,
                           same, self.notif_timeout)
        hub = self._resources.get_hub(self)
        for sink in {change_sink, resync_sink}:
            sink.on_space = hub.wake
        hub.add(sub, from_revision)
        registration = Registration(hub, sub)
        self._registrations.add(registration)
        return registration

    # Lifetime --------------------------------------------------------------

    def close(self):
        """Close the store.

        Revokes the client-lifetime lease, which deletes the keys this
        store wrote with with_client_lifetime_ttl(), closes its watch
        registrations and the connection to etcd.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for registration in list(self._registrations):
            registration.close()
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _check_open(self):
        if self._closed:
            raise StoreClosedError(f"etcd store {self.endpoint} is closed")

    def __repr__(self):
        return f"EtcdStore({self.endpoint!r})"


class _Resources:
    """The open parts of a store: channel, lifetime lease, watch hub.

    They live apart from the store, so that the finalizer that closes
    them keeps no reference to the store.
    """

    def __init__(self, client, lifetime):
        self.client = client
        self.lifetime = lifetime
        self.hub = None
        self._lock = threading.Lock()

    def get_hub(self, store):
        with self._lock:
            if self.hub is None:
                self.hub = WatchHub(
                    self.client, (store._keyval_class,
                                  store._change_class),
                    store.resync_on_reconnect)
            return self.hub

    def close(self):
        with self._lock:
            hub, self.hub = self.hub, None
        if hub is not None:
            for sub in hub.stop():
                _close_sinks(sub)
        self.lifetime.close()
        self.client.close()


def _close_sinks(sub):
    sub.change_sink.close()
    if not sub.same_channel:
        sub.resync_sink.close()


def encode_value(value, key, serializer, max_size):
    """Return the bytes to store for ``value`` (bytes or a message)."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, (bytearray, memoryview)):
        data = bytes(value)
    elif hasattr(value, "SerializeToString") and hasattr(value,
                                                          "DESCRIPTOR"):
        data = serializer.encode(value)
    else:
        raise InvalidValueError(
            f"value of key {key!r} must be bytes or a protobuf message, "
            f"got {type(value).__name__}; encode text with .encode()")
    if len(data) > max_size:
        raise InvalidValueError(
            f"value of key {key!r} is {len(data)} bytes, above the "
            f"limit of {max_size} bytes; split it, or raise etcd's "
            "--max-request-bytes and the store's max_value_size")
    return data


class Txn:
    """Puts and deletes that commit together as one etcd revision.

    If one operation is rejected, the transaction refuses to commit, so
    nothing of it is written and no event is sent. A key changes at most
    once per etcd revision, so operations on one key are reduced to
    their outcome before the commit (see datasync.keyval.etcd.txn).
    """

    def __init__(self, store):
        self._store = store
        self._plan = Plan()
        self._failed = None
        self._finished = False
        self.revision = None
        self.changes = []

    def put(self, key, value, *opts):
        """Add a put of ``value`` under ``key`` (see EtcdStore.put)."""
        try:
            data = encode_key(key)
            ttl, lifetime = split_put_options(opts)
            value = encode_value(value, key, self._store.serializer,
                                 self._store.max_value_size)
        except Exception as exc:
            self._failed = exc
            raise
        if lifetime:
            lease = "owner"
        elif ttl is not None:
            lease = ttl_seconds(ttl)
        else:
            lease = None
        self._plan.put(data, value, lease)
        return self

    def delete(self, key, *opts):
        """Add a delete of ``key``, or with with_prefix() of its keys."""
        try:
            prefix = has_prefix_option(opts)
            data = encode_key(key, "prefix" if prefix else "key")
        except Exception as exc:
            self._failed = exc
            raise
        self._plan.delete(data, prefix_end(data) if prefix else None)
        return self

    def commit(self):
        """Commit every operation as one revision; return the revision.

        A transaction that changes nothing returns the current revision.
        Raises InvalidKeyError or InvalidValueError again if one of its
        operations was rejected, TooManyOperationsError above etcd's
        limit of operations per transaction, and EtcdUnavailableError
        when etcd cannot be reached (the transaction may then have been
        committed or not).
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
        self.revision, self.changes = self._store._commit(self._plan)
        return self.revision

    def discard(self):
        """Drop every operation without writing anything."""
        self._finished = True
        self._plan = Plan()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.discard()


class Registration(_Registration):
    """Handle of one subscription on an etcd store (a WatchRegistration).

    Its changes after register() arrive from the next revision the
    subscription has not seen.
    """

    def _closed(self):
        _close_sinks(self._sub)
