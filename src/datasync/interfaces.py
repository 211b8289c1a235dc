"""The datasync interfaces, as typing.Protocol classes.

Backends and transports implement them; agents program against them.
Every protocol is runtime-checkable, so ``isinstance`` works on any
object that has the members.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from datasync.ops import Op
from datasync.options import PutOption

__all__ = [
    "CallbackResult",
    "WithKey",
    "WithRevision",
    "WithChangeType",
    "WithPrevValue",
    "LazyValue",
    "KeyVal",
    "ChangeValue",
    "ProtoWatchResp",
    "KeyValIterator",
    "ChangeEvent",
    "ResyncEvent",
    "WatchRegistration",
    "KeyValProtoWatcher",
    "KeyProtoValWriter",
]

M = TypeVar("M")


@runtime_checkable
class CallbackResult(Protocol):
    """Lets the receiver of an event report whether it applied it."""

    def done(self, error: BaseException | None = None) -> None:
        """Report None when the event was applied, else the error."""


@runtime_checkable
class WithKey(Protocol):
    """Something that has a key."""

    @property
    def key(self) -> str:
        """The key, as text."""


@runtime_checkable
class WithRevision(Protocol):
    """Something that has a revision."""

    @property
    def revision(self) -> int:
        """Revision of the transaction that wrote the value."""


@runtime_checkable
class WithChangeType(Protocol):
    """Something that is a put or a delete."""

    @property
    def change_type(self) -> Op:
        """Op.PUT or Op.DELETE."""


@runtime_checkable
class LazyValue(Protocol):
    """A value kept as bytes until it is parsed into a message."""

    def get_value(self, message: M) -> M | None:
        """Parse the value into ``message`` and return it."""


@runtime_checkable
class WithPrevValue(Protocol):
    """Something that carries the value before a change."""

    def get_prev_value(self, message: Any) -> bool:
        """Parse the previous value into ``message``; False if none."""


@runtime_checkable
class KeyVal(WithKey, LazyValue, WithRevision, Protocol):
    """A key with its lazily parsed value and its revision."""


@runtime_checkable
class ChangeValue(KeyVal, WithChangeType, Protocol):
    """One propagated change: a put or delete of a key."""


@runtime_checkable
class ProtoWatchResp(ChangeValue, WithPrevValue, Protocol):
    """A change together with the previous value of its key."""


@runtime_checkable
class KeyValIterator(Protocol):
    """Iterator over the key-values of one prefix."""

    def get_next(self) -> tuple[KeyVal | None, bool]:
        """Return ``(kv, False)``, or ``(None, True)`` after the last."""

    def __iter__(self) -> Iterator[KeyVal]:
        """Iterate over the remaining key-values."""


@runtime_checkable
class ChangeEvent(CallbackResult, Protocol):
    """The changes of one revision that match a subscription."""

    @property
    def changes(self) -> Sequence[ProtoWatchResp]:
        """The changes, in commit order."""


@runtime_checkable
class ResyncEvent(CallbackResult, Protocol):
    """A snapshot of every key under a subscription's prefixes."""

    @property
    def values(self) -> Mapping[str, KeyValIterator]:
        """Each prefix mapped to an iterator over its key-values."""


@runtime_checkable
class WatchRegistration(Protocol):
    """Handle of a subscription; closing it stops the events."""

    def register(self, resync_name: str, key_prefix: str) -> None:
        """Add ``key_prefix`` to the subscription named ``resync_name``."""

    def unregister(self, key_prefix: str) -> None:
        """Stop watching ``key_prefix``."""

    def close(self) -> None:
        """End the subscription."""

    def __enter__(self) -> WatchRegistration:
        """Return the registration itself."""

    def __exit__(self, *exc_info: object) -> None:
        """Close the registration."""


@runtime_checkable
class KeyValProtoWatcher(Protocol):
    """Source of change and resync events for key prefixes."""

    def watch(self, resync_name: str, change_chan: Any, resync_chan: Any,
              *key_prefixes: str) -> WatchRegistration:
        """Subscribe to ``key_prefixes``.

        ``change_chan`` and ``resync_chan`` are each a ``queue.Queue``, an
        ``asyncio.Queue`` or a callable taking the event.
        """


@runtime_checkable
class KeyProtoValWriter(Protocol):
    """Sink that stores protobuf messages under keys."""

    def put(self, key: str, message: Any, *opts: PutOption) -> Any:
        """Store ``message`` under ``key``."""


