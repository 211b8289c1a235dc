"""A grpcio server for an Adapter, with TLS, a bearer token and limits."""

import asyncio
import hmac
import logging
import threading

import grpc

from datasync.transport.errors import RejectionLog

__all__ = ["Server", "DEFAULT_ADDRESS"]

log = logging.getLogger("datasync.grpcsync")

#: Loopback only, on a port the system chooses.
DEFAULT_ADDRESS = "127.0.0.1:0"

#: grpcio drops messages above this many times the adapter's limit
#: before they reach the adapter, with RESOURCE_EXHAUSTED and without a
#: log line. Below it the adapter rejects them itself, naming the size.
_TRANSPORT_LIMIT_FACTOR = 2


class Server:
    """Serves an Adapter on ``address`` ("HOST:PORT"; port 0 picks one).

    ``token``, when set, is the bearer token every call must carry in its
    ``authorization`` metadata (``Bearer <token>``); other calls end with
    UNAUTHENTICATED. ``tls_cert`` and ``tls_key`` are the paths of PEM
    files with the server's certificate chain and private key; with them
    the server accepts only TLS. The adapter's ``max_message_size`` caps each
    request message.

    Use ``start()``/``stop()`` (or a with block) to run it on a thread of
    its own, or ``start_async()``/``stop_async()`` on a running loop.
    """

    def __init__(self, adapter, address=DEFAULT_ADDRESS, *, token=None,
                 tls_cert=None, tls_key=None):
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key")
        if token is not None and not token:
            raise ValueError("token must not be empty; pass None for none")
        self.adapter = adapter
        self.address = address
        self.token = token
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.port = None
        self._server = None
        self._loop = None
        self._thread = None

    async def start_async(self):
        """Start serving on the running loop; return the bound port.

        Raises RuntimeError when the address cannot be bound.
        """
        interceptors = []
        if self.token is not None:
            interceptors.append(_TokenCheck(self.token,
                                            self.adapter.rejections))
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length",
                 _TRANSPORT_LIMIT_FACTOR * self.adapter.max_message_size),
                # One process owns the port: a second server on it must
                # fail instead of sharing the connections.
                ("grpc.so_reuseport", 0),
            ])
        self._server.add_generic_rpc_handlers((self.adapter.handler(),))
        if self.tls_cert is not None:
            with open(self.tls_key, "rb") as key_file, \
                    open(self.tls_cert, "rb") as cert_file:
                pair = (key_file.read(), cert_file.read())
            credentials = grpc.ssl_server_credentials([pair])
            self.port = self._server.add_secure_port(self.address,
                                                     credentials)
        else:
            self.port = self._server.add_insecure_port(self.address)
        await self._server.start()
        log.info("gRPC server listening on %s (port %d, %s, %s)",
                 self.address, self.port,
                 "TLS" if self.tls_cert is not None else "plaintext",
                 "bearer token required" if self.token else "no token")
        return self.port

    async def stop_async(self, grace=5.0):
        """Stop accepting calls and end the open ones after ``grace``
        seconds."""
        if self._server is None:
            return
        server, self._server = self._server, None
        await server.stop(grace)
        log.info("gRPC server on port %s stopped", self.port)

    def start(self):
        """Start serving on a thread of its own; return the bound port."""
        ready = threading.Event()
        failure = []

        def run():
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True,
                                        name="datasync-grpc-server")
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self.port

    def stop(self, grace=5.0):
        """Stop the server started with start()."""
        loop = self._loop
        if loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self.stop_async(grace),
                                                  loop)
        future.result()
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join()
        self._loop = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()


class _TokenCheck(grpc.aio.ServerInterceptor):
    """Ends every call without the right bearer token as UNAUTHENTICATED."""

    def __init__(self, token, rejections):
        self._expected = f"Bearer {token}".encode()
        self._rejections = rejections

    async def intercept_service(self, continuation, details):
        for name, value in details.invocation_metadata or ():
            if name == "authorization":
                if isinstance(value, str):
                    value = value.encode()
                if hmac.compare_digest(value, self._expected):
                    return await continuation(details)
                return self._deny(details.method, "invalid bearer token")
        return self._deny(details.method, "missing bearer token")

    def _deny(self, method, reason):
        rejections = self._rejections
        message = (f"{reason}: send the metadata 'authorization: Bearer "
                   "<token>'")

        async def deny_unary(request, context):
            rejections.reject(context.peer(), f"call of {method}", reason)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        async def deny_stream(request_iterator, context):
            rejections.reject(context.peer(), f"call of {method}", reason)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            yield  # makes this an async generator, as a stream handler

        if method.endswith("/dataChanges"):
            return grpc.stream_stream_rpc_method_handler(deny_stream)
        return grpc.unary_unary_rpc_method_handler(deny_unary)
