"""Latency of a watch across processes.

A child process watches the store with a callable channel and reports
CLOCK_MONOTONIC (shared by all processes on Linux) when its callback
runs, and the parent records the same clock when commit() returns. The
figures are the median and 99th percentile of the difference over 1,000
commits. The baseline is the floor of any cross-process wake-up: one
Unix datagram from the parent to a child blocked in recv(), timed the
same way.
"""

import os
import socket
import statistics
import subprocess
import sys
import time

import pytest

import datasync

COMMITS = 1_000

pytestmark = pytest.mark.benchmark(group="cross-process", min_rounds=1,
                                   warmup=False)

WATCHER = r"""
import os, sys, time, threading
import datasync
store = datasync.Store(sys.argv[1], durable=False)
out = os.fdopen(int(sys.argv[2]), "w", buffering=1)
ready = threading.Event()
def on_change(event):
    now = time.monotonic_ns()
    for change in event.changes:
        out.write(f"{change.key} {now}\n")
    event.done()
def on_resync(event):
    event.done()
    ready.set()
registration = store.watch("latency", on_change, on_resync, "/bench/")
ready.wait(30)
out.write("ready\n")
sys.stdin.read()
"""

ECHO = r"""
import os, socket, sys, time
out = os.fdopen(int(sys.argv[2]), "w", buffering=1)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(sys.argv[1])
out.write("ready\n")
while True:
    data = sock.recv(64)
    now = time.monotonic_ns()
    if data == b"stop":
        break
    out.write(f"{data.decode()} {now}\n")
"""


def _spawn(script, arg):
    read_fd, write_fd = os.pipe()
    child = subprocess.Popen([sys.executable, "-c", script, arg,
                              str(write_fd)], stdin=subprocess.PIPE,
                             pass_fds=(write_fd,))
    os.close(write_fd)
    reader = os.fdopen(read_fd)
    assert reader.readline().strip() == "ready"
    return child, reader


def _percentiles(latencies):
    latencies.sort()
    return {"median_us": statistics.median(latencies) / 1000,
            "p99_us": latencies[int(len(latencies) * 0.99)] / 1000}


def test_store_watch_latency(benchmark, tmp_path):
    """Store: commit() returning in one process to a callback in another."""
    path = str(tmp_path / "store")
    store = datasync.Store(path, durable=False)
    child, reader = _spawn(WATCHER, path)

    def measure():
        latencies = []
        for i in range(COMMITS):
            store.put(f"/bench/{i}", b"v")
            sent = time.monotonic_ns()
            key, received = reader.readline().split()
            assert key == f"/bench/{i}"
            latencies.append(int(received) - sent)
        return latencies

    latencies = benchmark.pedantic(measure, rounds=1)
    benchmark.extra_info.update(_percentiles(latencies))
    child.stdin.close()
    child.wait(timeout=30)
    store.close()


def test_datagram_wakeup_baseline(benchmark, tmp_path):
    """Baseline: one Unix datagram to a process blocked in recv()."""
    address = str(tmp_path / "echo.sock")
    child, reader = _spawn(ECHO, address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def measure():
        latencies = []
        for i in range(COMMITS):
            sent = time.monotonic_ns()
            sock.sendto(str(i).encode(), address)
            tag, received = reader.readline().split()
            assert tag == str(i)
            latencies.append(int(received) - sent)
        return latencies

    latencies = benchmark.pedantic(measure, rounds=1)
    benchmark.extra_info.update(_percentiles(latencies))
    sock.sendto(b"stop", address)
    child.wait(timeout=30)
