"""Stateful test of the store against a plain dict model.

Hypothesis runs sequences of puts, deletes, prefix deletes, multi-op
transactions, compactions and reopenings on a real store and on the
model. After each step it compares revisions, values, versions and
previous values, and what three watchers received. The first watcher
starts with a resync. The second has a queue of one event and
overlapping prefixes, so it lags and catches up from the log. The third
resumes from the last revision it saw.
"""

import queue
import shutil
import tempfile

import hypothesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize,
                                 invariant, precondition, rule)

import datasync
from datasync.events import ChangeEvent, ResyncEvent

EVENT_TIMEOUT = 10.0

KEYS = ["/a/1", "/a/2", "/a/3/x", "/b/1", "/b/2", "/c"]
PREFIXES = ["/", "/a/", "/a/3", "/b/", "/c", "/z/"]

keys = st.sampled_from(KEYS)
prefixes = st.sampled_from(PREFIXES)
values = st.binary(max_size=6)
operations = st.one_of(
    st.tuples(st.just("put"), keys, values),
    st.tuples(st.just("delete"), keys),
    st.tuples(st.just("delete_prefix"), prefixes),
)


def matches(key, prefixes):
    return any(key.startswith(prefix) for prefix in prefixes)


class Model:
    """The store as plain Python: current keys, every revision's changes
    and the key-values after each revision."""

    def __init__(self):
        # key -> (value, create revision, mod revision, version)
        self.data = {}
        # revision -> list of (op, key, value, prev value, create, version)
        self.log = {}
        self.states = {0: {}}
        self.revision = 0
        self.floor = 0

    def apply(self, ops):
        """Apply one transaction; return its revision or None."""
        revision = self.revision + 1
        changes = []
        for op in ops:
            if op[0] == "put":
                changes.append(self._put(op[1], op[2], revision))
            elif op[0] == "delete":
                changes.extend(self._delete([op[1]]))
            else:
                under = sorted(k for k in self.data if k.startswith(op[1]))
                changes.extend(self._delete(under))
        if not changes:
            return None
        self.revision = revision
        self.log[revision] = changes
        self.states[revision] = {k: v[0] for k, v in self.data.items()}
        return revision

    def _put(self, key, value, revision):
        old = self.data.get(key)
        if old is None:
            create, version, prev = revision, 1, None
        else:
            create, version, prev = old[1], old[3] + 1, old[0]
        self.data[key] = (value, create, revision, version)
        return ("put", key, value, prev, create, version)

    def _delete(self, keys):
        changes = []
        for key in keys:
            old = self.data.pop(key, None)
            if old is not None:
                changes.append(("delete", key, None, old[0], old[1], 0))
        return changes

    def changes_of(self, revision, prefixes):
        return [c for c in self.log[revision] if matches(c[1], prefixes)]

    def last_matching(self, prefixes):
        """Latest revision with a change under ``prefixes``, or 0."""
        for revision in range(self.revision, 0, -1):
            if self.changes_of(revision, prefixes):
                return revision
        return 0

    def state_at(self, revision, prefixes):
        return {k: v for k, v in self.states[revision].items()
                if matches(k, prefixes)}


def change_tuple(change):
    return (change.change_type.value, change.key, change.value,
            change.prev_value, change.create_revision, change.version)


class Watcher:
    """One subscription and the view of the store built from its events.

    ``last`` is the revision up to which the view is complete: the
    revision of the last resync or change event received.
    """

    def __init__(self, name, prefixes, maxsize=0):
        self.name = name
        self.prefixes = prefixes
        self.maxsize = maxsize
        self.view = {}
        self.last = None
        self.registration = None

    def start(self, store, model, resume):
        """Watch: from ``last`` if resume is set and the log allows it,
        else with a resync."""
        self.chan = queue.Queue(maxsize=self.maxsize)
        if resume and self.last is not None:
            if self.last < model.floor:
                try:
                    store.watch(self.name, self.chan, self.chan,
                                *self.prefixes, from_revision=self.last)
                except datasync.CompactedError as exc:
                    assert exc.oldest_revision == model.floor + 1
                else:
                    raise AssertionError(
                        f"watch from compacted revision {self.last} "
                        f"(floor {model.floor}) did not raise")
            else:
                self.registration = store.watch(
                    self.name, self.chan, self.chan, *self.prefixes,
                    from_revision=self.last)
                return
        # A new resync replaces the view, so catch_up must wait for it.
        self.last = None
        self.registration = store.watch(self.name, self.chan, self.chan,
                                        *self.prefixes)

    def catch_up(self, model):
        """Read events until the view covers every matching revision,
        checking each event against the model."""
        target = model.last_matching(self.prefixes)
        while self.last is None or self.last < target:
            try:
                event = self.chan.get(timeout=EVENT_TIMEOUT)
            except queue.Empty:
                raise AssertionError(
                    f"watcher {self.name} at revision {self.last} got no "
                    f"event within {EVENT_TIMEOUT} s; expected up to "
                    f"{target}") from None
            if isinstance(event, ResyncEvent):
                self._on_resync(event, model)
            else:
                assert isinstance(event, ChangeEvent)
                self._on_change(event, model)
            event.done()
        assert self.view == model.state_at(model.revision, self.prefixes)

    def _on_resync(self, event, model):
        assert sorted(event.values) == sorted(set(self.prefixes))
        assert event.revision >= (self.last or 0)
        snapshot = {}
        for prefix, iterator in event.values.items():
            for kv in iterator:
                assert kv.key.startswith(prefix)
                assert kv.revision <= event.revision
                snapshot[kv.key] = kv.value
        assert snapshot == model.state_at(event.revision, self.prefixes)
        self.view = snapshot
        self.last = event.revision
        hypothesis.event(f"resync of {self.name}")

    def _on_change(self, event, model):
        revision = event.revision
        assert self.last is not None, "change before the first resync"
        assert revision > self.last, (
            f"{self.name}: revision {revision} after {self.last}")
        skipped = [r for r in range(self.last + 1, revision)
                   if model.changes_of(r, self.prefixes)]
        assert skipped == [], f"{self.name} missed revisions {skipped}"
        received = [change_tuple(c) for c in event.changes]
        assert received == model.changes_of(revision, self.prefixes)
        assert all(c.revision == revision for c in event.changes)
        for op, key, value, _, _, _ in received:
            if op == "put":
                self.view[key] = value
            else:
                self.view.pop(key, None)
        self.last = revision


