"""Helpers shared by the transport tests: watchers that record what they
receive, and a self-signed certificate for TLS."""

import queue
import subprocess

import pytest

#: Seconds to wait for something that should happen; only a failing
#: test waits this long.
WAIT = 10.0


class Recorder:
    """A watcher callback that records events and calls done().

    ``fail`` is a function of a change event that returns the error to
    report, or None. Every event is also put on ``events`` so that a test
    can wait for it.
    """

    def __init__(self, fail=None, answer=True):
        self.fail = fail
        self.answer = answer
        self.events = queue.Queue()

    def __call__(self, event):
        self.events.put(event)
        if not self.answer:
            return
        error = None
        if self.fail is not None and hasattr(event, "changes"):
            error = self.fail(event)
        event.done(error)

    def next(self, timeout=WAIT):
        """Return the next event, failing the test after ``timeout``."""
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no event within {timeout} s")

    def take(self, count, timeout=WAIT):
        """Return the next ``count`` events."""
        return [self.next(timeout) for _ in range(count)]

    def assert_idle(self):
        """Fail if an event is waiting."""
        assert self.events.empty(), f"unexpected {self.events.get()!r}"


def make_certificate(directory):
    """Write a self-signed certificate for 127.0.0.1 and localhost.

    Returns (cert path, key path). Needs the openssl command.
    """
    cert = directory / "cert.pem"
    key = directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True)
    return cert, key
