"""Subscriptions to the keys of a topic: JetStream consumers and acks.

Each watch is a JetStream pull consumer on the topic's stream with
AckPolicy.ALL, so acknowledging a message acknowledges every message
before it. Its messages are handled in stream order on the watcher's
event loop:

- A new consumer starts with last-per-subject delivery: the last message
  of every key stored when it was created, then every later message.
  The watch folds messages into its table of latest values until it
  reaches the stream's last sequence L read right after the creation, and
  sends that table as a resync at revision R = L. Every later message is
  a change with revision > R, so none is missed or sent twice.
- The table contains the latest value of every key of the topic, so each
  change carries the previous value of its key, whatever the prefixes.
- A message is acknowledged once the subscriber called done() on its
  event and on every event before it. Messages that match no prefix are
  acknowledged together with the events around them.
- A durable watch that starts again finds its consumer with an ack floor
  S. It rebuilds the table by reading the stream up to S, then receives
  the changes after S without a resync.
- When deliveries may have been lost (a reconnection to the server, or a
  gap in the consumer's delivery count), the watch deletes its consumer
  and creates it again from the first sequence not yet acknowledged,
  dropping messages it has already handled. A process that dies in
  between finds no consumer and starts with a resync.
"""

import asyncio
import collections
import functools
import logging

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.nuid import NUID

from datasync._core.events import ChangeEvent, KVIterator, ResyncEvent
from datasync._core.prefix import PrefixIndex, Subscriber
from datasync.errors import RegistrationError
from datasync.msgsync import reader, wire
from datasync.msgsync.errors import BrokerError
from datasync.ops import Op

log = logging.getLogger("datasync.msgsync")

#: Messages requested per pull.
FETCH_BATCH = 256

#: Seconds a pull waits on the server for new messages.
FETCH_WAIT = 2.0

#: Seconds the server waits for an acknowledgement before it delivers a
#: message again; the watch drops such repeats.
ACK_WAIT = 30.0

#: Messages a consumer delivers without acknowledgement before it pauses;
#: a subscriber that does not call done() stops its watch there.
DEFAULT_MAX_ACK_PENDING = 20_000

#: Seconds after which the server deletes the consumer of a non-durable
#: watch whose process died without closing it.
EPHEMERAL_INACTIVE = 300.0

#: Seconds between offers to a full channel that does not signal room.
OFFER_RETRY = 0.005

#: Seconds between attempts to restart a watch after a broker error,
#: doubling up to the max.
RESTART_WAIT = 0.1
RESTART_WAIT_MAX = 2.0

SNAPSHOT = "snapshot"
LIVE = "live"

# Failures of the broker or of the connection; the watch starts again.
_BROKER_ERRORS = (nats.errors.Error, nats.js.errors.Error, BrokerError,
                  asyncio.TimeoutError, OSError)

_nuid = NUID()


class _Restart(Exception):
    """Raised inside a watch to recreate its consumer."""


class _Entry:
    """A handled message waiting for done() before it is acknowledged.

    ``msg`` is the message whose acknowledgement covers the entry (None
    when nothing needs one); ``spare`` entries belong to no event.
    """

    __slots__ = ("seq", "msg", "done", "spare")

    def __init__(self, seq, msg, done, spare):
        self.seq = seq
        self.msg = msg
        self.done = done
        self.spare = spare


