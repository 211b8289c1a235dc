"""Protocols of the key-value backend under a KVDBSync.

The embedded ``datasync.Store`` satisfies these protocols as it is. A
backend for another store (etcd, say) has to keep the same contract:

- ``watch`` first sends a resync event (a snapshot taken at a revision
  R) and then one change event per revision above R that touches the
  prefixes, in revision order, each change with its previous value;
- given the same channel twice, it sends resync and change events in one
  ordered stream, so no change of a revision above R comes before the
  resync taken at R;
- ``resync()`` on a watch sends a new snapshot and then the changes
  after it, on the same terms.
"""

from typing import Any, Protocol, runtime_checkable

__all__ = ["Backend", "BackendWatch"]


@runtime_checkable
class BackendWatch(Protocol):
    """Handle of one subscription on a backend."""

    def register(self, resync_name: str, key_prefix: str) -> None:
        """Add ``key_prefix``; its changes arrive from the next revision."""

    def unregister(self, key_prefix: str) -> None:
        """Stop watching ``key_prefix``."""

    def resync(self) -> None:
        """Send a new resync of every prefix, then the changes after it."""

    def close(self) -> None:
        """End the subscription."""


@runtime_checkable
class Backend(Protocol):
    """A revisioned key-value store that KVDBSync reads and writes."""

    @property
    def revision(self) -> int:
        """The revision of the last committed transaction."""

    def put(self, key: str, value: Any, *opts: Any) -> int:
        """Store ``value`` (bytes or a protobuf message); return the
        revision."""

    def delete(self, key: str, *opts: Any) -> Any:
        """Delete ``key``, or with with_prefix() every key under it."""

    def watch(self, resync_name: str, change_chan: Any, resync_chan: Any,
              *key_prefixes: str) -> BackendWatch:
        """Subscribe to ``key_prefixes``: a resync, then the changes."""

    def close(self) -> None:
        """Release the backend."""
