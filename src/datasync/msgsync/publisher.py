"""Publishers: puts and deletes of keys as messages on a topic.

Every change is published under a message id. While the broker does not
acknowledge it, the publisher sends it again with the same id until
``publish_timeout`` seconds have passed, then raises PublishTimeoutError.
JetStream stores one copy of the messages that share an id within the
stream's duplicate window (2 minutes unless the stream was created
otherwise). Nothing is stored twice as long as publish_timeout stays
below the window, which the publisher checks when it connects.
"""

import asyncio
import itertools
import logging
import time

import nats.errors
import nats.js.errors
from nats.nuid import NUID

from datasync.errors import InvalidOptionError, InvalidValueError, \
    StoreClosedError
from datasync.msgsync import reader, wire
from datasync.msgsync.connection import (DEFAULT_CONNECT_TIMEOUT,
                                         DEFAULT_DUPLICATE_WINDOW, LoopThread,
                                         close_client, connect,
                                         ensure_stream)
from datasync.msgsync.errors import PublishError, PublishTimeoutError
from datasync.ops import Op
from datasync.options import has_prefix_option, split_put_options

log = logging.getLogger("datasync.msgsync")

#: Seconds a put or delete keeps trying before PublishTimeoutError.
DEFAULT_PUBLISH_TIMEOUT = 10.0

#: Seconds to wait for the acknowledgement of one attempt.
ATTEMPT_TIMEOUT = 2.0

#: Seconds between attempts after a failed one, doubling up to the max.
RETRY_WAIT = 0.05
RETRY_WAIT_MAX = 1.0

# Failures after which the same message may be sent again: the
# acknowledgement did not come, or the client or JetStream is between
# connections.
_RETRYABLE = (
    nats.errors.TimeoutError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    asyncio.TimeoutError,
)


