"""Delivery of a store's changes to its subscriptions.

One background thread per process and store (the dispatcher) reads the
revision log after each commit, routes every revision's changes through
the prefix index and offers one change event per matching subscription.

Each subscription keeps a cursor: every change up to that revision has
been delivered to it or was part of its snapshot. A subscription is in
one of these states:

- LIVE: it gets events straight from the dispatcher's pass over the log;
- LAGGING: its channel was full (or it resumes from an old revision), so
  it reads the log from its own cursor until it reaches the dispatcher;
- RESYNC_PENDING: it needs a snapshot, because it is new or the log was
  compacted past its cursor;
- RESYNC_HELD: its snapshot was sent, and its changes wait until the
  subscriber calls done() on the resync event or the notification timeout
  passes, so that changes never overtake the snapshot they follow.

Offers never block, so a slow consumer delays neither writers nor other
subscriptions, and the log is its buffer.
"""

import logging
import threading
import time
import weakref

from datasync._core.events import (ChangeEvent, KVIterator, PrefixScan,
                                   ResyncEvent, decode_log_record)
from datasync._core.prefix import PrefixIndex, Subscriber
from datasync.errors import RegistrationError, StoreClosedError
from datasync.keyval.lmdb.env import rev_key

log = logging.getLogger("datasync.watch")

LIVE = "live"
LAGGING = "lagging"
RESYNC_PENDING = "resync-pending"
RESYNC_HELD = "resync-held"
CLOSED = "closed"

# Seconds between offers to a channel that was full. Only consumers that
# lag cause these wake-ups; an idle dispatcher sleeps until notified.
LAG_RETRY = 0.005

# After STALL_AFTER seconds in which no full channel took an offer, offers
# are retried every STALLED_RETRY seconds instead, so a consumer that
# stopped reading costs 10 wake-ups a second rather than 200.
STALL_AFTER = 0.5
STALLED_RETRY = 0.1


class Subscription(Subscriber):
    """One watch: a resync name, its prefixes, channels and cursor."""

    def __init__(self, name, prefixes, change_sink, resync_sink,
                 same_channel, notif_timeout):
        self.name = name
        self.prefixes = []
        self.change_sink = change_sink
        self.resync_sink = resync_sink
        self.same_channel = same_channel
        self.notif_timeout = notif_timeout
        self.state = RESYNC_PENDING
        self.cursor = 0
        self.held_until = 0.0
        self.resync_acked = False
        # Maps each prefix added by register() to the revision current at
        # that call. Changes up to that revision that match no other
        # prefix of the subscription are not sent.
        self.prefix_starts = {}
        # Catch-up matches against this subscription's prefixes only. The
        # index gets a stand-in subscriber, so that routing through it
        # leaves alone the routing state that the shared index keeps on
        # the subscription.
        self.own_index = PrefixIndex()
        self.stand_in = Subscriber()
        self.prefixes.extend(prefixes)
        for prefix in prefixes:
            self.own_index.add(prefix, self.stand_in)

    def drop_older(self, changes, revision):
        """Return ``changes`` without those that only match prefixes
        registered at or after ``revision``."""
        starts = self.prefix_starts
        for prefix in [p for p, start in starts.items() if start < revision]:
            # This subscription gets revisions in increasing order, so the
            # entry is of no further use.
            del starts[prefix]
        if not starts:
            return changes
        return [c for c in changes
                if any(c.key_bytes.startswith(p) and p not in starts
                       for p in self.prefixes)]

    def on_change_done(self, event, error):
        if error is not None:
            log.error("subscription %r reported an error for revision %d: "
                      "%r", self.name, event.revision, error)


