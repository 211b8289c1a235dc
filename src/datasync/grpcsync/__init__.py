"""DataMsgService over gRPC: remote clients push changes to an agent.

An Adapter serves the service and is the agent's KeyValProtoWatcher.
Its watchers receive every change and resync that clients send, with a
revision and the previous value of each key. The result a watcher
passes to done() goes back to the client. A Server runs the Adapter on
a grpcio server, with optional TLS, a bearer token and a message size
limit. A Client sends puts and deletes over one long-lived dataChanges
stream, and resyncs, and raises ResultError when the server reports a
non-zero result.

The protocol is in msg.proto (package ``msg``), wire-compatible with the
Go original; datasync.transport describes content types and result
codes. Needs the ``grpc`` extra: ``pip install 'datasync[grpc]'``.
"""

from datasync.grpcsync.adapter import (DEFAULT_MAX_MESSAGE_SIZE,
                                       SERVICE_NAME, Adapter)
from datasync.grpcsync.client import Client
from datasync.grpcsync.server import DEFAULT_ADDRESS, Server
from datasync.transport import (BINARY, JSON, OPAQUE, MemoryBackend,
                                MessageTypes, ProtocolError, Result,
                                ResultError, StoreBackend, TransportError)

__all__ = [
    "BINARY",
    "DEFAULT_ADDRESS",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "JSON",
    "OPAQUE",
    "SERVICE_NAME",
    "Adapter",
    "Client",
    "MemoryBackend",
    "MessageTypes",
    "ProtocolError",
    "Result",
    "ResultError",
    "Server",
    "StoreBackend",
    "TransportError",
]
