# Table of contents of the event module: the value header stored with
# every key, the revision log record codec, and the event classes that
# carry keys and values to subscribers without parsing them.

from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef enum:
    # Bytes in front of every stored value: create revision, mod revision,
    # version and lease id, each a little-endian uint64.
    HEADER_SIZE = 32
    # Operation codes inside a log record.
    OP_PUT = 1
    OP_DELETE = 2

# Length field that marks "no value" in a log record.
cdef uint32_t NO_VALUE


cdef struct Header:
    uint64_t create_revision
    uint64_t mod_revision
    uint64_t version
    uint64_t lease


cdef Header read_header(bytes stored) except *
cdef bytes build_stored(Header header, bytes value)


from cpython.object cimport PyObject


cdef class RecordWriter:
    cdef PyObject *_out
    cdef char *_buf
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef uint32_t _count

    cdef int _reserve(self, Py_ssize_t extra) except -1
    cdef int _append(self, const char *data, Py_ssize_t size) except -1
    cdef int add(self, uint8_t op, uint64_t create_revision,
                 uint64_t version, bytes key, bytes value, Py_ssize_t voff,
                 bytes prev, Py_ssize_t poff) except -1
    cdef bytes finish(self)


cdef class KeyVal:
    cdef bytes _key
    cdef object _key_text
    cdef bytes _buf
    cdef Py_ssize_t _voff
    cdef Py_ssize_t _vlen
    cdef readonly uint64_t revision
    """Revision of the transaction that wrote this value (mod revision)."""
    cdef readonly uint64_t create_revision
    """Revision at which the key was created (put while absent)."""
    cdef readonly uint64_t version
    """Puts of the key since it was created, counting that one; 0 for a
    delete."""


cdef class Change(KeyVal):
    cdef uint8_t _op
    cdef Py_ssize_t _poff
    cdef Py_ssize_t _plen


cdef KeyVal make_keyval(bytes key, bytes stored)
cdef list decode_record(bytes record, uint64_t revision)


cdef class ChangeEvent:
    cdef readonly list changes
    """The Change objects of the revision, in commit order."""
    cdef readonly uint64_t revision
    """Revision of the transaction that made the changes."""
    cdef readonly bint is_done
    """True once done() was called."""
    cdef readonly object error
    """The error passed to done(), or None."""
    cdef object _on_done


cdef class PrefixScan


cdef class KVIterator:
    cdef object _source
    cdef PrefixScan _scan
    cdef bint _exhausted
    cdef object _on_exhausted


cdef class ResyncEvent:
    cdef readonly dict values
    """Each prefix mapped to a KVIterator over its key-values."""
    cdef readonly uint64_t revision
    """Revision at which the snapshot was taken."""
    cdef readonly bint is_done
    """True once done() was called."""
    cdef readonly object error
    """The error passed to done(), or None."""
    cdef object _on_done


cdef class PrefixScan:
    cdef object _cursor
    cdef object _items
    cdef bytes _prefix
    cdef object _on_close
    cdef object _on_progress
    cdef Py_ssize_t _count
    cdef bint _closed
    cdef bint _cut_short
    cdef object _next(self)
    cdef int _close(self) except -1
