"""Tests of the demo: a small run end to end, and its checks.

The checks are tested on real stores and real events, with a wrong
previous value or an out-of-order revision fed into a watcher's channel
the way the store's dispatcher feeds it.
"""

import os
import re
import subprocess
import sys

import pytest

import datasync
from datasync import demo
from datasync.cli import main
from datasync.events import Change, ChangeEvent
from datasync.examples.netagent_pb2 import Interface, Route

RECORDS = 2_000
#: Seconds to wait for an event that should come.
TIMEOUT = 10.0


def _expected_counts(records):
    """Return (interfaces, routes) left in the store after a run."""
    interfaces = routes = 0
    for i in range(records):
        key, _ = demo.make_record(i, records)
        if key.startswith(demo.INTERFACES):
            interfaces += 1
        elif f"/vrf/{demo.VRFS - 1}/" not in key:
            routes += 1
    return interfaces, routes


def test_demo_small_run_passes(capsys):
    status = main(["demo", "--records", str(RECORDS), "--no-progress"])
    out = capsys.readouterr().out
    interfaces, routes = _expected_counts(RECORDS)
    assert status == 0
    assert "check: passed" in out
    assert f"({interfaces:,} interfaces, {routes:,} routes)" in out
    assert re.search(r"^interfaces +1 +\d", out, re.MULTILINE)
    assert re.search(r"^routes +1 +\d", out, re.MULTILINE)
    assert "TTL: 10 keys put with a TTL of 1.0 s" in out


def test_demo_removes_temporary_store(capsys):
    assert main(["demo", "--records", "500", "--no-progress"]) == 0
    out = capsys.readouterr().out
    path = re.search(r"store (\S+)$", out.splitlines()[0]).group(1)
    assert os.path.basename(path) == "store"
    assert not os.path.exists(os.path.dirname(path))


def test_demo_keeps_given_store(capsys, tmp_path):
    path = tmp_path / "demo"
    status = main(["demo", "--db", str(path), "--records", str(RECORDS),
                   "--batch", "300", "--no-progress"])
    out = capsys.readouterr().out
    interfaces, routes = _expected_counts(RECORDS)
    assert status == 0
    assert "check: passed" in out
    with datasync.Store(path) as store:
        assert len(store.list_keys(demo.INTERFACES)) == interfaces
        assert len(store.list_keys(demo.ROUTES)) == routes
        assert store.list_keys(demo.ROUTES + f"vrf/{demo.VRFS - 1}/") == []


def test_demo_full_map_fails(capsys):
    status = main(["demo", "--records", str(RECORDS), "--no-progress",
                   "--max-map-size", "200000"])
    captured = capsys.readouterr()
    assert status == 1
    assert "check: passed" not in captured.out
    assert "is full at its maximum map size of 200000 bytes" in captured.err


def test_demo_progress_bar_on_stderr():
    proc = subprocess.run(
        [sys.executable, "-m", "datasync", "demo", "--records", "500"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "check: passed" in proc.stdout
    assert "agent applied" in proc.stderr
    assert "100%" in proc.stderr
    assert "agent applied" not in proc.stdout


def test_make_record_keys_unique():
    keys = [demo.make_record(i, RECORDS)[0] for i in range(RECORDS)]
    interfaces = [k for k in keys if k.startswith(demo.INTERFACES)]
    assert len(set(keys)) == RECORDS
    assert len(interfaces) == RECORDS // demo.INTERFACE_EVERY


def test_compare_view_lists_differences(store):
    store.put(demo.interface_key("eth0"), Interface(name="eth0"))
    store.put(demo.interface_key("eth1"), Interface(name="eth1"))
    store.put(demo.interface_key("eth1"), Interface(name="eth1", mtu=9000))
    view = {
        demo.interface_key("eth1"): (3, Interface(name="eth1", mtu=1500)),
        demo.interface_key("eth9"): (2, Interface(name="eth9")),
    }
    differences = demo.compare_view(view, store, demo.INTERFACES, Interface)
    assert differences == [
        f"{demo.INTERFACES}eth0: in the store, missing from the view",
        f"{demo.INTERFACES}eth9: in the view, not in the store",
        f"{demo.INTERFACES}eth1: value differs at revision 3",
    ]


def test_compare_view_equal_is_empty(store):
    route = Route(dst_network="10.0.0.0/24", next_hop="10.0.0.1")
    store.put(demo.route_key(0, "10.0.0.0/24"), route)
    view = {demo.route_key(0, "10.0.0.0/24"): (1, route)}
    assert demo.compare_view(view, store, demo.ROUTES, Route) == []


@pytest.fixture
def watcher(store):
    """A started interfaces watcher of the demo on an empty store."""
    w = demo.Watcher("interfaces", demo.INTERFACES, Interface)
    w.start(store)
    assert w.wait_until(lambda: w.resyncs == 1, TIMEOUT)
    yield w
    w.stop()


def test_watcher_applies_store_changes(store, watcher):
    key = demo.interface_key("eth0")
    store.put(key, Interface(name="eth0", mtu=1500))
    revision = store.put(key, Interface(name="eth0", mtu=9000))
    assert watcher.wait_for_revision(revision, TIMEOUT)
    assert watcher.view == {key: (revision, Interface(name="eth0",
                                                      mtu=9000))}
    assert watcher.puts == 2
    assert watcher.problems == []


def test_watcher_flags_wrong_prev_value(store, watcher):
    key = demo.interface_key("eth0")
    revision = store.put(key, Interface(name="eth0"))
    assert watcher.wait_for_revision(revision, TIMEOUT)
    wrong = Interface(name="eth0", mtu=1).SerializeToString()
    change = Change(key, datasync.Op.DELETE, prev_value=wrong,
                    revision=revision + 1)
    watcher.queue.put(ChangeEvent([change], revision + 1))
    assert watcher.wait_for_revision(revision + 1, TIMEOUT)
    assert watcher.problems == [
        f"interfaces: {key}: the previous value differs from the view"]


def test_watcher_flags_revision_out_of_order(store, watcher):
    key = demo.interface_key("eth0")
    revision = store.put(key, Interface(name="eth0"))
    assert watcher.wait_for_revision(revision, TIMEOUT)
    value = Interface(name="eth0").SerializeToString()
    change = Change(key, datasync.Op.PUT, value=value, prev_value=value,
                    revision=revision)
    watcher.queue.put(ChangeEvent([change], revision))
    assert watcher.wait_until(lambda: watcher.events == 3, TIMEOUT)
    assert watcher.problems == [
        f"interfaces: revision {revision} arrived after revision "
        f"{revision}"]
