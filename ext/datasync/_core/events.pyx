# cython: language_level=3, boundscheck=False, wraparound=False
"""Stored value headers, revision log records and event classes.

A stored value is a 32-byte header followed by the value bytes. A log
record holds every change of one revision:

    uint32 count, then per change:
    uint8 op, uint64 create_revision, uint64 version,
    uint32 key length, uint32 value length, uint32 previous value length,
    key, value, previous value

Integers are little-endian; a length of 0xFFFFFFFF means "no value".
Events keep a reference to the record and offsets into it, so a value is
copied out only when a consumer asks for it.
"""

from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_FromStringAndSize,
                            PyBytes_GET_SIZE)
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from cpython.ref cimport Py_INCREF, Py_XDECREF
cimport cython
from libc.string cimport memcmp, memcpy

import lmdb

from datasync.errors import (InvalidStoreError, StoreClosedError,
                             ValueParseError)
from datasync.ops import Op

NO_VALUE = 0xFFFFFFFF

# Keys a PrefixScan reads between two calls of its on_progress hook.
PROGRESS_EVERY = 65536

# Size of the fixed part of one change in a log record.
cdef enum:
    CHANGE_FIXED = 1 + 8 + 8 + 4 + 4 + 4

_OP_NAMES = {OP_PUT: Op.PUT, OP_DELETE: Op.DELETE}


cdef inline uint64_t _load64(const char *p) noexcept:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef inline uint32_t _load32(const char *p) noexcept:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef Header read_header(bytes stored) except *:
    cdef Header h
    if PyBytes_GET_SIZE(stored) < HEADER_SIZE:
        raise InvalidStoreError(
            f"stored value of {len(stored)} bytes is shorter than the "
            f"{HEADER_SIZE}-byte header; the store file is damaged")
    memcpy(&h, PyBytes_AS_STRING(stored), HEADER_SIZE)
    return h


cdef bytes build_stored(Header header, bytes value):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + n)
    cdef char *p = PyBytes_AS_STRING(out)
    memcpy(p, &header, HEADER_SIZE)
    memcpy(p + HEADER_SIZE, PyBytes_AS_STRING(value), n)
    return out


def header_of(bytes stored):
    """Return (create_revision, mod_revision, version, lease) of a value."""
    cdef Header h = read_header(stored)
    return h.create_revision, h.mod_revision, h.version, h.lease


cdef class RecordWriter:
    """Growable buffer that encodes the changes of one revision.

    The buffer is the bytes object that finish() returns, grown in place,
    so a record of many megabytes is never copied once more at the end.
    """

    def __cinit__(self):
        self._out = NULL
        self._buf = NULL
        self._len = 4
        self._cap = 0
        self._count = 0
        self._reserve(256)

    def __dealloc__(self):
        Py_XDECREF(self._out)

    cdef int _reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t need = self._len + extra
        cdef Py_ssize_t cap = self._cap
        cdef object fresh
        if need <= cap:
            return 0
        if cap == 0:
            cap = 256
        while cap < need:
            cap *= 2
        if self._out == NULL:
            fresh = PyBytes_FromStringAndSize(NULL, cap)
            Py_INCREF(fresh)
            self._out = <PyObject *>fresh
        else:
            # The writer holds the only reference, which resizing needs.
            _PyBytes_Resize(&self._out, cap)
        self._buf = PyBytes_AS_STRING(<object>self._out)
        self._cap = cap
        return 0

    cdef int _append(self, const char *data, Py_ssize_t size) except -1:
        self._reserve(size)
        memcpy(self._buf + self._len, data, size)
        self._len += size
        return 0

    cdef int add(self, uint8_t op, uint64_t create_revision,
                 uint64_t version, bytes key, bytes value, Py_ssize_t voff,
                 bytes prev, Py_ssize_t poff) except -1:
        """Append one change; value and prev are read from their offset."""
        cdef uint32_t klen = <uint32_t>PyBytes_GET_SIZE(key)
        cdef uint32_t vlen = NO_VALUE
        cdef uint32_t plen = NO_VALUE
        cdef char *p
        if value is not None:
            vlen = <uint32_t>(PyBytes_GET_SIZE(value) - voff)
        if prev is not None:
            plen = <uint32_t>(PyBytes_GET_SIZE(prev) - poff)
        self._reserve(CHANGE_FIXED)
        p = self._buf + self._len
        p[0] = <char>op
        memcpy(p + 1, &create_revision, 8)
        memcpy(p + 9, &version, 8)
        memcpy(p + 17, &klen, 4)
        memcpy(p + 21, &vlen, 4)
        memcpy(p + 25, &plen, 4)
        self._len += CHANGE_FIXED
        self._append(PyBytes_AS_STRING(key), klen)
        if value is not None:
            self._append(PyBytes_AS_STRING(value) + voff, vlen)
        if prev is not None:
            self._append(PyBytes_AS_STRING(prev) + poff, plen)
        self._count += 1
        return 0

    cdef bytes finish(self):
        cdef object out
        memcpy(self._buf, &self._count, 4)
        _PyBytes_Resize(&self._out, self._len)
        out = <object>self._out
        Py_XDECREF(self._out)
        self._out = NULL
        self._buf = NULL
        self._cap = 0
        return out

    @property
    def count(self):
        return self._count


