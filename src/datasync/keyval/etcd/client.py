"""The gRPC channel to etcd, its stubs, and key range helpers."""

import ipaddress
import logging

import grpc

from datasync.keyval.etcd import etcd_messages_pb2 as pb
from datasync.keyval.etcd import etcd_services_pb2_grpc as rpc
from datasync.keyval.etcd.errors import map_rpc_error

log = logging.getLogger("datasync.etcd")

#: etcd's default client port.
DEFAULT_PORT = 2379

#: Keys per Range request when a listing is read page by page. Every page
#: is read at the revision of the first, so the listing stays consistent;
#: paging only bounds the work etcd does for one request.
RANGE_PAGE = 1000

# The end of a range that reaches past every key (etcd's "\0" range_end).
TO_END = b"\0"

# Channel options. Reconnect back-off: gRPC's default waits up to 120 s
# between attempts; watches must come back within seconds of etcd.
# Keep-alive pings find a dead peer on a silent connection; etcd rejects
# pings more often than every 5 s (its --grpc-keepalive-min-time).
# Receive size: a listing page or the events of one revision may exceed
# gRPC's 4 MiB default.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.max_receive_message_length", -1),
)


def prefix_end(prefix):
    """Return the range end that covers every key under ``prefix``.

    It is the prefix with its last byte below 0xff incremented and what
    follows dropped. A prefix of only 0xff bytes, or the empty prefix,
    has no such end, so its range runs to the last key (TO_END).
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return TO_END
    return stripped[:-1] + bytes([stripped[-1] + 1])


def parse_endpoints(endpoints):
    """Return (gRPC target, display name) for ``endpoints``.

    ``endpoints`` is "host:port", a comma-separated list of them, or a
    list. An "http://" scheme is accepted and dropped. More than one
    endpoint must be IP addresses (gRPC's ipv4:/ipv6: targets), because
    gRPC resolves only one DNS name per channel. Raises ValueError.
    """
    if isinstance(endpoints, str):
        items = [e.strip() for e in endpoints.split(",") if e.strip()]
    else:
        items = [str(e).strip() for e in endpoints]
    if not items:
        raise ValueError("no etcd endpoint given; pass 'host:port'")
    parsed = [_parse_one(item) for item in items]
    display = ",".join(f"{_bracket(h)}:{p}" for h, p in parsed)
    if len(parsed) == 1:
        host, port = parsed[0]
        return f"{_bracket(host)}:{port}", display
    families = set()
    for host, _ in parsed:
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            raise ValueError(
                f"etcd endpoint {host!r} is not an IP address; several "
                "endpoints must be IP addresses, or give one DNS name "
                "that resolves to every member") from None
    if len(families) > 1:
        raise ValueError(f"etcd endpoints {display} mix IPv4 and IPv6; "
                         "use one family")
    scheme = "ipv4" if families == {4} else "ipv6"
    return scheme + ":" + display, display


def _parse_one(item):
    if "://" in item:
        scheme, _, item = item.partition("://")
        if scheme != "http":
            raise ValueError(
                f"etcd endpoint scheme {scheme!r} is not supported; this "
                "backend speaks plain gRPC (http://host:port or host:port)")
    item = item.rstrip("/")
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif item.count(":") == 1:
        host, _, port = item.partition(":")
    else:
        host, port = item, ""
    if not host:
        raise ValueError(f"etcd endpoint {item!r} has no host")
    if not port:
        return host, DEFAULT_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"etcd endpoint {item!r} has an invalid port "
                         f"{port!r}")
    return host, int(port)


def _bracket(host):
    return f"[{host}]" if ":" in host else host


class Client:
    """A gRPC channel to etcd with the KV, Watch and Lease stubs.

    ``call`` runs a unary RPC with the request timeout and turns gRPC
    errors into datasync exceptions.
    """

    def __init__(self, endpoints, request_timeout):
        target, self.endpoint = parse_endpoints(endpoints)
        self.request_timeout = request_timeout
        self.channel = grpc.insecure_channel(target,
                                             options=CHANNEL_OPTIONS)
        self.kv = rpc.KVStub(self.channel)
        self.watch = rpc.WatchStub(self.channel)
        self.lease = rpc.LeaseStub(self.channel)

    def call(self, method, request, what, revision=None, timeout=None,
             wait_for_ready=None):
        """Return ``method(request)``; raise a datasync error on failure."""
        try:
            return method(request, timeout=timeout or self.request_timeout,
                          wait_for_ready=wait_for_ready)
        except grpc.RpcError as exc:
            raise map_rpc_error(exc, what, self.endpoint,
                                revision) from exc

    def wait_ready(self, timeout):
        """Wait up to ``timeout`` seconds for etcd's response to a request.

        Returns etcd's current revision. Raises EtcdUnavailableError.
        """
        request = pb.RangeRequest(key=TO_END, count_only=True)
        response = self.call(self.kv.Range, request, "connecting to etcd",
                             timeout=timeout, wait_for_ready=True)
        return response.header.revision

    def current_revision(self):
        """Return etcd's current revision."""
        request = pb.RangeRequest(key=TO_END, count_only=True)
        return self.call(self.kv.Range, request,
                         "reading the revision").header.revision

    def range_all(self, start, end, revision=0, keys_only=False):
        """Return (KeyValue list, revision) of the keys in [start, end).

        Reads page by page at one revision: ``revision``, or etcd's
        current revision when it is 0. Raises CompactedError when that
        revision was compacted while the pages were read.
        """
        kvs = []
        key = start
        while True:
            request = pb.RangeRequest(key=key, range_end=end,
                                      limit=RANGE_PAGE, revision=revision,
                                      keys_only=keys_only)
            response = self.call(self.kv.Range, request,
                                 f"listing keys from {start!r}", revision)
            if not revision:
                revision = response.header.revision
            kvs.extend(response.kvs)
            if not response.more or not response.kvs:
                return kvs, revision
            # The next key after the last one read.
            key = response.kvs[-1].key + b"\0"

    def close(self):
        """Close the channel; calls still running end with CANCELLED."""
        self.channel.close()
