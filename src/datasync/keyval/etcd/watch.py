"""Watches over etcd: subscriptions, their etcd watchers, and recovery.

One thread per store (the hub) owns every subscription's state, and one
gRPC Watch stream carries an etcd watcher per subscription. A reader
thread copies the stream's responses into the hub's command queue, so
all state changes happen on the hub thread, in order.

Each subscription's watcher covers the smallest key range that contains
all of its prefixes; the hub filters the events through the
subscription's own prefix index. etcd never splits the events of one
revision over several responses of a watcher (etcd's API guarantees,
"Watch ... atomic"), so each revision becomes one change event.

The hub keeps each subscription's cursor, the revision of the last event
it delivered (or of its resync). Recovery always restarts a watcher at
cursor + 1, so etcd itself is the buffer:

- a full change channel: the watcher is canceled and restarted from the
  cursor once the channel took the rejected event;
- a broken stream: every watcher restarts on a new stream;
- a lost connection (a reconnect attempt failed): every subscription
  gets a resync once etcd responds again, or resumes from its cursor
  when the store was opened with resync_on_reconnect=False;
- a start revision that etcd has compacted, or an event without the
  previous value that etcd should have sent: a resync.

A subscription is in one of these states:

- RESYNC_PENDING: it needs a snapshot;
- RESYNC_HELD: its snapshot was sent; its changes wait for done() on the
  resync event or for the notification timeout;
- WAITING: it needs a watcher from cursor + 1;
- STARTING: the watcher was requested and etcd has not confirmed it;
- LIVE: events flow;
- LAGGING: its change channel rejected an event, which it offers again;
- IDLE: it watches no prefix.
"""

import concurrent.futures
import itertools
import logging
import queue
import threading
import time

import grpc

from datasync._core.events import ChangeEvent, KVIterator, ResyncEvent
from datasync._core.prefix import PrefixIndex, Subscriber
from datasync.errors import (CompactedError, RegistrationError,
                             StoreClosedError)
from datasync.keyval.etcd import etcd_messages_pb2 as pb
from datasync.keyval.etcd.client import TO_END, prefix_end
from datasync.keyval.etcd.errors import EtcdUnavailableError
from datasync.ops import Op

log = logging.getLogger("datasync.etcd")

RESYNC_PENDING = "resync-pending"
RESYNC_HELD = "resync-held"
WAITING = "waiting"
STARTING = "starting"
LIVE = "live"
LAGGING = "lagging"
IDLE = "idle"
CLOSED = "closed"

#: Seconds between offers of an event that a full channel rejected. A
#: queue.Queue has no hook that signals free room, so the hub offers
#: again after this delay. Other channels wake the hub at once.
LAG_RETRY = 0.01

#: Seconds before a watcher that etcd canceled for another reason than
#: compaction is requested again.
CANCEL_RETRY = 1.0

# Back-off between reconnect attempts: the first attempt after a stream
# breaks is immediate, then 0.1 s, doubled per failure up to 2 s.
_BACKOFF_MIN = 0.1
_BACKOFF_MAX = 2.0

_DELETE = pb.Event.DELETE


def covering_range(prefixes):
    """Return (key, range_end) of the smallest range holding ``prefixes``.

    The empty prefix covers every key.
    """
    if any(not p for p in prefixes):
        return TO_END, TO_END
    ends = [prefix_end(p) for p in prefixes]
    end = TO_END if TO_END in ends else max(ends)
    return min(prefixes), end


class Subscription(Subscriber):
    """One watch: a resync name, its prefixes, channels and cursor."""

    def __init__(self, name, prefixes, change_sink, resync_sink,
                 same_channel, notif_timeout):
        self.name = name
        self.prefixes = list(prefixes)
        self.change_sink = change_sink
        self.resync_sink = resync_sink
        self.same_channel = same_channel
        self.notif_timeout = notif_timeout
        self.state = RESYNC_PENDING
        self.cursor = 0
        self.watch_id = None
        self.pending = None
        self.not_before = 0.0
        self.held_until = 0.0
        self.resync_seq = 0
        self.resync_acked = False
        # This index only filters the subscription's own changes; a
        # stand-in subscriber carries its routing state.
        self.index = PrefixIndex()
        self.stand_in = Subscriber()
        for prefix in self.prefixes:
            self.index.add(prefix, self.stand_in)

    def on_change_done(self, event, error):
        if error is not None:
            log.error("subscription %r reported an error for revision %d: "
                      "%r", self.name, event.revision, error)


