"""Wake-ups between processes that share a store.

Every process that watches a store binds a Unix datagram socket in the
store's notify directory. A writer sends one empty datagram to each
socket after a commit, so a watcher sleeps in recv() until something
changed and burns no CPU while idle. A datagram only means "read the
log", and losing one to a full socket buffer is harmless because the
receiver already has one pending.

Writers cache the list of sockets. A new listener commits a bump of the
store's listener generation after binding and reads the log only after
that, and every writer reads the generation in its own transaction and
lists the directory again when it changed. So a commit either wakes the
new socket or comes before the listener's first read of the log.
"""

import errno
import hashlib
import logging
import os
import select
import socket
import tempfile
import threading

log = logging.getLogger("datasync.store")

# sun_path has room for 108 bytes on Linux and 104 on macOS, with the NUL.
_MAX_SOCKET_PATH = 100



def notify_dir(store_path):
    """Directory of a store's sockets.

    It lives inside the store unless socket paths there would be too long,
    in which case it lives in the temporary directory, named after a hash
    of the store path so that every process finds the same one.
    """
    inside = os.path.join(store_path, "notify")
    if len(inside) + 24 <= _MAX_SOCKET_PATH:
        return inside
    digest = hashlib.sha256(store_path.encode()).hexdigest()[:24]
    return os.path.join(tempfile.gettempdir(), f"datasync-{digest}")


class Notifier:
    """Sends wake-ups to every listener and receives this process's own."""

    def __init__(self, store_path):
        self.directory = notify_dir(store_path)
        os.makedirs(self.directory, exist_ok=True)
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._listener = None
        self._address = None
        self._targets = []
        self._generation = None
        self._self_pending = False
        self._lock = threading.Lock()

    def listen(self, announce):
        """Bind this process's socket, then call ``announce()``.

        ``announce`` must commit a new listener generation; broadcasts of
        every commit after it reach this socket.
        """
        if self._listener is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address = os.path.join(self.directory,
                               f"{os.getpid()}-{id(self):x}.sock")
        try:
            os.unlink(address)
        except FileNotFoundError:
            pass
        sock.bind(address)
        sock.setblocking(False)
        self._listener = sock
        self._address = address
        announce()

    def wait(self, timeout):
        """Sleep until a wake-up arrives or ``timeout`` seconds pass.

        ``timeout`` None waits without limit. Returns True if woken.
        """
        if self._listener is None:
            raise RuntimeError("wait() needs listen() first")
        ready, _, _ = select.select([self._listener], [], [], timeout)
        if not ready:
            return False
        self._drain()
        # Cleared after the drain and before the caller reads the log:
        # a commit that skipped its wake-up because this flag was set
        # committed before this point, so that read finds it.
        self._self_pending = False
        return True

    def _drain(self):
        while True:
            try:
                self._listener.recv(16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return

    def wake_self(self):
        """Wake this process's own listener."""
        if self._address is not None:
            self._send(self._address)

    def broadcast(self, generation):
        """Wake every listening process, this one included.

        ``generation`` is the listener generation read in the commit's
        transaction; the socket list is read again when it changed.
        """
        for address in self._current_targets(generation):
            if address == self._address:
                # A wake-up of this process's own dispatcher is already
                # on its way; another would only cost a context switch.
                if self._self_pending:
                    continue
                self._self_pending = True
            self._send(address)

    def _current_targets(self, generation):
        with self._lock:
            if generation != self._generation:
                os.makedirs(self.directory, exist_ok=True)
                self._targets = [
                    os.path.join(self.directory, name)
                    for name in os.listdir(self.directory)
                    if name.endswith(".sock")]
                self._generation = generation
            return self._targets

    def _send(self, address):
        try:
            self._sender.sendto(b"", address)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                # The listener's process ended without removing its
                # socket (for example it was killed), so drop the file.
                self._forget(address)
            else:
                log.warning("cannot wake watcher at %s: %s", address, exc)

    def _forget(self, address):
        try:
            os.unlink(address)
        except FileNotFoundError:
            pass
        with self._lock:
            self._generation = None

    def close(self):
        """Unbind this process's socket and close both sockets."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self._address)
            except FileNotFoundError:
                pass
            self._address = None
        self._sender.close()
