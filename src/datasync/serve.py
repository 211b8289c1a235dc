"""``datasync serve``: the gRPC and REST transports in front of a store.

What clients send over either transport is committed to the embedded
store, one transaction per change, so watchers of the store in any
process receive it. Both transports share one backend, so changes from
both are applied one at a time in the order they arrive. The server logs
its start, its stop and every rejected request to stderr, and stops
cleanly on SIGTERM and SIGINT: it stops accepting requests, lets open
ones finish for up to GRACE seconds, then closes the store.
"""

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys

from datasync.transport import (DEFAULT_MAX_VALUE_SIZE, MessageTypes,
                                StoreBackend)

__all__ = ["add_arguments", "run", "TOKEN_ENV", "GRACE"]

log = logging.getLogger("datasync.serve")

#: Environment variable read for the bearer token when --token-file is
#: not given.
TOKEN_ENV = "DATASYNC_TOKEN"

#: Seconds that open requests get to finish after a stop signal.
GRACE = 5.0

#: Default largest request, in bytes: grpcio's default message limit.
DEFAULT_MAX_MESSAGE_SIZE = 4 << 20


class ServeError(Exception):
    """A problem with the options or the start of a server."""


def add_arguments(parser):
    """Add the options of ``datasync serve`` to ``parser``."""
    parser.add_argument(
        "--grpc", metavar="HOST:PORT",
        help="serve DataMsgService over gRPC on this address (a bare PORT "
             "means 127.0.0.1:PORT)")
    parser.add_argument(
        "--rest", metavar="HOST:PORT",
        help="serve the REST API over HTTP on this address, with uvicorn")
    parser.add_argument(
        "--token-file", metavar="PATH",
        help="require the bearer token on the first line of PATH (default: "
             f"${TOKEN_ENV} if set, else no token)")
    parser.add_argument(
        "--tls-cert", metavar="PATH",
        help="PEM certificate chain; with --tls-key, serve TLS only")
    parser.add_argument("--tls-key", metavar="PATH",
                        help="PEM private key of --tls-cert")
    parser.add_argument(
        "--max-value-size", metavar="BYTES", type=_positive_int,
        default=DEFAULT_MAX_VALUE_SIZE,
        help=f"largest value accepted (default: {DEFAULT_MAX_VALUE_SIZE})")
    parser.add_argument(
        "--max-message-size", metavar="BYTES", type=_positive_int,
        default=DEFAULT_MAX_MESSAGE_SIZE,
        help="largest gRPC message or HTTP body accepted (default: "
             f"{DEFAULT_MAX_MESSAGE_SIZE})")
    parser.add_argument(
        "--proto-module", metavar="MODULE", action="append", default=[],
        help="import this _pb2 module so that its messages can be named in "
             "content types (repeatable)")
    parser.add_argument(
        "--key-type", metavar="PREFIX=TYPE", action="append", default=[],
        help="read JSON values of keys under PREFIX as message TYPE, a "
             "class path or full name (repeatable)")
    parser.add_argument(
        "--log-level", default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="lowest level of the messages logged to stderr (default: INFO)")


def run(args, store):
    """Serve ``store`` until SIGTERM or SIGINT; return 0 after the stop.

    ``args`` contains the options that add_arguments defines. The caller
    closes the store afterwards. Raises ServeError for invalid options
    or a server that cannot start.
    """
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.grpc and not args.rest:
        raise ServeError("nothing to serve: pass --grpc HOST:PORT, --rest "
                         "HOST:PORT or both")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ServeError("--tls-cert and --tls-key go together")
    settings = {
        "token": _read_token(args.token_file),
        "types": _message_types(args.proto_module, args.key_type),
        "grpc": _address(args.grpc, "--grpc"),
        "rest": _address(args.rest, "--rest"),
    }
    return asyncio.run(_serve(args, store, settings))


