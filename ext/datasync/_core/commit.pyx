# cython: language_level=3, boundscheck=False, wraparound=False
"""Commit bookkeeping: the write side of the revisioned store.

Runs inside an LMDB write transaction opened by the caller, which commits
or aborts it, so a failure here leaves nothing behind.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memcmp

from datasync._core.events cimport (HEADER_SIZE, OP_DELETE, OP_PUT, Header,
                                    RecordWriter, build_stored, read_header)

PUT = CODE_PUT
DELETE = CODE_DELETE
DELETE_PREFIX = CODE_DELETE_PREFIX


def lease_key(uint64_t lease):
    """Key of a lease in the lease tables: 8 bytes, big-endian."""
    return lease.to_bytes(8, "big")


cdef inline bint _starts_with(bytes key, bytes prefix):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(prefix)
    return (PyBytes_GET_SIZE(key) >= n and
            memcmp(PyBytes_AS_STRING(key), PyBytes_AS_STRING(prefix), n) == 0)


cdef class Applier:
    """Applies operations to the key table and records them.

    One Applier serves one write transaction and one revision.
    """

    cdef object _txn
    cdef object _kv
    cdef object _cursor
    cdef object _lease_keys
    cdef uint64_t _revision
    cdef RecordWriter _record

    def __init__(self, txn, kv_db, lease_keys_db, uint64_t revision):
        self._txn = txn
        self._kv = kv_db
        # One cursor for every put and delete: after set_key has found a
        # key, LMDB's put on the same cursor starts from the page it is
        # on instead of descending the tree again.
        self._cursor = txn.cursor(kv_db)
        self._lease_keys = lease_keys_db
        self._revision = revision
        self._record = RecordWriter()

    @property
    def count(self):
        """Number of changes recorded so far."""
        return self._record._count

    def apply(self, list ops):
        """Apply (code, key, value, lease) tuples in order."""
        cdef tuple op
        cdef int code
        for op in ops:
            code = op[0]
            if code == CODE_PUT:
                self._put(op[1], op[2], op[3])
            elif code == CODE_DELETE:
                self._delete(op[1])
            elif code == CODE_DELETE_PREFIX:
                self._delete_prefix(op[1])
            else:
                raise ValueError(f"unknown operation code {code}")

    def apply_columns(self, list codes, list keys, list values,
                      list leases):
        """Apply operations given as four parallel lists, in order."""
        cdef Py_ssize_t i, n = len(codes)
        cdef int code
        if not (len(keys) == len(values) == len(leases) == n):
            raise ValueError("operation columns differ in length")
        for i in range(n):
            code = codes[i]
            if code == CODE_PUT:
                self._put(keys[i], values[i], leases[i])
            elif code == CODE_DELETE:
                self._delete(keys[i])
            elif code == CODE_DELETE_PREFIX:
                self._delete_prefix(keys[i])
            else:
                raise ValueError(f"unknown operation code {code}")

    def finish(self):
        """Return the encoded log record, or None if nothing changed."""
        if self._record._count == 0:
            return None
        return self._record.finish()

    cdef int _put(self, bytes key, bytes value, uint64_t lease) except -1:
        cdef bytes old = None
        cdef Header h, prev
        if self._cursor.set_key(key):
            old = self._cursor.value()
        h.mod_revision = self._revision
        h.lease = lease
        if old is None:
            h.create_revision = self._revision
            h.version = 1
            prev.lease = 0
        else:
            prev = read_header(old)
            h.create_revision = prev.create_revision
            h.version = prev.version + 1
        self._cursor.put(key, build_stored(h, value))
        if prev.lease != h.lease:
            self._move_lease(key, prev.lease, h.lease)
        self._record.add(OP_PUT, h.create_revision, h.version, key,
                         value, 0, old, HEADER_SIZE)
        return 0

    cdef int _delete(self, bytes key) except -1:
        cdef bytes old
        if self._cursor.set_key(key):
            old = self._cursor.value()
            self._cursor.delete()
            self._record_delete(key, old)
        return 0

    cdef int _delete_prefix(self, bytes prefix) except -1:
        cursor = self._cursor
        cdef bytes key, old
        if not cursor.set_range(prefix):
            return 0
        while True:
            key = cursor.key()
            if not _starts_with(key, prefix):
                break
            old = cursor.value()
            self._record_delete(key, old)
            # Cursor.delete moves to the next record; past the last one
            # the cursor is unpositioned and key() returns b"".
            cursor.delete()
        return 0

    cdef int _record_delete(self, bytes key, bytes old) except -1:
        cdef Header prev = read_header(old)
        if prev.lease:
            self._move_lease(key, prev.lease, 0)
        self._record.add(OP_DELETE, prev.create_revision, 0, key, None, 0,
                         old, HEADER_SIZE)
        return 0

    cdef int _move_lease(self, bytes key, uint64_t old,
                         uint64_t new) except -1:
        if old:
            self._txn.delete(lease_key(old), key, self._lease_keys)
        if new:
            self._txn.put(lease_key(new), key, True, True, False,
                          self._lease_keys)
        return 0
