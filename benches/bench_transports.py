"""Changes per second over the gRPC and REST transports, end to end.

Each round sends 1,000 puts of 100-byte values from one client over
loopback and ends when the client has the reply to the last one:

- ``serve`` rounds go to a ``datasync serve`` subprocess, where each put
  is one durable (synced) store commit, and its reply means committed;
- ``memory`` rounds go to an in-process adapter whose watcher calls
  done() on every change, and each reply carries that result.

gRPC puts are pipelined on one dataChanges stream (Client.submit_put);
REST puts are sequential requests on one keep-alive HTTP/1.1 connection.
Divide 1,000 by the mean round time for changes per second.
"""

import re
import subprocess
import sys

import httpx
import pytest

from datasync import grpcsync, restsync

CHANGES = 1_000
VALUE = b"v" * 100
OCTETS = {"Content-Type": "application/octet-stream"}
pytestmark = pytest.mark.benchmark(group="transports-1k", min_rounds=3,
                                   warmup=False)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Start a ``datasync serve`` subprocess; yield (gRPC target, REST URL)."""
    db = tmp_path_factory.mktemp("serve") / "store"
    process = subprocess.Popen(
        [sys.executable, "-m", "datasync", "serve", "--db", str(db),
         "--grpc", "127.0.0.1:0", "--rest", "127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "serving store" in line:
            break
    ports = dict(re.findall(r"(gRPC|REST) on 127\.0\.0\.1:(\d+)", line))
    yield f"127.0.0.1:{ports['gRPC']}", f"http://127.0.0.1:{ports['REST']}"
    process.terminate()
    process.wait(30)


def _grpc_round(client):
    futures = [client.submit_put(f"/bench/k{i % 100}", VALUE)
               for i in range(CHANGES)]
    for future in futures:
        future.result(60)


def _rest_round(client):
    for i in range(CHANGES):
        response = client.put(f"/bench/k{i % 100}", content=VALUE,
                              headers=OCTETS)
        response.raise_for_status()


def test_grpc_serve_puts(benchmark, served):
    """gRPC into ``datasync serve``: one synced commit per put."""
    with grpcsync.Client(served[0], timeout=60) as client:
        benchmark(_grpc_round, client)


def test_rest_serve_puts(benchmark, served):
    """REST into ``datasync serve``: one synced commit per put."""
    with httpx.Client(base_url=served[1], timeout=60) as client:
        benchmark(_rest_round, client)


def _acknowledge(event):
    event.done()


def test_grpc_memory_puts(benchmark):
    """gRPC into an in-process adapter whose watcher calls done()."""
    adapter = grpcsync.Adapter()
    adapter.watch("bench", _acknowledge, _acknowledge, "/bench/")
    with grpcsync.Server(adapter) as server, grpcsync.Client(
            f"127.0.0.1:{server.port}", timeout=60) as client:
        benchmark(_grpc_round, client)
    adapter.close()


def test_rest_memory_puts(benchmark):
    """REST into an in-process adapter whose watcher calls done()."""
    adapter = restsync.Adapter()
    adapter.watch("bench", _acknowledge, _acknowledge, "/bench/")
    with restsync.Server(adapter) as server, httpx.Client(
            base_url=f"http://127.0.0.1:{server.port}", timeout=60) as client:
        benchmark(_rest_round, client)
    adapter.close()
