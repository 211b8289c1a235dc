"""Tests of the ``datasync`` command, in-process and as real processes.

In-process tests call ``main(argv)`` and read its output with capsys.
Process tests run ``python -m datasync.cli`` (or ``python -m datasync``),
so that watching across processes, signals and exit codes are real.
"""

import base64
import json
import os
import queue
import signal
import subprocess
import sys
import threading

import pytest
from google.protobuf import struct_pb2

import datasync
from datasync.cli import (EXIT_ERROR, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE,
                          main, resolve_message_type)
from datasync.examples.netagent_pb2 import Interface

#: Seconds to wait for output that should come; only a failing test
#: waits this long.
TIMEOUT = 10.0

STRUCT = "google.protobuf.struct_pb2.Struct"


class Result:
    """Exit status and output of one run of the command."""

    def __init__(self, status, out, err):
        self.status = status
        self.out = out
        self.err = err

    def json(self):
        """The output parsed as one JSON document."""
        return json.loads(self.out)

    def json_lines(self):
        """The output parsed as one JSON object per line."""
        return [json.loads(line) for line in self.out.splitlines()]


@pytest.fixture
def db(tmp_path):
    """Path of a store that does not exist yet."""
    return str(tmp_path / "db")


@pytest.fixture
def cli(capsys, db, monkeypatch):
    """Run ``datasync --db <db> ARGS...`` in-process; return a Result."""
    monkeypatch.delenv("DATASYNC_DB", raising=False)

    def run(*args, stdin=None):
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", _text_stdin(stdin))
        status = main(["--db", db, *args])
        captured = capsys.readouterr()
        return Result(status, captured.out, captured.err)

    return run


def _text_stdin(data):
    import io

    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "DATASYNC_DB"}
    env.update(extra)
    return env


