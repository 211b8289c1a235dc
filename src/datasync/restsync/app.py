"""The REST adapter: an ASGI application over a backend.

The key of a request is its URL path, percent-decoded, with the leading
slash: ``PUT /vnf-agent/a/config`` writes the key ``/vnf-agent/a/config``,
so only keys that start with "/" can be reached.
"""

import asyncio
import base64
import binascii
import hmac
import json
import logging
from urllib.parse import unquote_to_bytes

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Route

from datasync.transport.backend import Delete, MemoryBackend, Put
from datasync.transport.codec import (DEFAULT_MAX_VALUE_SIZE, JSON,
                                      ValueCodec, decode_key,
                                      parse_content_type)
from datasync.transport.errors import ProtocolError, RejectionLog, Result

__all__ = ["Adapter", "DEFAULT_MAX_BODY_SIZE"]

log = logging.getLogger("datasync.restsync")

#: Default largest request body in bytes, the same as the default gRPC
#: message limit.
DEFAULT_MAX_BODY_SIZE = 4 << 20

#: HTTP status of each non-zero result. The change was recorded and
#: delivered for SUBSCRIBER_ERROR, DELIVERY_TIMEOUT and CHANNEL_FULL;
#: nothing was written for NOT_APPLIED.
RESULT_STATUS = {
    Result.OK: 200,
    Result.SUBSCRIBER_ERROR: 500,
    Result.DELIVERY_TIMEOUT: 504,
    Result.CHANNEL_FULL: 503,
    Result.NOT_APPLIED: 500,
}

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no", "")


class Adapter:
    """Serves the REST API and delivers what clients send.

    It is a KeyValProtoWatcher like the gRPC adapter: ``watch``
    subscribes to the changes and resyncs that clients send, and a
    subscriber's done() result decides the HTTP status of the request.
    ``app`` is the ASGI application to run with any ASGI server.

    ``backend``, ``types``, ``max_value_size`` and ``timeout`` are as for
    grpcsync.Adapter. ``max_body_size`` is the largest request body in
    bytes (larger ones get 413). ``token``, when set, is the bearer token
    every request must carry in its Authorization header (else 401).
    """

    def __init__(self, backend=None, *, types=None,
                 max_value_size=DEFAULT_MAX_VALUE_SIZE,
                 max_body_size=DEFAULT_MAX_BODY_SIZE, token=None,
                 timeout=None):
        if isinstance(max_body_size, bool) or not isinstance(
                max_body_size, int) or max_body_size < 1:
            raise ValueError(
                f"max_body_size must be an int >= 1, got {max_body_size!r}")
        if token is not None and not token:
            raise ValueError("token must not be empty; pass None for none")
        self._own_backend = backend is None
        if backend is None:
            options = {} if timeout is None else {"timeout": timeout}
            backend = MemoryBackend(**options)
        self.backend = backend
        self.codec = ValueCodec(types, max_value_size)
        self.max_body_size = max_body_size
        self.rejections = RejectionLog(log)
        middleware = []
        if token is not None:
            middleware.append(Middleware(_BearerAuth, token=token,
                                         rejections=self.rejections))
        self.app = Starlette(
            routes=[
                Route("/resync", self._resync, methods=["POST"]),
                Route("/{key:path}", self._key,
                      methods=["GET", "PUT", "DELETE"]),
            ],
            middleware=middleware,
            exception_handlers={ProtocolError: self._rejected,
                                _Unavailable: _unavailable})

    def watch(self, resync_name, change_chan, resync_chan, *key_prefixes,
              **options):
        """Subscribe to the changes and resyncs clients send under
        ``key_prefixes``; see grpcsync.Adapter.watch."""
        return self.backend.watch(resync_name, change_chan, resync_chan,
                                  *key_prefixes, **options)

    def close(self):
        """Close the backend if this adapter created it."""
        if self._own_backend:
            self.backend.close()

    # Endpoints -------------------------------------------------------------

    async def _key(self, request):
        key = _key_of(request)
        if request.method == "PUT":
            return await self._put(request, key)
        if request.method == "DELETE":
            return await self._delete(request, key)
        if _flag(request, "list"):
            return await self._list(request, key)
        return self._get(request, key)

    async def _put(self, request, key):
        body = await self._body(request)
        content_type = request.headers.get("content-type")
        if content_type is None:
            raise ProtocolError(
                f"PUT of key {key.decode()!r} has no Content-Type; send "
                "application/x-protobuf, application/json or "
                "application/octet-stream")
        value = self.codec.decode(key, body, content_type)
        outcome = await _apply(self.backend, Put(key, value))
        return _outcome_response(outcome, {"key": key.decode()})

    async def _delete(self, request, key):
        prefix = _flag(request, "prefix")
        outcome = await _apply(self.backend, Delete(key, prefix))
        return _outcome_response(outcome, {
            "key": key.decode(),
            "deleted": [k.decode("utf-8", "backslashreplace")
                        for k in outcome.deleted],
        })

    def _get(self, request, key):
        kv = self.backend.get(key)
        if kv is None:
            return JSONResponse(
                {"error": f"key {key.decode()!r} not found"}, 404)
        return JSONResponse(self._keyval_object(
            kv, request.query_params.get("proto")))

    async def _list(self, request, prefix):
        name = request.query_params.get("proto")
        revision, values = await asyncio.to_thread(
            self.backend.list_values, prefix)
        return JSONResponse({
            "prefix": prefix.decode(),
            "revision": revision,
            "items": [self._keyval_object(kv, name) for kv in values],
        })

    async def _resync(self, request):
        body = await self._body(request)
        media, _ = parse_content_type(request.headers.get("content-type",
                                                          JSON))
        if media != JSON:
            raise ProtocolError(
                f"POST /resync takes {JSON!r}, got Content-Type {media!r}")
        values = self._resync_values(body)
        outcome = await _apply(self.backend, values)
        results = {key.decode(): int(code)
                   for key, code in outcome.results.items()}
        return _outcome_response(outcome, {"results": results})

    # Helpers ---------------------------------------------------------------

    async def _body(self, request):
        limit = self.max_body_size
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise _too_large(int(length), limit)
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def _resync_values(self, body):
        try:
            obj = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ProtocolError(
                f"resync body is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ProtocolError(
                "resync body must be a JSON object of key to value, got "
                f"{type(obj).__name__}")
        values = {}
        for name, value in obj.items():
            key = decode_key(name)
            if isinstance(value, str):
                values[key] = self._opaque(key, value)
            else:
                values[key] = self.codec.decode_json_object(key, value)
        return values

    def _opaque(self, key, text):
        try:
            value = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(
                f"value of key {key.decode()!r} is a string but not base64 "
                f"({exc}); send protobuf JSON objects, or base64 of the "
                "value bytes") from None
        if len(value) > self.codec.max_value_size:
            raise ProtocolError(
                f"value of key {key.decode()!r} is {len(value)} bytes, above "
                f"the limit of {self.codec.max_value_size} bytes",
                http_status=413)
        return value

    def _keyval_object(self, kv, name):
        value = kv.value
        obj = {
            "key": kv.key,
            "revision": kv.revision,
            "create_revision": kv.create_revision,
            "version": kv.version,
            "value_base64": base64.b64encode(value).decode(),
        }
        message = self.codec.to_json(kv.key_bytes, value, name)
        if message is not None:
            obj["value"] = message
        return obj

    async def _rejected(self, request, exc):
        client = request.client
        peer = f"{client.host}:{client.port}" if client else "unknown"
        self.rejections.reject(
            peer, f"{request.method} {request.url.path}", exc)
        return JSONResponse({"error": str(exc)}, exc.http_status)


