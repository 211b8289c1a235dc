"""The datasync demo: a network agent kept in sync with its configuration.

An agent watches the interfaces and the routes of a network agent's
configuration with two subscriptions, each consumed by a thread of its
own from a ``queue.Queue``. It gets its resync, then applies every change
event to a dict view of its own, checking the previous value of each
change against that view and that revisions only increase. Meanwhile a
writer loads configuration records in transactions, updates some of
them, deletes every route of one VRF with a prefix delete, and puts keys
with a TTL whose expiry the agent receives as delete events. At the end
the agent's view is compared with ``store.list_values()`` of both
prefixes.

Run it with ``datasync demo`` or ``make demo``.
"""

import os
import queue
import shutil
import sys
import tempfile
import threading
import time

from datasync.errors import DatasyncError
from datasync.examples.netagent_pb2 import Interface, Route
from datasync.keyval.lmdb import Store
from datasync.ops import Op
from datasync.options import with_prefix, with_ttl

__all__ = ["run", "Watcher", "compare_view", "AGENT_PREFIX", "INTERFACES",
           "ROUTES"]

AGENT_PREFIX = "/vnf-agent/demo/config/"
INTERFACES = AGENT_PREFIX + "interfaces/"
ROUTES = AGENT_PREFIX + "routes/"

#: Routes are spread over this many VRF tables; the last one is deleted.
VRFS = 4
#: One record in this many is an interface, the others are routes.
INTERFACE_EVERY = 5
#: One record in this many is updated after the load.
UPDATE_EVERY = 7
#: Share of the records written before the agent starts, so that its
#: resync is not empty.
PRELOAD_SHARE = 100
TTL_KEYS = 10
TTL_SECONDS = 1.0
#: Seconds to wait for the agent to apply the changes of a phase. The
#: agent normally follows within a fraction of a second; the limit only
#: keeps a broken run from hanging.
CATCH_UP_TIMEOUT = 120.0


# The workload -------------------------------------------------------------

def interface_key(name):
    """Return the key of the interface called ``name``."""
    return INTERFACES + name


def route_key(vrf, dst_network):
    """Return the key of the route to ``dst_network`` in table ``vrf``."""
    return f"{ROUTES}vrf/{vrf}/dst/{dst_network}"


def _ip(index, last):
    return f"10.{(index >> 8) & 255}.{index & 255}.{last}"


def make_record(i, records):
    """Return (key, message) of record ``i`` out of ``records``.

    Every INTERFACE_EVERY-th record is an Ethernet interface, the others
    are routes leaving through one of those interfaces.
    """
    interfaces = (records + INTERFACE_EVERY - 1) // INTERFACE_EVERY
    if i % INTERFACE_EVERY == 0:
        index = i // INTERFACE_EVERY
        name = f"eth{index}"
        message = Interface(
            name=name, type=Interface.ETHERNET, enabled=True, mtu=1500,
            phys_address="02:00:%02x:%02x:%02x:%02x" % (
                (index >> 24) & 255, (index >> 16) & 255,
                (index >> 8) & 255, index & 255),
            ip_addresses=[_ip(index, 1) + "/24"], vrf=index % VRFS)
        return interface_key(name), message
    index = i - i // INTERFACE_EVERY - 1
    dst = (f"{100 + (index >> 16)}.{(index >> 8) & 255}."
           f"{index & 255}.0/24")
    vrf = index % VRFS
    message = Route(dst_network=dst, next_hop=_ip(index, 254),
                    outgoing_interface=f"eth{index % interfaces}",
                    metric=index % 100, vrf=vrf)
    return route_key(vrf, dst), message


def updated(message):
    """Return a changed copy of an Interface or Route."""
    copy = type(message)()
    copy.CopyFrom(message)
    if isinstance(copy, Interface):
        copy.mtu = 9000
        copy.enabled = not copy.enabled
    else:
        copy.metric += 10
    return copy


# The agent ----------------------------------------------------------------

