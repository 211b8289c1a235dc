"""Options of put and delete operations.

Each option is a small frozen object. ``PutOption`` and ``DelOption``
mark which operation an option applies to; a writer rejects an option
given to the wrong operation with InvalidOptionError.
"""

import dataclasses
import math

from datasync.errors import InvalidOptionError

__all__ = [
    "PutOption",
    "DelOption",
    "PutOptionMarker",
    "DelOptionMarker",
    "WithTTLOpt",
    "WithClientLifetimeTTLOpt",
    "WithPrefixOpt",
    "with_ttl",
    "with_client_lifetime_ttl",
    "with_prefix",
]


class PutOption:
    """Base class of every option accepted by ``put``."""

    __slots__ = ()


class DelOption:
    """Base class of every option accepted by ``delete``."""

    __slots__ = ()


class PutOptionMarker(PutOption):
    """Base class to derive a put option from."""

    __slots__ = ()


class DelOptionMarker(DelOption):
    """Base class to derive a delete option from."""

    __slots__ = ()


@dataclasses.dataclass(frozen=True)
class WithTTLOpt(PutOptionMarker):
    """Put option: the key is deleted ``ttl`` seconds after the put."""

    ttl: float


@dataclasses.dataclass(frozen=True)
class WithClientLifetimeTTLOpt(PutOptionMarker):
    """Put option: the key lives as long as the client that wrote it.

    Closing the writer deletes the key; so does the death of the writing
    process, once another process reaps it.
    """


@dataclasses.dataclass(frozen=True)
class WithPrefixOpt(DelOptionMarker):
    """Delete option: delete every key that starts with the given key."""


def with_ttl(seconds):
    """Return a put option that makes the key expire after ``seconds``.

    Raises InvalidOptionError unless ``seconds`` is a finite number > 0.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise InvalidOptionError(
            f"TTL must be a number of seconds, got {seconds!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidOptionError(
            f"TTL must be a finite number of seconds > 0, got {seconds!r}")
    return WithTTLOpt(float(seconds))


def with_client_lifetime_ttl():
    """Return a put option that binds the key to the writing client."""
    return WithClientLifetimeTTLOpt()


def with_prefix():
    """Return a delete option that deletes every key under the prefix."""
    return WithPrefixOpt()


def split_put_options(opts):
    """Return (ttl seconds or None, client lifetime flag) from options.

    Raises InvalidOptionError for a non-put option or conflicting ones.
    """
    ttl = None
    lifetime = False
    for opt in opts:
        if isinstance(opt, WithTTLOpt):
            if ttl is not None:
                raise InvalidOptionError(
                    f"with_ttl() given twice ({ttl!r} s and {opt.ttl!r} s);"
                    " pass one TTL per put")
            ttl = opt.ttl
        elif isinstance(opt, WithClientLifetimeTTLOpt):
            lifetime = True
        elif isinstance(opt, PutOption):
            raise InvalidOptionError(
                f"put option {opt!r} is not supported by this writer")
        else:
            raise InvalidOptionError(
                f"{opt!r} is not a put option; use with_ttl() or "
                "with_client_lifetime_ttl()")
    if ttl is not None and lifetime:
        raise InvalidOptionError(
            "with_ttl() and with_client_lifetime_ttl() cannot be combined;"
            " choose one lifetime for the key")
    return ttl, lifetime


def has_prefix_option(opts):
    """Return True if the delete options contain with_prefix().

    Raises InvalidOptionError for a non-delete option.
    """
    prefix = False
    for opt in opts:
        if isinstance(opt, WithPrefixOpt):
            prefix = True
        elif isinstance(opt, DelOption):
            raise InvalidOptionError(
                f"delete option {opt!r} is not supported by this writer")
        else:
            raise InvalidOptionError(
                f"{opt!r} is not a delete option; use with_prefix()")
    return prefix