class AsyncTopicPublisher:
    """Publishes puts and deletes of keys to a topic, for asyncio code.

    ``address`` is ``HOST:PORT`` or a ``nats://`` URL of a nats-server
    with JetStream. ``encoding`` is ``"protobuf"`` (binary) or
    ``"json"`` (protobuf JSON). Use it as ``async with`` or call
    ``connect()`` and ``close()``.
    """

    def __init__(self, address, topic, *, encoding="protobuf",
                 publish_timeout=DEFAULT_PUBLISH_TIMEOUT,
                 connect_timeout=DEFAULT_CONNECT_TIMEOUT,
                 duplicate_window=DEFAULT_DUPLICATE_WINDOW):
        self.topic = wire.check_topic(topic)
        if encoding not in wire.ENCODINGS:
            raise InvalidOptionError(
                f"encoding must be one of {sorted(wire.ENCODINGS)}, got "
                f"{encoding!r}")
        if not publish_timeout > 0:
            raise InvalidOptionError(
                f"publish_timeout must be > 0 seconds, got "
                f"{publish_timeout!r}")
        self.address = address
        self.encoding = encoding
        self.content_type = wire.ENCODINGS[encoding]
        self.publish_timeout = float(publish_timeout)
        self.connect_timeout = connect_timeout
        self.duplicate_window = float(duplicate_window)
        self._stream = wire.stream_name(topic)
        self._client = None
        self._js = None
        self._closed = False
        # Message ids are this publisher's unique id and a counter.
        self._id_prefix = NUID().next().decode()
        self._counter = itertools.count(1)

    async def connect(self):
        """Connect and create the topic's stream if it is missing.

        Raises BrokerUnavailableError when the server cannot be reached,
        InvalidOptionError when publish_timeout is not below the stream's
        duplicate window.
        """
        if self._client is not None:
            return self
        client = await connect(self.address, f"datasync publisher "
                               f"{self.topic}", self.connect_timeout)
        try:
            js = client.jetstream()
            window = await ensure_stream(js, self.topic,
                                         self.duplicate_window)
            if window <= self.publish_timeout:
                raise InvalidOptionError(
                    f"publish_timeout of {self.publish_timeout} s is not "
                    f"below the duplicate window of stream {self._stream} "
                    f"({window} s), so a retried publish could be stored "
                    "twice; lower publish_timeout")
        except BaseException:
            await close_client(client)
            raise
        self._client = client
        self._js = js
        return self

    def next_msg_id(self):
        """Return a new message id, unique to this publisher."""
        return f"{self._id_prefix}-{next(self._counter)}"

    async def put(self, key, message, *opts, msg_id=None):
        """Publish ``message`` as the new value of ``key``.

        ``message`` is a protobuf message, or bytes of protobuf binary.
        ``msg_id`` names the change for de-duplication; by default each
        call gets a new one. Returns the stream sequence (the revision) of
        the stored change. A put that repeats a stored message id stores
        nothing and returns the sequence of the stored one.

        Raises InvalidKeyError, InvalidValueError, InvalidOptionError for
        with_ttl() and with_client_lifetime_ttl() (a topic keeps changes,
        it does not expire keys), PublishTimeoutError and PublishError.
        """
        data = wire.key_bytes(key)
        ttl, lifetime = split_put_options(opts)
        if ttl is not None or lifetime:
            raise InvalidOptionError(
                f"put of key {key!r}: a topic does not expire keys, so "
                "with_ttl() and with_client_lifetime_ttl() are not "
                "supported; publish a delete instead")
        payload, type_name = wire.serialize(message, self.encoding, key)
        self._check_open()
        limit = self._client.max_payload
        if len(payload) > limit:
            raise InvalidValueError(
                f"value of key {key!r} is {len(payload)} bytes, above the "
                f"server's max_payload of {limit} bytes; split the value "
                "or raise max_payload in the nats-server configuration")
        msg_id = msg_id or self.next_msg_id()
        headers = wire.put_headers(msg_id, data, self.content_type,
                                   type_name)
        return await self._publish(key, data, payload, headers)

    async def delete(self, key, *opts, msg_id=None):
        """Publish the deletion of ``key``.

        With with_prefix(), publishes a delete of every key under ``key``
        that has a value, each under its own message id, so ``msg_id``
        must be None. Keys written while it runs may stay. Returns the
        stream sequence of the (last) delete, or 0 when with_prefix()
        found no key. Raises as put() does.
        """
        data = wire.key_bytes(key)
        if not has_prefix_option(opts):
            self._check_open()
            msg_id = msg_id or self.next_msg_id()
            return await self._publish(key, data, b"",
                                       wire.delete_headers(msg_id, data))
        if msg_id is not None:
            raise InvalidOptionError(
                "msg_id cannot be given with with_prefix(), which "
                "publishes one delete per key")
        self._check_open()
        revision = 0
        for found in await self.live_keys(data):
            revision = await self._publish(
                found, found, b"",
                wire.delete_headers(self.next_msg_id(), found))
        return revision

    async def live_keys(self, prefix=b""):
        """Return the keys under ``prefix`` whose last change is a put.

        Keys are bytes, in the order of their last change.
        """
        self._check_open()
        prefix = wire.prefix_bytes(prefix)
        keys = []
        async for msg in reader.scan(self._js, self.topic, True):
            try:
                data = wire.subject_key(self.topic, msg.subject)
                op, _ = wire.read_op(msg.headers)
            except ValueError:
                continue
            if op is Op.PUT and data.startswith(prefix):
                keys.append(data)
        return keys

    async def _publish(self, key, data, payload, headers):
        subject = wire.key_subject(self.topic, data)
        msg_id = headers[wire.HEADER_MSG_ID]
        deadline = time.monotonic() + self.publish_timeout
        wait = RETRY_WAIT
        attempts = 0
        while True:
            attempts += 1
            remaining = deadline - time.monotonic()
            try:
                ack = await self._js.publish(
                    subject, payload, stream=self._stream,
                    timeout=max(min(ATTEMPT_TIMEOUT, remaining), 0.001),
                    headers=dict(headers))
            except _RETRYABLE as exc:
                failure = exc
            except nats.errors.ConnectionClosedError as exc:
                raise PublishError(
                    f"publish of key {key!r} failed: the publisher is "
                    "closed", key, msg_id) from exc
            except nats.js.errors.APIError as exc:
                raise PublishError(
                    f"JetStream rejected the publish of key {key!r} to "
                    f"stream {self._stream}: {exc}", key, msg_id) from exc
            else:
                if attempts > 1:
                    log.info("publish of key %r (msg id %s) stored at %d "
                             "after %d attempts", key, msg_id, ack.seq,
                             attempts)
                return ack.seq
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PublishTimeoutError(
                    f"publish of key {key!r} to topic {self.topic!r} was "
                    f"not acknowledged within {self.publish_timeout} s "
                    f"({attempts} attempts, last: {failure!r}); NATS may "
                    f"be down. It may or may not be stored: publish it "
                    f"again with msg_id={msg_id!r} to store it at most "
                    "once", key, msg_id) from failure
            if attempts == 1:
                log.warning("publish of key %r (msg id %s) failed: %r; "
                            "retrying for up to %.1f s", key, msg_id,
                            failure, remaining)
            await asyncio.sleep(min(wait, remaining))
            wait = min(wait * 2, RETRY_WAIT_MAX)

    def _check_open(self):
        if self._closed:
            raise StoreClosedError(
                f"publisher of topic {self.topic!r} is closed")
        if self._client is None:
            raise StoreClosedError(
                f"publisher of topic {self.topic!r} is not connected; "
                "call connect() or use it in 'async with'")

    async def close(self):
        """Flush what was sent and close the connection."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await close_client(client)

    async def __aenter__(self):
        return await self.connect()

    async def __aexit__(self, *exc_info):
        await self.close()

    def __repr__(self):
        return (f"AsyncTopicPublisher(topic={self.topic!r}, "
                f"address={self.address!r})")


class TopicPublisher:
    """Publishes puts and deletes of keys to a topic, for thread code.

    A KeyProtoValWriter. It runs an AsyncTopicPublisher on an event loop
    in a private thread; its methods block until the broker acknowledged
    the change, at most ``publish_timeout`` seconds. The constructor
    connects, with the same parameters and errors as
    AsyncTopicPublisher.connect().
    """

    def __init__(self, address, topic, **options):
        self._publisher = AsyncTopicPublisher(address, topic, **options)
        self._thread = LoopThread(f"datasync-publisher-{topic}")
        try:
            self._thread.run(self._publisher.connect())
        except BaseException:
            self._thread.stop()
            raise

    @property
    def topic(self):
        """Name of the topic."""
        return self._publisher.topic

    def next_msg_id(self):
        """Return a new message id, unique to this publisher."""
        return self._publisher.next_msg_id()

    def put(self, key, message, *opts, msg_id=None):
        """Publish ``message`` as the new value of ``key``.

        See AsyncTopicPublisher.put().
        """
        return self._thread.run(
            self._publisher.put(key, message, *opts, msg_id=msg_id))

    def delete(self, key, *opts, msg_id=None):
        """Publish the deletion of ``key`` (or of a prefix).

        See AsyncTopicPublisher.delete().
        """
        return self._thread.run(
            self._publisher.delete(key, *opts, msg_id=msg_id))

    def live_keys(self, prefix=b""):
        """Return the keys under ``prefix`` that have a value."""
        return self._thread.run(self._publisher.live_keys(prefix))

    def close(self):
        """Close the connection and stop the loop thread."""
        if self._thread.loop.is_closed():
            return
        try:
            self._thread.run(self._publisher.close(), timeout=10.0)
        finally:
            self._thread.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return (f"TopicPublisher(topic={self.topic!r}, "
                f"address={self._publisher.address!r})")
