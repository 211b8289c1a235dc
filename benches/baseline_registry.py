"""Baseline: a straight Python port of the original Go registry's routing.

The original (Ligato cn-infra, datasync/syncbase) routes a batch of
changes by visiting every subscription and testing every key against
every prefix of it with a plain prefix comparison, so its cost grows with
subscriptions x prefixes x changes. This module does the same, on
purpose without an index, so that benchmarks can compare against it.
"""


class LinearScanRegistry:
    """Subscriptions kept in a list; routing scans all of them."""

    def __init__(self):
        self.subscriptions = []

    def watch(self, name, prefixes):
        self.subscriptions.append((name, list(prefixes)))

    def route(self, changes):
        """Return (name, matching changes) for each subscription hit.

        ``changes`` is a list of (key, value) pairs with str keys.
        """
        routed = []
        for name, prefixes in self.subscriptions:
            matched = []
            for change in changes:
                key = change[0]
                for prefix in prefixes:
                    if key.startswith(prefix):
                        matched.append(change)
                        break
            if matched:
                routed.append((name, matched))
        return routed
