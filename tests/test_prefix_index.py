"""The compiled prefix index against a linear scan of every prefix.

Routing decides which subscription gets which change, so it is checked
with random prefixes that share, split and nest, including removals that
merge nodes of the tree back together.
"""

from hypothesis import given, settings
from hypothesis import strategies as st

from datasync._core.prefix import PrefixIndex, Subscriber
from datasync.events import Change, KeyVal

# A small alphabet makes prefixes share and nest often.
fragments = st.binary(min_size=0, max_size=5).map(
    lambda b: bytes(65 + x % 3 for x in b))
operations = st.lists(
    st.tuples(st.sampled_from(["add", "remove"]), fragments,
              st.integers(min_value=0, max_value=3)),
    max_size=40)


class Named(Subscriber):
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


def linear_route(pairs, keys):
    """Return {subscriber: [keys]} by testing every registered pair."""
    routed = {}
    for key in keys:
        for subscriber in dict.fromkeys(s for p, s in pairs
                                        if key.startswith(p)):
            routed.setdefault(subscriber, []).append(key)
    return routed


@settings(max_examples=300, deadline=None)
@given(ops=operations, keys=st.lists(fragments, min_size=1, max_size=12))
def test_route_matches_linear_scan(ops, keys):
    subscribers = [Named(f"s{i}") for i in range(4)]
    index = PrefixIndex()
    pairs = []
    for action, prefix, which in ops:
        subscriber = subscribers[which]
        if action == "add":
            index.add(prefix, subscriber)
            pairs.append((prefix, subscriber))
        else:
            present = (prefix, subscriber) in pairs
            assert index.remove(prefix, subscriber) is present
            if present:
                pairs.remove((prefix, subscriber))
    assert len(index) == len(pairs)

    changes = [Change(key, "put", value=b"v") for key in keys]
    routed = index.route(changes)
    got = {subscriber: [c.key_bytes for c in batch]
           for subscriber, batch in routed}
    assert got == linear_route(pairs, keys)
    # Subscribers come in the order of the first change routed to each.
    firsts = [keys.index(batch[0].key_bytes) for _, batch in routed]
    assert firsts == sorted(firsts)

    for key in keys:
        expected = set(linear_route(pairs, [key]))
        matched = index.match(key)
        assert len(matched) == len(set(matched))
        assert set(matched) == expected


def test_route_keeps_change_objects():
    index = PrefixIndex()
    subscriber = Named("s")
    index.add(b"/a/", subscriber)
    changes = [Change("/a/1", "put", value=b"1"), KeyVal("/b/1", b"2"),
               Change("/a/2", "delete", prev_value=b"3")]
    [(routed_to, batch)] = index.route(changes)
    assert routed_to is subscriber
    assert batch == [changes[0], changes[2]]


def test_remove_missing_returns_false():
    index = PrefixIndex()
    subscriber = Named("s")
    assert index.remove(b"/a/", subscriber) is False
    index.add(b"/a/", subscriber)
    assert index.remove(b"/a/", Named("other")) is False
    assert index.remove(b"/a", subscriber) is False
    assert index.remove(b"/a/", subscriber) is True
    assert len(index) == 0
    assert index.match("/a/x") == []
