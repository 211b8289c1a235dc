"""Watchers: the public API to subscribe to the keys of a topic.

How a subscription consumes the topic's stream is described in
datasync.msgsync.subscription.
"""

import asyncio
import logging

from datasync.channels import (DEFAULT_MAX_PENDING, DEFAULT_NOTIF_TIMEOUT,
                               make_sink)
from datasync.errors import RegistrationError, StoreClosedError
from datasync.msgsync import wire
from datasync.msgsync.connection import (DEFAULT_CONNECT_TIMEOUT,
                                         DEFAULT_DUPLICATE_WINDOW, LoopThread,
                                         close_client, connect,
                                         ensure_stream)
from datasync.msgsync.subscription import (DEFAULT_MAX_ACK_PENDING,
                                           Subscription)

log = logging.getLogger("datasync.msgsync")


class AsyncTopicWatcher:
    """Watches keys of a topic, for asyncio code.

    ``address`` is ``HOST:PORT`` or a ``nats://`` URL of a nats-server
    with JetStream. After ``connect()`` (or in ``async with``), ``await
    watch(...)`` subscribes to prefixes. Subscribers get change events in
    stream order with revision = stream sequence and the previous value of
    the key. ``notif_timeout`` is how long changes wait for done() on a
    resync sent to another channel.
    """

    def __init__(self, address, topic, *,
                 notif_timeout=DEFAULT_NOTIF_TIMEOUT,
                 connect_timeout=DEFAULT_CONNECT_TIMEOUT,
                 duplicate_window=DEFAULT_DUPLICATE_WINDOW,
                 max_ack_pending=DEFAULT_MAX_ACK_PENDING):
        self.topic = wire.check_topic(topic)
        self.address = address
        self.notif_timeout = notif_timeout
        self.connect_timeout = connect_timeout
        self.duplicate_window = duplicate_window
        self.max_ack_pending = max_ack_pending
        self._client = None
        self._js = None
        self._loop = None
        self._watches = {}
        self._closed = False
        self._foreign = 0

    async def connect(self):
        """Connect and create the topic's stream if it is missing.

        Raises BrokerUnavailableError when the server cannot be reached.
        """
        if self._client is not None:
            return self
        self._loop = asyncio.get_running_loop()
        client = await connect(self.address,
                               f"datasync watcher {self.topic}",
                               self.connect_timeout, self._reconnected)
        try:
            js = client.jetstream()
            await ensure_stream(js, self.topic, self.duplicate_window)
        except BaseException:
            await close_client(client)
            raise
        self._client = client
        self._js = js
        return self

    async def _reconnected(self):
        # Pulls and acks in flight when the connection broke are lost.
        for watch in self._watches.values():
            watch.restart_needed = True
            watch.wake.set()

    def _report_foreign(self, msg, exc):
        self._foreign += 1
        if self._foreign <= 10 or self._foreign % 1000 == 0:
            log.warning("topic %r: skipped message %d on subject %r, not "
                        "a datasync change (%s); %d skipped so far",
                        self.topic, msg.metadata.sequence.stream,
                        msg.subject, exc, self._foreign)

    async def watch(self, resync_name, change_chan, resync_chan,
                    *key_prefixes, durable=True, resume=True,
                    max_pending=DEFAULT_MAX_PENDING):
        """Subscribe to the keys under ``key_prefixes``.

        A new subscription first gets a resync event with the latest value
        of every key under its prefixes, at a revision R, then the change
        events after R. With ``durable``, its consumer outlives the
        process under a name made from ``resync_name``. With ``resume``
        as well, a later watch of that name continues after the last
        acknowledged change, without a resync. Channels are as for Store.watch; an
        asyncio.Queue must belong to the running loop.

        Returns an AsyncRegistration. Raises RegistrationError for a
        duplicate or empty name, BrokerError when the broker fails.
        """
        change_sink, resync_sink = _sinks(resync_name, change_chan,
                                          resync_chan, max_pending,
                                          self._loop)
        watch = await self._add(resync_name, key_prefixes, change_sink,
                                resync_sink, durable, resume)
        return AsyncRegistration(watch)

    async def _add(self, resync_name, key_prefixes, change_sink,
                   resync_sink, durable, resume):
        self._check_open()
        _check_name(resync_name, key_prefixes)
        if resync_name in self._watches:
            raise RegistrationError(
                f"a watch named {resync_name!r} already watches topic "
                f"{self.topic!r}; close it first or choose another name")
        prefixes = list(dict.fromkeys(wire.prefix_bytes(p)
                                      for p in key_prefixes))
        watch = Subscription(self, resync_name, prefixes, change_sink,
                       resync_sink, durable, resume)
        self._watches[resync_name] = watch
        try:
            await watch.start()
        except BaseException:
            del self._watches[resync_name]
            await watch.close()
            raise
        watch.task = self._loop.create_task(watch.run())
        return watch

    async def _remove(self, watch):
        if self._watches.get(watch.name) is watch:
            del self._watches[watch.name]
        await watch.close()

    def _check_open(self):
        if self._closed:
            raise StoreClosedError(
                f"watcher of topic {self.topic!r} is closed")
        if self._client is None:
            raise StoreClosedError(
                f"watcher of topic {self.topic!r} is not connected; call "
                "connect() or use it in 'async with'")

    async def close(self):
        """Close every watch, then the connection."""
        self._closed = True
        for watch in list(self._watches.values()):
            await self._remove(watch)
        client, self._client = self._client, None
        if client is not None:
            await close_client(client)

    async def __aenter__(self):
        return await self.connect()

    async def __aexit__(self, *exc_info):
        await self.close()


