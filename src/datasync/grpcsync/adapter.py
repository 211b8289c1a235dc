"""The server side of DataMsgService: an adapter with watchers.

The service's handlers parse the request bytes themselves instead of
letting grpcio do it, so that a malformed request is rejected with
INVALID_ARGUMENT and a message naming the problem rather than with
grpcio's INTERNAL.
"""

import asyncio
import logging

import grpc
from google.protobuf.message import DecodeError

from datasync.grpcsync import msg_pb2
from datasync.transport.backend import Delete, MemoryBackend, Put
from datasync.transport.codec import (DEFAULT_MAX_VALUE_SIZE, ValueCodec,
                                      decode_key)
from datasync.transport.errors import ProtocolError, RejectionLog

__all__ = ["Adapter", "SERVICE_NAME", "DEFAULT_MAX_MESSAGE_SIZE"]

log = logging.getLogger("datasync.grpcsync")

#: Full name of the gRPC service, as in the method paths.
SERVICE_NAME = "msg.DataMsgService"

#: Default largest request message in bytes: grpcio's own default
#: receive limit.
DEFAULT_MAX_MESSAGE_SIZE = 4 << 20

#: Changes of one dataChanges stream that may wait for their outcome.
#: Beyond that the server stops reading the stream, and gRPC's flow
#: control makes the client wait.
MAX_IN_FLIGHT = 256

_STREAM_END = object()


