"""Propagation of protobuf messages under keys through a NATS topic.

A topic is an ordered, durable log of changes kept by NATS JetStream (a
nats-server started with ``-js``, reached through the nats-py client).
Publishers put and delete keys on it. Any number of watchers, in any
process, receive the changes in the same order and can resume after a
restart.

- ``TopicPublisher`` (thread code, a KeyProtoValWriter) and
  ``AsyncTopicPublisher`` (asyncio) publish ``put(key, message)`` and
  ``delete(key)``. The revision of a change is its stream sequence.
- ``TopicWatcher`` (thread code, a KeyValProtoWatcher) and
  ``AsyncTopicWatcher`` (asyncio) deliver a resync with the latest value
  of every key under the watched prefixes, then change events with the
  previous value of each key.

The wire format (stream and subject names, headers) is described in
datasync.msgsync.wire. Importing this package needs the ``nats`` extra:
``pip install 'datasync[nats]'``.
"""

try:
    import nats  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "datasync.msgsync needs the nats-py client: install it with "
        "pip install 'datasync[nats]' (or pip install nats-py)") from exc

from datasync.msgsync.connection import (DEFAULT_CONNECT_TIMEOUT,
                                         DEFAULT_DUPLICATE_WINDOW)
from datasync.msgsync.errors import (BrokerError, BrokerUnavailableError,
                                     PublishError, PublishTimeoutError)
from datasync.msgsync.publisher import (DEFAULT_PUBLISH_TIMEOUT,
                                        AsyncTopicPublisher, TopicPublisher)
from datasync.msgsync.watcher import (AsyncRegistration, AsyncTopicWatcher,
                                      Registration, TopicWatcher)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DUPLICATE_WINDOW",
    "DEFAULT_PUBLISH_TIMEOUT",
    "AsyncRegistration",
    "AsyncTopicPublisher",
    "AsyncTopicWatcher",
    "BrokerError",
    "BrokerUnavailableError",
    "PublishError",
    "PublishTimeoutError",
    "Registration",
    "TopicPublisher",
    "TopicWatcher",
]
