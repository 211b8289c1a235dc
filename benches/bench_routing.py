"""Routing one commit of 1,000 keys to many subscriptions.

Compares the store's compiled prefix index (a radix tree) with the
baseline port of the original registry's linear scan, at 10, 100, 1,000
and 10,000 subscriptions of 2 prefixes each, in the same run. Routing
means grouping the commit's changes per subscription and building one
change event for each subscription that has changes.

Two commits are routed:

- "fixed": the 1,000 keys fall under the prefixes of the same 10
  subscriptions whatever the number registered, so the figure shows how
  routing cost depends on the number of subscriptions alone;
- "spread": the keys fall under random subscriptions among all those
  registered, so at 10,000 about 950 subscriptions each get an event,
  and the figure adds the cost of building those events.
"""

import random

import pytest

from baseline_registry import LinearScanRegistry
from datasync._core.events import Change, ChangeEvent
from datasync._core.prefix import PrefixIndex, Subscriber
from datasync.ops import Op

CHANGES = 1_000
SIZES = [10, 100, 1_000, 10_000]
# Subscriptions that the "fixed" commit's keys belong to.
TARGETS = 10


def _prefixes(i):
    return (f"/vnf-agent/agent-{i}/config/", f"/vnf-agent/agent-{i}/status/")


def _changes(agents, seed=3):
    rng = random.Random(seed)
    out = []
    for n in range(CHANGES):
        agent = rng.randrange(agents)
        kind = rng.choice(("config", "status"))
        key = f"/vnf-agent/agent-{agent}/{kind}/item-{n}"
        out.append(Change(key, Op.PUT, b"v", None, revision=1))
    return out


def _index(subscriptions):
    index = PrefixIndex()
    for i in range(subscriptions):
        sub = Subscriber()
        for prefix in _prefixes(i):
            index.add(prefix.encode(), sub)
    return index


def _route(index, changes):
    return [ChangeEvent(matched, 1) for _, matched in index.route(changes)]


@pytest.mark.benchmark(group="routing-index-fixed")
@pytest.mark.parametrize("subscriptions", SIZES)
def test_prefix_index_routing(benchmark, subscriptions):
    """Radix tree, keys of 10 subscriptions among ``subscriptions``."""
    index = _index(subscriptions)
    changes = _changes(TARGETS)
    events = benchmark(_route, index, changes)
    assert len(events) == TARGETS
    assert sum(len(e.changes) for e in events) == CHANGES


@pytest.mark.benchmark(group="routing-index-spread")
@pytest.mark.parametrize("subscriptions", SIZES)
def test_prefix_index_fanout(benchmark, subscriptions):
    """Radix tree, keys spread over all ``subscriptions``."""
    index = _index(subscriptions)
    changes = _changes(subscriptions)
    events = benchmark(_route, index, changes)
    assert sum(len(e.changes) for e in events) == CHANGES


@pytest.mark.benchmark(group="routing-baseline")
@pytest.mark.parametrize("subscriptions", SIZES)
def test_linear_scan_routing(benchmark, subscriptions):
    """Baseline: the original's scan, same "fixed" commit."""
    registry = LinearScanRegistry()
    for i in range(subscriptions):
        registry.watch(f"agent-{i}", _prefixes(i))
    changes = [(c.key, c.value) for c in _changes(TARGETS)]
    if subscriptions >= 1_000:
        routed = benchmark.pedantic(registry.route, args=(changes,),
                                    rounds=3, iterations=1)
    else:
        routed = benchmark(registry.route, changes)
    assert len(routed) == TARGETS
    assert sum(len(m) for _, m in routed) == CHANGES
