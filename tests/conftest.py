"""Fixtures shared by the tests of the embedded store.

Every store lives in the test's tmp_path and is closed at teardown, so a
failing test leaves no dispatcher thread running into the next one.
"""

import os
import queue
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import settings

import datasync

# Examples run against real files, threads and servers on a 2-core CI
# machine shared with other jobs, so a per-example deadline would fail
# tests for the machine's load, not for a bug. Tests that set their own
# settings override this.
settings.register_profile("datasync", deadline=None)
settings.load_profile("datasync")

#: Seconds to wait for an event that should come; only a failing test
#: waits this long.
EVENT_TIMEOUT = 10.0


@pytest.fixture
def open_store(tmp_path):
    """Return a function that opens a store under tmp_path.

    ``open_store(name="store", **options)`` passes the options to Store.
    Every store it opened is closed at teardown.
    """
    stores = []

    def open_(name="store", **options):
        store = datasync.Store(tmp_path / name, **options)
        stores.append(store)
        return store

    yield open_
    for store in reversed(stores):
        store.close()


@pytest.fixture
def store(open_store):
    """A new, empty store in tmp_path."""
    return open_store()


def drain_until(chan, revision, timeout=EVENT_TIMEOUT, done=True):
    """Read events from ``chan`` until one has a revision >= ``revision``.

    Returns the events read, in order. Calls done() on each unless
    ``done`` is False. Fails the test if no such event arrives within
    ``timeout`` seconds.
    """
    events = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            event = chan.get(timeout=max(remaining, 0.0))
        except queue.Empty:
            pytest.fail(f"no event at revision {revision} or above within "
                        f"{timeout} s; got {events!r}")
        if done:
            event.done()
        events.append(event)
        if event.revision >= revision:
            return events


@pytest.fixture
def drain():
    """The drain_until helper: read a channel up to a revision."""
    return drain_until


def summarize(changes):
    """Return (revision, op, key, value, prev value) tuples of changes."""
    return [(c.revision, c.change_type.value, c.key, c.value, c.prev_value)
            for c in changes]


@pytest.fixture
def summary():
    """The summarize helper: changes as comparable tuples."""
    return summarize


def child_env():
    """Environment for a child Python that imports datasync like us."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Child:
    """A child Python process whose output is read line by line.

    Threads copy stdout lines into a queue and keep stderr, so reading
    can wait with a timeout and a failure can show what the child wrote.
    """

    def __init__(self, script, args):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *map(str, args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=child_env())
        self.pid = self.proc.pid
        self.lines = queue.Queue()
        self.stderr = []
        self._threads = [
            threading.Thread(target=self._copy, args=(
                self.proc.stdout, self.lines.put), daemon=True),
            threading.Thread(target=self._copy, args=(
                self.proc.stderr, self.stderr.append), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _copy(stream, sink):
        for line in stream:
            sink(line)
        sink(None)

    def readline(self, timeout=EVENT_TIMEOUT):
        """Return the next stdout line without its newline.

        Fails the test if none comes within ``timeout`` seconds or the
        child closed its stdout.
        """
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"child {self.pid} wrote no line within {timeout} "
                        f"s; stderr: {self.error_output()}")
        if line is None:
            self.proc.wait(timeout=timeout)
            pytest.fail(f"child {self.pid} ended with code "
                        f"{self.proc.returncode}; stderr: "
                        f"{self.error_output()}")
        return line.rstrip("\n")

    def send(self, line):
        """Write ``line`` and a newline to the child's stdin."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self):
        """Kill the child with SIGKILL and wait until it is reaped."""
        self.proc.kill()
        self.proc.wait(timeout=EVENT_TIMEOUT)

    def error_output(self):
        """Everything the child wrote to stderr so far."""
        return "".join(line for line in self.stderr if line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=EVENT_TIMEOUT)
        for thread in self._threads:
            thread.join(timeout=EVENT_TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # the child ended before reading what was sent


@pytest.fixture
def spawn_python():
    """Return a function that starts ``python -c SCRIPT ARGS...``.

    It returns a Child. Children still running at teardown are killed.
    """
    children = []

    def spawn(script, *args):
        child = Child(script, args)
        children.append(child)
        return child

    yield spawn
    for child in children:
        child.close()