cdef extern from "Python.h":
    int _PyBytes_Resize(PyObject **bytes, Py_ssize_t size) except -1


# Key-values and changes refer only to bytes and str, so they can never be
# part of a reference cycle; leaving them out of the cyclic garbage
# collector saves its passes over the many that a large commit creates.
@cython.no_gc
@cython.freelist(1024)
cdef class KeyVal:
    """A key with its value bytes, revision, create revision and version.

    The value stays bytes until ``get_value`` parses it.
    """

    def __init__(self, key, value, uint64_t revision=0,
                 uint64_t create_revision=0, uint64_t version=0):
        self._key = _key_bytes(key)
        self._buf = value
        self._voff = 0
        self._vlen = -1 if value is None else len(value)
        self.revision = revision
        self.create_revision = create_revision
        self.version = version

    @property
    def key(self):
        """The key as text (UTF-8; undecodable bytes are escaped)."""
        if self._key_text is None:
            self._key_text = PyUnicode_DecodeUTF8(
                PyBytes_AS_STRING(self._key), PyBytes_GET_SIZE(self._key),
                "surrogateescape")
        return self._key_text

    @property
    def key_bytes(self):
        """The key exactly as stored."""
        return self._key

    @property
    def value(self):
        """The value bytes, or None when the change is a delete."""
        if self._vlen < 0:
            return None
        if self._voff == 0 and self._vlen == PyBytes_GET_SIZE(self._buf):
            return self._buf
        return PyBytes_FromStringAndSize(
            PyBytes_AS_STRING(self._buf) + self._voff, self._vlen)

    def get_value(self, message):
        """Parse the value into ``message`` and return it.

        Returns None, leaving ``message`` untouched, when there is no value
        (a delete). Raises ValueParseError when the bytes are not a valid
        message of that type.
        """
        value = self.value
        if value is None:
            return None
        _parse(message, value, self)
        return message

    def __repr__(self):
        return (f"{type(self).__name__}(key={self.key!r}, "
                f"revision={self.revision})")


@cython.no_gc
@cython.freelist(1024)
cdef class Change(KeyVal):
    """One put or delete, with its previous value when the key existed."""

    def __init__(self, key, change_type, value=None, prev_value=None,
                 uint64_t revision=0, uint64_t create_revision=0,
                 uint64_t version=0):
        op = Op(change_type)
        if op is Op.INVALID:
            raise ValueError(
                "change_type must be Op.PUT or Op.DELETE, got Op.INVALID")
        if op is Op.PUT and value is None:
            raise ValueError(f"a put of key {key!r} needs a value")
        if op is Op.DELETE:
            value = None
        self._key = _key_bytes(key)
        self.revision = revision
        self.create_revision = create_revision
        self.version = version
        self._op = OP_PUT if op is Op.PUT else OP_DELETE
        # Value and previous value share one buffer, laid out as in a
        # decoded log record.
        self._buf = (value or b"") + (prev_value or b"")
        self._voff = 0
        self._vlen = -1 if value is None else len(value)
        self._poff = 0 if value is None else len(value)
        self._plen = -1 if prev_value is None else len(prev_value)

    @property
    def change_type(self):
        """Op.PUT or Op.DELETE."""
        return _OP_NAMES[self._op]

    @property
    def prev_value(self):
        """The value before this change, or None if the key was absent."""
        if self._plen < 0:
            return None
        return PyBytes_FromStringAndSize(
            PyBytes_AS_STRING(self._buf) + self._poff, self._plen)

    def get_prev_value(self, message):
        """Parse the previous value into ``message``.

        Returns True when the key had a previous value, False (leaving
        ``message`` untouched) when it did not.
        """
        prev = self.prev_value
        if prev is None:
            return False
        _parse(message, prev, self)
        return True

    def __repr__(self):
        return (f"Change({self.change_type.name}, key={self.key!r}, "
                f"revision={self.revision})")