class Dispatcher:
    """Routes committed revisions to the subscriptions of one process."""

    def __init__(self, shared, notifier, housekeeping):
        self.shared = shared
        self.notifier = notifier
        self.housekeeping = housekeeping
        self.lock = threading.RLock()
        self.index = PrefixIndex()
        self.subscriptions = {}
        self._stopping = False
        # Offers that lagging or resyncing subscriptions accepted, and the
        # time of the last pass in which one did.
        self._offers_taken = 0
        self._progress_at = None
        with shared.read() as txn:
            self.position = shared.revision(txn)
        notifier.listen(shared.announce_listener)
        self._thread = threading.Thread(
            target=self._run, name="datasync-dispatcher", daemon=True)
        self._thread.start()

    # Subscriptions --------------------------------------------------------

    def add(self, sub, from_revision):
        with self.lock:
            if sub.name in self.subscriptions:
                raise RegistrationError(
                    f"a subscription named {sub.name!r} already watches "
                    "this store; close it first or choose another name")
            if from_revision is not None:
                sub.state = LAGGING
                sub.cursor = from_revision
            self.subscriptions[sub.name] = sub
            for prefix in sub.prefixes:
                self.index.add(prefix, sub)
            if sub.state == RESYNC_PENDING:
                # Take the snapshot before watch() returns, so that a
                # commit made after watch() reaches the subscriber as a
                # change, not folded into its resync.
                self._send_resync(sub)
        self.notifier.wake_self()

    def add_prefix(self, sub, prefix):
        with self.lock:
            self._check_open(sub)
            if prefix in sub.prefixes:
                raise RegistrationError(
                    f"subscription {sub.name!r} already watches prefix "
                    f"{prefix!r}")
            with self.shared.read() as txn:
                sub.prefix_starts[prefix] = self.shared.revision(txn)
            sub.prefixes.append(prefix)
            sub.own_index.add(prefix, sub.stand_in)
            self.index.add(prefix, sub)

    def remove_prefix(self, sub, prefix):
        with self.lock:
            self._check_open(sub)
            if prefix not in sub.prefixes:
                raise RegistrationError(
                    f"subscription {sub.name!r} does not watch prefix "
                    f"{prefix!r}; it watches {sub.prefixes!r}")
            sub.prefixes.remove(prefix)
            sub.prefix_starts.pop(prefix, None)
            sub.own_index.remove(prefix, sub.stand_in)
            self.index.remove(prefix, sub)

    def request_resync(self, sub):
        with self.lock:
            self._check_open(sub)
            sub.state = RESYNC_PENDING
        self.notifier.wake_self()

    def remove(self, sub):
        with self.lock:
            if sub.state == CLOSED:
                return False
            sub.state = CLOSED
            for prefix in sub.prefixes:
                self.index.remove(prefix, sub)
            del self.subscriptions[sub.name]
        # Outside the lock: closing a callback sink joins its thread, and
        # that callback may be waiting for the lock (say, in register()).
        sub.change_sink.close()
        if not sub.same_channel:
            sub.resync_sink.close()
        return True

    def _check_open(self, sub):
        if sub.state == CLOSED:
            raise StoreClosedError(
                f"subscription {sub.name!r} is closed; watch again")

    def stop(self):
        self._stopping = True
        self.notifier.wake_self()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)
        with self.lock:
            subs = list(self.subscriptions.values())
        for sub in subs:
            self.remove(sub)

    # The loop -------------------------------------------------------------

    def _run(self):
        timeout = 0.0
        while not self._stopping:
            self.notifier.wait(timeout)
            if self._stopping:
                return
            try:
                timeout = self._step()
            except Exception:
                log.exception("dispatcher of store %s failed a step; "
                              "retrying in 1 s", self.shared.path)
                timeout = 1.0

    def _step(self):
        with self.lock:
            offers_before = self._offers_taken
            with self.shared.read() as txn:
                current = self.shared.revision(txn)
                floor = self.shared.compacted(txn)
                changed = current > self.position
                if changed:
                    self._deliver_live(txn, current, floor)
                self._serve_others(txn, floor)
            timeout = self._timeout()
            retry = self._retry_delay(offers_before, time.monotonic())
            if retry is not None:
                timeout = retry if timeout is None else min(timeout, retry)
        deadline = self.housekeeping(changed)
        if deadline is not None:
            wait = max(0.0, deadline - time.time())
            timeout = wait if timeout is None else min(timeout, wait)
        return timeout

    def _deliver_live(self, txn, current, floor):
        start = self.position + 1
        if start <= floor:
            # Another process compacted the log past this dispatcher, so
            # every live subscription may have missed changes.
            for sub in self.subscriptions.values():
                if sub.state == LIVE:
                    sub.state = RESYNC_PENDING
            self.position = current
            return
        for revision, record in _log_entries(self.shared, txn, start,
                                             current, live=True):
            changes = decode_log_record(record, revision)
            for sub, matched in self.index.route(changes):
                if sub.state != LIVE or revision <= sub.cursor:
                    continue
                matched = sub.drop_older(matched, revision)
                if not matched:
                    sub.cursor = revision
                    continue
                event = ChangeEvent(matched, revision, sub.on_change_done)
                if sub.change_sink.offer(event):
                    sub.cursor = revision
                else:
                    sub.state = LAGGING
                    sub.cursor = revision - 1
        self.position = current

    def _serve_others(self, txn, floor):
        now = time.monotonic()
        for sub in list(self.subscriptions.values()):
            if sub.state == RESYNC_HELD:
                if sub.resync_acked or now >= sub.held_until:
                    if not sub.resync_acked:
                        log.warning(
                            "subscription %r did not call done() on its "
                            "resync at revision %d within %.1f s; sending "
                            "the changes after it", sub.name, sub.cursor,
                            sub.notif_timeout)
                    sub.state = LAGGING
            if sub.state == RESYNC_PENDING:
                self._send_resync(sub)
            if sub.state == LAGGING:
                self._catch_up(sub, txn, floor)

    def _catch_up(self, sub, txn, floor):
        if sub.cursor < floor:
            log.warning("revision log was compacted past subscription %r "
                        "(at %d, log starts after %d); sending a resync",
                        sub.name, sub.cursor, floor)
            sub.state = RESYNC_PENDING
            self._send_resync(sub)
            return
        for revision, record in _log_entries(self.shared, txn,
                                             sub.cursor + 1, self.position):
            routed = sub.own_index.route(decode_log_record(record, revision))
            matched = sub.drop_older(routed[0][1], revision) if routed else []
            if matched:
                event = ChangeEvent(matched, revision, sub.on_change_done)
                if not sub.change_sink.offer(event):
                    return
                self._offers_taken += 1
            sub.cursor = revision
        sub.cursor = max(sub.cursor, self.position)
        sub.state = LIVE

    def _send_resync(self, sub):
        snapshot = Snapshot(self.shared, sub.prefixes)
        sub.resync_acked = False

        def acked(event, error, sub=sub, notifier=self.notifier):
            if error is not None:
                log.error("subscription %r reported an error for its "
                          "resync at revision %d: %r", sub.name,
                          event.revision, error)
            snapshot.close()
            sub.resync_acked = True
            notifier.wake_self()

        event = ResyncEvent(snapshot.values, snapshot.revision, acked)
        if not sub.resync_sink.offer(event):
            snapshot.close()
            return
        self._offers_taken += 1
        log.debug("sent resync at revision %d to %r", snapshot.revision,
                  sub.name)
        sub.cursor = snapshot.revision
        if sub.same_channel:
            # One channel keeps the order by itself.
            sub.state = LAGGING
        else:
            sub.state = RESYNC_HELD
            sub.held_until = time.monotonic() + sub.notif_timeout

    def _retry_delay(self, offers_before, now):
        """Seconds until full channels are offered to again, or None."""
        if not any(sub.state in (LAGGING, RESYNC_PENDING)
                   for sub in self.subscriptions.values()):
            self._progress_at = None
            return None
        if (self._progress_at is None or
                self._offers_taken != offers_before):
            self._progress_at = now
        if now - self._progress_at < STALL_AFTER:
            return LAG_RETRY
        return STALLED_RETRY

    def _timeout(self):
        timeout = None
        for sub in self.subscriptions.values():
            if sub.state == RESYNC_HELD:
                wait = max(0.0, sub.held_until - time.monotonic())
                timeout = wait if timeout is None else min(timeout, wait)
        return timeout


