"""Tests of ``datasync serve`` as a subprocess: changes pushed over gRPC
and REST reach ``datasync watch`` running in another process."""

import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading

import grpc
import httpx
import pytest

import datasync
from datasync import grpcsync

from transport_support import WAIT

READY = re.compile(r"serving store (\S+): (.*)$")


class Process:
    """A ``datasync`` subprocess whose stdout and stderr lines are queued."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "datasync", *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stdout = queue.Queue()
        self.stderr = queue.Queue()
        self.log = []
        for stream, sink in ((self.proc.stdout, self.stdout),
                             (self.proc.stderr, self.stderr)):
            threading.Thread(target=self._copy, args=(stream, sink),
                             daemon=True).start()

    def _copy(self, stream, sink):
        for line in stream:
            sink.put(line.rstrip("\n"))
        sink.put(None)

    def next_line(self, stream, timeout=WAIT):
        """Return the next line of ``stream`` (a queue), or fail."""
        try:
            line = stream.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no output from {self.proc.args} within {timeout} "
                        f"s; log so far: {self.log}")
        if line is None:
            pytest.fail(f"{self.proc.args} closed its output; exit status "
                        f"{self.proc.wait(WAIT)}; log: {self.log}")
        if stream is self.stderr:
            self.log.append(line)
        return line

    def wait_log(self, pattern, timeout=WAIT):
        """Return the match of the first stderr line matching ``pattern``."""
        while True:
            found = re.search(pattern, self.next_line(self.stderr, timeout))
            if found:
                return found

    def rest_of_log(self):
        """Read stderr to its end and return every line read."""
        while True:
            line = self.stderr.get(timeout=WAIT)
            if line is None:
                return self.log
            self.log.append(line)

    def stop(self, signum=signal.SIGTERM):
        """Send ``signum`` and return the exit status."""
        self.proc.send_signal(signum)
        return self.proc.wait(WAIT)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)


@pytest.fixture
def run():
    """Start ``datasync`` subprocesses, killed at teardown if still up."""
    processes = []

    def start(*args):
        process = Process(*args)
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()


def start_server(run, db, *options):
    """Start ``datasync serve`` on free ports; return (process, gRPC
    target, REST base URL)."""
    server = run("serve", "--db", db, "--grpc", "127.0.0.1:0", "--rest",
                 "127.0.0.1:0", *options)
    ready = server.wait_log(READY.pattern)
    ports = dict(re.findall(r"(gRPC|REST) on 127\.0\.0\.1:(\d+)",
                            ready.group(2)))
    return (server, f"127.0.0.1:{ports['gRPC']}",
            f"http://127.0.0.1:{ports['REST']}")


def watch_line(watcher):
    """Return the next JSON object that ``datasync watch`` printed."""
    return json.loads(watcher.next_line(watcher.stdout))


def test_changes_reach_watch_process(run, tmp_path):
    db = tmp_path / "store"
    with datasync.Store(db) as store:
        store.put("/cfg/ready", b"yes")
    server, target, url = start_server(run, db)
    watcher = run("watch", "--db", db, "/cfg/")
    first = watch_line(watcher)
    assert (first["op"], first["key"]) == ("resync", "/cfg/ready")

    with grpcsync.Client(target, timeout=WAIT) as client:
        client.put("/cfg/grpc", b"from gRPC")
        client.delete("/cfg/ready")
    change = watch_line(watcher)
    assert (change["op"], change["key"], change["value"]) == (
        "put", "/cfg/grpc", "from gRPC")
    change = watch_line(watcher)
    assert (change["op"], change["key"], change["prev_value"]) == (
        "delete", "/cfg/ready", "yes")

    response = httpx.put(url + "/cfg/rest", content=b"from REST",
                         headers={"Content-Type": "application/octet-stream"},
                         timeout=WAIT)
    assert response.status_code == 200
    change = watch_line(watcher)
    assert (change["op"], change["key"], change["value"]) == (
        "put", "/cfg/rest", "from REST")
    assert change["revision"] == response.json()["revision"]

    response = httpx.get(url + "/cfg/grpc", timeout=WAIT)
    assert response.json()["value_base64"] == "ZnJvbSBnUlBD"
    assert watcher.stop() == 0
    assert server.stop() == 0


def test_resync_over_rest_commits_difference(run, tmp_path):
    db = tmp_path / "store"
    with datasync.Store(db) as store:
        store.put("/cfg/keep", b"same")
        store.put("/cfg/drop", b"old")
    server, _, url = start_server(run, db)
    watcher = run("watch", "--db", db, "--from-revision", "2", "/cfg/")

    response = httpx.post(url + "/resync", timeout=WAIT, json={
        "/cfg/keep": "c2FtZQ==", "/cfg/new": "bmV3"})
    assert response.status_code == 200
    changes = [watch_line(watcher), watch_line(watcher)]
    assert sorted((c["op"], c["key"]) for c in changes) == [
        ("delete", "/cfg/drop"), ("put", "/cfg/new")]
    assert changes[0]["revision"] == 3
    assert changes[1]["revision"] == 3
    assert server.stop() == 0


def test_sigterm_stops_cleanly(run, tmp_path):
    server, target, _ = start_server(run, tmp_path / "store")
    assert server.stop(signal.SIGTERM) == 0
    log = server.rest_of_log()
    assert any("received SIGTERM; stopping" in line for line in log)
    assert any("stopped serving store" in line for line in log)
    with grpcsync.Client(target, timeout=2.0) as client:
        with pytest.raises(grpcsync.TransportError):
            client.ping()


def test_sigint_stops_cleanly(run, tmp_path):
    server, _, _ = start_server(run, tmp_path / "store")
    assert server.stop(signal.SIGINT) == 0
    assert any("received SIGINT" in line for line in server.rest_of_log())


def test_token_rejections_logged(run, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    server, target, url = start_server(run, tmp_path / "store",
                                       "--token-file", token_file)
    with grpcsync.Client(target, token="wrong", timeout=WAIT) as client:
        with pytest.raises(grpcsync.TransportError) as info:
            client.put("/cfg/x", b"x")
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    server.wait_log(r"rejected call of /msg.DataMsgService/dataChanges "
                    r"from .*: invalid bearer token")

    response = httpx.get(url + "/cfg/x", timeout=WAIT)
    assert response.status_code == 401
    server.wait_log(r"rejected GET /cfg/x from .*: missing bearer token")

    headers = {"Authorization": "Bearer s3cret"}
    with grpcsync.Client(target, token="s3cret", timeout=WAIT) as client:
        client.put("/cfg/x", b"x")
    response = httpx.get(url + "/cfg/x", headers=headers, timeout=WAIT)
    assert response.status_code == 200
    assert server.stop() == 0
    assert not any("s3cret" in line for line in server.rest_of_log())


def test_limits_and_content_types_rejected(run, tmp_path):
    db = tmp_path / "store"
    server, target, url = start_server(run, db, "--max-message-size",
                                       "2000", "--max-value-size", "1000")
    octets = {"Content-Type": "application/octet-stream"}
    response = httpx.put(url + "/cfg/big", content=b"x" * 2001,
                         headers=octets, timeout=WAIT)
    assert response.status_code == 413
    server.wait_log(r"rejected PUT /cfg/big .*2001 bytes")
    response = httpx.put(url + "/cfg/yaml", content=b"a: 1",
                         headers={"Content-Type": "text/yaml"}, timeout=WAIT)
    assert response.status_code == 400
    assert "text/yaml" in response.json()["error"]

    with grpcsync.Client(target, timeout=WAIT) as client:
        with pytest.raises(grpcsync.ProtocolError) as info:
            client.put("/cfg/big", b"x" * 1001)
        assert "1001 bytes" in str(info.value)
        server.wait_log(r"rejected dataChanges request .*1001 bytes")
        client.put("/cfg/small", b"x" * 1000)
    assert server.stop() == 0

    with datasync.Store(db) as store:
        assert [kv.key for kv in store.list_values("/cfg/")] == [
            "/cfg/small"]


def test_json_with_key_type(run, tmp_path):
    db = tmp_path / "store"
    server, _, url = start_server(
        run, db, "--key-type",
        "/cfg/if/=datasync.examples.netagent.Interface")
    response = httpx.put(url + "/cfg/if/eth0", timeout=WAIT,
                         content=b'{"name": "eth0", "mtu": 9000}',
                         headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    body = httpx.get(url + "/cfg/if/eth0", timeout=WAIT).json()
    assert body["value"] == {"name": "eth0", "mtu": 9000}
    assert server.stop() == 0


def test_no_transport_is_an_error(run, tmp_path):
    process = run("serve", "--db", tmp_path / "store")
    assert process.proc.wait(WAIT) == 1
    assert "nothing to serve" in process.rest_of_log()[-1]


def test_busy_port_is_an_error(run, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = run("serve", "--db", tmp_path / "store", "--rest",
                      f"127.0.0.1:{port}")
        assert process.proc.wait(WAIT) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in process.rest_of_log()[-1]


def test_json_named_in_content_type(run, tmp_path):
    server, _, url = start_server(run, tmp_path / "store")
    content_type = ("application/json; "
                    "proto=datasync.examples.netagent.Interface")
    response = httpx.put(url + "/cfg/if/eth1", timeout=WAIT,
                         content=b'{"name": "eth1"}',
                         headers={"Content-Type": content_type})
    assert response.status_code == 200
    response = httpx.get(url + "/cfg/if/eth1", timeout=WAIT, params={
        "proto": "datasync.examples.netagent.Interface"})
    assert response.json()["value"] == {"name": "eth1"}
    assert server.stop() == 0
