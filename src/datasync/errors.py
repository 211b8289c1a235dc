"""Exceptions raised by datasync.

Every exception derives from DatasyncError. Messages name the value that
was rejected and what to do next.
"""

__all__ = [
    "DatasyncError",
    "InvalidKeyError",
    "InvalidValueError",
    "InvalidOptionError",
    "ValueParseError",
    "CompactedError",
    "MapFullError",
    "InvalidStoreError",
    "StoreClosedError",
    "NotReadyError",
    "RegistrationError",
    "DeliveryTimeoutError",
    "AggregateError",
]


class DatasyncError(Exception):
    """Base class of every error raised by datasync."""


class InvalidKeyError(DatasyncError, ValueError):
    """A key is empty, too long, or of the wrong type."""


class InvalidValueError(DatasyncError, ValueError):
    """A value is of the wrong type or too large."""


class InvalidOptionError(DatasyncError, ValueError):
    """An option does not apply to the operation it was given to."""


class ValueParseError(DatasyncError, ValueError):
    """Stored bytes are not a valid message of the requested type."""


class CompactedError(DatasyncError):
    """The requested revisions were dropped from the revision log.

    ``oldest_revision`` is the oldest revision whose changes can still be
    read; resume from ``oldest_revision - 1`` or take a resync.
    """

    def __init__(self, message, oldest_revision):
        super().__init__(message)
        self.oldest_revision = oldest_revision


class MapFullError(DatasyncError):
    """The LMDB map reached its maximum size.

    Nothing of the failed transaction was written. Raise ``max_map_size``
    when opening the store, or compact and delete data.
    """

    def __init__(self, message, map_size):
        super().__init__(message)
        self.map_size = map_size


class InvalidStoreError(DatasyncError):
    """A path is not a datasync store, or the store file is damaged."""


class StoreClosedError(DatasyncError):
    """The store or registration was used after close()."""


class NotReadyError(DatasyncError):
    """The backend is not ready to take writes yet."""


class RegistrationError(DatasyncError):
    """A watch registration was given an unknown or duplicate name."""


class DeliveryTimeoutError(DatasyncError):
    """A subscriber did not report done() within the timeout."""


class AggregateError(DatasyncError, ExceptionGroup):
    """Several operations failed; ``exceptions`` contains each error."""

    def __new__(cls, message, errors):
        return super().__new__(cls, message, list(errors))

    def __init__(self, message, errors):
        super().__init__(message, list(errors))
