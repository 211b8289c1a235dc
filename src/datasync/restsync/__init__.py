"""A REST transport: remote clients push changes to an agent over HTTP.

An Adapter is an ASGI application (Starlette) and the agent's
KeyValProtoWatcher: its watchers receive every change and resync that
clients send, with a revision and the previous value of each key. A
Server runs it with uvicorn. The key of a request is its URL path:

``PUT /{key}``
    Put the request body under the key. Content-Type names how it is
    encoded (see datasync.transport.codec): protobuf binary, protobuf
    JSON or opaque bytes.
``DELETE /{key}``
    Delete the key; with ``?prefix=true`` every key under it.
``GET /{key}``
    The latest value and revision of the key, as JSON.
``GET /{prefix}?list=true``
    Every key under the prefix, as JSON.
``POST /resync``
    Replace everything with a JSON object of key to value.

docs/transports.md has the request and response formats. Needs the
``rest`` extra: ``pip install 'datasync[rest]'``.
"""

from datasync.restsync.app import (DEFAULT_MAX_BODY_SIZE, RESULT_STATUS,
                                   Adapter)
from datasync.restsync.server import DEFAULT_ADDRESS, Server, split_address
from datasync.transport import (BINARY, JSON, OPAQUE, MemoryBackend,
                                MessageTypes, Result, StoreBackend)

__all__ = [
    "BINARY",
    "DEFAULT_ADDRESS",
    "DEFAULT_MAX_BODY_SIZE",
    "JSON",
    "OPAQUE",
    "RESULT_STATUS",
    "Adapter",
    "MemoryBackend",
    "MessageTypes",
    "Result",
    "Server",
    "StoreBackend",
    "split_address",
]