async def _serve(args, store, settings):
    backend = StoreBackend(store)
    servers = []
    stop_signal = _StopSignal()
    try:
        if settings["grpc"]:
            servers.append(_grpc_server(args, backend, settings))
        if settings["rest"]:
            servers.append(_rest_server(args, backend, settings))
        addresses = []
        for name, server in servers:
            try:
                port = await server.start_async()
            except (RuntimeError, OSError) as exc:
                raise ServeError(f"cannot start the {name} server on "
                                 f"{server.address}: {exc}") from None
            host = server.address.rpartition(":")[0]
            addresses.append(f"{name} on {host}:{port}")
        log.info("serving store %s: %s", store.path, "; ".join(addresses))
        signum = await stop_signal.wait()
        log.info("received %s; stopping", signal.Signals(signum).name)
    finally:
        stop_signal.close()
        for name, server in reversed(servers):
            await _stop(name, server)
        backend.close()
    log.info("stopped serving store %s", store.path)
    return 0


async def _stop(name, server):
    try:
        if name == "gRPC":
            await server.stop_async(GRACE)
        else:
            await server.stop_async()
    except Exception:
        log.exception("stopping the %s server failed", name)


class _StopSignal:
    """Catches SIGTERM and SIGINT on the running loop from creation on,
    so that a signal sent while the servers start is not lost."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self._loop = asyncio.get_running_loop()
        self._received = self._loop.create_future()
        for signum in self.SIGNALS:
            self._loop.add_signal_handler(signum, self._set, signum)

    def _set(self, signum):
        if not self._received.done():
            self._received.set_result(signum)

    async def wait(self):
        """Return the number of the first signal received."""
        return await self._received

    def close(self):
        """Give the signals back to their previous handlers."""
        for signum in self.SIGNALS:
            self._loop.remove_signal_handler(signum)


def _grpc_server(args, backend, settings):
    try:
        from datasync import grpcsync
    except ImportError as exc:
        raise ServeError(f"--grpc needs the grpc extra (pip install "
                         f"'datasync[grpc]'): {exc}") from None
    adapter = grpcsync.Adapter(backend, types=settings["types"],
                               max_value_size=args.max_value_size,
                               max_message_size=args.max_message_size)
    return "gRPC", grpcsync.Server(
        adapter, settings["grpc"], token=settings["token"],
        tls_cert=args.tls_cert, tls_key=args.tls_key)


def _rest_server(args, backend, settings):
    try:
        from datasync import restsync
    except ImportError as exc:
        raise ServeError(f"--rest needs the rest extra (pip install "
                         f"'datasync[rest]'): {exc}") from None
    adapter = restsync.Adapter(backend, types=settings["types"],
                               max_value_size=args.max_value_size,
                               max_body_size=args.max_message_size,
                               token=settings["token"])
    try:
        server = restsync.Server(adapter, settings["rest"],
                                 tls_cert=args.tls_cert,
                                 tls_key=args.tls_key)
    except OSError as exc:
        raise ServeError(str(exc)) from None
    return "REST", server


def _address(text, option):
    """Return "HOST:PORT" for an option value, or None when unset."""
    if text is None:
        return None
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ServeError(f"invalid {option} {text!r}: expected HOST:PORT, "
                         "for example 127.0.0.1:9111")
    return text


def _read_token(path):
    if path is None:
        token = os.environ.get(TOKEN_ENV) or None
        return token.strip() if token else None
    try:
        with open(path, encoding="utf-8") as file:
            token = file.readline().strip()
    except OSError as exc:
        raise ServeError(f"cannot read --token-file {path}: "
                         f"{exc.strerror}") from None
    if not token:
        raise ServeError(f"--token-file {path} is empty; its first line "
                         "must be the token")
    return token


def _message_types(modules, key_types):
    from datasync.cli import (_KNOWN_PROTO_MODULES, CommandError,
                              resolve_message_type)

    from google.protobuf.runtime_version import VersionError

    # The messages that `datasync --type` can name by full name can be
    # named in content types too.
    for module in _KNOWN_PROTO_MODULES:
        try:
            importlib.import_module(module)
        except (ImportError, VersionError) as exc:
            log.warning("cannot import %s, so its messages cannot be "
                        "named in content types: %s", module, exc)
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ServeError(f"cannot import --proto-module {module}: "
                             f"{exc}") from None
    types = MessageTypes()
    for entry in key_types:
        prefix, sep, name = entry.partition("=")
        if not sep or not name:
            raise ServeError(f"invalid --key-type {entry!r}: expected "
                             "PREFIX=TYPE")
        try:
            types.register(prefix, resolve_message_type(name))
        except CommandError as exc:
            raise ServeError(str(exc)) from None
    return types


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: expected a number of bytes > 0")
    return value
