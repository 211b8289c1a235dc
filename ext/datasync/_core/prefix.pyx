# cython: language_level=3, boundscheck=False, wraparound=False
"""Prefix matching and fan-out.

The index is a radix tree (a trie whose single-child chains are merged
into one edge label) over key bytes. Matching a key compares at most
len(key) bytes and visits one node per branching point on its path,
whatever the number of subscribers. Routing stamps each subscriber with
the number of the change being routed, so a key that matches two
prefixes of one subscriber reaches it only once.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memcmp

from datasync._core.events cimport KeyVal

# Stamps come from one counter shared by every index, so a subscriber
# registered in several indexes never carries a stamp that another index
# could mistake for its own.
cdef uint64_t _stamp = 0


cdef class Subscriber:
    """Base class of anything that receives routed changes."""


cdef class _Node:
    def __cinit__(self, bytes label=b""):
        self.label = label
        self.children = {}
        self.subscribers = []


cdef inline Py_ssize_t _common(const unsigned char *a, Py_ssize_t na,
                               const unsigned char *b,
                               Py_ssize_t nb) noexcept:
    cdef Py_ssize_t i = 0
    while i < na and i < nb and a[i] == b[i]:
        i += 1
    return i


cdef class PrefixIndex:
    """Map of key prefixes to the subscribers registered under them."""

    def __cinit__(self):
        self._root = _Node()

    def __len__(self):
        """Number of (prefix, subscriber) pairs."""
        return self._size

    def add(self, bytes prefix, Subscriber subscriber):
        """Register ``subscriber`` under ``prefix``."""
        cdef _Node node = self._root
        cdef _Node child, middle
        cdef const unsigned char *p = <const unsigned char *>(
            PyBytes_AS_STRING(prefix))
        cdef Py_ssize_t n = PyBytes_GET_SIZE(prefix)
        cdef Py_ssize_t i = 0, same, size
        while i < n:
            child = node.children.get(p[i])
            if child is None:
                child = _Node(prefix[i:])
                node.children[p[i]] = child
                node = child
                break
            size = PyBytes_GET_SIZE(child.label)
            same = _common(<const unsigned char *>PyBytes_AS_STRING(
                child.label), size, p + i, n - i)
            if same < size:
                # The new prefix ends or branches inside the child's
                # label: split the edge at the divergence.
                middle = _Node(child.label[:same])
                child.label = child.label[same:]
                middle.children[(<const unsigned char *>PyBytes_AS_STRING(
                    child.label))[0]] = child
                node.children[p[i]] = middle
                child = middle
            node = child
            i += same
        node.subscribers.append(subscriber)
        self._size += 1

    cdef _Node _find(self, bytes prefix, list path):
        cdef _Node node = self._root
        cdef _Node child
        cdef const unsigned char *p = <const unsigned char *>(
            PyBytes_AS_STRING(prefix))
        cdef Py_ssize_t n = PyBytes_GET_SIZE(prefix)
        cdef Py_ssize_t i = 0, size
        path.append(node)
        while i < n:
            child = node.children.get(p[i])
            if child is None:
                return None
            size = PyBytes_GET_SIZE(child.label)
            if size > n - i or memcmp(PyBytes_AS_STRING(child.label),
                                      p + i, size) != 0:
                return None
            node = child
            path.append(node)
            i += size
        return node

    def remove(self, bytes prefix, Subscriber subscriber):
        """Remove one registration; return False if it was not there."""
        cdef list path = []
        cdef _Node node = self._find(prefix, path)
        cdef _Node parent, only
        cdef Py_ssize_t i
        if node is None:
            return False
        for i in range(len(node.subscribers)):
            if node.subscribers[i] is subscriber:
                del node.subscribers[i]
                break
        else:
            return False
        self._size -= 1

        # Keep the tree minimal, so that churning prefixes neither grows
        # it nor lengthens paths: drop empty leaves, then merge a node
        # left with one child and no subscribers into that child.
        for i in range(len(path) - 1, 0, -1):
            node = path[i]
            parent = path[i - 1]
            if node.subscribers:
                break
            if not node.children:
                del parent.children[(<const unsigned char *>(
                    PyBytes_AS_STRING(node.label)))[0]]
                continue
            if len(node.children) == 1:
                only = next(iter(node.children.values()))
                only.label = node.label + only.label
                parent.children[(<const unsigned char *>(
                    PyBytes_AS_STRING(only.label)))[0]] = only
            break
        return True

    def match(self, key):
        """Return the subscribers with a prefix of ``key``, each once."""
        cdef KeyVal probe = KeyVal(key, None)
        return [pair[0] for pair in self.route([probe])]

    cpdef list route(self, list changes):
        """Group ``changes`` per subscriber, keeping their order.

        Returns a list of (subscriber, changes) pairs, subscribers in the
        order their first change was routed.
        """
        cdef list out = []
        cdef KeyVal change
        cdef _Node node
        cdef Subscriber sub
        cdef const unsigned char *p
        cdef Py_ssize_t i, n, size
        cdef object child
        cdef uint64_t stamp
        global _stamp
        for change in changes:
            _stamp += 1
            stamp = _stamp
            node = self._root
            p = <const unsigned char *>PyBytes_AS_STRING(change._key)
            n = PyBytes_GET_SIZE(change._key)
            i = 0
            while True:
                for sub in node.subscribers:
                    if sub._stamp != stamp:
                        sub._stamp = stamp
                        if sub._batch is None:
                            sub._batch = []
                            out.append(sub)
                        sub._batch.append(change)
                if i == n or not node.children:
                    break
                child = node.children.get(p[i])
                if child is None:
                    break
                node = <_Node>child
                size = PyBytes_GET_SIZE(node.label)
                if size > n - i or memcmp(PyBytes_AS_STRING(node.label),
                                          p + i, size) != 0:
                    break
                i += size
        for i in range(len(out)):
            sub = out[i]
            out[i] = (sub, sub._batch)
            sub._batch = None
        return out
