"""Errors of the etcd backend, and the one place where gRPC status codes
and etcd's error messages become datasync exceptions."""

import grpc

from datasync.errors import (CompactedError, DatasyncError,
                             InvalidValueError)

__all__ = ["EtcdError", "EtcdUnavailableError", "TooManyOperationsError",
           "map_rpc_error"]


class EtcdError(DatasyncError):
    """etcd rejected a request; the message carries its gRPC status."""


class EtcdUnavailableError(EtcdError, ConnectionError):
    """etcd could not be reached, or did not respond within the timeout."""


class TooManyOperationsError(EtcdError, ValueError):
    """A transaction has more operations than etcd accepts in one Txn.

    etcd's limit is its ``--max-txn-ops`` flag (128 by default). Raise it
    on every etcd member, or split the transaction.
    """


# Messages of etcd's server errors (etcd 3.4, api/v3rpc/rpctypes). gRPC
# status codes alone do not tell them apart.
_COMPACTED = "required revision has been compacted"
_FUTURE = "required revision is a future revision"
_TOO_LARGE = "request is too large"
_TOO_MANY_OPS = "too many operations in txn request"
# gRPC's own message when a request exceeds the server's receive limit,
# which etcd sets 512 KiB above --max-request-bytes.
_LARGER_THAN_MAX = "larger than max"

_UNAVAILABLE_CODES = (grpc.StatusCode.UNAVAILABLE,
                      grpc.StatusCode.DEADLINE_EXCEEDED)


def map_rpc_error(exc, what, endpoint, revision=None):
    """Return the datasync exception for gRPC error ``exc``.

    ``what`` names the failed operation in the message, ``endpoint`` the
    etcd it was sent to, and ``revision`` the revision it asked for.
    The caller raises the result ``from exc``.
    """
    code = exc.code()
    details = exc.details() or ""
    if code in _UNAVAILABLE_CODES:
        return EtcdUnavailableError(
            f"{what} failed: etcd at {endpoint} is unavailable "
            f"({code.name}: {details}); check that etcd runs and is "
            "reachable, then retry")
    if _COMPACTED in details:
        # etcd does not say up to which revision it compacted; the caller
        # that needs it looks it up (see EtcdStore.compacted_revision).
        return CompactedError(
            f"{what} failed: revision {revision} was compacted in etcd "
            f"at {endpoint}; read a later revision or take a resync",
            None)
    if _FUTURE in details:
        return ValueError(
            f"{what} failed: revision {revision} is above etcd's current "
            "revision")
    if _TOO_LARGE in details or (
            code == grpc.StatusCode.RESOURCE_EXHAUSTED and
            _LARGER_THAN_MAX in details):
        return InvalidValueError(
            f"{what} failed: etcd at {endpoint} rejected the request as "
            "too large (its --max-request-bytes, 1.5 MiB by default); "
            "store smaller values")
    if _TOO_MANY_OPS in details:
        return TooManyOperationsError(
            f"{what} failed: etcd at {endpoint} accepts fewer operations "
            "in one transaction (its --max-txn-ops, 128 by default); "
            "split the transaction or raise the limit on every member")
    return EtcdError(f"{what} failed: etcd at {endpoint} returned "
                     f"{code.name}: {details}")
