"""Transactions: puts and deletes that commit as one etcd revision.

etcd rejects a Txn that changes one key twice, or that puts a key inside
a range it also deletes ("duplicate key given in txn request"). The
embedded store applies such operations one after the other, so a plan
reduces them to what they leave behind before they reach etcd:

- a put of a key already put drops the earlier put;
- a put of a key inside an earlier delete keeps the delete, minus that
  key (a single-key delete is dropped, a range is split around it);
- a delete drops the earlier puts it covers.

Each key then changes at most once in the revision. A subscriber gets
one change per key where the embedded store sends one per operation,
but the keys and values after the commit are the same.
"""

from datasync.keyval.etcd.client import TO_END

PUT = "put"
DELETE = "delete"


def _covers(start, end, key):
    """True if the delete of [start, end) deletes ``key``; ``end`` None
    means the single key ``start``."""
    if end is None:
        return key == start
    return start <= key and (end == TO_END or key < end)


class Plan:
    """The operations of one transaction, in order, as etcd accepts them.

    Each operation is a tuple (kind, key, range end, value, lease), where
    the range end is None for a single key and the lease is whatever the
    caller passes (resolved to an etcd lease id at commit).
    """

    def __init__(self):
        self.ops = []

    def put(self, key, value, lease):
        """Add a put of ``value`` under ``key``."""
        kept = []
        for op in self.ops:
            kind, start, end = op[0], op[1], op[2]
            if kind == PUT or end is None or not _covers(start, end, key):
                if not (start == key and (kind == PUT or end is None)):
                    kept.append(op)
                continue
            if start < key:
                kept.append((DELETE, start, key, None, None))
            after = key + b"\0"
            if end == TO_END or after < end:
                kept.append((DELETE, after, end, None, None))
        kept.append((PUT, key, None, value, lease))
        self.ops = kept

    def delete(self, key, end=None):
        """Add a delete of ``key``, or of the range [key, end)."""
        self.ops = [op for op in self.ops
                    if not (op[0] == PUT and _covers(key, end, op[1]))]
        self.ops.append((DELETE, key, end, None, None))

    def __len__(self):
        return len(self.ops)
