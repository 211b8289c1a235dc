"""Key-value classes of the sync layer.

``KeyVal``, ``Change``, ``ChangeEvent``, ``ResyncEvent`` and
``KVIterator`` are the compiled classes of the core, the same ones the
embedded store delivers. ``KeyValBytes`` and ``PrevRevisions`` are
written in Python on top of them.
"""

from datasync._core.events import (Change, ChangeEvent, KeyVal, KVIterator,
                                   ResyncEvent)

__all__ = ["KeyVal", "KeyValBytes", "Change", "ChangeEvent", "ResyncEvent",
           "KVIterator", "PrevRevisions"]


class KeyValBytes(KeyVal):
    """A KeyVal built from raw value bytes, which must be present.

    ``value`` is bytes, a bytearray or a memoryview (copied to bytes).
    Raises TypeError for anything else, None included.
    """

    def __init__(self, key, value, revision=0, create_revision=0,
                 version=0):
        if isinstance(value, (bytearray, memoryview)):
            value = bytes(value)
        if not isinstance(value, bytes):
            raise TypeError(
                f"value of key {key!r} must be bytes, got "
                f"{type(value).__name__}; serialize messages first")
        super().__init__(key, value, revision, create_revision, version)


def _key_bytes(key):
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8", "surrogateescape")
    raise TypeError(f"key must be str or bytes, got {type(key).__name__}")


class PrevRevisions:
    """The last value of each key, with its revision, create revision and
    version, as KeyVal objects.

    A producer records every put and delete here, and reads the entry
    before recording the next change of the same key to fill in its
    previous value. It is not thread-safe; the Registry guards it with
    its own lock.
    """

    def __init__(self, keyvals=()):
        self._values = {}
        self.replace(keyvals)

    def get(self, key):
        """Return the KeyVal last recorded for ``key``, or None."""
        return self._values.get(_key_bytes(key))

    def put(self, key, value, revision):
        """Record a put of ``value`` at ``revision``; return the previous
        KeyVal or None.

        The create revision carries over from the previous entry, and the
        version counts the puts since the key was created, from 1.
        """
        data = _key_bytes(key)
        prev = self._values.get(data)
        if prev is None:
            created, version = revision, 1
        else:
            created, version = prev.create_revision, prev.version + 1
        self._values[data] = KeyVal(data, value, revision, created, version)
        return prev

    def put_keyval(self, kv):
        """Record ``kv`` as it is; return the previous KeyVal or None."""
        if not isinstance(kv, KeyVal):
            raise TypeError(f"expected a KeyVal, got {type(kv).__name__}")
        prev = self._values.get(kv.key_bytes)
        self._values[kv.key_bytes] = kv
        return prev

    def delete(self, key):
        """Forget ``key``; return its last KeyVal, or None if unknown."""
        return self._values.pop(_key_bytes(key), None)

    def replace(self, keyvals):
        """Forget every key, then record each KeyVal of ``keyvals``."""
        values = {}
        for kv in keyvals:
            if not isinstance(kv, KeyVal):
                raise TypeError(
                    f"expected a KeyVal, got {type(kv).__name__}")
            values[kv.key_bytes] = kv
        self._values = values

    def keys(self):
        """Return the recorded keys as bytes, in byte order."""
        return sorted(self._values)

    def __contains__(self, key):
        return _key_bytes(key) in self._values

    def __len__(self):
        return len(self._values)

    def __iter__(self):
        """Iterate over the recorded KeyVal objects in key order."""
        return iter([self._values[key] for key in sorted(self._values)])
