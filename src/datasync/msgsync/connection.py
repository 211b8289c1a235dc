"""Connections to NATS, topic streams, and the loop thread of sync APIs."""

import asyncio
import logging
import threading

import nats
import nats.errors
import nats.js.errors
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, \
    StreamConfig

from datasync.errors import InvalidOptionError
from datasync.msgsync import wire
from datasync.msgsync.errors import BrokerError, BrokerUnavailableError

log = logging.getLogger("datasync.msgsync")

#: Seconds to wait for the first connection to a NATS server.
DEFAULT_CONNECT_TIMEOUT = 5.0

#: Seconds between attempts to reconnect after the connection is lost.
#: The client keeps trying for as long as it is open.
RECONNECT_WAIT = 0.5

#: Seconds within which JetStream drops a publish that repeats the
#: message id of a stored one: the duplicate window of the streams this
#: package creates. nats-server's own default is also 2 minutes.
DEFAULT_DUPLICATE_WINDOW = 120.0


def server_url(address):
    """Return the NATS URL of ``address``, ``HOST:PORT`` or a URL.

    Raises InvalidOptionError for anything else.
    """
    if not isinstance(address, str) or not address:
        raise InvalidOptionError(
            f"NATS address must be 'HOST:PORT' or a nats:// URL, got "
            f"{address!r}")
    if "://" in address:
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidOptionError(
            f"NATS address {address!r} is invalid; give it as HOST:PORT, "
            "for example 127.0.0.1:4222")
    return f"nats://{address}"


async def connect(address, name, timeout=DEFAULT_CONNECT_TIMEOUT,
                  on_reconnect=None):
    """Connect to the NATS server at ``address``.

    After a first connection the client reconnects on its own, forever,
    every RECONNECT_WAIT seconds; ``on_reconnect`` (a coroutine function)
    runs after each reconnection. Raises BrokerUnavailableError if no
    connection is made within ``timeout`` seconds.
    """
    url = server_url(address)
    client = nats.NATS()
    failures = []
    opened = False

    async def on_error(exc):
        # The client reports every failed attempt here. Before the first
        # connection the last one goes into the raised error. After it,
        # the first one of each outage is logged.
        failures.append(exc)
        if opened and len(failures) == 1:
            log.warning("connection to NATS at %s failed: %s; retrying",
                        url, exc)

    async def on_disconnect():
        if not client.is_closed:
            log.warning("lost the connection to NATS at %s; reconnecting",
                        url)

    async def on_reconnected():
        failures.clear()
        log.info("reconnected to NATS at %s", url)
        if on_reconnect is not None:
            await on_reconnect()

    try:
        await asyncio.wait_for(client.connect(
            servers=[url], name=name, connect_timeout=min(timeout, 2.0),
            reconnect_time_wait=RECONNECT_WAIT, max_reconnect_attempts=-1,
            ping_interval=20, max_outstanding_pings=3, error_cb=on_error,
            disconnected_cb=on_disconnect, reconnected_cb=on_reconnected),
            timeout)
    except (asyncio.TimeoutError, OSError, nats.errors.Error) as exc:
        await close_client(client)
        cause = failures[-1] if failures else exc
        raise BrokerUnavailableError(
            f"cannot connect to NATS at {url} within {timeout:.1f} s: "
            f"{str(cause) or type(cause).__name__}; start nats-server "
            "with JetStream (nats-server -js) or check the address"
        ) from exc
    failures.clear()
    opened = True
    return client


async def close_client(client):
    """Close a NATS client, also one whose connection broke or never
    opened; closing then fails on the lost socket, which is logged."""
    if client.is_closed:
        return
    try:
        await client.close()
    except (OSError, nats.errors.Error) as exc:
        log.debug("closing the NATS client failed: %r", exc)


async def ensure_stream(js, topic, duplicate_window):
    """Create the stream of ``topic`` if it does not exist yet.

    Returns the stream's duplicate window in seconds, which may differ
    from ``duplicate_window`` when the stream already existed.
    """
    name = wire.stream_name(topic)
    try:
        info = await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        config = StreamConfig(
            name=name, subjects=[wire.topic_filter(topic)],
            storage=StorageType.FILE, retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD, duplicate_window=duplicate_window,
            description=f"datasync topic {topic}")
        try:
            info = await js.add_stream(config)
            log.info("created stream %s for topic %r", name, topic)
        except nats.js.errors.BadRequestError as exc:
            # Another client created it in between (error code 10058,
            # "stream name already in use"); use theirs.
            if exc.err_code != 10058:
                raise BrokerError(
                    f"cannot create stream {name} of topic {topic!r}: "
                    f"{exc}") from exc
            info = await js.stream_info(name)
    window = info.config.duplicate_window or 0.0
    return window


class LoopThread:
    """An asyncio event loop running on a private daemon thread.

    The synchronous classes run their asyncio counterparts here, so that
    thread code never needs an event loop of its own.
    """

    def __init__(self, name):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name,
                                        daemon=True)
        self._thread.start()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        # Let cancelled tasks finish their cleanup before the loop closes.
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(
                asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def run(self, coro, timeout=None):
        """Run ``coro`` on the loop and return its result.

        Raises TimeoutError if it takes more than ``timeout`` seconds.
        """
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def call(self, function, *args):
        """Call ``function(*args)`` on the loop and return its result."""
        async def call():
            return function(*args)
        return self.run(call())

    def in_loop(self):
        """Return True when called from the loop's own thread."""
        return threading.current_thread() is self._thread

    def stop(self):
        """Stop the loop and wait for its thread to end."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_loop():
            self._thread.join(timeout=10.0)
