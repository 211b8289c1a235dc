"""Wake-ups between processes that share a store.

Every process that watches a store binds a Unix datagram socket in the
store's notify directory. A writer sends one empty datagram to each
socket after a commit, so a watcher sleeps in recv() until something
changed and burns no CPU while idle. A datagram only says "look at the
log"; losing one to a full socket buffer is harmless because the
receiver already has one pending.
"""

import errno
import hashlib
import logging
import os
import select
import socket
import tempfile
import threading
import time

log = logging.getLogger("datasync.store")

# sun_path holds 108 bytes on Linux and 104 on macOS, with the NUL.
_MAX_SOCKET_PATH = 100

# A directory's mtime has the file system's timestamp granularity (a
# clock tick, 1 s on ext3, 2 s on FAT), so a socket bound in the same tick
# as the last change leaves the mtime as it was. A listing is only reused
# once it was taken this long after that mtime.
_RACY_NS = 2_000_000_000


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
        self._targets_mtime = None
        self._listed_at = 0
        self._lock = threading.Lock()

    def listen(self):
        """Bind this process's socket; broadcasts reach it from now on."""
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

    def broadcast(self):
        """Wake every listening process, this one included."""
        for address in self._current_targets():
            self._send(address)

    def _current_targets(self):
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except FileNotFoundError:
            os.makedirs(self.directory, exist_ok=True)
            mtime = None
        with self._lock:
            if (mtime is None or mtime != self._targets_mtime or
                    self._listed_at - mtime < _RACY_NS):
                self._listed_at = time.time_ns()
                self._targets = [
                    os.path.join(self.directory, name)
                    for name in os.listdir(self.directory)
                    if name.endswith(".sock")]
                self._targets_mtime = mtime
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
            self._targets_mtime = None

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