def _log_entries(shared, txn, start, end, live=False):
    """Yield (revision, record) for start <= revision <= end.

    With ``live``, records that writers of this process handed over
    (SharedEnv.handoff) are taken from there instead of being copied out
    of the log again, and the hand-over is emptied up to ``end``.
    """
    handoff = shared.handoff if live else {}
    cursor = None
    revision = start
    try:
        while revision <= end:
            record = handoff.pop(revision, None)
            if record is None:
                if cursor is None:
                    cursor = txn.cursor(db=shared.log)
                if not cursor.set_range(rev_key(revision)):
                    return
                key, record = cursor.item()
                revision = int.from_bytes(key, "big")
                if revision > end:
                    return
            yield revision, record
            revision += 1
    finally:
        if cursor is not None:
            cursor.close()
        if live:
            for stale in [r for r in handoff if r <= end]:
                handoff.pop(stale, None)


class Snapshot:
    """Key-values under some prefixes at one revision.

    Holds a read transaction until every prefix has been read, close() is
    called, or the snapshot is garbage collected.
    """

    def __init__(self, shared, prefixes):
        txn = shared.begin_read()
        self._shared = shared
        self._finalizer = weakref.finalize(self, shared.end_read, txn)
        self.revision = shared.revision(txn)
        # Counted up front: a scan with nothing under its prefix closes
        # inside its constructor, which must not end the transaction
        # while the scans of the other prefixes still need it.
        self._open = len(prefixes)
        self._scans = []
        self.values = {}
        for prefix in prefixes:
            cursor = txn.cursor(db=shared.kv)
            scan = PrefixScan(cursor, prefix, self._scan_closed,
                              shared.drop_resident_pages)
            self._scans.append(scan)
            name = prefix.decode("utf-8", "surrogateescape")
            self.values[name] = KVIterator(scan)
        if not prefixes:
            self.close()

    def _scan_closed(self):
        self._open -= 1
        if self._open == 0:
            self._finalizer()
            self._shared.drop_resident_pages()

    def close(self):
        """End the read transaction; unread values are no longer read."""
        for scan in self._scans:
            scan.close()
        self._finalizer()
