"""The operation carried by a change."""

import enum

__all__ = ["Op"]


class Op(str, enum.Enum):
    """Kind of a change: a put (create or update) or a delete.

    ``INVALID`` is the value of an operation that was never set.
    """

    INVALID = "invalid"
    PUT = "put"
    DELETE = "delete"
