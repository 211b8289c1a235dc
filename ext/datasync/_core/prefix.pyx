# cython: language_level=3, boundscheck=False, wraparound=False
"""Prefix matching and fan-out.

The index is a trie over key bytes, so matching a key walks at most
len(key) nodes whatever the number of subscribers. Routing stamps each
subscriber with the number of the change being routed, which makes a key
that matches two prefixes of one subscriber reach it only once.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from datasync._core.events cimport KeyVal


cdef class Subscriber:
    """Base class of anything that receives routed changes."""


cdef class _Node:
    def __cinit__(self):
        self.children = {}
        self.subscribers = []


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
        cdef _Node child
        cdef const unsigned char *p = <const unsigned char *>(
            PyBytes_AS_STRING(prefix))
        cdef Py_ssize_t i
        for i in range(PyBytes_GET_SIZE(prefix)):
            child = node.children.get(p[i])
            if child is None:
                child = _Node()
                node.children[p[i]] = child
            node = child
        node.subscribers.append(subscriber)
        self._size += 1

    def remove(self, bytes prefix, Subscriber subscriber):
        """Remove one registration; return False if it was not there."""
        cdef list path = [self._root]
        cdef _Node node = self._root
        cdef const unsigned char *p = <const unsigned char *>(
            PyBytes_AS_STRING(prefix))
        cdef Py_ssize_t i, n = PyBytes_GET_SIZE(prefix)
        for i in range(n):
            node = node.children.get(p[i])
            if node is None:
                return False
            path.append(node)
        for i in range(len(node.subscribers)):
            if node.subscribers[i] is subscriber:
                del node.subscribers[i]
                break
        else:
            return False
        self._size -= 1

        # Prune nodes left with neither subscribers nor children, so that
        # a long-running agent that churns prefixes does not grow the trie.
        for i in range(n, 0, -1):
            node = path[i]
            if node.subscribers or node.children:
                break
            del (<_Node>path[i - 1]).children[p[i - 1]]
        return True

    def match(self, key):
        """Return the subscribers with a prefix of ``key``, each once."""
        cdef KeyVal probe = KeyVal(key, None)
        routed = self.route([probe])
        return [pair[0] for pair in routed]

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
        cdef Py_ssize_t i, n
        cdef object child
        for change in changes:
            self._stamp += 1
            node = self._root
            p = <const unsigned char *>PyBytes_AS_STRING(change._key)
            n = PyBytes_GET_SIZE(change._key)
            i = 0
            while True:
                for sub in node.subscribers:
                    if sub._stamp != self._stamp:
                        sub._stamp = self._stamp
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
                i += 1
        for i in range(len(out)):
            sub = out[i]
            out[i] = (sub, sub._batch)
            sub._batch = None
        return out
