"""The etcd backend: the datasync store API over an etcd v3 cluster.

``EtcdStore`` has the methods, results and errors of the embedded
``datasync.Store``, so code written against one runs on the other:

    from datasync.keyval.etcd import EtcdStore

    store = EtcdStore("127.0.0.1:2379")

It talks to etcd's gRPC API directly (etcd 3.4 or later, plain gRPC
without TLS or authentication). Revisions are etcd's revisions. Protobuf
messages are stored as protobuf JSON by default, as the Go original
stores them; see ``datasync.keyval.etcd.serializer``.

Requires the ``etcd`` extra: ``pip install 'datasync[etcd]'`` (grpcio).
"""

try:
    import grpc  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "the etcd backend needs grpcio: install datasync with the etcd "
        "extra (pip install 'datasync[etcd]') or pip install grpcio; "
        f"import failed with: {exc}") from exc

from datasync.keyval.etcd.errors import (EtcdError, EtcdUnavailableError,
                                         TooManyOperationsError)
from datasync.keyval.etcd.serializer import (BINARY, JSON,
                                             BinarySerializer,
                                             JSONSerializer, Serializer)
from datasync.keyval.etcd.store import (DEFAULT_MAX_VALUE_SIZE, EtcdStore,
                                        Registration, Txn)

__all__ = [
    "BINARY",
    "DEFAULT_MAX_VALUE_SIZE",
    "JSON",
    "BinarySerializer",
    "EtcdError",
    "EtcdStore",
    "EtcdUnavailableError",
    "JSONSerializer",
    "Registration",
    "Serializer",
    "TooManyOperationsError",
    "Txn",
]
