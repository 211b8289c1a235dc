"""Tests of the public API surface: names, docstrings, protocols, build."""

import inspect
import pathlib
import queue
import subprocess
import sys
import textwrap
import tomllib
from importlib import resources

import pytest

import datasync
from datasync import events as concrete
from datasync.keyval import lmdb as lmdb_backend

EXPECTED_ALL = sorted([
    "AggregateError",
    "AggregatedRegistration",
    "CallbackResult",
    "ChangeEvent",
    "ChangeValue",
    "CompactedError",
    "DEFAULT_NOTIF_TIMEOUT",
    "DatasyncError",
    "DelOption",
    "DelOptionMarker",
    "DeliveryTimeoutError",
    "InvalidKeyError",
    "InvalidOptionError",
    "InvalidStoreError",
    "InvalidValueError",
    "KVProtoWatchers",
    "KVProtoWriters",
    "KeyProtoValWriter",
    "KeyVal",
    "KeyValIterator",
    "KeyValProtoWatcher",
    "LazyValue",
    "MapFullError",
    "NotReadyError",
    "Op",
    "ProtoWatchResp",
    "PutOption",
    "PutOptionMarker",
    "RegistrationError",
    "ResyncEvent",
    "Store",
    "StoreClosedError",
    "ValueParseError",
    "WatchRegistration",
    "WithChangeType",
    "WithClientLifetimeTTLOpt",
    "WithKey",
    "WithPrefixOpt",
    "WithPrevValue",
    "WithRevision",
    "WithTTLOpt",
    "with_client_lifetime_ttl",
    "with_prefix",
    "with_ttl",
])

# Every exported name of the Go package datasync (Ligato cn-infra) mapped
# to its Python counterpart, as a dotted path under the datasync package.
SEED_NAMES = {
    # Functions
    "WithClientLifetimeTTL": "with_client_lifetime_ttl",
    "WithPrefix": "with_prefix",
    "WithTTL": "with_ttl",
    # Constants
    "DefaultNotifTimeout": "DEFAULT_NOTIF_TIMEOUT",
    "Delete": "Op.DELETE",
    "InvalidOp": "Op.INVALID",
    "Put": "Op.PUT",
    # Structs
    "AggregatedRegistration": "AggregatedRegistration",
    "DelOptionMarker": "DelOptionMarker",
    "PutOptionMarker": "PutOptionMarker",
    "WithClientLifetimeTTLOpt": "WithClientLifetimeTTLOpt",
    "WithPrefixOpt": "WithPrefixOpt",
    "WithTTLOpt": "WithTTLOpt",
    # Interfaces and their methods
    "CallbackResult": "CallbackResult",
    "CallbackResult.Done": "CallbackResult.done",
    "ChangeEvent": "ChangeEvent",
    "ChangeEvent.GetChanges": "ChangeEvent.changes",
    "ChangeValue": "ChangeValue",
    "DelOption": "DelOption",
    "KeyProtoValWriter": "KeyProtoValWriter",
    "KeyProtoValWriter.Put": "KeyProtoValWriter.put",
    "KeyVal": "KeyVal",
    "KeyValIterator": "KeyValIterator",
    "KeyValIterator.GetNext": "KeyValIterator.get_next",
    "KeyValProtoWatcher": "KeyValProtoWatcher",
    "KeyValProtoWatcher.Watch": "KeyValProtoWatcher.watch",
    "LazyValue": "LazyValue",
    "LazyValue.GetValue": "LazyValue.get_value",
    "ProtoWatchResp": "ProtoWatchResp",
    "PutOption": "PutOption",
    "ResyncEvent": "ResyncEvent",
    "ResyncEvent.GetValues": "ResyncEvent.values",
    "WatchRegistration": "WatchRegistration",
    "WatchRegistration.Register": "WatchRegistration.register",
    "WatchRegistration.Unregister": "WatchRegistration.unregister",
    "WatchRegistration.Close": "WatchRegistration.close",
    "WithChangeType": "WithChangeType",
    "WithChangeType.GetChangeType": "WithChangeType.change_type",
    "WithKey": "WithKey",
    "WithKey.GetKey": "WithKey.key",
    "WithPrevValue": "WithPrevValue",
    "WithPrevValue.GetPrevValue": "WithPrevValue.get_prev_value",
    "WithRevision": "WithRevision",
    "WithRevision.GetRevision": "WithRevision.revision",
    # Type aliases
    "KVProtoWatchers": "KVProtoWatchers",
    "KVProtoWriters": "KVProtoWriters",
    "Op": "Op",
}