def run_process(*args, stdin=b"", module="datasync.cli", cwd=None,
                env=None):
    """Run ``python -m MODULE ARGS...`` to its end; return a Result."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], input=stdin,
        capture_output=True, timeout=60, cwd=cwd,
        env=env if env is not None else _env())
    return Result(proc.returncode, proc.stdout, proc.stderr)


class Process:
    """A long-running ``datasync`` process whose stdout is read by line."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "datasync.cli", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
        self.lines = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def read_json(self, timeout=TIMEOUT):
        """Return the next stdout line as JSON; fail after ``timeout``."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no output line within {timeout} s")
        if line is None:
            self.proc.wait(timeout=TIMEOUT)
            pytest.fail(f"process ended with {self.proc.returncode}: "
                        f"{self.proc.stderr.read()!r}")
        return json.loads(line)

    def stop(self, signum):
        """Send ``signum``; return (exit status, remaining stdout, stderr).
        """
        self.proc.send_signal(signum)
        status = self.proc.wait(timeout=TIMEOUT)
        self._reader.join(timeout=TIMEOUT)
        rest = []
        while (line := self.lines.get_nowait()) is not None:
            rest.append(line)
        return status, rest, self.proc.stderr.read().decode()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def start():
    """Start a long-running ``datasync`` process; killed at teardown."""
    processes = []

    def start_(*args):
        process = Process(*args)
        processes.append(process)
        return process

    yield start_
    for process in processes:
        process.close()


def _sockets(db):
    directory = os.path.join(db, "notify")
    return sorted(n for n in os.listdir(directory) if n.endswith(".sock"))


# put and get ---------------------------------------------------------------

def test_put_prints_revision(cli):
    first = cli("put", "/cfg/a", "one")
    second = cli("put", "/cfg/b", "two")
    assert first.status == EXIT_OK
    assert first.json() == {"revision": 1}
    assert second.json() == {"revision": 2}
    assert first.err == ""


def test_get_prints_text_value(cli):
    cli("put", "/cfg/a", "one")
    cli("put", "/cfg/a", "héllo")
    result = cli("get", "/cfg/a")
    assert result.status == EXIT_OK
    assert result.json() == {"key": "/cfg/a", "value": "héllo",
                             "revision": 2, "create_revision": 1,
                             "version": 2}


def test_get_missing_key_not_found(cli):
    cli("put", "/cfg/a", "one")
    result = cli("get", "/cfg/none")
    assert result.status == EXIT_NOT_FOUND
    assert result.out == ""
    assert result.err == "datasync: error: key '/cfg/none' not found\n"


def test_put_stdin_binary_shows_base64(cli):
    data = b"\xff\x00binary"
    assert cli("put", "/cfg/bin", "-", stdin=data).status == EXIT_OK
    result = cli("get", "/cfg/bin")
    obj = result.json()
    assert obj["value_encoding"] == "base64"
    assert base64.b64decode(obj["value"]) == data


def test_put_stdin_text_shows_text(cli):
    cli("put", "/cfg/text", "-", stdin="line one\nline two\n".encode())
    obj = cli("get", "/cfg/text").json()
    assert obj["value"] == "line one\nline two\n"
    assert "value_encoding" not in obj


def test_get_raw_writes_exact_bytes(db):
    data = b"\x00\xff\xfe raw \n"
    assert run_process("--db", db, "put", "/cfg/raw", "-",
                       stdin=data).status == EXIT_OK
    result = run_process("--db", db, "get", "/cfg/raw", "--raw")
    assert result.status == EXIT_OK
    assert result.out == data


def test_put_ttl_key_expires(cli, db):
    revision = cli("put", "/cfg/ttl", "v", "--ttl", "0.2").json()["revision"]
    changes = queue.Queue()
    with datasync.Store(db) as store:
        with store.watch("ttl", changes, changes, "/cfg/",
                         from_revision=revision):
            event = changes.get(timeout=TIMEOUT)
            event.done()
    change = event.changes[0]
    assert change.change_type is datasync.Op.DELETE
    assert change.key == "/cfg/ttl"
    assert change.prev_value == b"v"
    assert cli("get", "/cfg/ttl").status == EXIT_NOT_FOUND


def test_put_lifetime_key_lives_until_signal(db, start):
    run_process("--db", db, "put", "/cfg/other", "x")
    writer = start("--db", db, "put", "/cfg/life", "alive", "--lifetime")
    assert writer.read_json() == {"revision": 2}
    with datasync.Store(db) as store:
        assert store.get("/cfg/life").value == b"alive"
        status, rest, err = writer.stop(signal.SIGTERM)
        assert status == EXIT_OK
        assert err == ""
        assert store.get("/cfg/life") is None
        assert store.get("/cfg/other").value == b"x"


def test_put_lifetime_killed_key_reaped(db, start):
    writer = start("--db", db, "put", "/cfg/life", "alive", "--lifetime")
    assert writer.read_json() == {"revision": 1}
    writer.proc.kill()
    writer.proc.wait(timeout=TIMEOUT)
    result = run_process("--db", db, "get", "/cfg/life")
    assert result.status == EXIT_NOT_FOUND
    assert result.err == b"datasync: error: key '/cfg/life' not found\n"


# Bad input -----------------------------------------------------------------

def test_put_empty_key_fails(cli):
    result = cli("put", "", "v")
    assert result.status == EXIT_ERROR
    assert result.out == ""
    assert result.err == "datasync: error: key must not be empty\n"


def test_put_long_key_fails(cli):
    result = cli("put", "/" + "k" * 600, "v")
    assert result.status == EXIT_ERROR
    assert "is 601 bytes, above LMDB's limit of 511 bytes" in result.err
    assert result.err.count("\n") == 1


def test_get_long_key_fails(cli):
    cli("put", "/cfg/a", "one")
    result = cli("get", "/" + "k" * 600)
    assert result.status == EXIT_ERROR
    assert "above LMDB's limit of 511 bytes" in result.err


@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["put", "/cfg/a"],
    ["put", "/cfg/a", "v", "--ttl", "0"],
    ["put", "/cfg/a", "v", "--ttl", "soon"],
    ["put", "/cfg/a", "v", "--ttl", "1", "--lifetime"],
    ["get"],
    ["watch"],
    ["watch", "/cfg/", "--from-revision", "-1"],
    ["compact", "x"],
    ["compact", "-3"],
    ["demo", "--records", "0"],
])
def test_bad_arguments_exit_usage(cli, args):
    result = cli(*args)
    assert result.status == EXIT_USAGE
    assert result.out == ""
    assert "usage: datasync" in result.err
    assert "error:" in result.err


def test_db_file_is_not_store(cli, tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("not a store")
    for command in (["get", "/k"], ["put", "/k", "v"], ["stat"]):
        status = main(["--db", str(path), *command])
        err = capsys.readouterr().err
        assert status == EXIT_ERROR
        assert err.startswith(f"datasync: error: {path} is a file")
    assert path.read_text() == "not a store"


def test_max_map_size_full_fails(cli, db):
    result = cli("--max-map-size", "131072", "put", "/big", "-",
                 stdin=b"x" * 300_000)
    assert result.status == EXIT_ERROR
    assert result.err.startswith(
        f"datasync: error: store {os.path.realpath(db)} is full at its "
        "maximum map size of 131072 bytes; nothing of the transaction was "
        "written.")
    assert cli("list", "--keys-only").out == ""


def test_db_missing_not_created(cli, db):
    for command in (["get", "/k"], ["list"], ["stat"], ["del", "/k"],
                    ["compact", "0"]):
        result = cli(*command)
        assert result.status == EXIT_ERROR
        assert result.err.startswith(f"datasync: error: no store at {db}")
    assert not os.path.exists(db)


def test_db_foreign_directory_rejected(tmp_path, capsys):
    path = tmp_path / "foreign"
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    status = main(["--db", str(path), "get", "/k"])
    err = capsys.readouterr().err
    assert status == EXIT_ERROR
    assert err == (f"datasync: error: {path} is not a store: it has no "
                   "data.mdb; pass --db (or set DATASYNC_DB) to the path "
                   "of a store\n")
    status = main(["--db", str(path), "put", "/k", "v"])
    err = capsys.readouterr().err
    assert status == EXIT_ERROR
    assert "is a non-empty directory without data.mdb" in err
    assert sorted(os.listdir(path)) == ["notes.txt"]


def test_process_exit_codes_and_messages(db):
    run_process("--db", db, "put", "/cfg/a", "one")
    missing = run_process("--db", db, "get", "/cfg/b")
    invalid = run_process("--db", db, "get", "")
    usage = run_process("--db", db, "--type", "no.such.Type", "get", "/a")
    assert missing.status == EXIT_NOT_FOUND
    assert missing.err == b"datasync: error: key '/cfg/b' not found\n"
    assert invalid.status == EXIT_ERROR
    assert invalid.err == b"datasync: error: key must not be empty\n"
    assert usage.status == EXIT_USAGE
    assert usage.err.startswith(
        b"datasync: error: unknown message type 'no.such.Type'")


# del, list, stat, compact --------------------------------------------------

def test_del_key_prints_count(cli):
    cli("put", "/cfg/a", "one")
    result = cli("del", "/cfg/a")
    assert result.status == EXIT_OK
    assert result.json() == {"revision": 2, "deleted": 1}
    assert cli("get", "/cfg/a").status == EXIT_NOT_FOUND


def test_del_missing_key_deletes_nothing(cli):
    cli("put", "/cfg/a", "one")
    result = cli("del", "/cfg/zzz")
    assert result.status == EXIT_OK
    assert result.json() == {"revision": 1, "deleted": 0}


def test_del_prefix_deletes_keys_under(cli):
    for key in ("/cfg/a/1", "/cfg/a/2", "/cfg/b"):
        cli("put", key, "v")
    result = cli("del", "/cfg/a/", "--prefix")
    assert result.json() == {"revision": 4, "deleted": 2}
    assert cli("list", "--keys-only").out == "/cfg/b\n"


def test_list_prints_every_key(cli):
    cli("put", "/b", "two")
    cli("put", "/a", "one")
    cli("put", "/a", "uno")
    result = cli("list")
    assert result.status == EXIT_OK
    assert result.json_lines() == [
        {"key": "/a", "value": "uno", "revision": 3, "create_revision": 2,
         "version": 2},
        {"key": "/b", "value": "two", "revision": 1, "create_revision": 1,
         "version": 1},
    ]


def test_list_prefix_filters_keys(cli):
    for key in ("/cfg/x", "/cfg/y", "/cfh", "/state/x"):
        cli("put", key, key)
    result = cli("list", "/cfg/")
    assert [obj["key"] for obj in result.json_lines()] == ["/cfg/x",
                                                           "/cfg/y"]
    assert cli("list", "/nothing/").out == ""


def test_list_keys_only_prints_keys(cli):
    for key in ("/cfg/x", "/cfg/y", "/state/x"):
        cli("put", key, "v")
    assert cli("list", "--keys-only").out == "/cfg/x\n/cfg/y\n/state/x\n"
    assert cli("list", "/cfg/", "--keys-only").out == "/cfg/x\n/cfg/y\n"


def test_stat_prints_store_facts(cli, db):
    cli("put", "/a", "1")
    cli("put", "/b", "2")
    cli("del", "/a")
    result = cli("stat")
    stat = result.json()
    assert result.status == EXIT_OK
    assert stat["path"] == os.path.realpath(db)
    assert stat["revision"] == 3
    assert stat["keys"] == 1
    assert stat["log_first_revision"] == 1
    assert stat["log_last_revision"] == 3
    assert stat["compacted_revision"] == 0
    assert stat["file_size"] == os.path.getsize(os.path.join(db,
                                                             "data.mdb"))


def test_compact_drops_old_revisions(cli):
    for value in ("1", "2", "3", "4"):
        cli("put", "/a", value)
    result = cli("compact", "2")
    assert result.status == EXIT_OK
    assert result.json() == {"compacted_revision": 2}
    stat = cli("stat").json()
    assert stat["compacted_revision"] == 2
    assert stat["log_first_revision"] == 3


def test_compact_above_revision_fails(cli):
    cli("put", "/a", "1")
    result = cli("compact", "5")
    assert result.status == EXIT_ERROR
    assert result.err == ("datasync: error: cannot compact to revision 5: "
                          "it must be between 0 and the current revision "
                          "1\n")


def test_watch_compacted_revision_fails(cli):
    for value in ("1", "2", "3"):
        cli("put", "/cfg/a", value)
    cli("compact", "2")
    result = cli("watch", "/cfg/", "--from-revision", "1")
    assert result.status == EXIT_ERROR
    assert result.out == ""
    assert result.err.startswith("datasync: error: revisions up to 2 were "
                                 "compacted")


# Options and defaults ------------------------------------------------------

def test_global_options_after_command(capsys, db):
    assert main(["put", "/a", "v", "--db", db]) == EXIT_OK
    capsys.readouterr()
    assert main(["get", "/a", "--db", db]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["value"] == "v"


def test_db_from_environment(capsys, db, monkeypatch):
    monkeypatch.setenv("DATASYNC_DB", db)
    assert main(["put", "/a", "v"]) == EXIT_OK
    with datasync.Store(db) as store:
        assert store.get("/a").value == b"v"


def test_db_default_in_working_directory(tmp_path):
    result = run_process("put", "/a", "v", cwd=tmp_path)
    assert result.status == EXIT_OK
    assert os.path.exists(tmp_path / "datasync.lmdb" / "data.mdb")


def test_help_documents_exit_codes(capsys):
    assert main(["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "exit status:" in out
    assert f"{EXIT_NOT_FOUND}  get: the key does not exist" in out
    assert f"{EXIT_USAGE}  invalid arguments" in out
    assert "google.protobuf.struct_pb2.Struct" in out
    assert "DATASYNC_DB" in out


def test_python_m_datasync_runs(db):
    run_process("--db", db, "put", "/a", "v", module="datasync")
    result = run_process("--db", db, "get", "/a", module="datasync")
    assert result.status == EXIT_OK
    assert json.loads(result.out)["value"] == "v"


def test_closed_stdout_ends_quietly(db):
    with datasync.Store(db) as store, store.txn() as txn:
        for i in range(3000):
            txn.put(f"/k/{i:05d}", b"v" * 100)
    proc = subprocess.Popen(
        [sys.executable, "-m", "datasync.cli", "--db", db, "list"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    first = proc.stdout.readline()
    proc.stdout.close()
    status = proc.wait(timeout=TIMEOUT)
    err = proc.stderr.read()
    proc.stderr.close()
    assert json.loads(first)["key"] == "/k/00000"
    assert status == EXIT_OK
    assert err == b""


# --type --------------------------------------------------------------------

def test_type_struct_round_trip(cli):
    document = {"a": 1, "b": [True, "x"], "c": {"d": None}}
    put = cli("--type", STRUCT, "put", "/cfg/s", json.dumps(document))
    got = cli("--type", STRUCT, "get", "/cfg/s")
    assert put.status == EXIT_OK
    assert got.status == EXIT_OK
    assert got.json()["value"] == document
    listed = cli("list", "/cfg/", "--type", STRUCT).json_lines()
    assert listed[0]["value"] == document


def test_type_struct_stored_as_protobuf(cli, db):
    document = {"n": 1.5, "s": "text"}
    cli("put", "/cfg/s", json.dumps(document), "--type", STRUCT)
    with datasync.Store(db) as store:
        message = store.get("/cfg/s").get_value(struct_pb2.Struct())
    expected = struct_pb2.Struct()
    expected.update(document)
    assert message == expected
    obj = cli("get", "/cfg/s").json()
    assert obj["value_encoding"] == "base64"
    assert base64.b64decode(obj["value"]) == expected.SerializeToString()


def test_type_full_name_resolves(cli):
    cli("--type", "google.protobuf.Struct", "put", "/cfg/s", '{"k": "v"}')
    result = cli("--type", "google.protobuf.Struct", "get", "/cfg/s")
    assert result.json()["value"] == {"k": "v"}


def test_type_example_schema_round_trip(cli, db):
    text = json.dumps({"name": "eth0", "type": "ETHERNET", "enabled": True,
                       "mtu": 9000, "ipAddresses": ["10.0.0.1/24"]})
    cli("put", "/cfg/if/eth0", text, "--type",
        "datasync.examples.netagent.Interface")
    with datasync.Store(db) as store:
        message = store.get("/cfg/if/eth0").get_value(Interface())
    assert message == Interface(name="eth0", type=Interface.ETHERNET,
                                enabled=True, mtu=9000,
                                ip_addresses=["10.0.0.1/24"])
    result = cli("get", "/cfg/if/eth0", "--type",
                 "datasync.examples.netagent_pb2.Interface")
    assert result.json()["value"]["ipAddresses"] == ["10.0.0.1/24"]


def test_resolve_message_type_forms():
    assert resolve_message_type(STRUCT) is struct_pb2.Struct
    assert resolve_message_type("google.protobuf.Struct") is \
        struct_pb2.Struct
    assert resolve_message_type(
        "datasync.examples.netagent_pb2.Interface") is Interface


@pytest.mark.parametrize("name, reason", [
    ("no.such.Type", "no module of no.such.Type can be imported"),
    ("os.path", "os.path is not a protobuf message class"),
    ("google.protobuf.struct_pb2.Nope",
     "module google.protobuf.struct_pb2 has no attribute Nope"),
    ("Struct", "it is not a dotted name"),
])
def test_unknown_type_exits_usage(cli, name, reason):
    cli("put", "/a", "v")
    result = cli("--type", name, "get", "/a")
    assert result.status == EXIT_USAGE
    assert result.out == ""
    assert result.err.startswith(
        f"datasync: error: unknown message type {name!r}: {reason}; ")
    assert result.err.count("\n") == 1


def test_type_invalid_json_fails(cli):
    result = cli("--type", STRUCT, "put", "/cfg/s", "{not json")
    assert result.status == EXIT_ERROR
    assert result.err.startswith(
        "datasync: error: value of key '/cfg/s' is not valid protobuf JSON "
        "for google.protobuf.Struct: ")
    assert cli("list", "--keys-only").out == ""


def test_get_wrong_type_fails(cli):
    cli("put", "/cfg/t", "plain text")
    result = cli("--type", STRUCT, "get", "/cfg/t")
    assert result.status == EXIT_ERROR
    assert result.out == ""
    assert result.err.startswith(
        "datasync: error: value of key '/cfg/t' at revision 1 is not a "
        "valid google.protobuf.Struct (")
    assert result.err.endswith("; pass the --type the writer used, or no "
                               "--type\n")


def test_list_wrong_type_warns(cli):
    cli("put", "/cfg/s", '{"k": 1}', "--type", STRUCT)
    cli("put", "/cfg/t", "plain text")
    result = cli("list", "--type", STRUCT)
    assert result.status == EXIT_ERROR
    assert result.json_lines() == [
        {"key": "/cfg/s", "value": {"k": 1}, "revision": 1,
         "create_revision": 1, "version": 1},
        {"key": "/cfg/t", "value": "plain text", "revision": 2,
         "create_revision": 2, "version": 1},
    ]
    lines = result.err.splitlines()
    assert lines[0].startswith("datasync: warning: value of key '/cfg/t' "
                               "at revision 2 is not a valid "
                               "google.protobuf.Struct")
    assert lines[1] == ("datasync: error: 1 of 2 values are not "
                        "google.protobuf.Struct messages; they are shown "
                        "as text or base64")


# watch ---------------------------------------------------------------------

def test_watch_prints_other_process_put(db, start):
    run_process("--db", db, "put", "/cfg/seed", "s")
    watcher = start("--db", db, "watch", "/cfg/")
    assert watcher.read_json() == {"revision": 1, "op": "resync",
                                   "key": "/cfg/seed", "value": "s",
                                   "prev_value": None}
    put = run_process("--db", db, "put", "/cfg/x", "v")
    assert put.status == EXIT_OK
    assert watcher.read_json() == {"revision": 2, "op": "put",
                                   "key": "/cfg/x", "value": "v",
                                   "prev_value": None}
    status, rest, err = watcher.stop(signal.SIGINT)
    assert status == EXIT_OK
    assert rest == []
    assert err == ""


def test_watch_prints_changes_in_order(db, start):
    run_process("--db", db, "put", "/cfg/a/0", "s")
    watcher = start("--db", db, "watch", "/cfg/a/", "/cfg/b/")
    # The resync line shows that the watch started before the writes.
    assert watcher.read_json()["op"] == "resync"
    writes = [
        ("put", "/cfg/a/1", "one"),
        ("put", "/cfg/a/1", "uno"),
        ("put", "/cfg/c", "unwatched"),
        ("put", "/cfg/b/1", "\udcff"),
        ("del", "/cfg/a/1", None),
    ]
    for command, key, value in writes:
        args = [command, key] + ([value] if value is not None else [])
        assert run_process("--db", db, *args).status == EXIT_OK
    lines = [watcher.read_json() for _ in range(4)]
    assert lines == [
        {"revision": 2, "op": "put", "key": "/cfg/a/1", "value": "one",
         "prev_value": None},
        {"revision": 3, "op": "put", "key": "/cfg/a/1", "value": "uno",
         "prev_value": "one"},
        {"revision": 5, "op": "put", "key": "/cfg/b/1", "value": "/w==",
         "value_encoding": "base64", "prev_value": None},
        {"revision": 6, "op": "delete", "key": "/cfg/a/1", "value": None,
         "prev_value": "uno"},
    ]
    status, rest, err = watcher.stop(signal.SIGTERM)
    assert status == EXIT_OK
    assert rest == []
    assert err == ""


def test_watch_from_revision_replays_log(db, start):
    for value in ("1", "2", "3"):
        run_process("--db", db, "put", "/cfg/a", value)
    watcher = start("--db", db, "watch", "/cfg/", "--from-revision", "1")
    first = watcher.read_json()
    second = watcher.read_json()
    assert first == {"revision": 2, "op": "put", "key": "/cfg/a",
                     "value": "2", "prev_value": "1"}
    assert second == {"revision": 3, "op": "put", "key": "/cfg/a",
                      "value": "3", "prev_value": "2"}
    status, rest, err = watcher.stop(signal.SIGINT)
    assert status == EXIT_OK
    assert rest == []


def test_watch_typed_values(db, start):
    run_process("--db", db, "--type", STRUCT, "put", "/cfg/s", '{"n": 1}')
    watcher = start("--db", db, "--type", STRUCT, "watch", "/cfg/")
    assert watcher.read_json()["value"] == {"n": 1}
    run_process("--db", db, "--type", STRUCT, "put", "/cfg/s", '{"n": 2}')
    run_process("--db", db, "del", "/cfg/s")
    update = watcher.read_json()
    delete = watcher.read_json()
    assert update["value"] == {"n": 2}
    assert update["prev_value"] == {"n": 1}
    assert delete["value"] is None
    assert delete["prev_value"] == {"n": 2}
    watcher.stop(signal.SIGINT)


def test_watch_foreign_value_warns(db, start):
    watcher = start("--db", db, "--type", STRUCT, "watch", "/cfg/",
                    "--from-revision", "0")
    run_process("--db", db, "put", "/cfg/t", "plain text")
    run_process("--db", db, "--type", STRUCT, "put", "/cfg/s", '{"n": 1}')
    foreign = watcher.read_json()
    typed = watcher.read_json()
    status, rest, err = watcher.stop(signal.SIGINT)
    assert foreign["value"] == "plain text"
    assert typed["value"] == {"n": 1}
    assert status == EXIT_OK
    assert err.startswith("datasync: warning: value of key '/cfg/t' at "
                          "revision 1 is not a valid google.protobuf.Struct")


def test_watch_signal_closes_store(db, start):
    run_process("--db", db, "put", "/cfg/seed", "s")
    before = _sockets(db)
    watcher = start("--db", db, "watch", "/cfg/")
    watcher.read_json()
    assert len(_sockets(db)) == len(before) + 1
    status, rest, err = watcher.stop(signal.SIGTERM)
    assert status == EXIT_OK
    assert _sockets(db) == before


@pytest.mark.parametrize("option", [["--nats", "127.0.0.1:4222",
                                     "--topic", "t"],
                                    ["--etcd", "127.0.0.1:2379"]])
def test_demo_rejects_remote_backend(option, capsys):
    assert main([*option, "demo", "--records", "10"]) == EXIT_USAGE
    assert "embedded store only" in capsys.readouterr().err
