"""Real etcd servers and a cuttable TCP proxy for the etcd tests.

Tests reach etcd in one of three ways:

- ``$DATASYNC_TEST_ETCD`` (host:port) names a running etcd, as .ci/run
  starts one;
- otherwise, when the ``etcd`` binary is installed, a private etcd is
  started on free ports of 127.0.0.1 with a temporary data directory;
- otherwise the tests are skipped, unless ``$DATASYNC_REQUIRE_ETCD`` is
  set (CI sets it), when they fail.
"""

import os
import shutil
import signal
import socket
import subprocess
import threading

import pytest

from datasync.keyval.etcd.client import Client
from datasync.keyval.etcd.errors import EtcdUnavailableError

ENDPOINT_ENV = "DATASYNC_TEST_ETCD"
REQUIRE_ENV = "DATASYNC_REQUIRE_ETCD"

#: Seconds a starting etcd may take to respond.
START_TIMEOUT = 30.0


def etcd_binary():
    """Path of the etcd binary, or None."""
    return shutil.which("etcd")


def unavailable(reason):
    """Skip the test for ``reason``, or fail it when CI requires etcd."""
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{reason}, but ${REQUIRE_ENV} is set, so the etcd "
                    "tests must run")
    pytest.skip(f"{reason}; install Debian's etcd-server or set "
                f"${ENDPOINT_ENV}=host:port")


def free_port():
    """Return a TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(endpoint, timeout=START_TIMEOUT):
    """Wait until etcd at ``endpoint`` responds; return its revision."""
    client = Client(endpoint, timeout)
    try:
        return client.wait_ready(timeout)
    finally:
        client.close()


class EtcdServer:
    """A private etcd process on 127.0.0.1 with its own data directory.

    It can be stopped, killed and started again on the same ports and
    data, so tests can restart it under live clients.
    """

    def __init__(self, data_dir, name="datasync-test"):
        self.data_dir = str(data_dir)
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.endpoint = f"127.0.0.1:{self.client_port}"
        self.log_path = os.path.join(self.data_dir, "etcd.log")
        self.proc = None
        self._log = None

    def start(self):
        """Start etcd and wait until it responds.

        An etcd that does not respond within half of START_TIMEOUT is
        killed and started once more. A restart on the same ports and data
        was seen to hang once in a loaded CI run, with nothing in the log
        at warn level, and never since.
        """
        for _ in range(2):
            self._spawn()
            try:
                wait_ready(self.endpoint, timeout=START_TIMEOUT / 2)
                return self
            except EtcdUnavailableError:
                self.kill()
        raise RuntimeError(f"etcd did not respond at {self.endpoint} "
                           f"within {START_TIMEOUT / 2} s, twice; its log: "
                           f"{self.log_tail()}")

    def _spawn(self):
        os.makedirs(self.data_dir, exist_ok=True)
        peer = f"http://127.0.0.1:{self.peer_port}"
        client = f"http://{self.endpoint}"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [etcd_binary(), "--name", self.name,
             "--data-dir", os.path.join(self.data_dir, "data"),
             "--listen-client-urls", client,
             "--advertise-client-urls", client,
             "--listen-peer-urls", peer,
             "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"{self.name}={peer}",
             "--logger", "zap", "--log-level", "info"],
            stdout=self._log, stderr=subprocess.STDOUT)

    def log_tail(self, size=4000):
        """The end of etcd's log."""
        with open(self.log_path, "rb") as f:
            return f.read()[-size:].decode("utf-8", "replace")

    def kill(self):
        """Kill etcd with SIGKILL and wait until it is reaped."""
        self._end(signal.SIGKILL)

    def stop(self):
        """Stop etcd with SIGTERM and wait until it ends."""
        self._end(signal.SIGTERM)

    def _end(self, sig):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self._log.close()


class Proxy:
    """A TCP forwarder from a port of 127.0.0.1 to ``target``.

    ``cut()`` closes every connection and the listening socket, so new
    connections are refused as if the peer had gone. ``restore()``
    listens again on the same port.
    """

    def __init__(self, target):
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._sockets = set()
        self._threads = []
        self._listener = None
        self.restore()

    def restore(self):
        """Accept connections again."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        self._spawn(self._accept, listener)

    def cut(self):
        """Close the listener and every forwarded connection."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        if listener is not None:
            _close(listener)
        for sock in sockets:
            _close(sock)
        for thread in self._threads:
            thread.join(timeout=5.0)
        self._threads = []

    close = cut

    def _spawn(self, target, *args):
        thread = threading.Thread(target=target, args=args, daemon=True,
                                  name="test-proxy")
        thread.start()
        self._threads.append(thread)

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:
                    _close(client)
                    _close(upstream)
                    return
                self._sockets.update((client, upstream))
            self._spawn(self._pipe, client, upstream)
            self._spawn(self._pipe, upstream, client)

    def _pipe(self, source, sink):
        while True:
            try:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
            except OSError:
                break
        _close(source)
        _close(sink)


def _close(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.fixture(scope="session")
def etcd_endpoint(tmp_path_factory):
    """host:port of an etcd shared by the session's tests.

    Tests keep to keys under a prefix of their own, because the etcd is
    shared (and, in CI, started once by .ci/run).
    """
    endpoint = os.environ.get(ENDPOINT_ENV)
    if endpoint:
        try:
            wait_ready(endpoint, timeout=10.0)
        except EtcdUnavailableError as exc:
            pytest.fail(f"${ENDPOINT_ENV}={endpoint} does not respond: "
                        f"{exc}")
        yield endpoint
        return
    if etcd_binary() is None:
        unavailable("etcd binary not found and no etcd is configured")
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        unavailable(f"etcd could not be started: {exc}")
    yield server.endpoint
    server.stop()


@pytest.fixture
def private_etcd(tmp_path):
    """An EtcdServer of this test alone, started; stopped at teardown.

    Needs the etcd binary even in CI, because the test restarts it.
    """
    if etcd_binary() is None:
        unavailable("etcd binary not found, and this test must start and "
                    "restart an etcd of its own")
    server = EtcdServer(tmp_path / "etcd")
    try:
        server.start()
    except (OSError, RuntimeError) as exc:
        unavailable(f"etcd could not be started: {exc}")
    yield server
    server.stop()
