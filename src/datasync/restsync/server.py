"""A uvicorn server for a REST Adapter, with optional TLS."""

import asyncio
import contextlib
import logging
import socket
import threading

import uvicorn

__all__ = ["Server", "DEFAULT_ADDRESS", "split_address"]

log = logging.getLogger("datasync.restsync")

#: Loopback only, on a port the system chooses.
DEFAULT_ADDRESS = "127.0.0.1:0"

# Seconds that stop() gives open requests to finish.
_GRACE = 5


def split_address(address):
    """Split "HOST:PORT" (or "[IPv6]:PORT") into (host, port).

    Raises ValueError naming the address when it has no valid port.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(
            f"invalid address {address!r}: expected HOST:PORT, for example "
            "127.0.0.1:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "127.0.0.1", int(port)


class _Uvicorn(uvicorn.Server):
    """A uvicorn server that leaves signals to its owner."""

    def __init__(self, config):
        super().__init__(config)
        self.ready = threading.Event()
        self.on_ready = []

    @contextlib.contextmanager
    def capture_signals(self):
        # The owner decides when to stop, by setting should_exit.
        yield

    async def startup(self, sockets=None):
        await super().startup(sockets)
        self.ready.set()
        for callback in self.on_ready:
            callback()


class Server:
    """Serves a REST Adapter with uvicorn on ``address`` ("HOST:PORT").

    ``tls_cert`` and ``tls_key`` are paths of PEM files with the
    server's certificate chain and private key; with them it serves
    HTTPS only. Use ``start()``/``stop()`` (or a with block) to run it on
    a thread of its own, or ``start_async()``/``stop_async()`` on a
    running loop.
    """

    def __init__(self, adapter, address=DEFAULT_ADDRESS, *, tls_cert=None,
                 tls_key=None):
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key")
        self.adapter = adapter
        self.address = address
        self.host, port = split_address(address)
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.port = None
        self._socket = _bind(self.host, port)
        self.port = self._socket.getsockname()[1]
        self._server = _Uvicorn(uvicorn.Config(
            adapter.app, log_config=None, access_log=False,
            lifespan="off", proxy_headers=False, server_header=False,
            ssl_certfile=tls_cert, ssl_keyfile=tls_key,
            timeout_graceful_shutdown=_GRACE))
        self._task = None
        self._thread = None

    async def start_async(self):
        """Start serving on the running loop; return the bound port."""
        ready = asyncio.Event()
        self._server.on_ready.append(ready.set)
        self._task = asyncio.ensure_future(
            self._server.serve(sockets=[self._socket]))
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait({self._task, waiter},
                           return_when=asyncio.FIRST_COMPLETED)
        if not ready.is_set():
            waiter.cancel()
            task, self._task = self._task, None
            # Raises what made uvicorn fail, if anything did.
            task.result()
            raise RuntimeError(f"REST server on {self.address} did not "
                               "start; see the log")
        log.info("REST server listening on %s (port %d, %s)", self.address,
                 self.port, "HTTPS" if self.tls_cert else "plain HTTP")
        return self.port

    async def stop_async(self):
        """Stop accepting requests; wait for the open ones to finish."""
        if self._task is None:
            return
        self._server.should_exit = True
        task, self._task = self._task, None
        await task
        log.info("REST server on port %d stopped", self.port)

    def start(self):
        """Start serving on a thread of its own; return the bound port."""
        failure = []

        def run():
            try:
                asyncio.run(self._server.serve(sockets=[self._socket]))
            except BaseException as exc:
                failure.append(exc)
            finally:
                self._server.ready.set()

        self._thread = threading.Thread(target=run, daemon=True,
                                        name="datasync-rest-server")
        self._thread.start()
        self._server.ready.wait()
        if failure or not self._server.started:
            raise RuntimeError(
                f"REST server on {self.address} did not start: "
                f"{failure[0] if failure else 'see the log'}")
        log.info("REST server listening on %s (port %d, %s)", self.address,
                 self.port, "HTTPS" if self.tls_cert else "plain HTTP")
        return self.port

    def stop(self):
        """Stop the server started with start()."""
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join()
        self._thread = None
        log.info("REST server on port %d stopped", self.port)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()


def _bind(host, port):
    """Return a socket bound to (host, port), ready for uvicorn."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # asyncio turns Nagle's algorithm off only on sockets whose protocol
    # is IPPROTO_TCP; with it on, a keep-alive client waits for its
    # delayed ACK (about 40 ms on Linux) before each response's body.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno,
                      f"cannot listen on {host}:{port}: {exc.strerror}"
                      ) from None
    return sock
