# Table of contents of the prefix module: a byte trie that maps a key to
# the subscribers whose prefixes it starts with, and the fan-out that
# groups one revision's changes per subscriber.

from libc.stdint cimport uint64_t


cdef class Subscriber:
    cdef uint64_t _stamp
    cdef list _batch


cdef class _Node:
    cdef dict children
    cdef list subscribers


cdef class PrefixIndex:
    cdef _Node _root
    cdef uint64_t _stamp
    cdef Py_ssize_t _size

    cpdef list route(self, list changes)
