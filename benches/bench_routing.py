"""Routing one commit of 1,000 keys to many subscriptions.

Compares the store's compiled prefix index (a byte trie) with the
baseline port of the original registry's linear scan, at 10, 100, 1,000
and 10,000 subscriptions of 2 prefixes each, in the same run. Routing
here means grouping the commit's changes per subscription and building
one change event for each subscription that has changes.
"""

import random

import pytest

from baseline_registry import LinearScanRegistry
from datasync._core.events import Change, ChangeEvent
from datasync._core.prefix import PrefixIndex, Subscriber
from datasync.ops import Op

CHANGES = 1_000
SIZES = [10, 100, 1_000, 10_000]


def _prefixes(i):
    return (f"/vnf-agent/agent-{i}/config/", f"/vnf-agent/agent-{i}/status/")


def _changes(subscriptions, seed=3):
    rng = random.Random(seed)
    out = []
    for n in range(CHANGES):
        agent = rng.randrange(subscriptions)
        kind = rng.choice(("config", "status"))
        key = f"/vnf-agent/agent-{agent}/{kind}/item-{n}"
        out.append(Change(key, Op.PUT, b"v", None, revision=1))
    return out


@pytest.mark.benchmark(group="routing-index")
@pytest.mark.parametrize("subscriptions", SIZES)
def test_prefix_index_routing(benchmark, subscriptions):
    """Compiled trie index: cost should not depend on subscriptions."""
    index = PrefixIndex()
    for i in range(subscriptions):
        sub = Subscriber()
        for prefix in _prefixes(i):
            index.add(prefix.encode(), sub)
    changes = _changes(subscriptions)

    def route():
        return [ChangeEvent(matched, 1) for _, matched in
                index.route(changes)]

    events = benchmark(route)
    assert sum(len(e.changes) for e in events) == CHANGES


@pytest.mark.benchmark(group="routing-baseline")
@pytest.mark.parametrize("subscriptions", SIZES)
def test_linear_scan_routing(benchmark, subscriptions):
    """Baseline: the original's scan over every subscription and prefix."""
    registry = LinearScanRegistry()
    for i in range(subscriptions):
        registry.watch(f"agent-{i}", _prefixes(i))
    changes = [(c.key, c.value) for c in _changes(subscriptions)]
    rounds = 3 if subscriptions >= 1_000 else None
    if rounds:
        routed = benchmark.pedantic(registry.route, args=(changes,),
                                    rounds=rounds, iterations=1)
    else:
        routed = benchmark(registry.route, changes)
    assert sum(len(m) for _, m in routed) == CHANGES