cdef object _key_bytes(key):
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return (<str>key).encode("utf-8", "surrogateescape")
    raise TypeError(f"key must be str or bytes, got {type(key).__name__}")


cdef object _parse(message, bytes data, KeyVal owner):
    from google.protobuf.message import DecodeError

    if not hasattr(message, "ParseFromString"):
        raise TypeError(
            "get_value needs a protobuf message instance, got "
            f"{type(message).__name__}; use .value for the raw bytes")
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        name = message.DESCRIPTOR.full_name
        raise ValueParseError(
            f"value of key {owner.key!r} at revision {owner.revision} is "
            f"not a valid {name}: {exc}; read it with the message type "
            "the writer used, or use .value for the raw bytes") from exc


cdef KeyVal make_keyval(bytes key, bytes stored):
    cdef Header h = read_header(stored)
    cdef KeyVal kv = KeyVal.__new__(KeyVal)
    kv._key = key
    kv._buf = stored
    kv._voff = HEADER_SIZE
    kv._vlen = PyBytes_GET_SIZE(stored) - HEADER_SIZE
    kv.revision = h.mod_revision
    kv.create_revision = h.create_revision
    kv.version = h.version
    return kv


def keyval_from_stored(bytes key, bytes stored):
    """Build a KeyVal from a key and its stored value with header."""
    return make_keyval(key, stored)


cdef list decode_record(bytes record, uint64_t revision):
    cdef const char *base = PyBytes_AS_STRING(record)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(record)
    cdef Py_ssize_t pos = 4
    cdef uint32_t count, i, klen, vlen, plen
    cdef Change ch
    cdef list out = []
    if size < 4:
        raise InvalidStoreError(
            f"log record of revision {revision} is truncated")
    count = _load32(base)
    for i in range(count):
        if pos + CHANGE_FIXED > size:
            raise InvalidStoreError(
                f"log record of revision {revision} is truncated")
        ch = Change.__new__(Change)
        ch._op = <uint8_t>base[pos]
        ch.create_revision = _load64(base + pos + 1)
        ch.version = _load64(base + pos + 9)
        klen = _load32(base + pos + 17)
        vlen = _load32(base + pos + 21)
        plen = _load32(base + pos + 25)
        pos += CHANGE_FIXED
        if pos + klen > size:
            raise InvalidStoreError(
                f"log record of revision {revision} is truncated")
        ch._key = PyBytes_FromStringAndSize(base + pos, klen)
        pos += klen
        ch._buf = record
        ch.revision = revision
        if vlen == NO_VALUE:
            ch._vlen = -1
        else:
            ch._voff = pos
            ch._vlen = vlen
            pos += vlen
        if plen == NO_VALUE:
            ch._plen = -1
        else:
            ch._poff = pos
            ch._plen = plen
            pos += plen
        if pos > size:
            raise InvalidStoreError(
                f"log record of revision {revision} is truncated")
        out.append(ch)
    return out


def decode_log_record(bytes record, uint64_t revision):
    """Decode a log record into its list of Change objects."""
    return decode_record(record, revision)


cdef class ChangeEvent:
    """The changes of one revision that match a subscription.

    ``done(error)`` reports whether the subscriber applied them.
    """

    def __init__(self, list changes, uint64_t revision, on_done=None):
        self.changes = changes
        self.revision = revision
        self._on_done = on_done

    def done(self, error=None):
        """Report the outcome: None when applied, else the error.

        Only the first call counts; later calls are ignored.
        """
        if self.is_done:
            return
        self.is_done = True
        self.error = error
        if self._on_done is not None:
            callback, self._on_done = self._on_done, None
            callback(self, error)

    def __len__(self):
        return len(self.changes)

    def __iter__(self):
        return iter(self.changes)

    def __repr__(self):
        return (f"ChangeEvent(revision={self.revision}, "
                f"changes={len(self.changes)})")


