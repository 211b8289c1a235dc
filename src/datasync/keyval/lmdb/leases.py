"""Leases: keys that expire after a TTL or die with their writer.

Tables (all inside the store's LMDB environment):

- ``leases``: lease id (8 bytes, big-endian) to a record of its kind,
  expiry time (wall clock seconds, TTL leases) and owner process (pid and
  start time, client-lifetime leases);
- ``ttl``: expiry in milliseconds (8 bytes, big-endian) + lease id, so the
  first entry is the next lease to expire;
- ``lease_keys``: lease id to each key bound to it (duplicate values).

Expiry uses the wall clock because the deadline must mean the same thing
to every process that opens the store.
"""

import os
import struct

from datasync._core import commit as _commit
from datasync.keyval.lmdb.env import META_NEXT_LEASE, pack_u64, unpack_u64

KIND_TTL = 1
KIND_OWNER = 2

#: Largest TTL in seconds. Expiry times are keys of milliseconds in 64
#: bits, which end about 1.8e16 s after 1970; this leaves a wide margin.
MAX_TTL = 1e15

_RECORD = struct.Struct("<BdQQ")


def _next_lease_id(shared, txn):
    lease = unpack_u64(txn.get(META_NEXT_LEASE, db=shared.meta), 1)
    txn.put(META_NEXT_LEASE, pack_u64(lease + 1), db=shared.meta)
    return lease


def _ttl_key(expiry, lease):
    return int(expiry * 1000).to_bytes(8, "big") + lease.to_bytes(8, "big")


def grant_ttl(shared, txn, ttl, now):
    """Create a TTL lease that expires ``ttl`` seconds after ``now``."""
    lease = _next_lease_id(shared, txn)
    expiry = now + ttl
    txn.put(_commit.lease_key(lease), _RECORD.pack(KIND_TTL, expiry, 0, 0),
            db=shared.leases)
    txn.put(_ttl_key(expiry, lease), b"", db=shared.ttl)
    return lease


def grant_owner(shared, txn):
    """Create a lease owned by this process; it dies with the process."""
    lease = _next_lease_id(shared, txn)
    pid = os.getpid()
    record = _RECORD.pack(KIND_OWNER, 0.0, pid, process_start(pid) or 0)
    txn.put(_commit.lease_key(lease), record, db=shared.leases)
    return lease


def revoke_ops(shared, txn, lease):
    """Drop a lease's records; return delete operations for its keys."""
    key = _commit.lease_key(lease)
    stored = txn.pop(key, db=shared.leases)
    if stored is not None:
        kind, expiry, _, _ = _RECORD.unpack(stored)
        if kind == KIND_TTL:
            txn.delete(_ttl_key(expiry, lease), db=shared.ttl)
    ops = []
    with txn.cursor(db=shared.lease_keys) as cursor:
        if cursor.set_key(key):
            for bound in cursor.iternext_dup():
                ops.append((_commit.DELETE, bytes(bound), None, 0))
    return ops


def due_ops(shared, txn, now):
    """Revoke every TTL lease due at ``now``; return the key deletes."""
    due = []
    now_ms = int(now * 1000)
    with txn.cursor(db=shared.ttl) as cursor:
        for key in cursor.iternext(values=False):
            if int.from_bytes(key[:8], "big") > now_ms:
                break
            due.append(int.from_bytes(key[8:], "big"))
    ops = []
    for lease in due:
        ops.extend(revoke_ops(shared, txn, lease))
    return ops


def next_expiry(shared, txn):
    """Wall-clock time of the next TTL expiry, or None."""
    with txn.cursor(db=shared.ttl) as cursor:
        if not cursor.first():
            return None
        return int.from_bytes(cursor.key()[:8], "big") / 1000.0


def owner_leases(shared, txn):
    """Return (lease, pid, start time) of every client-lifetime lease."""
    found = []
    with txn.cursor(db=shared.leases) as cursor:
        for key, stored in cursor.iternext():
            kind, _, pid, start = _RECORD.unpack(stored)
            if kind == KIND_OWNER:
                found.append((int.from_bytes(key, "big"), pid, start))
    return found


def dead_owner_leases(shared, txn):
    """Return the client-lifetime leases whose process has ended."""
    return [lease for lease, pid, start in owner_leases(shared, txn)
            if not process_alive(pid, start)]


def _proc_stat(pid):
    """Return (state, start time in clock ticks since boot), or None.

    Together with the pid, the start time distinguishes a live owner
    from a new process that reused its pid. Only Linux exposes it (/proc/PID/stat,
    fields 3 and 22).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces, so split after it.
    fields = stat[stat.rindex(b")") + 2:].split()
    return fields[0], int(fields[19])


def process_start(pid):
    """Start time of process ``pid`` in clock ticks, or None if unknown."""
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def process_alive(pid, start):
    """True if process ``pid`` runs and started at ``start`` (0: any).

    A zombie (ended, not yet reaped by its parent) counts as dead.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, current = stat
    if state == b"Z":
        return False
    return not start or current == start
