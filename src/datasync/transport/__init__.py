"""The server side shared by the gRPC and REST transports.

A transport receives puts, deletes and resyncs from remote clients,
rejects malformed requests as a whole (ProtocolError), decodes each
value to protobuf binary (ValueCodec, by content type), and hands the
operation to a backend: a MemoryBackend that delivers it to the
transport's watchers, or a StoreBackend that commits it to the embedded
store. The sender gets back a Result code per change.
"""

from datasync.transport.backend import (Backend, Delete, MemoryBackend,
                                        Outcome, Put, ResyncOutcome,
                                        StoreBackend)
from datasync.transport.codec import (BINARY, DEFAULT_MAX_VALUE_SIZE, JSON,
                                      OPAQUE, MessageTypes, ValueCodec,
                                      decode_key, parse_content_type)
from datasync.transport.errors import (ProtocolError, RejectionLog, Result,
                                       ResultError, TransportError)

__all__ = [
    "BINARY",
    "DEFAULT_MAX_VALUE_SIZE",
    "JSON",
    "OPAQUE",
    "Backend",
    "Delete",
    "MemoryBackend",
    "MessageTypes",
    "Outcome",
    "ProtocolError",
    "Put",
    "RejectionLog",
    "Result",
    "ResultError",
    "ResyncOutcome",
    "StoreBackend",
    "TransportError",
    "ValueCodec",
    "decode_key",
    "parse_content_type",
]
