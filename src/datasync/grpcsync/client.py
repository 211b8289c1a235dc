"""A DataMsgService client: puts, deletes and resyncs over gRPC.

Puts and deletes travel over one long-lived dataChanges stream. The
server replies to the requests in order, so the client pairs replies
with requests by position.
"""

import collections
import concurrent.futures
import itertools
import os
import queue
import socket
import threading
import time

import grpc
from google.protobuf import json_format

from datasync.errors import InvalidOptionError, InvalidValueError
from datasync.grpcsync import msg_pb2
from datasync.grpcsync.adapter import DEFAULT_MAX_MESSAGE_SIZE, SERVICE_NAME
from datasync.options import WithPrefixOpt
from datasync.transport.codec import BINARY, JSON, OPAQUE
from datasync.transport.errors import (ProtocolError, Result, ResultError,
                                       TransportError, describe)

__all__ = ["Client"]

_END = object()

#: gRPC status codes raised as ProtocolError: the request was malformed
#: or too large, so sending it again cannot succeed.
_REJECTED = (grpc.StatusCode.INVALID_ARGUMENT,
             grpc.StatusCode.RESOURCE_EXHAUSTED)


class Client:
    """Writes to a DataMsgService server (a KeyProtoValWriter).

    ``target`` is "HOST:PORT". ``token`` is sent as the bearer token.
    ``root_certificates`` (PEM bytes) turns on TLS and names the
    certificates that the server's must chain to; ``tls=True`` uses the
    system's instead. ``encoding`` is "binary" or "json", the form in
    which messages are sent. ``timeout`` is how many seconds a call waits
    for its reply before it raises TransportError.

    Methods may be called from several threads. Close the client (or use
    a with block) to end the stream and the channel.
    """

    def __init__(self, target, *, token=None, root_certificates=None,
                 tls=False, encoding="binary", timeout=30.0,
                 max_message_size=DEFAULT_MAX_MESSAGE_SIZE, options=()):
        if encoding not in ("binary", "json"):
            raise ValueError(
                f"encoding must be 'binary' or 'json', got {encoding!r}")
        # Replies to a resync list every key, so they are not capped.
        channel_options = [
            ("grpc.max_send_message_length", max_message_size),
            ("grpc.max_receive_message_length", -1),
            *options,
        ]
        if root_certificates is not None or tls:
            credentials = grpc.ssl_channel_credentials(root_certificates)
            self._channel = grpc.secure_channel(target, credentials,
                                                options=channel_options)
        else:
            self._channel = grpc.insecure_channel(target,
                                                  options=channel_options)
        self.target = target
        self.encoding = encoding
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) \
            if token else ()
        self._changes = self._channel.stream_stream(
            f"/{SERVICE_NAME}/dataChanges",
            request_serializer=msg_pb2.DataChangeRequest.SerializeToString,
            response_deserializer=msg_pb2.DataChangeReply.FromString)
        self._resyncs = self._channel.unary_unary(
            f"/{SERVICE_NAME}/dataResyncs",
            request_serializer=msg_pb2.DataResyncRequests.SerializeToString,
            response_deserializer=msg_pb2.DataResyncReplies.FromString)
        self._ping = self._channel.unary_unary(
            f"/{SERVICE_NAME}/ping",
            request_serializer=msg_pb2.PingRequest.SerializeToString,
            response_deserializer=msg_pb2.PingReply.FromString)
        self._lock = threading.Lock()
        self._stream = None
        self._closed = False
        self._originator = f"{socket.gethostname()}:{os.getpid()}"
        self._seq = itertools.count(1)

    # Writing ---------------------------------------------------------------

    def put(self, key, message, *opts):
        """Send a put of ``message`` under ``key`` and wait for its reply.

        ``message`` is a protobuf message, or bytes sent as opaque
        content. Raises ResultError when the server reports a non-zero
        result, ProtocolError when it rejected the request,
        TransportError when the call failed, and InvalidOptionError for
        any option (DataMsgService has none).
        """
        self._wait(self.submit_put(key, message, *opts))

    def delete(self, key, *opts):
        """Send a delete of ``key`` and wait for its reply.

        Raises as put() does; with_prefix() is rejected with
        InvalidOptionError, because DataMsgService deletes single keys.
        """
        self._wait(self.submit_delete(key, *opts))

    def submit_put(self, key, message, *opts):
        """Send a put without waiting; return a Future of its outcome.

        The future's result() returns None or raises as put() does.
        Several submitted changes travel on the stream at once.
        """
        if opts:
            raise InvalidOptionError(
                f"put options {opts!r} cannot be sent over DataMsgService, "
                "which has none; put without options")
        content, content_type = self._encode(key, message)
        return self._send(msg_pb2.DataChangeRequest(
            key=key, operationType=msg_pb2.PUT, content=content,
            content_type=content_type))

    def submit_delete(self, key, *opts):
        """Send a delete without waiting; return a Future of its outcome."""
        for opt in opts:
            if isinstance(opt, WithPrefixOpt):
                raise InvalidOptionError(
                    "DataMsgService deletes single keys, so with_prefix() "
                    "cannot be sent; delete each key, or use the REST "
                    "transport's DELETE /{prefix}?prefix=true")
            raise InvalidOptionError(
                f"delete option {opt!r} cannot be sent over DataMsgService")
        return self._send(msg_pb2.DataChangeRequest(
            key=key, operationType=msg_pb2.DEL))

    def resync(self, values):
        """Replace everything the server stores with ``values``.

        ``values`` maps keys to messages (or bytes). Returns None when
        every key was applied. Raises ResultError, whose ``results`` maps
        each key to its code, when a key's result is non-zero, and
        ProtocolError or TransportError as put() does.
        """
        request = msg_pb2.DataResyncRequests()
        request.msgId.originator = self._originator
        request.msgId.seqCreatedSec = int(time.time())
        request.msgId.seq = next(self._seq) & 0xFFFFFFFF
        for key, message in values.items():
            content, content_type = self._encode(key, message)
            request.dataResyncs.add(key=key, content=content,
                                    content_type=content_type)
        try:
            reply = self._resyncs(request, timeout=self.timeout,
                                  metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _translate(exc, "resync") from None
        results = {item.key: _as_result(item.result)
                   for item in reply.dataResyncs.replies}
        failed = {key: code for key, code in results.items() if code}
        if failed or reply.HasField("error"):
            code = max(failed.values(), default=Result.SUBSCRIBER_ERROR)
            raise ResultError(
                f"resync of {len(values)} keys failed for {len(failed)}: "
                f"{reply.error.message or describe(code)}", code,
                operation="resync", results=results)

    def ping(self, message=""):
        """Send a ping; return the server's reply message."""
        try:
            reply = self._ping(msg_pb2.PingRequest(message=message),
                               timeout=self.timeout,
                               metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _translate(exc, "ping") from None
        return reply.message

    # Lifetime --------------------------------------------------------------

    def close(self):
        """End the stream once its replies are in, and the channel."""
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.finish(self.timeout)
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # Internals -------------------------------------------------------------

    def _encode(self, key, message):
        if isinstance(message, (bytes, bytearray, memoryview)):
            return bytes(message), OPAQUE
        if not hasattr(message, "DESCRIPTOR"):
            raise InvalidValueError(
                f"value of key {key!r} must be a protobuf message or bytes, "
                f"got {type(message).__name__}")
        name = message.DESCRIPTOR.full_name
        if self.encoding == "json":
            text = json_format.MessageToJson(message, indent=None)
            return text.encode(), f"{JSON}; proto={name}"
        return message.SerializeToString(), f"{BINARY}; proto={name}"

    def _send(self, request):
        future = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise TransportError(f"client of {self.target} is closed")
            stream = self._stream
            if stream is None or not stream.send(request, future):
                self._stream = _Stream(self._changes, self._metadata,
                                       request, future)
        return future

    def _wait(self, future):
        try:
            future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            raise TransportError(
                f"no reply from {self.target} within {self.timeout:g} s; "
                "the change may still be applied",
                grpc.StatusCode.DEADLINE_EXCEEDED) from None


class _Stream:
    """One dataChanges call, its request queue and its reader thread.

    The first request is queued before the call starts, so that a call
    that fails at once still fails its future.
    """

    def __init__(self, method, metadata, request, future):
        self._requests = queue.SimpleQueue()
        self._pending = collections.deque([(request, future)])
        self._requests.put(request)
        self._lock = threading.Lock()
        self._closed = False
        self._call = method(iter(self._requests.get, _END),
                            metadata=metadata)
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name="datasync-grpc-replies")
        self._reader.start()

    def send(self, request, future):
        """Queue ``request``; return False if the stream has ended."""
        with self._lock:
            if self._closed:
                return False
            self._pending.append((request, future))
            self._requests.put(request)
        return True

    def finish(self, timeout):
        """Half-close the stream and wait for the remaining replies."""
        self._requests.put(_END)
        self._reader.join(timeout)
        if self._reader.is_alive():
            self._call.cancel()
            self._reader.join(timeout)

    def _read(self):
        error = None
        try:
            for reply in self._call:
                with self._lock:
                    request, future = self._pending.popleft()
                _resolve(future, request, reply)
        except grpc.RpcError as exc:
            error = exc
        with self._lock:
            self._closed = True
            pending = list(self._pending)
            self._pending.clear()
        # grpcio's thread that sends the requests may still wait for the
        # next one; this ends it.
        self._requests.put(_END)
        self._fail(pending, error)

    def _fail(self, pending, error):
        for position, (request, future) in enumerate(pending):
            what = _operation_name(request)
            if error is None:
                exc = TransportError(
                    f"stream ended before the reply to the {what} of key "
                    f"{request.key!r}; it may not be applied")
            elif position == 0:
                exc = _translate(error, f"{what} of key {request.key!r}")
            else:
                exc = TransportError(
                    f"{what} of key {request.key!r} was not applied: the "
                    f"server ended the stream before it ({error.code().name}:"
                    f" {error.details()})", error.code())
            future.set_exception(exc)


def _resolve(future, request, reply):
    what = _operation_name(request)
    if reply.key != request.key or \
            reply.operationType != request.operationType:
        future.set_exception(TransportError(
            f"reply for key {reply.key!r} arrived where the reply to the "
            f"{what} of key {request.key!r} was expected"))
    elif reply.result:
        future.set_exception(ResultError(
            f"{what} of key {request.key!r} failed with result "
            f"{reply.result}: {describe(reply.result)}",
            _as_result(reply.result), request.key, what))
    else:
        future.set_result(None)


def _as_result(code):
    """Return a Result for a known code, else the int a newer server sent."""
    try:
        return Result(code)
    except ValueError:
        return code


def _operation_name(request):
    return "put" if request.operationType == msg_pb2.PUT else "delete"


def _translate(error, what):
    code = error.code()
    details = error.details() or code.name
    if code in _REJECTED:
        exc = ProtocolError(f"server rejected the {what}: {details}",
                            413 if code == _REJECTED[1] else 400)
        exc.grpc_code = code
        return exc
    return TransportError(f"{what} failed: {code.name}: {details}", code)
