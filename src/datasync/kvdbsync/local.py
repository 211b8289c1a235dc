"""Local transactions: puts and deletes propagated through a Registry.

A plugin that feeds other plugins of the same process, with no store in
between, collects its changes in a transaction and commits them. The
commit sends one ChangeEvent per matching subscription of the Registry
and returns what the subscribers reported through done().

Keys and values are checked when they are added, with the rules of the
embedded store, so a transaction that would fail against the store fails
here too, at the same call.
"""

from datasync._core.events import Change
from datasync.errors import InvalidValueError, StoreClosedError
from datasync.keyval.lmdb.store import (DEFAULT_MAX_VALUE_SIZE, encode_key,
                                        encode_value)
from datasync.ops import Op

__all__ = ["BytesTxn", "ProtoTxn"]


class BytesTxn:
    """Puts of value bytes and deletes, committed through ``registry``.

    ``max_value_size`` is the largest value accepted, in bytes; it
    defaults to the embedded store's default. If put() or delete()
    rejects an operation, commit() raises the error again and sends
    nothing.
    """

    def __init__(self, registry, *, max_value_size=DEFAULT_MAX_VALUE_SIZE):
        self._registry = registry
        self.max_value_size = max_value_size
        self._changes = []
        self._failed = None
        self._finished = False
        #: Revision of the committed changes; None before commit() or
        #: when no subscription had anything to receive.
        self.revision = None

    def put(self, key, value):
        """Add a put of ``value`` (bytes) under ``key``; return self.

        Raises InvalidKeyError for a key the store would reject, and
        InvalidValueError for a value that is not bytes or is larger than
        ``max_value_size``.
        """
        self._check_pending()
        try:
            data = encode_key(key)
            value = encode_value(self._check_value(key, value), key,
                                 self.max_value_size)
        except Exception as exc:
            self._failed = exc
            raise
        self._changes.append(Change(data, Op.PUT, value))
        return self

    def delete(self, key):
        """Add a delete of ``key``; return self.

        Deleting a key that no put has propagated sends nothing for it.
        Raises InvalidKeyError for a key the store would reject.
        """
        self._check_pending()
        try:
            data = encode_key(key)
        except Exception as exc:
            self._failed = exc
            raise
        self._changes.append(Change(data, Op.DELETE))
        return self

    def commit(self, timeout=None):
        """Propagate every operation, in order, as one revision.

        Each subscription whose prefixes match gets one ChangeEvent.
        Waits up to ``timeout`` seconds (default: the registry's) for
        their done(), and returns the registry's DeliveryReport: a list
        of the errors they reported or timed out with, empty when every
        one applied the changes. Sets ``revision``.

        Raises the error of a rejected operation again, and
        StoreClosedError when the transaction was already committed.
        """
        self._check_pending()
        self._finished = True
        if self._failed is not None:
            raise type(self._failed)(
                "transaction not committed because an operation was "
                f"rejected: {self._failed}") from self._failed
        report = self._registry.propagate_changes(self._changes, timeout)
        self.revision = report.revision
        return report

    def _check_value(self, key, value):
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise InvalidValueError(
                f"value of key {key!r} must be bytes, got "
                f"{type(value).__name__}; use ProtoTxn for protobuf "
                "messages")
        return value

    def _check_pending(self):
        if self._finished:
            raise StoreClosedError("transaction was already committed")

    def __len__(self):
        """Number of operations added."""
        return len(self._changes)


class ProtoTxn(BytesTxn):
    """Puts of protobuf messages and deletes, committed through
    ``registry``.

    put() serializes the message at once, so later changes to the
    message object do not change what is committed.
    """

    def put(self, key, message):
        """Add a put of ``message`` under ``key``; return self.

        Raises InvalidKeyError for a key the store would reject, and
        InvalidValueError for anything but a protobuf message or for a
        serialized message larger than ``max_value_size``.
        """
        return super().put(key, message)

    def _check_value(self, key, value):
        if not (hasattr(value, "SerializeToString") and
                hasattr(value, "DESCRIPTOR")):
            raise InvalidValueError(
                f"value of key {key!r} must be a protobuf message, got "
                f"{type(value).__name__}; use BytesTxn for bytes")
        return value