class Subscription:
    """One watch of a topic; all its methods run on the watcher's loop."""

    def __init__(self, watcher, name, prefixes, change_sink, resync_sink,
                 durable, resume):
        self.watcher = watcher
        self.js = watcher._js
        self.loop = watcher._loop
        self.name = name
        self.topic = watcher.topic
        self.stream = wire.stream_name(watcher.topic)
        self.consumer = wire.consumer_name(name)
        if not durable:
            self.consumer = ("dse_" + self.consumer[3:] + "_" +
                             _nuid.next().decode())
        self.durable = durable
        self.resume = resume
        self.change_sink = change_sink
        self.resync_sink = resync_sink
        self.same_channel = change_sink is resync_sink
        self.prefixes = []
        self.index = PrefixIndex()
        self.stand_in = Subscriber()
        for prefix in prefixes:
            self.add_prefix(prefix)

        # Latest entry of every key: (value, content type, revision).
        self.table = {}
        self.phase = None
        self.position = 0
        self.snapshot_until = 0
        self.last_msg = None
        self.delivered = 0
        self.window = collections.deque()
        self.by_seq = {}
        self.acked = 0
        self.acked_msg = None
        self.space = asyncio.Event()
        self.wake = asyncio.Event()
        self.sub = None
        self.task = None
        self.closed = False
        self.restart_needed = False
        self.resync_requested = False
        self.ack_scheduled = False
        self.ack_task = None
        for sink in {change_sink, resync_sink}:
            sink.on_space = functools.partial(
                self.loop.call_soon_threadsafe, self.space.set)

    # Prefixes -------------------------------------------------------------

    def add_prefix(self, prefix):
        if prefix in self.prefixes:
            raise RegistrationError(
                f"watch {self.name!r} already watches prefix {prefix!r}")
        self.prefixes.append(prefix)
        self.index.add(prefix, self.stand_in)

    def remove_prefix(self, prefix):
        if prefix not in self.prefixes:
            raise RegistrationError(
                f"watch {self.name!r} does not watch prefix {prefix!r}; "
                f"it watches {self.prefixes!r}")
        self.prefixes.remove(prefix)
        self.index.remove(prefix, self.stand_in)

    # Consumers ------------------------------------------------------------

    def _config(self, policy, start=None):
        return ConsumerConfig(
            name=self.consumer, durable_name=self.consumer,
            description=f"datasync watch {self.name!r}",
            filter_subject=wire.topic_filter(self.topic),
            deliver_policy=policy, opt_start_seq=start,
            ack_policy=AckPolicy.ALL, ack_wait=ACK_WAIT, max_deliver=-1,
            max_ack_pending=self.watcher.max_ack_pending,
            inactive_threshold=None if self.durable else EPHEMERAL_INACTIVE)

    async def _delete_consumer(self):
        try:
            await self.js.delete_consumer(self.stream, self.consumer)
        except nats.js.errors.NotFoundError:
            pass

    async def _bind(self, config):
        await self._delete_consumer()
        await self.js.add_consumer(self.stream, config)
        self.sub = await self.js.pull_subscribe_bind(
            consumer=self.consumer, stream=self.stream)
        self.delivered = 0
        # The new consumer starts with its ack floor at self.acked, so
        # there is nothing older to confirm.
        self.acked_msg = None

    async def _unbind(self):
        sub, self.sub = self.sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except (nats.errors.Error, ValueError):
                log.debug("unsubscribe of watch %r failed", self.name,
                          exc_info=True)

    async def start(self):
        """Create or resume the consumer; raise on broker errors."""
        if self.phase is None:
            floor = 0
            if self.durable and self.resume:
                floor = await self._ack_floor()
            if floor > 0:
                await self._resume(floor)
            else:
                await self._start_snapshot()
        elif self.phase == SNAPSHOT:
            await self._start_snapshot()
        else:
            log.info("watch %r continues after revision %d", self.name,
                     self.acked)
            await self._bind(self._config(DeliverPolicy.BY_START_SEQUENCE,
                                          self.acked + 1))

    async def _ack_floor(self):
        try:
            info = await self.js.consumer_info(self.stream, self.consumer)
        except nats.js.errors.NotFoundError:
            return 0
        return info.ack_floor.stream_seq

    async def _resume(self, floor):
        # NOTE: this reads the stream from its first message, so resuming
        # costs time in proportion to the topic's history up to ``floor``.
        table = {}
        async for msg in reader.scan(self.js, self.topic, False, floor):
            parsed = self._parse(msg)
            if parsed is not None:
                _fold(table, *parsed, msg.metadata.sequence.stream)
        self.table = table
        self.position = self.acked = floor
        self.phase = LIVE
        log.info("watch %r resumes after revision %d with %d keys",
                 self.name, floor, len(table))
        await self._bind(self._config(DeliverPolicy.BY_START_SEQUENCE,
                                      floor + 1))

    async def _start_snapshot(self):
        self.table = {}
        self.window.clear()
        self.by_seq.clear()
        self.position = self.acked = 0
        self.acked_msg = None
        self.last_msg = None
        self.phase = SNAPSHOT
        await self._bind(self._config(DeliverPolicy.LAST_PER_SUBJECT))
        info = await self.js.stream_info(self.stream)
        self.snapshot_until = info.state.last_seq

    # The loop -------------------------------------------------------------

    async def run(self):
        wait = RESTART_WAIT
        while not self.closed:
            try:
                if self.sub is None:
                    await self.start()
                    wait = RESTART_WAIT
                await self._pump()
            except asyncio.CancelledError:
                raise
            except _Restart:
                await self._unbind()
                continue
            except _BROKER_ERRORS as exc:
                log.warning("watch %r of topic %r failed: %r; restarting "
                            "in %.1f s", self.name, self.topic, exc, wait)
            except Exception:
                log.exception("watch %r of topic %r failed; restarting in "
                              "%.1f s", self.name, self.topic, wait)
            else:
                continue
            await self._unbind()
            await asyncio.sleep(wait)
            wait = min(wait * 2, RESTART_WAIT_MAX)

    async def _pump(self):
        while not self.closed:
            if self.restart_needed:
                self.restart_needed = False
                raise _Restart
            if self.phase == SNAPSHOT and self.snapshot_until == 0:
                # The stream was empty when the consumer was created.
                await self._finish_snapshot()
            if self.resync_requested and self.phase == LIVE:
                self.resync_requested = False
                await self._send_resync(self.position, None)
            try:
                msgs = await self._fetch()
            except nats.errors.TimeoutError:
                if self.phase == SNAPSHOT:
                    await self._check_snapshot_end()
                continue
            for msg in msgs:
                await self._handle(msg)
                if self.restart_needed:
                    break

    async def _fetch(self):
        # A pull waits up to FETCH_WAIT for messages; resync(), a
        # reconnection or close() cut it short. Messages the cut pull
        # had received are lost, which the delivery count reveals, so
        # the consumer is then recreated.
        self.wake.clear()
        pull = asyncio.ensure_future(
            self.sub.fetch(FETCH_BATCH, timeout=FETCH_WAIT))
        woken = asyncio.ensure_future(self.wake.wait())
        try:
            await asyncio.wait((pull, woken),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            if not pull.done():
                pull.cancel()
                pull.add_done_callback(_retrieve)
        if not pull.done():
            await asyncio.wait((pull,))
        if pull.cancelled():
            return []
        return pull.result()

    def _parse(self, msg):
        try:
            key = wire.subject_key(self.topic, msg.subject)
            op, content_type = wire.read_op(msg.headers)
        except ValueError as exc:
            self.watcher._report_foreign(msg, exc)
            return None
        value = msg.data if op is Op.PUT else None
        return key, op, value, content_type

    async def _handle(self, msg):
        meta = msg.metadata
        if not self._in_order(meta.sequence.consumer):
            return
        seq = meta.sequence.stream
        if seq <= self.position:
            # Delivered again: acknowledge it through this consumer.
            entry = self.by_seq.get(seq)
            if entry is not None:
                entry.msg = msg
                self._schedule_ack()
            return

        parsed = self._parse(msg)
        self.position = seq
        if self.phase == SNAPSHOT:
            # Nothing is acknowledged before the resync is done.
            if parsed is not None:
                _fold(self.table, *parsed, seq)
            self.last_msg = msg
            if seq >= self.snapshot_until or meta.num_pending == 0:
                await self._finish_snapshot()
            return
        if parsed is None:
            self._add_spare(seq, msg)
            return

        key, op, value, content_type = parsed
        prev = _fold(self.table, key, op, value, content_type, seq)
        change = wire.make_change(key, op, value, content_type, prev, seq)
        if op is Op.DELETE and prev is None or \
                not self.index.route([change]):
            self._add_spare(seq, msg)
            return
        waiting = _Entry(seq, msg, False, False)
        self._append(waiting)
        event = ChangeEvent([change], seq,
                            functools.partial(self._done, waiting, None))
        await self._offer(self.change_sink, event)

    def _in_order(self, count):
        # ``count`` is the consumer's delivery count of the message. A
        # jump means deliveries were lost in transit.
        if count == self.delivered + 1:
            self.delivered = count
            return True
        if count > self.delivered + 1:
            log.info("watch %r missed deliveries %d to %d; recreating its "
                     "consumer", self.name, self.delivered + 1, count - 1)
            self.restart_needed = True
        return False

    async def _check_snapshot_end(self):
        # A pull that timed out during the snapshot either found nothing
        # more (a message up to the snapshot's end was deleted) or was
        # lost with the connection. The consumer's info shows which.
        info = await self.js.consumer_info(self.stream, self.consumer)
        if info.num_pending > 0:
            return
        if info.delivered.consumer_seq > self.delivered:
            self.restart_needed = True
            return
        await self._finish_snapshot()

    async def _finish_snapshot(self):
        revision = max(self.position, self.snapshot_until)
        self.position = revision
        self.phase = LIVE
        log.debug("watch %r read %d keys up to revision %d", self.name,
                  len(self.table), revision)
        await self._send_resync(revision, self.last_msg)
        self.last_msg = None

    async def _send_resync(self, revision, msg):
        items = sorted(self.table.items())
        values = {}
        for prefix in self.prefixes:
            values[prefix.decode("utf-8", "surrogateescape")] = KVIterator(
                [wire.make_keyval(key, entry) for key, entry in items
                 if key.startswith(prefix)])
        waiting = _Entry(revision, msg, False, False)
        self._append(waiting)
        acked = asyncio.Event()
        event = ResyncEvent(values, revision, functools.partial(
            self._done, waiting, acked))
        await self._offer(self.resync_sink, event)
        log.debug("watch %r sent a resync at revision %d", self.name,
                  revision)
        if self.same_channel or self.closed:
            return
        # Changes wait for done() on the resync, so that none overtakes
        # the snapshot it follows.
        timeout = self.watcher.notif_timeout
        try:
            await asyncio.wait_for(acked.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("watch %r did not call done() on its resync at "
                        "revision %d within %.1f s; sending the changes "
                        "after it", self.name, revision, timeout)

    async def _offer(self, sink, event):
        while not self.closed:
            self.space.clear()
            if sink.offer(event):
                return
            try:
                await asyncio.wait_for(self.space.wait(), OFFER_RETRY)
            except asyncio.TimeoutError:
                pass

    # Acknowledgements -----------------------------------------------------

    def _append(self, entry):
        self.window.append(entry)
        if entry.msg is not None:
            self.by_seq[_stream_seq(entry.msg)] = entry

    def _forget(self, entry):
        # by_seq finds the entry of a message delivered again, by the
        # stream sequence of the message that the entry acknowledges.
        if entry.msg is not None:
            seq = _stream_seq(entry.msg)
            if self.by_seq.get(seq) is entry:
                del self.by_seq[seq]

    def _add_spare(self, seq, msg):
        last = self.window[-1] if self.window else None
        if last is not None and last.spare:
            # Consecutive spare messages need only the last one's ack.
            self._forget(last)
            last.seq = seq
            last.msg = msg
            self.by_seq[seq] = last
        else:
            self._append(_Entry(seq, msg, True, True))
        self._schedule_ack()

    def _done(self, entry, acked, event, error):
        # Called by ChangeEvent/ResyncEvent.done() on any thread. On the
        # loop's own thread it takes effect at once, so that a flush()
        # called right after it includes it.
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._mark_done(entry, acked, event, error)
            return
        try:
            self.loop.call_soon_threadsafe(self._mark_done, entry, acked,
                                           event, error)
        except RuntimeError:
            log.debug("done() on watch %r after its loop closed",
                      self.name)

    def _mark_done(self, entry, acked, event, error):
        if error is not None:
            log.error("watch %r of topic %r: the subscriber reported an "
                      "error for revision %d: %r", self.name, self.topic,
                      event.revision, error)
        entry.done = True
        if acked is not None:
            acked.set()
        self._schedule_ack()

    def _schedule_ack(self):
        if not self.ack_scheduled:
            self.ack_scheduled = True
            self.loop.call_soon(self._advance)

    def _advance(self):
        self.ack_scheduled = False
        last = None
        while self.window and self.window[0].done:
            entry = self.window.popleft()
            self._forget(entry)
            self.acked = entry.seq
            if entry.msg is not None:
                last = entry.msg
        if last is not None and self.sub is not None:
            self.acked_msg = last
            if self.ack_task is None:
                self.ack_task = self.loop.create_task(self._send_acks())

    async def _send_acks(self):
        # One task sends acks. Under AckPolicy.ALL the latest one covers
        # every message before it, so acks done meanwhile are skipped.
        sent = None
        try:
            while self.acked_msg is not None and self.acked_msg is not sent:
                sent = self.acked_msg
                try:
                    await self.watcher._client.publish(sent.reply, b"")
                except nats.errors.Error as exc:
                    # The consumer delivers the message again; it is
                    # dropped as a repeat and acknowledged then.
                    log.debug("ack of revision %d by watch %r failed: %r",
                              sent.metadata.sequence.stream, self.name,
                              exc)
        finally:
            self.ack_task = None

    async def flush(self, timeout):
        """Make the server store the ack of every event done so far."""
        self._advance()
        msg = self.acked_msg
        if msg is None:
            return self.acked
        # An ack sent as a request gets a reply once the server processed
        # it; repeating an ack changes nothing.
        try:
            await self.watcher._client.request(msg.reply, b"",
                                               timeout=timeout)
        except nats.errors.Error as exc:
            raise TimeoutError(
                f"watch {self.name!r}: the server did not confirm the ack "
                f"of revision {self.acked} within {timeout} s: "
                f"{exc!r}") from exc
        return self.acked

    # Lifetime -------------------------------------------------------------

    async def close(self):
        """Stop the watch; ack what is done, keep a durable consumer."""
        if self.closed:
            return
        self.closed = True
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self._advance()
        if self.acked_msg is not None and self.watcher._client.is_connected:
            try:
                await self.watcher._client.flush(timeout=2)
            except (nats.errors.Error, asyncio.TimeoutError):
                log.warning("watch %r closed before its last ack reached "
                            "the server; its changes after revision %d "
                            "come again when it resumes", self.name,
                            self.acked)
        await self._unbind()
        if not self.durable:
            try:
                await self._delete_consumer()
            except _BROKER_ERRORS as exc:
                log.debug("could not delete consumer of watch %r: %r",
                          self.name, exc)
        # Closing a callback sink joins its thread, whose callback may be
        # waiting for this loop; do it off the loop.
        await self.loop.run_in_executor(None, self._close_sinks)

    def _close_sinks(self):
        self.change_sink.close()
        if not self.same_channel:
            self.resync_sink.close()


def _stream_seq(msg):
    return msg.metadata.sequence.stream


def _retrieve(task):
    # Marks the outcome of an abandoned pull as seen, so that asyncio
    # does not log it as never retrieved.
    if not task.cancelled():
        task.exception()


def _fold(table, key, op, value, content_type, seq):
    """Apply one change to a table of latest entries; return the old one."""
    prev = table.get(key)
    if op is Op.PUT:
        table[key] = (value, content_type, seq)
    elif prev is not None:
        del table[key]
    return prev