def _check_name(resync_name, key_prefixes):
    if not isinstance(resync_name, str) or not resync_name:
        raise RegistrationError(
            f"resync_name must be a non-empty str, got {resync_name!r}")
    if not key_prefixes:
        raise RegistrationError(
            f"watch {resync_name!r} needs at least one key prefix")


def _sinks(name, change_chan, resync_chan, max_pending, loop):
    change_sink = make_sink(change_chan, name, max_pending, loop)
    if resync_chan is change_chan:
        return change_sink, change_sink
    return change_sink, make_sink(resync_chan, name, max_pending, loop)


class AsyncRegistration:
    """Handle of one watch of an AsyncTopicWatcher.

    Its methods run on the watcher's event loop.
    """

    def __init__(self, watch):
        self._watch = watch

    @property
    def resync_name(self):
        """Name of the watch."""
        return self._watch.name

    @property
    def prefixes(self):
        """Prefixes watched, as str."""
        return [p.decode("utf-8", "surrogateescape")
                for p in self._watch.prefixes]

    @property
    def revision(self):
        """Stream sequence of the last message the watch handled."""
        return self._watch.position

    @property
    def acked_revision(self):
        """Stream sequence up to which every event is done and acked."""
        return self._watch.acked

    def register(self, resync_name, key_prefix):
        """Add ``key_prefix``; its changes arrive from the next message.

        Call resync() as well to get its current keys. Raises
        RegistrationError for another name or a prefix already watched.
        """
        if resync_name != self._watch.name:
            raise RegistrationError(
                f"registration is for {self._watch.name!r}, not "
                f"{resync_name!r}")
        self._check_open()
        self._watch.add_prefix(wire.prefix_bytes(key_prefix))

    def unregister(self, key_prefix):
        """Stop watching ``key_prefix``.

        Raises RegistrationError if it is not watched.
        """
        self._check_open()
        self._watch.remove_prefix(wire.prefix_bytes(key_prefix))

    def resync(self):
        """Send a resync of every watched prefix, then the changes after
        it."""
        self._check_open()
        self._watch.resync_requested = True
        self._watch.wake.set()

    async def flush(self, timeout=5.0):
        """Make the server store the ack of every event done so far.

        A durable watch that starts again resumes after the returned
        revision: every event up to it was done, and none after it was
        acknowledged. Raises TimeoutError when the server does not
        confirm within ``timeout`` seconds.
        """
        return await self._watch.flush(timeout)

    async def close(self):
        """End the watch; a durable consumer stays for a later resume."""
        await self._watch.watcher._remove(self._watch)

    def _check_open(self):
        if self._watch.closed:
            raise StoreClosedError(
                f"watch {self._watch.name!r} is closed; watch again")

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        await self.close()


class TopicWatcher:
    """Watches keys of a topic, for thread code (a KeyValProtoWatcher).

    It runs an AsyncTopicWatcher on an event loop in a private thread.
    The constructor connects, with the same parameters and errors as
    AsyncTopicWatcher.connect().
    """

    def __init__(self, address, topic, **options):
        self._watcher = AsyncTopicWatcher(address, topic, **options)
        self._thread = LoopThread(f"datasync-watcher-{topic}")
        try:
            self._thread.run(self._watcher.connect())
        except BaseException:
            self._thread.stop()
            raise

    @property
    def topic(self):
        """Name of the topic."""
        return self._watcher.topic

    def watch(self, resync_name, change_chan, resync_chan, *key_prefixes,
              durable=True, resume=True, max_pending=DEFAULT_MAX_PENDING):
        """Subscribe to the keys under ``key_prefixes``.

        See AsyncTopicWatcher.watch(); an asyncio.Queue channel is fed on
        the loop running in the calling thread. Returns a Registration.
        """
        _check_name(resync_name, key_prefixes)
        change_sink, resync_sink = _sinks(resync_name, change_chan,
                                          resync_chan, max_pending, None)
        watch = self._thread.run(self._watcher._add(
            resync_name, key_prefixes, change_sink, resync_sink, durable,
            resume))
        return Registration(watch, self._thread)

    def close(self):
        """Close every watch and the connection, and stop the loop."""
        if self._thread.loop.is_closed():
            return
        try:
            self._thread.run(self._watcher.close(), timeout=30.0)
        finally:
            self._thread.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class Registration:
    """Handle of one watch of a TopicWatcher (a WatchRegistration)."""

    def __init__(self, watch, thread):
        self._inner = AsyncRegistration(watch)
        self._thread = thread

    @property
    def resync_name(self):
        """Name of the watch."""
        return self._inner.resync_name

    @property
    def prefixes(self):
        """Prefixes watched, as str."""
        return self._thread.call(lambda: self._inner.prefixes)

    @property
    def revision(self):
        """Stream sequence of the last message the watch handled."""
        return self._inner.revision

    @property
    def acked_revision(self):
        """Stream sequence up to which every event is done and acked."""
        return self._inner.acked_revision

    def register(self, resync_name, key_prefix):
        """Add ``key_prefix``; see AsyncRegistration.register()."""
        self._thread.call(self._inner.register, resync_name, key_prefix)

    def unregister(self, key_prefix):
        """Stop watching ``key_prefix``; see
        AsyncRegistration.unregister()."""
        self._thread.call(self._inner.unregister, key_prefix)

    def resync(self):
        """Send a resync of every watched prefix, then the changes after
        it."""
        self._thread.call(self._inner.resync)

    def flush(self, timeout=5.0):
        """Make the server store the ack of every event done so far and
        return the acknowledged revision; see AsyncRegistration.flush().
        """
        return self._thread.run(self._inner.flush(timeout))

    def close(self):
        """End the watch; a durable consumer stays for a later resume."""
        if self._thread.loop.is_closed():
            return
        self._thread.run(self._inner.close())

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
