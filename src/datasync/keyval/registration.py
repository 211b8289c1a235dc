"""The watch registration shared by the key-value backends."""

from datasync.errors import RegistrationError
from datasync.keyval.keys import encode_prefix

__all__ = ["Registration"]


class Registration:
    """Handle of one subscription on a backend (a WatchRegistration).

    ``owner`` is the backend's dispatcher: it provides add_prefix,
    remove_prefix, request_resync and remove, each taking the
    subscription.
    """

    def __init__(self, owner, sub):
        self._owner = owner
        self._sub = sub

    @property
    def resync_name(self):
        """Name of the subscription."""
        return self._sub.name

    @property
    def prefixes(self):
        """Prefixes watched, as str."""
        return [p.decode("utf-8", "surrogateescape")
                for p in self._sub.prefixes]

    def register(self, resync_name, key_prefix):
        """Add ``key_prefix``; its changes arrive from the next revision.

        Call resync() as well to get its current keys. Raises
        RegistrationError for another name or a prefix already watched.
        """
        if resync_name != self._sub.name:
            raise RegistrationError(
                f"registration is for {self._sub.name!r}, not "
                f"{resync_name!r}")
        self._owner.add_prefix(self._sub, encode_prefix(key_prefix))

    def unregister(self, key_prefix):
        """Stop watching ``key_prefix``.

        Raises RegistrationError if it is not watched.
        """
        self._owner.remove_prefix(self._sub, encode_prefix(key_prefix))

    def resync(self):
        """Send a new resync of every watched prefix, then the changes
        after it."""
        self._owner.request_resync(self._sub)

    def close(self):
        """End the subscription; calling it again does nothing."""
        if self._owner.remove(self._sub):
            self._closed()

    def _closed(self):
        """Release what the subscription held, once, after close()."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