PROTOCOLS = [
    "CallbackResult", "ChangeEvent", "ChangeValue", "KeyProtoValWriter",
    "KeyVal", "KeyValIterator", "KeyValProtoWatcher", "LazyValue",
    "ProtoWatchResp", "ResyncEvent", "WatchRegistration", "WithChangeType",
    "WithKey", "WithPrevValue", "WithRevision",
]

# Classes whose instances users get from the store, beside __all__.
CONCRETE_CLASSES = [
    lmdb_backend.Store, lmdb_backend.Txn, lmdb_backend.Registration,
    lmdb_backend.DeleteResult, lmdb_backend.Listing, concrete.KeyVal,
    concrete.Change, concrete.ChangeEvent, concrete.ResyncEvent,
    concrete.KVIterator,
]

ROOT = pathlib.Path(__file__).resolve().parents[1]


def resolve(dotted):
    obj = datasync
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def public_members(cls):
    """Yield (name, member) of the public names a class defines itself."""
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if callable(member) or inspect.isdatadescriptor(member):
            yield name, member


def test_all_pins_public_names():
    assert sorted(datasync.__all__) == EXPECTED_ALL


def test_all_has_no_duplicates():
    assert len(set(datasync.__all__)) == len(datasync.__all__)


@pytest.mark.parametrize("name", EXPECTED_ALL)
def test_all_name_is_importable(name):
    assert hasattr(datasync, name)


@pytest.mark.parametrize("name", [n for n in EXPECTED_ALL
                                  if n != "DEFAULT_NOTIF_TIMEOUT"])
def test_public_name_has_docstring(name):
    obj = getattr(datasync, name)
    assert inspect.getdoc(obj), f"{name} has no docstring"
    if inspect.isclass(obj):
        undocumented = [member for member, value in public_members(obj)
                        if not getattr(value, "__doc__", None)]
        assert undocumented == [], f"{name} members lack docstrings"


@pytest.mark.parametrize("cls", CONCRETE_CLASSES,
                         ids=lambda cls: cls.__name__)
def test_concrete_class_has_docstrings(cls):
    assert inspect.getdoc(cls), f"{cls.__name__} has no docstring"
    undocumented = [member for member, value in public_members(cls)
                    if not getattr(value, "__doc__", None)]
    assert undocumented == []


@pytest.mark.parametrize("seed, python", sorted(SEED_NAMES.items()))
def test_seed_name_has_counterpart(seed, python):
    obj = resolve(python)
    assert obj is not None, f"{seed} maps to {python}, which is None"


def test_op_values_are_strings():
    assert [op.value for op in datasync.Op] == ["invalid", "put", "delete"]


def test_op_is_str_enum():
    assert datasync.Op.PUT == "put"


def test_default_notif_timeout_is_two_seconds():
    assert datasync.DEFAULT_NOTIF_TIMEOUT == 2.0


def test_options_derive_from_markers():
    assert isinstance(datasync.with_ttl(1), datasync.PutOptionMarker)
    assert isinstance(datasync.with_client_lifetime_ttl(),
                      datasync.PutOptionMarker)
    assert isinstance(datasync.with_prefix(), datasync.DelOptionMarker)
    assert issubclass(datasync.PutOptionMarker, datasync.PutOption)
    assert issubclass(datasync.DelOptionMarker, datasync.DelOption)


def test_with_ttl_keeps_seconds():
    assert datasync.with_ttl(3) == datasync.WithTTLOpt(3.0)