class StoreMachine(RuleBasedStateMachine):
    """Random operations on a store and the model, compared each step."""

    def __init__(self):
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="datasync-model-")
        self.model = Model()
        self.store = None
        self.watchers = [
            Watcher("all", ["/"]),
            Watcher("lagging", ["/a/", "/a/3", "/c"], maxsize=1),
            Watcher("resuming", ["/b/", "/c"]),
        ]

    @initialize()
    def open_store(self):
        self.store = datasync.Store(self.directory, durable=False)
        resuming = self.watchers[2]
        resuming.last = 0
        for watcher in self.watchers:
            watcher.start(self.store, self.model, watcher is resuming)

    def teardown(self):
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def commit(self, ops):
        expected = self.model.apply(ops)
        txn = self.store.txn()
        for op in ops:
            if op[0] == "put":
                txn.put(op[1], op[2])
            elif op[0] == "delete":
                txn.delete(op[1])
            else:
                txn.delete(op[1], datasync.with_prefix())
        revision = txn.commit()
        assert revision == (expected or self.model.revision)
        return txn

    @rule(key=keys, value=values)
    def put(self, key, value):
        self.commit([("put", key, value)])

    @rule(key=keys)
    def delete(self, key):
        prev = self.model.data.get(key)
        txn = self.commit([("delete", key)])
        expected = [] if prev is None else [prev[0]]
        assert [c.prev_value for c in txn.changes] == expected

    @rule(prefix=prefixes)
    def delete_prefix(self, prefix):
        before = dict(self.model.data)
        result = self.store.delete(prefix, datasync.with_prefix())
        expected = self.model.apply([("delete_prefix", prefix)])
        assert result.revision == (expected or self.model.revision)
        deleted = sorted(k for k in before if k.startswith(prefix))
        assert [c.key for c in result.deleted] == deleted
        assert [c.prev_value for c in result.deleted] == [
            before[k][0] for k in deleted]

    @rule(ops=st.lists(operations, min_size=2, max_size=5))
    def transaction(self, ops):
        self.commit(ops)

    @rule(batches=st.lists(st.lists(operations, min_size=1, max_size=3),
                           min_size=2, max_size=4),
          compact_after=st.booleans())
    def burst(self, batches, compact_after):
        # Several commits between two checks fill the bounded queue, so
        # its subscription lags. Compacting at once may leave it behind
        # the log, and then it must get a resync instead of a gap.
        for ops in batches:
            self.commit(ops)
        if compact_after:
            self.store.compact(self.model.revision)
            self.model.floor = self.model.revision

    @precondition(lambda self: self.model.revision > self.model.floor)
    @rule(fraction=st.floats(min_value=0.0, max_value=1.0))
    def compact(self, fraction):
        span = self.model.revision - self.model.floor
        target = self.model.floor + round(span * fraction)
        assert self.store.compact(target) == target
        self.model.floor = target

    @rule()
    def reopen(self):
        self.store.close()
        self.store = datasync.Store(self.directory, durable=False)
        for watcher in self.watchers:
            watcher.start(self.store, self.model,
                          watcher.name == "resuming")

    @invariant()
    def revision_matches(self):
        if self.store is not None:
            assert self.store.revision == self.model.revision

    @invariant()
    def values_match(self):
        if self.store is None:
            return
        stored = {kv.key: (kv.value, kv.create_revision, kv.revision,
                           kv.version)
                  for kv in self.store.list_values("/")}
        assert stored == self.model.data

    @invariant()
    def log_matches(self):
        if self.store is None:
            return
        floor = self.model.floor
        received = [(c.revision, *change_tuple(c))
                    for c in self.store.changes(floor)]
        expected = [(r, *c) for r in range(floor + 1,
                                           self.model.revision + 1)
                    for c in self.model.log[r]]
        assert received == expected
        if floor > 0:
            try:
                self.store.changes(floor - 1)
            except datasync.CompactedError as exc:
                assert exc.oldest_revision == floor + 1
            else:
                raise AssertionError("changes() below the floor worked")

    @invariant()
    def watchers_match(self):
        if self.store is None:
            return
        for watcher in self.watchers:
            watcher.catch_up(self.model)


StoreMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=35, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])

test_store_matches_model = StoreMachine.TestCase
