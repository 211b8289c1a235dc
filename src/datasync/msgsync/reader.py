"""One-off reads of a topic's stream through a short-lived consumer."""

import logging

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.nuid import NUID

from datasync.msgsync import wire
from datasync.msgsync.errors import BrokerError

log = logging.getLogger("datasync.msgsync")

_nuid = NUID()

#: Messages requested per pull.
SCAN_BATCH = 1000

#: Seconds a scan waits for the next batch before it reports the broker
#: as unresponsive.
SCAN_WAIT = 10.0

#: Seconds after which the server deletes a scan consumer that its client
#: abandoned (for example because the process died).
SCAN_INACTIVE = 60.0


async def scan(js, topic, latest_only, until=None):
    """Yield the messages of ``topic`` in stream order.

    With ``latest_only`` it yields the last message of each key (JetStream
    last-per-subject delivery), else every message. It stops after the
    message with sequence ``until`` (None: after the last one stored when
    the scan began). Raises BrokerError if the broker stops responding.
    """
    stream = wire.stream_name(topic)
    info = await js.stream_info(stream)
    state = info.state
    if until is None or until > state.last_seq:
        until = state.last_seq
    if state.messages == 0 or until < state.first_seq:
        return
    name = "dss_" + _nuid.next().decode()
    config = ConsumerConfig(
        name=name, filter_subject=wire.topic_filter(topic),
        deliver_policy=(DeliverPolicy.LAST_PER_SUBJECT if latest_only
                        else DeliverPolicy.ALL),
        ack_policy=AckPolicy.NONE, inactive_threshold=SCAN_INACTIVE,
        mem_storage=True)
    await js.add_consumer(stream, config)
    sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
    try:
        while True:
            try:
                msgs = await sub.fetch(SCAN_BATCH, timeout=SCAN_WAIT)
            except nats.errors.TimeoutError as exc:
                raise BrokerError(
                    f"reading stream {stream} stopped: no message within "
                    f"{SCAN_WAIT} s") from exc
            for msg in msgs:
                meta = msg.metadata
                if meta.sequence.stream > until:
                    return
                yield msg
                if meta.sequence.stream >= until or meta.num_pending == 0:
                    return
    finally:
        await _drop(js, sub, stream, name)


async def _drop(js, sub, stream, name):
    try:
        await sub.unsubscribe()
        await js.delete_consumer(stream, name)
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        # The server deletes it after SCAN_INACTIVE seconds anyway.
        log.debug("could not delete scan consumer %s of %s: %s", name,
                  stream, exc)