class _BearerAuth:
    """ASGI middleware: rejects requests without the bearer token (401)."""

    def __init__(self, app, token, rejections):
        self.app = app
        self._expected = f"Bearer {token}".encode()
        self._rejections = rejections

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        value = None
        for name, header in scope["headers"]:
            if name == b"authorization":
                value = header
                break
        if value is not None and hmac.compare_digest(value, self._expected):
            await self.app(scope, receive, send)
            return
        reason = "missing bearer token" if value is None else \
            "invalid bearer token"
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else "unknown"
        self._rejections.reject(
            peer, f"{scope['method']} {scope['path']}", reason)
        response = JSONResponse(
            {"error": f"{reason}: send the header 'Authorization: Bearer "
                      "<token>'"}, 401,
            headers={"WWW-Authenticate": 'Bearer realm="datasync"'})
        await response(scope, receive, send)


async def _apply(backend, operation):
    try:
        future = backend.submit(operation)
    except RuntimeError:
        raise _Unavailable() from None
    return await asyncio.wrap_future(future)


class _Unavailable(Exception):
    """The backend was closed: the server is stopping."""


async def _unavailable(request, exc):
    return JSONResponse({"error": "server is shutting down"}, 503)


def _outcome_response(outcome, fields):
    body = {**fields, "revision": outcome.revision,
            "result": int(outcome.code)}
    if outcome.errors:
        body["error"] = outcome.message
    return JSONResponse(body, RESULT_STATUS[outcome.code])


def _key_of(request):
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    # ASGI servers leave the query string out of raw_path; some test
    # transports do not.
    raw = raw.partition(b"?")[0]
    return decode_key(unquote_to_bytes(raw))


def _flag(request, name):
    value = request.query_params.get(name)
    if value is None:
        return False
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ProtocolError(
        f"query parameter {name}={value!r} must be true or false")


def _too_large(size, limit):
    return ProtocolError(
        f"request body of {size} bytes is above the limit of {limit} bytes; "
        "send smaller requests, or start the server with a larger "
        "--max-message-size", http_status=413)
