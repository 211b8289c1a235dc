# Table of contents of the prefix module: a radix tree that maps a key to
# the subscribers whose prefixes it starts with, and the fan-out that
# groups one revision's changes per subscriber.

from libc.stdint cimport uint64_t


cdef class Subscriber:
    cdef uint64_t _stamp
    cdef list _batch


cdef class _Node:
    # Bytes on the edge from the parent; the root's label is empty.
    cdef bytes label
    # First byte of a child's label -> child.
    cdef dict children
    cdef list subscribers


cdef class PrefixIndex:
    cdef _Node _root
    cdef Py_ssize_t _size

    cdef _Node _find(self, bytes prefix, list path)
    cpdef list route(self, list changes)