class Adapter:
    """Serves DataMsgService and delivers what clients send.

    It is a KeyValProtoWatcher: ``watch`` subscribes to the changes and
    resyncs that clients send, each with a revision and the previous
    value of its key, and the subscriber's done() result goes back to
    the client as the reply's ``result``.

    ``backend`` applies the operations. By default it is a new
    MemoryBackend with ``timeout`` seconds to wait for done(). Pass a
    StoreBackend to commit to a store instead, or the backend of a REST
    adapter to serve both transports in one order. ``types`` is a
    MessageTypes that names the message type of JSON values by key
    prefix. ``max_value_size`` is the largest value accepted and
    ``max_message_size`` the largest request message, in bytes; larger
    ones are rejected with INVALID_ARGUMENT.
    """

    def __init__(self, backend=None, *, types=None,
                 max_value_size=DEFAULT_MAX_VALUE_SIZE,
                 max_message_size=DEFAULT_MAX_MESSAGE_SIZE, timeout=None):
        if isinstance(max_message_size, bool) or not isinstance(
                max_message_size, int) or max_message_size < 1:
            raise ValueError("max_message_size must be an int >= 1, got "
                             f"{max_message_size!r}")
        self._own_backend = backend is None
        if backend is None:
            options = {} if timeout is None else {"timeout": timeout}
            backend = MemoryBackend(**options)
        self.backend = backend
        self.codec = ValueCodec(types, max_value_size)
        self.max_message_size = max_message_size
        self.rejections = RejectionLog(log)

    def watch(self, resync_name, change_chan, resync_chan, *key_prefixes,
              **options):
        """Subscribe to the changes and resyncs clients send under
        ``key_prefixes``.

        Channels are a queue.Queue, an asyncio.Queue or a callable;
        options go to the backend's watch. Returns a WatchRegistration.
        """
        return self.backend.watch(resync_name, change_chan, resync_chan,
                                  *key_prefixes, **options)

    def handler(self):
        """Return the grpc generic handler that serves DataMsgService."""
        serialize = _serialize
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "dataChanges": grpc.stream_stream_rpc_method_handler(
                self._data_changes, response_serializer=serialize),
            "dataResyncs": grpc.unary_unary_rpc_method_handler(
                self._data_resyncs, response_serializer=serialize),
            "ping": grpc.unary_unary_rpc_method_handler(
                self._ping, response_serializer=serialize),
        })

    def close(self):
        """Close the backend if this adapter created it."""
        if self._own_backend:
            self.backend.close()

    # Decoding --------------------------------------------------------------

    def decode_change(self, request):
        """Return the Put or Delete of a DataChangeRequest.

        Raises ProtocolError naming the problem.
        """
        key = decode_key(request.key)
        if request.operationType == msg_pb2.PUT:
            value = self.codec.decode(key, request.content,
                                      request.content_type)
            return Put(key, value)
        if request.operationType == msg_pb2.DEL:
            return Delete(key)
        raise ProtocolError(
            f"unknown operationType {request.operationType} for key "
            f"{request.key!r}; expected 0 (PUT) or 1 (DEL)")

    def decode_resync(self, request):
        """Return {key: value} of a DataResyncRequests.

        Raises ProtocolError for a bad entry or a key given twice.
        """
        values = {}
        for entry in request.dataResyncs:
            key = decode_key(entry.key)
            if key in values:
                raise ProtocolError(
                    f"key {entry.key!r} appears twice in the resync; send "
                    "each key once")
            values[key] = self.codec.decode(key, entry.content,
                                            entry.content_type)
        return values

    # Handlers --------------------------------------------------------------

    async def _data_changes(self, request_iterator, context):
        pending = asyncio.Queue(MAX_IN_FLIGHT)
        reader = asyncio.ensure_future(
            self._read_changes(request_iterator, context, pending))
        try:
            while True:
                item = await pending.get()
                if item is _STREAM_END:
                    return
                if isinstance(item, ProtocolError):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                        str(item))
                if isinstance(item, RuntimeError):
                    await context.abort(grpc.StatusCode.UNAVAILABLE,
                                        "server is shutting down")
                request, future = item
                outcome = await _outcome(future, context)
                yield msg_pb2.DataChangeReply(
                    key=request.key, operationType=request.operationType,
                    result=outcome.code)
        finally:
            reader.cancel()

    async def _read_changes(self, request_iterator, context, pending):
        async for data in request_iterator:
            try:
                request = _parse(msg_pb2.DataChangeRequest, data,
                             self.max_message_size)
                operation = self.decode_change(request)
            except ProtocolError as exc:
                self.rejections.reject(context.peer(), "dataChanges request",
                                       exc)
                await pending.put(exc)
                return
            try:
                future = self.backend.submit(operation)
            except RuntimeError as exc:
                # The backend was closed: the server is stopping.
                await pending.put(exc)
                return
            await pending.put((request, future))
        await pending.put(_STREAM_END)

    async def _data_resyncs(self, data, context):
        try:
            request = _parse(msg_pb2.DataResyncRequests, data,
                             self.max_message_size)
            values = self.decode_resync(request)
        except ProtocolError as exc:
            self.rejections.reject(context.peer(), "dataResyncs request",
                                   exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            future = self.backend.submit(values)
        except RuntimeError:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "server is shutting down")
        outcome = await _outcome(future, context)
        reply = msg_pb2.DataResyncReplies()
        reply.msgId.CopyFrom(request.msgId)
        if outcome.errors:
            reply.error.message = outcome.message
        for entry in request.dataResyncs:
            item = reply.dataResyncs.replies.add(
                key=entry.key, result=outcome.results[decode_key(entry.key)])
            item.resyncId.CopyFrom(request.msgId)
        return reply

    async def _ping(self, data, context):
        try:
            request = _parse(msg_pb2.PingRequest, data,
                             self.max_message_size)
        except ProtocolError as exc:
            self.rejections.reject(context.peer(), "ping request", exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return msg_pb2.PingReply(message=request.message or "pong")


async def _outcome(future, context):
    """Return the outcome of a submitted operation.

    An exception other than a result means a bug in the backend; it is
    logged and the call ends with INTERNAL.
    """
    try:
        return await asyncio.wrap_future(future)
    except Exception as exc:
        log.exception("applying a request from %s failed", context.peer())
        await context.abort(grpc.StatusCode.INTERNAL,
                            f"server failed to apply the request: {exc}")


def _parse(message_class, data, max_size):
    if len(data) > max_size:
        raise ProtocolError(
            f"{message_class.DESCRIPTOR.name} of {len(data)} bytes is above "
            f"the server's limit of {max_size} bytes; send smaller "
            "requests, or start the server with a larger "
            "--max-message-size", http_status=413)
    try:
        return message_class.FromString(data)
    except DecodeError as exc:
        raise ProtocolError(
            f"malformed {message_class.DESCRIPTOR.full_name}: {exc}"
        ) from None


def _serialize(message):
    return message.SerializeToString()