@pytest.mark.parametrize("name", [
    "InvalidKeyError", "InvalidValueError", "InvalidOptionError",
    "ValueParseError", "CompactedError", "MapFullError",
    "InvalidStoreError", "StoreClosedError", "NotReadyError",
    "RegistrationError", "DeliveryTimeoutError", "AggregateError"])
def test_error_derives_from_base(name):
    assert issubclass(getattr(datasync, name), datasync.DatasyncError)


def test_aggregate_error_lists_errors():
    errors = [ValueError("a"), KeyError("b")]
    error = datasync.AggregateError("2 of 2 writers failed", errors)
    assert list(error.exceptions) == errors


def test_py_typed_ships_in_package():
    assert (resources.files("datasync") / "py.typed").is_file()


def test_py_typed_listed_as_package_data():
    with open(ROOT / "pyproject.toml", "rb") as f:
        config = tomllib.load(f)
    package_data = config["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["datasync"]


@pytest.mark.parametrize("name", PROTOCOLS)
def test_protocol_is_runtime_checkable(name):
    protocol = getattr(datasync, name)
    assert isinstance(object(), protocol) is False


def test_store_satisfies_protocols(store):
    assert isinstance(store, datasync.KeyValProtoWatcher)
    assert isinstance(store, datasync.KeyProtoValWriter)


def test_store_events_satisfy_protocols(store, drain):
    chan = queue.Queue()
    store.put("/p/a", b"1")
    registration = store.watch("api", chan, chan, "/p/")
    resync = drain(chan, 1, done=False)[0]
    revision = store.put("/p/a", b"2")
    change_event = drain(chan, revision, done=False)[-1]
    change = change_event.changes[0]
    iterator = resync.values["/p/"]
    keyval = store.get("/p/a")

    assert isinstance(registration, datasync.WatchRegistration)
    assert isinstance(resync, datasync.ResyncEvent)
    assert isinstance(resync, datasync.CallbackResult)
    assert isinstance(change_event, datasync.ChangeEvent)
    assert isinstance(change_event, datasync.CallbackResult)
    assert isinstance(iterator, datasync.KeyValIterator)
    for protocol in (datasync.ProtoWatchResp, datasync.ChangeValue,
                     datasync.KeyVal, datasync.WithKey,
                     datasync.WithRevision, datasync.WithChangeType,
                     datasync.WithPrevValue, datasync.LazyValue):
        assert isinstance(change, protocol), protocol.__name__
    for protocol in (datasync.KeyVal, datasync.WithKey,
                     datasync.WithRevision, datasync.LazyValue):
        assert isinstance(keyval, protocol), protocol.__name__
    resync.done()
    change_event.done()
    registration.close()


def test_aggregators_satisfy_protocols(store):
    watchers = datasync.KVProtoWatchers([store])
    writers = datasync.KVProtoWriters([store])
    registration = datasync.AggregatedRegistration([])
    assert isinstance(watchers, datasync.KeyValProtoWatcher)
    assert isinstance(writers, datasync.KeyProtoValWriter)
    assert isinstance(registration, datasync.WatchRegistration)


# The child blocks every module of the compiled core, as if ext/ had never
# been built, then imports datasync.
BLOCK_CORE = textwrap.dedent("""
    import importlib.abc
    import sys

    class BlockCore(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.startswith("datasync._core."):
                raise ModuleNotFoundError(f"No module named {name!r}",
                                          name=name)
            return None

    sys.meta_path.insert(0, BlockCore())
    import datasync
""")


def test_import_without_core_says_how_to_build():
    result = subprocess.run([sys.executable, "-c", BLOCK_CORE],
                            capture_output=True, text=True, timeout=60)
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0
    assert last_line.startswith("ImportError:")
    assert "datasync._core" in last_line
    assert "pip install -e ." in last_line


def test_import_with_core_succeeds():
    result = subprocess.run(
        [sys.executable, "-c", "import datasync; print(datasync.Store)"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
