"""Leases: TTL keys and the client-lifetime lease kept alive by a thread.

etcd deletes every key attached to a lease when the lease expires or is
revoked, in one revision, with a delete event per key. TTLs are whole
seconds, and etcd raises a TTL below its minimum (1.5 election timeouts,
2 s with etcd's default --election-timeout of 1000 ms) to that minimum.
"""

import logging
import math
import queue
import threading

import grpc

from datasync.keyval.etcd import etcd_messages_pb2 as pb
from datasync.keyval.etcd.errors import EtcdError

log = logging.getLogger("datasync.etcd")

#: Default TTL in seconds of the client-lifetime lease: how long the keys
#: of a client that ended without close() stay in etcd.
DEFAULT_LIFETIME_TTL = 10

# Seconds between attempts to reopen a broken keep-alive stream, doubled
# after each failure up to the maximum.
_RETRY_MIN = 0.1
_RETRY_MAX = 2.0


def ttl_seconds(ttl):
    """Return the whole seconds to ask etcd for a TTL of ``ttl`` seconds."""
    return max(1, math.ceil(ttl))


def grant(client, ttl):
    """Grant a lease of ``ttl`` seconds; return its id."""
    response = client.call(client.lease.LeaseGrant,
                           pb.LeaseGrantRequest(TTL=ttl_seconds(ttl)),
                           "granting a lease")
    if response.error:
        raise EtcdError(f"granting a lease of {ttl} s failed: etcd at "
                        f"{client.endpoint} returned {response.error}")
    return response.ID


def revoke(client, lease):
    """Revoke ``lease``, deleting its keys; ignore a lease already gone."""
    try:
        client.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease),
                                 timeout=client.request_timeout)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return
        raise


class LifetimeLease:
    """The lease of the keys a client writes with_client_lifetime_ttl().

    Granted at the first such put, kept alive by a thread that sends a
    keep-alive every third of the TTL, and revoked by close(), which
    deletes the keys. If the client cannot reach etcd for longer than the
    TTL, etcd expires the lease and deletes the keys. The next
    client-lifetime put then grants a new lease.
    """

    def __init__(self, client, ttl=DEFAULT_LIFETIME_TTL):
        self._client = client
        self.ttl = ttl_seconds(ttl)
        self._lock = threading.Lock()
        self._lease = None
        self._stop = threading.Event()
        self._thread = None
        self._call = None

    def get(self):
        """Return the lease id, granting the lease at the first call."""
        with self._lock:
            if self._stop.is_set():
                raise EtcdError("the client-lifetime lease is closed")
            if self._lease is None:
                self._lease = grant(self._client, self.ttl)
                log.debug("granted client-lifetime lease %x with a TTL of "
                          "%d s", self._lease, self.ttl)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._keep_alive, daemon=True,
                        name="datasync-etcd-keepalive")
                    self._thread.start()
            return self._lease

    def _lost(self, lease):
        with self._lock:
            if self._lease == lease:
                self._lease = None
        log.error("client-lifetime lease %x expired in etcd at %s, which "
                  "deleted the keys written with with_client_lifetime_ttl();"
                  " write them again", lease, self._client.endpoint)

    def _keep_alive(self):
        delay = _RETRY_MIN
        while not self._stop.is_set():
            with self._lock:
                lease = self._lease
            if lease is None:
                # Lost; a later put grants a new lease and this loop
                # keeps that one alive.
                self._stop.wait(self.ttl / 3)
                continue
            try:
                self._run_stream(lease)
                delay = _RETRY_MIN
                # etcd ended the stream without an error; reopen it, but
                # not in a tight loop if it keeps doing so.
                self._stop.wait(_RETRY_MIN)
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                log.warning("keep-alive stream of lease %x to etcd at %s "
                            "failed (%s); retrying in %.1f s", lease,
                            self._client.endpoint, exc.code().name, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, _RETRY_MAX)

    def _run_stream(self, lease):
        requests = queue.SimpleQueue()
        interval = self.ttl / 3

        def send():
            while True:
                item = requests.get()
                if item is None:
                    return
                yield item

        call = self._client.lease.LeaseKeepAlive(send())
        self._call = call
        requests.put(pb.LeaseKeepAliveRequest(ID=lease))
        try:
            for response in call:
                if response.TTL <= 0:
                    self._lost(lease)
                    return
                if self._stop.wait(interval):
                    return
                requests.put(pb.LeaseKeepAliveRequest(ID=lease))
        finally:
            requests.put(None)
            call.cancel()
            self._call = None

    def close(self):
        """Stop the keep-alives and revoke the lease, deleting its keys.

        If etcd cannot be reached, the keys are deleted when the lease
        expires, at most the TTL later.
        """
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        with self._lock:
            lease, self._lease = self._lease, None
        if lease is None:
            return
        try:
            revoke(self._client, lease)
            log.debug("revoked client-lifetime lease %x", lease)
        except grpc.RpcError as exc:
            log.warning("revoking client-lifetime lease %x at etcd %s "
                        "failed (%s); its keys are deleted when it expires "
                        "within %d s", lease, self._client.endpoint,
                        exc.code().name, self.ttl)