cdef class KVIterator:
    """Iterator over the key-values of one prefix in a resync.

    ``get_next()`` returns ``(kv, False)`` while values remain, then
    ``(None, True)``. It is also a plain Python iterator.
    """

    def __init__(self, source, on_exhausted=None):
        self._source = iter(source)
        self._on_exhausted = on_exhausted
        if type(self._source) is PrefixScan:
            self._scan = <PrefixScan>self._source

    def get_next(self):
        """Return ``(kv, all_received)``; kv is None once all are read."""
        if self._exhausted:
            return None, True
        try:
            return next(self._source), False
        except StopIteration:
            self._finish()
            return None, True

    def _finish(self):
        self._exhausted = True
        if self._on_exhausted is not None:
            callback, self._on_exhausted = self._on_exhausted, None
            callback()

    def __iter__(self):
        return self

    def __next__(self):
        cdef object kv
        if self._exhausted:
            raise StopIteration
        if self._scan is not None:
            # Read the store's scan directly, without a Python-level
            # call per key.
            kv = self._scan._next()
            if kv is None:
                self._finish()
                raise StopIteration
            return kv
        try:
            return next(self._source)
        except StopIteration:
            self._finish()
            raise


cdef class ResyncEvent:
    """A snapshot of a subscription's prefixes taken at one revision.

    ``values`` maps each prefix to a KVIterator over its keys. After the
    subscriber has applied the snapshot it calls ``done(error)``.
    """

    def __init__(self, dict values, uint64_t revision, on_done=None):
        self.values = values
        self.revision = revision
        self._on_done = on_done

    def done(self, error=None):
        """Report the outcome: None when applied, else the error.

        Only the first call counts; later calls are ignored.
        """
        if self.is_done:
            return
        self.is_done = True
        self.error = error
        if self._on_done is not None:
            callback, self._on_done = self._on_done, None
            callback(self, error)

    def __repr__(self):
        return (f"ResyncEvent(revision={self.revision}, "
                f"prefixes={list(self.values)})")


cdef class PrefixScan:
    """Iterator of KeyVal over the keys under a prefix in an LMDB cursor.

    ``on_close`` runs once when the scan ends or is closed, so the owner
    can end the read transaction. ``on_progress`` runs after every
    PROGRESS_EVERY keys.
    """

    def __init__(self, cursor, bytes prefix, on_close=None,
                 on_progress=None):
        self._cursor = cursor
        self._prefix = prefix
        self._on_close = on_close
        self._on_progress = on_progress
        self._count = 0
        if cursor.set_range(prefix):
            self._items = cursor.iternext(keys=True, values=True)
        else:
            self._close()

    def __iter__(self):
        return self

    def __next__(self):
        kv = self._next()
        if kv is None:
            raise StopIteration
        return kv

    cdef object _next(self):
        """Return the next KeyVal, or None after the last one."""
        cdef bytes key, stored
        cdef Py_ssize_t plen = PyBytes_GET_SIZE(self._prefix)
        if self._closed:
            if self._cut_short:
                # Ending quietly here would hand the subscriber a partial
                # snapshot that looks complete.
                raise StoreClosedError(
                    f"the resync values under prefix {self._prefix!r} "
                    "were released (done() was called) before all were "
                    "read; read every value first, then call done()")
            return None
        try:
            key, stored = next(self._items)
        except StopIteration:
            self._close()
            return None
        except lmdb.Error as exc:
            self._close()
            # Imported on use, because loading the lmdb backend package
            # imports this module.
            from datasync.keyval.lmdb.env import DAMAGE_ERRORS
            if isinstance(exc, DAMAGE_ERRORS):
                raise InvalidStoreError(
                    f"cannot read the resync values under prefix "
                    f"{self._prefix!r}: {exc}; the store file is damaged"
                ) from exc
            # Otherwise the store was closed, which closed its LMDB
            # environment and the read transaction under this scan.
            raise StoreClosedError(
                f"cannot read the resync values under prefix "
                f"{self._prefix!r}: {exc}; read them before the store is "
                "closed") from exc
        if (PyBytes_GET_SIZE(key) < plen or
                memcmp(PyBytes_AS_STRING(key),
                       PyBytes_AS_STRING(self._prefix), plen) != 0):
            self._close()
            return None
        self._count += 1
        if self._on_progress is not None and \
                self._count % PROGRESS_EVERY == 0:
            self._on_progress()
        return make_keyval(key, stored)

    def close(self):
        """End the scan early and release what it holds.

        Reading on after an early close raises StoreClosedError.
        """
        if not self._closed:
            self._cut_short = True
        self._close()

    cdef int _close(self) except -1:
        if self._closed:
            return 0
        self._closed = True
        self._items = None
        self._cursor = None
        if self._on_close is not None:
            callback, self._on_close = self._on_close, None
            callback()
        return 0