class Watcher:
    """One subscription of the agent, applied by a consumer thread.

    ``view`` maps each key to (revision, message). ``problems`` lists
    every previous value that differs from the view and every revision
    out of order.
    """

    MAX_PROBLEMS = 20

    def __init__(self, name, prefix, message_type, on_applied=None):
        self.name = name
        self.prefix = prefix
        self.message_type = message_type
        self.queue = queue.Queue()
        self.view = {}
        self.revision = 0
        self.resyncs = 0
        self.resync_keys = 0
        self.events = 0
        self.changes = 0
        self.puts = 0
        self.deletes = 0
        self.problems = []
        self.problem_count = 0
        self.cond = threading.Condition()
        self._on_applied = on_applied
        self._registration = None
        self._stop = object()
        self._thread = threading.Thread(
            target=self._run, name=f"demo-{name}", daemon=True)

    def start(self, store):
        """Start the consumer thread and watch the prefix."""
        self._thread.start()
        self._registration = store.watch(self.name, self.queue, self.queue,
                                         self.prefix)

    def stop(self):
        """Close the subscription and end the consumer thread."""
        if self._registration is not None:
            self._registration.close()
        self.queue.put(self._stop)
        self._thread.join()

    def wait_until(self, predicate, timeout=CATCH_UP_TIMEOUT):
        """Wait until ``predicate()`` holds; return False on timeout.

        The predicate runs with the view locked.
        """
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def wait_for_revision(self, revision, timeout=CATCH_UP_TIMEOUT):
        """Wait until every change up to ``revision`` is applied."""
        return self.wait_until(lambda: self.revision >= revision, timeout)

    def _run(self):
        while True:
            event = self.queue.get()
            if event is self._stop:
                return
            try:
                with self.cond:
                    count = self._apply(event)
                    self.cond.notify_all()
            except Exception as exc:
                # Report the failure with the others and keep consuming,
                # so that the run ends with a failed check, not a hang.
                self._problem(f"cannot apply {event!r}: {exc!r}")
                event.done(exc)
                continue
            event.done()
            if self._on_applied is not None:
                self._on_applied(count)

    def _apply(self, event):
        self.events += 1
        changes = getattr(event, "changes", None)
        if changes is None:
            return self._apply_resync(event)
        if event.revision <= self.revision:
            self._problem(f"revision {event.revision} arrived after "
                          f"revision {self.revision}")
        for change in changes:
            self._apply_change(change)
        self.revision = event.revision
        self.changes += len(changes)
        return len(changes)

    def _apply_resync(self, event):
        self.resyncs += 1
        count = 0
        for prefix, values in event.values.items():
            for key in [k for k in self.view if k.startswith(prefix)]:
                del self.view[key]
            for kv in values:
                message = kv.get_value(self.message_type())
                self.view[kv.key] = (kv.revision, message)
                count += 1
        self.resync_keys += count
        self.revision = event.revision
        return count

    def _apply_change(self, change):
        key = change.key
        known = self.view.get(key)
        prev = self.message_type()
        had_prev = change.get_prev_value(prev)
        if known is None and had_prev:
            self._problem(f"{key}: a previous value, but the key is not in "
                          "the view")
        elif known is not None and not had_prev:
            self._problem(f"{key}: no previous value, but the key is in "
                          "the view")
        elif known is not None and prev != known[1]:
            self._problem(f"{key}: the previous value differs from the "
                          "view")
        if change.change_type is Op.PUT:
            message = change.get_value(self.message_type())
            self.view[key] = (change.revision, message)
            self.puts += 1
        else:
            self.view.pop(key, None)
            self.deletes += 1

    def _problem(self, text):
        self.problem_count += 1
        if len(self.problems) < self.MAX_PROBLEMS:
            self.problems.append(f"{self.name}: {text}")


def compare_view(view, store, prefix, message_type):
    """Return the differences between a view and the store's keys.

    ``view`` maps keys to (revision, message); the store's keys under
    ``prefix`` are read with list_values() in one transaction. Returns a
    list of one line per difference, empty when they are equal.
    """
    expected = {kv.key: (kv.revision, kv.get_value(message_type()))
                for kv in store.list_values(prefix)}
    differences = []
    for key in sorted(expected.keys() - view.keys()):
        differences.append(f"{key}: in the store, missing from the view")
    for key in sorted(view.keys() - expected.keys()):
        differences.append(f"{key}: in the view, not in the store")
    for key in sorted(expected.keys() & view.keys()):
        if expected[key][0] != view[key][0]:
            differences.append(
                f"{key}: revision {view[key][0]} in the view, "
                f"{expected[key][0]} in the store")
        elif expected[key][1] != view[key][1]:
            differences.append(f"{key}: value differs at revision "
                               f"{expected[key][0]}")
    return differences