class _Stream:
    """One gRPC Watch stream and the thread that reads its responses."""

    def __init__(self, client, commands):
        self._requests = queue.SimpleQueue()
        self._commands = commands
        self.healthy = False
        self.call = client.watch.Watch(self._send())
        self.reader = threading.Thread(target=self._read, daemon=True,
                                       name="datasync-etcd-watch-reader")
        self.reader.start()

    def _send(self):
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def _read(self):
        try:
            for response in self.call:
                self._commands.put(("response", self, response))
        except grpc.RpcError as exc:
            self._commands.put(("broken", self, exc))
            return
        self._commands.put(("broken", self, None))

    def send(self, request):
        self._requests.put(request)

    def close(self):
        self._requests.put(None)
        self.call.cancel()

    def join(self):
        self.reader.join(timeout=10.0)


class WatchHub:
    """Runs the subscriptions of one etcd store on one thread."""

    def __init__(self, client, event_classes, resync_on_reconnect):
        self._client = client
        self._keyval_class, self._change_class = event_classes
        self._resync_on_reconnect = resync_on_reconnect
        self._commands = queue.SimpleQueue()
        self._subs = {}
        self._watchers = {}
        self._watch_ids = itertools.count(1)
        self._stream = None
        self._old_streams = []
        self._failures = 0
        self._retry_at = 0.0
        self._stopped = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="datasync-etcd-watch")
        self._thread.start()

    # Requests from other threads ---------------------------------------

    def add(self, sub, from_revision):
        self._request("add", sub, from_revision)

    def add_prefix(self, sub, prefix):
        self._request("add_prefix", sub, prefix)

    def remove_prefix(self, sub, prefix):
        self._request("remove_prefix", sub, prefix)

    def request_resync(self, sub):
        self._request("resync", sub)

    def remove(self, sub):
        """End ``sub``; return False if it had ended already."""
        if self._stopped or sub.state == CLOSED:
            return False
        return self._request("remove", sub)

    def wake(self):
        self._commands.put(("wake",))

    def stop(self):
        """End every subscription and the hub thread; return the
        subscriptions that were still open."""
        if self._stopped:
            return []
        future = concurrent.futures.Future()
        self._commands.put(("stop", future))
        subs = future.result()
        self._thread.join(timeout=10.0)
        return subs

    def _request(self, name, *args):
        if self._stopped:
            raise StoreClosedError("the etcd store is closed")
        future = concurrent.futures.Future()
        self._commands.put((name, future) + args)
        while True:
            try:
                return future.result(timeout=1.0)
            except concurrent.futures.TimeoutError:
                # The hub may have stopped after the check above, and
                # then no thread handles the request.
                if not self._thread.is_alive():
                    raise StoreClosedError(
                        "the etcd store is closed") from None

    # The hub thread ------------------------------------------------------

    def _run(self):
        while True:
            try:
                command = self._commands.get(timeout=self._timeout())
            except queue.Empty:
                command = None
            while command is not None:
                if command[0] == "stop":
                    command[1].set_result(self._shutdown())
                    return
                self._handle(command)
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    command = None
            try:
                self._advance()
            except Exception:
                log.exception("etcd watch hub failed a step; retrying in "
                              "%.1f s", CANCEL_RETRY)
                self._retry_at = time.monotonic() + CANCEL_RETRY

    def _handle(self, command):
        name = command[0]
        if name == "response":
            self._on_response(command[1], command[2])
        elif name == "broken":
            self._on_broken(command[1], command[2])
        elif name == "wake":
            pass
        else:
            future, args = command[1], command[2:]
            try:
                result = getattr(self, "_do_" + name)(*args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def _timeout(self):
        now = time.monotonic()
        deadlines = []
        for sub in self._subs.values():
            if sub.state in (RESYNC_PENDING, WAITING):
                deadlines.append(max(sub.not_before, self._retry_at))
            elif sub.state == LAGGING:
                deadlines.append(sub.not_before)
            elif sub.state == RESYNC_HELD and not sub.resync_acked:
                deadlines.append(sub.held_until)
            elif sub.state == RESYNC_HELD:
                deadlines.append(now)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def _advance(self):
        now = time.monotonic()
        for sub in list(self._subs.values()):
            if sub.state == RESYNC_HELD:
                self._release_held(sub, now)
            elif sub.state == LAGGING and now >= sub.not_before:
                self._offer_pending(sub, now)
        for sub in list(self._subs.values()):
            if now < self._retry_at:
                return
            if now < sub.not_before:
                continue
            if sub.state == RESYNC_PENDING:
                self._send_resync(sub)
            if sub.state == WAITING:
                self._start_watcher(sub)

    # Commands ------------------------------------------------------------

    def _do_add(self, sub, from_revision):
        if sub.name in self._subs:
            raise RegistrationError(
                f"a subscription named {sub.name!r} already watches this "
                "store; close it first or choose another name")
        if from_revision is not None:
            sub.cursor = from_revision
            sub.state = WAITING
        self._subs[sub.name] = sub

    def _do_remove(self, sub):
        if sub.state == CLOSED:
            return False
        self._cancel_watcher(sub)
        sub.state = CLOSED
        sub.pending = None
        del self._subs[sub.name]
        return True

    def _do_add_prefix(self, sub, prefix):
        self._check_open(sub)
        if prefix in sub.prefixes:
            raise RegistrationError(
                f"subscription {sub.name!r} already watches prefix "
                f"{prefix!r}")
        if not sub.prefixes and sub.state == IDLE:
            # Nothing was watched, so the cursor is stale: start now.
            sub.cursor = self._client.current_revision()
            sub.state = WAITING
        old = covering_range(sub.prefixes) if sub.prefixes else None
        sub.prefixes.append(prefix)
        sub.index.add(prefix, sub.stand_in)
        if covering_range(sub.prefixes) != old:
            self._restart_watcher(sub)

    def _do_remove_prefix(self, sub, prefix):
        self._check_open(sub)
        if prefix not in sub.prefixes:
            raise RegistrationError(
                f"subscription {sub.name!r} does not watch prefix "
                f"{prefix!r}; it watches {sub.prefixes!r}")
        old = covering_range(sub.prefixes)
        sub.prefixes.remove(prefix)
        sub.index.remove(prefix, sub.stand_in)
        if not sub.prefixes:
            self._cancel_watcher(sub)
            if sub.state in (STARTING, LIVE):
                sub.state = IDLE
        elif covering_range(sub.prefixes) != old:
            self._restart_watcher(sub)

    def _do_resync(self, sub):
        self._check_open(sub)
        self._cancel_watcher(sub)
        sub.pending = None
        sub.state = RESYNC_PENDING

    def _check_open(self, sub):
        if sub.state == CLOSED:
            raise StoreClosedError(
                f"subscription {sub.name!r} is closed; watch again")

    def _shutdown(self):
        self._stopped = True
        subs = list(self._subs.values())
        for sub in subs:
            self._do_remove(sub)
        self._drop_stream()
        for stream in self._old_streams:
            stream.join()
        self._old_streams = []
        return subs

    # Watchers and the stream ---------------------------------------------

    def _start_watcher(self, sub):
        if not sub.prefixes:
            sub.state = IDLE
            return
        if self._stream is None:
            self._stream = _Stream(self._client, self._commands)
        key, end = covering_range(sub.prefixes)
        # Start at the cursor itself, whose events were delivered and are
        # skipped, not one later. etcd accepts a start revision equal to
        # its compaction revision, where a delete may already be gone.
        # Starting at the cursor, any compaction past it cancels the
        # watcher as compacted, and the subscription gets a resync.
        start = max(sub.cursor, 1)
        sub.watch_id = next(self._watch_ids)
        self._watchers[sub.watch_id] = sub
        self._stream.send(pb.WatchRequest(
            create_request=pb.WatchCreateRequest(
                key=key, range_end=end, start_revision=start,
                prev_kv=True, watch_id=sub.watch_id)))
        sub.state = STARTING

    def _cancel_watcher(self, sub):
        if sub.watch_id is None:
            return
        self._watchers.pop(sub.watch_id, None)
        if self._stream is not None:
            self._stream.send(pb.WatchRequest(
                cancel_request=pb.WatchCancelRequest(
                    watch_id=sub.watch_id)))
        sub.watch_id = None

    def _restart_watcher(self, sub):
        if sub.state in (STARTING, LIVE):
            self._cancel_watcher(sub)
            sub.state = WAITING

    def _drop_stream(self):
        """Close the stream; every subscription with a watcher waits for
        a new one."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
            self._old_streams.append(stream)
        self._watchers.clear()
        for sub in self._subs.values():
            sub.watch_id = None
            if sub.state in (STARTING, LIVE):
                sub.state = WAITING
        # Reap reader threads that have ended, keeping the list short.
        self._old_streams = [s for s in self._old_streams
                             if s.reader.is_alive()]

    def _on_broken(self, stream, error):
        if stream is not self._stream:
            return
        code = error.code().name if error is not None else "closed"
        details = error.details() if error is not None else "by etcd"
        if stream.healthy:
            log.warning("watch stream to etcd at %s broke (%s: %s); "
                        "resuming every subscription from its next "
                        "revision", self._client.endpoint, code, details)
            self._drop_stream()
            return
        self._connection_failed(f"{code}: {details}")

    def _connection_failed(self, reason):
        """Note a failed attempt to reach etcd and back off."""
        self._drop_stream()
        self._failures += 1
        delay = min(_BACKOFF_MIN * 2 ** (self._failures - 1), _BACKOFF_MAX)
        self._retry_at = time.monotonic() + delay
        if self._failures == 1:
            log.warning(
                "lost the connection to etcd at %s (%s); retrying every "
                "%.1f-%.1f s%s", self._client.endpoint, reason,
                _BACKOFF_MIN, _BACKOFF_MAX,
                "; subscriptions get a resync once it is back"
                if self._resync_on_reconnect else "")
            if self._resync_on_reconnect:
                for sub in self._subs.values():
                    if sub.state not in (RESYNC_PENDING, IDLE):
                        sub.state = RESYNC_PENDING
                        sub.pending = None
        else:
            log.debug("etcd at %s still unreachable after %d attempts "
                      "(%s)", self._client.endpoint, self._failures, reason)

    def _connected(self):
        if self._failures:
            log.info("connection to etcd at %s is back after %d failed "
                     "attempts", self._client.endpoint, self._failures)
            self._failures = 0
            self._retry_at = 0.0

    # Responses -----------------------------------------------------------

    def _on_response(self, stream, response):
        if stream is not self._stream:
            return
        stream.healthy = True
        self._connected()
        sub = self._watchers.get(response.watch_id)
        if sub is None:
            return
        if response.created and sub.state == STARTING:
            sub.state = LIVE
        if response.canceled:
            self._on_canceled(sub, response)
        elif response.events:
            self._deliver(sub, response.events)

    def _on_canceled(self, sub, response):
        self._watchers.pop(sub.watch_id, None)
        sub.watch_id = None
        if response.compact_revision:
            log.warning("etcd compacted its history up to revision %d, "
                        "past subscription %r at revision %d; sending a "
                        "resync", response.compact_revision, sub.name,
                        sub.cursor)
            sub.state = RESYNC_PENDING
            return
        log.error("etcd at %s canceled the watcher of subscription %r "
                  "(%s); requesting it again from revision %d in %.1f s",
                  self._client.endpoint, sub.name,
                  response.cancel_reason or "no reason given",
                  sub.cursor + 1, CANCEL_RETRY)
        sub.state = WAITING
        sub.not_before = time.monotonic() + CANCEL_RETRY

    def _deliver(self, sub, events):
        for revision, group in itertools.groupby(
                events, key=lambda e: e.kv.mod_revision):
            if revision <= sub.cursor:
                continue
            changes = [self._to_change(event) for event in group]
            routed = sub.index.route(changes)
            if not routed:
                sub.cursor = revision
                continue
            matched = routed[0][1]
            missing = [c.key for c in matched if c.prev_value is None and
                       (c.change_type is Op.DELETE or c.version > 1)]
            if missing:
                log.warning("etcd sent changes of %r at revision %d "
                            "without their previous values (compacted "
                            "meanwhile); sending subscription %r a resync",
                            missing[:3], revision, sub.name)
                self._cancel_watcher(sub)
                sub.state = RESYNC_PENDING
                return
            event = ChangeEvent(matched, revision, sub.on_change_done)
            if not sub.change_sink.offer(event):
                self._cancel_watcher(sub)
                sub.pending = event
                sub.state = LAGGING
                sub.not_before = time.monotonic() + LAG_RETRY
                return
            sub.cursor = revision

    def _to_change(self, event):
        kv = event.kv
        prev = event.prev_kv.value if event.HasField("prev_kv") else None
        if event.type == _DELETE:
            return self._change_class(
                kv.key, Op.DELETE, None, prev, kv.mod_revision,
                event.prev_kv.create_revision, 0)
        return self._change_class(kv.key, Op.PUT, kv.value, prev,
                                  kv.mod_revision, kv.create_revision,
                                  kv.version)

    def _offer_pending(self, sub, now):
        if sub.change_sink.offer(sub.pending):
            sub.cursor = sub.pending.revision
            sub.pending = None
            sub.state = WAITING
        else:
            sub.not_before = now + LAG_RETRY

    # Resyncs -------------------------------------------------------------

    def _send_resync(self, sub):
        try:
            values, revision = self._snapshot(sub.prefixes)
        except EtcdUnavailableError as exc:
            self._connection_failed(str(exc))
            return
        except CompactedError:
            # etcd compacted past the revision while the pages were read:
            # take the snapshot again at the current revision.
            log.debug("snapshot of %r was compacted while read; retrying",
                      sub.name)
            return
        self._connected()
        sub.resync_seq += 1
        sub.resync_acked = False
        event = ResyncEvent(values, revision,
                            self._resync_done(sub, sub.resync_seq))
        if not sub.resync_sink.offer(event):
            sub.not_before = time.monotonic() + LAG_RETRY
            return
        log.debug("sent resync at revision %d to %r", revision, sub.name)
        sub.cursor = revision
        sub.pending = None
        if sub.same_channel:
            # One channel keeps the order by itself.
            sub.state = WAITING
        else:
            sub.state = RESYNC_HELD
            sub.held_until = time.monotonic() + sub.notif_timeout

    def _resync_done(self, sub, seq):
        def done(event, error):
            if error is not None:
                log.error("subscription %r reported an error for its "
                          "resync at revision %d: %r", sub.name,
                          event.revision, error)
            if sub.resync_seq == seq:
                sub.resync_acked = True
                self.wake()
        return done

    def _release_held(self, sub, now):
        if not sub.resync_acked and now < sub.held_until:
            return
        if not sub.resync_acked:
            log.warning("subscription %r did not call done() on its resync "
                        "at revision %d within %.1f s; sending the changes "
                        "after it", sub.name, sub.cursor, sub.notif_timeout)
        sub.state = WAITING

    def _snapshot(self, prefixes):
        """Read every key under ``prefixes`` at one revision.

        Returns ({prefix: KVIterator}, revision).
        """
        keyval = self._keyval_class
        revision = 0
        values = {}
        for prefix in prefixes:
            start, end = ((prefix, prefix_end(prefix)) if prefix
                          else (TO_END, TO_END))
            kvs, revision = self._client.range_all(start, end, revision)
            values[prefix.decode("utf-8", "surrogateescape")] = KVIterator(
                [keyval(kv.key, kv.value, kv.mod_revision,
                        kv.create_revision, kv.version) for kv in kvs])
        if not prefixes:
            revision = self._client.current_revision()
        return values, revision