# The run -------------------------------------------------------------------

class _Progress:
    """A tqdm bar on stderr counting the changes the agent applied."""

    def __init__(self, total, enabled):
        self._bar = None
        self._lock = threading.Lock()
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            raise DatasyncError(
                "the demo's progress bar needs tqdm: install the demo "
                "extra (pip install 'datasync[demo]') or pass "
                "--no-progress") from None
        self._bar = tqdm(total=total, desc="agent applied", unit=" changes",
                         unit_scale=True, file=sys.stderr, leave=True)

    def update(self, count):
        if self._bar is not None and count:
            with self._lock:
                self._bar.update(count)

    def add_total(self, count):
        if self._bar is not None:
            with self._lock:
                self._bar.total += count
                self._bar.refresh()

    def close(self):
        if self._bar is not None:
            self._bar.close()


class _Failure(Exception):
    """The agent did not apply a phase in time; the message names it."""


def run(path=None, records=100_000, batch=1_000, progress=True,
        out=None, **store_options):
    """Run the demo and print its summary to ``out`` (default stdout).

    Without ``path`` the store is a new temporary directory, removed at
    the end. ``store_options`` go to Store, for example max_map_size.
    Returns 0 when the agent's view equals the store, else 1.
    """
    out = sys.stdout if out is None else out
    if records < 1 or batch < 1:
        raise ValueError(f"records and batch must be >= 1, got {records} "
                         f"and {batch}")
    scratch = None
    if path is None:
        scratch = tempfile.mkdtemp(prefix="datasync-demo-")
        path = os.path.join(scratch, "store")
    try:
        with Store(path, **store_options) as store:
            return _run(store, records, batch, progress, out)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(store, records, batch, progress, out):
    print(f"datasync demo: {records:,} records in transactions of "
          f"{batch:,}, store {store.path}", file=out, flush=True)
    preload = max(1, records // PRELOAD_SHARE)
    updates = (records + UPDATE_EVERY - 1) // UPDATE_EVERY
    bar = _Progress(records + updates + 2 * TTL_KEYS, progress)
    interfaces = Watcher("interfaces", INTERFACES, Interface, bar.update)
    routes = Watcher("routes", ROUTES, Route, bar.update)
    watchers = (interfaces, routes)
    stats = {}
    failure = None
    try:
        _write(store, range(preload), records, batch)
        for watcher in watchers:
            watcher.start(store)
        _wait(watchers, lambda w: w.resyncs > 0, "its resync")
        _live_phase(store, watchers, records, preload, batch, bar, stats)
        _ttl_phase(store, interfaces, stats)
    except _Failure as exc:
        failure = exc
    finally:
        for watcher in watchers:
            watcher.stop()
        bar.close()
    if failure is not None:
        print(f"check: FAILED, {failure}", file=out)
        return 1
    return _summary(store, watchers, stats, out)


def _live_phase(store, watchers, records, preload, batch, bar, stats):
    """Load, update and delete while the agent watches; time it all."""
    start = time.perf_counter()
    applied_before = sum(w.changes for w in watchers)
    revision_before = store.revision

    last = _write(store, range(preload, records), records, batch)
    last.update(_write(store, range(0, records, UPDATE_EVERY), records,
                       batch, update=True))
    result = store.delete(ROUTES + f"vrf/{VRFS - 1}/", with_prefix())
    if result.deleted:
        last[ROUTES] = result.revision
    bar.add_total(len(result.deleted))
    written = time.perf_counter()

    for watcher in watchers:
        target = last.get(watcher.prefix, 0)
        if not watcher.wait_for_revision(target):
            raise _Failure(f"watcher {watcher.name} did not apply revision "
                           f"{target} within {CATCH_UP_TIMEOUT:.0f} s")
    caught_up = time.perf_counter()
    stats["written"] = (records - preload + len(range(0, records,
                                                      UPDATE_EVERY)) +
                        len(result.deleted))
    stats["applied"] = sum(w.changes for w in watchers) - applied_before
    stats["transactions"] = store.revision - revision_before
    stats["prefix_deleted"] = len(result.deleted)
    stats["write_seconds"] = written - start
    stats["apply_seconds"] = caught_up - start


def _ttl_phase(store, interfaces, stats):
    """Put keys with a TTL and wait for the agent to see them expire."""
    keys = [interface_key(f"tap-ttl-{i}") for i in range(TTL_KEYS)]
    with store.txn() as txn:
        for key in keys:
            message = Interface(name=key.rsplit("/", 1)[1],
                                type=Interface.TAP, enabled=True)
            txn.put(key, message, with_ttl(TTL_SECONDS))
    put_at = time.perf_counter()
    expired = interfaces.wait_until(
        lambda: interfaces.revision >= txn.revision and
        not any(key in interfaces.view for key in keys),
        TTL_SECONDS + CATCH_UP_TIMEOUT)
    if not expired:
        raise _Failure(f"the {TTL_KEYS} TTL keys were not deleted within "
                       f"{TTL_SECONDS + CATCH_UP_TIMEOUT:.0f} s")
    stats["ttl_seconds"] = time.perf_counter() - put_at


def _write(store, indexes, records, batch, update=False):
    """Put the records of ``indexes`` in transactions of ``batch``.

    Returns, for each watched prefix, the revision of the last
    transaction that wrote a key under it.
    """
    last = {}
    indexes = list(indexes)
    for start in range(0, len(indexes), batch):
        touched = set()
        with store.txn() as txn:
            for i in indexes[start:start + batch]:
                key, message = make_record(i, records)
                txn.put(key, updated(message) if update else message)
                touched.add(INTERFACES if key.startswith(INTERFACES)
                            else ROUTES)
        for prefix in touched:
            last[prefix] = txn.revision
    return last


def _wait(watchers, predicate, description):
    for watcher in watchers:
        if not watcher.wait_until(lambda: predicate(watcher)):
            raise _Failure(f"watcher {watcher.name} did not apply "
                           f"{description} "
                           f"within {CATCH_UP_TIMEOUT:.0f} s")


def _summary(store, watchers, stats, out):
    print(f"{'watcher':<12}{'resyncs':>8}{'resync keys':>13}"
          f"{'events':>9}{'changes':>10}{'puts':>10}{'deletes':>10}",
          file=out)
    for w in watchers:
        print(f"{w.name:<12}{w.resyncs:>8}{w.resync_keys:>13,}"
              f"{w.events - w.resyncs:>9,}{w.changes:>10,}{w.puts:>10,}"
              f"{w.deletes:>10,}", file=out)
    print(f"last revision: {store.revision}", file=out)
    written = stats["written"]
    print(f"writer: {written:,} changes in {stats['transactions']:,} "
          f"transactions ({stats['prefix_deleted']:,} of them by one "
          f"prefix delete), committed in {stats['write_seconds']:.2f} s "
          f"({written / stats['write_seconds']:,.0f} changes/s)",
          file=out)
    print(f"agent: {stats['applied']:,} changes applied "
          f"{stats['apply_seconds']:.2f} s after the first write "
          f"({stats['applied'] / stats['apply_seconds']:,.0f} changes/s "
          "end to end)", file=out)
    print(f"TTL: {TTL_KEYS} keys put with a TTL of {TTL_SECONDS:.1f} s, "
          f"their delete events applied after {stats['ttl_seconds']:.2f} s",
          file=out)

    problems = [line for w in watchers for line in w.problems]
    count = sum(w.problem_count for w in watchers)
    if stats["applied"] != written:
        problems.append(f"the agent applied {stats['applied']:,} changes "
                        f"of the {written:,} written")
        count += 1
    for w in watchers:
        differences = compare_view(w.view, store, w.prefix, w.message_type)
        problems.extend(differences)
        count += len(differences)
    sizes = ", ".join(f"{len(w.view):,} {w.name}" for w in watchers)
    if count:
        print(f"check: FAILED, {count:,} problems ({sizes}):", file=out)
        for line in problems[:20]:
            print(f"  {line}", file=out)
        return 1
    print(f"check: passed, the agent's view equals store.list_values() of "
          f"both prefixes ({sizes}); every previous value matched and "
          f"revisions only increased", file=out)
    return 0
