"""Protobuf values: stored as bytes, parsed only on a consumer's request.

Uses message types that ship with the protobuf package:
FileDescriptorProto (proto2, nested messages and repeated fields) and
Struct (proto3, maps and oneofs).
"""

import queue

import pytest
from google.protobuf import descriptor_pb2, struct_pb2

import datasync
from datasync.events import Change, KeyVal, ResyncEvent


def file_descriptor(name, field_count):
    proto = descriptor_pb2.FileDescriptorProto(name=name, package="demo")
    message = proto.message_type.add(name="Interface")
    for number in range(1, field_count + 1):
        message.field.add(
            name=f"field_{number}", number=number,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    return proto


def struct(**values):
    message = struct_pb2.Struct()
    message.update(values)
    return message


def test_put_get_file_descriptor(store):
    proto = file_descriptor("a.proto", 3)
    store.put("/pb/fd", proto)
    kv = store.get("/pb/fd")
    assert kv.value == proto.SerializeToString()
    parsed = descriptor_pb2.FileDescriptorProto()
    assert kv.get_value(parsed) is parsed
    assert parsed == proto


def test_put_get_struct(store):
    message = struct(name="eth0", mtu=1500.0, up=True,
                     addresses=["10.0.0.1", "10.0.0.2"],
                     extra={"vlan": None})
    store.put("/pb/struct", message)
    parsed = store.get("/pb/struct").get_value(struct_pb2.Struct())
    assert parsed == message
    assert parsed["addresses"][1] == "10.0.0.2"


def test_list_values_parse(store):
    store.put("/pb/a", struct(n=1.0))
    store.put("/pb/b", struct(n=2.0))
    parsed = [kv.get_value(struct_pb2.Struct())["n"]
              for kv in store.list_values("/pb/")]
    assert parsed == [1.0, 2.0]


def test_watch_carries_values_and_prev(store, drain):
    first = file_descriptor("v1.proto", 1)
    second = file_descriptor("v2.proto", 2)
    store.put("/pb/fd", first)
    chan = queue.Queue()
    store.watch("proto", chan, chan, "/pb/")
    resync = drain(chan, 1, done=False)[0]
    assert isinstance(resync, ResyncEvent)
    [kv] = list(resync.values["/pb/"])
    assert kv.get_value(descriptor_pb2.FileDescriptorProto()) == first
    resync.done()

    store.put("/pb/fd", second)
    store.delete("/pb/fd")
    put_event, delete_event = drain(chan, 3)

    put = put_event.changes[0]
    assert put.get_value(descriptor_pb2.FileDescriptorProto()) == second
    prev = descriptor_pb2.FileDescriptorProto()
    assert put.get_prev_value(prev) is True
    assert prev == first

    deleted = delete_event.changes[0]
    untouched = descriptor_pb2.FileDescriptorProto(name="keep")
    assert deleted.get_value(untouched) is None
    assert untouched.name == "keep"
    prev = descriptor_pb2.FileDescriptorProto()
    assert deleted.get_prev_value(prev) is True
    assert prev == second


def test_first_put_has_no_prev_value(store):
    store.put("/pb/s", struct(a=1.0))
    change = store.changes(0)[0]
    untouched = struct(marker="kept")
    assert change.get_prev_value(untouched) is False
    assert untouched == struct(marker="kept")


def test_txn_of_messages(store):
    with store.txn() as txn:
        txn.put("/pb/fd", file_descriptor("t.proto", 2))
        txn.put("/pb/s", struct(k="v"))
    changes = store.changes(0)
    assert [c.revision for c in changes] == [1, 1]
    assert changes[1].get_value(struct_pb2.Struct()) == struct(k="v")


def test_parse_wrong_type_names_key_and_type(store):
    store.put("/pb/fd", file_descriptor("wrong.proto", 2))
    kv = store.get("/pb/fd")
    with pytest.raises(datasync.ValueParseError) as caught:
        kv.get_value(struct_pb2.Struct())
    message = str(caught.value)
    assert "'/pb/fd'" in message
    assert "google.protobuf.Struct" in message
    assert "revision 1" in message


def test_prev_value_wrong_type_raises(store):
    store.put("/pb/fd", file_descriptor("old.proto", 1))
    store.put("/pb/fd", file_descriptor("new.proto", 1))
    change = store.changes(1)[0]
    with pytest.raises(datasync.ValueParseError, match="'/pb/fd'"):
        change.get_prev_value(struct_pb2.Struct())


def test_parse_corrupt_bytes_raises(store):
    store.put("/pb/raw", b"\xff\xff\xff")
    with pytest.raises(datasync.ValueParseError, match="'/pb/raw'"):
        store.get("/pb/raw").get_value(struct_pb2.Struct())


def test_get_value_into_non_message_raises(store):
    store.put("/pb/raw", b"x")
    with pytest.raises(TypeError, match="dict"):
        store.get("/pb/raw").get_value({})


def test_put_message_missing_required_raises(store):
    # NamePart is a proto2 message whose two fields are required, so an
    # empty one cannot be serialized.
    part = descriptor_pb2.UninterpretedOption.NamePart()
    with pytest.raises(datasync.InvalidValueError) as caught:
        store.put("/pb/part", part)
    message = str(caught.value)
    assert "'/pb/part'" in message
    assert "google.protobuf.UninterpretedOption.NamePart" in message
    assert store.revision == 0


def test_raw_bytes_stay_available(store):
    proto = file_descriptor("raw.proto", 1)
    store.put("/pb/fd", proto)
    change = store.changes(0)[0]
    assert change.value == proto.SerializeToString()
    assert change.prev_value is None


# The event classes built directly, as a transport would.


def test_keyval_built_from_message_bytes():
    data = struct(x=1.0).SerializeToString()
    kv = KeyVal("/k", data, revision=4, create_revision=2, version=3)
    assert kv.key == "/k"
    assert kv.key_bytes == b"/k"
    assert (kv.revision, kv.create_revision, kv.version) == (4, 2, 3)
    assert kv.get_value(struct_pb2.Struct()) == struct(x=1.0)


def test_change_built_with_prev_value():
    change = Change("/k", datasync.Op.PUT,
                    value=struct(x=2.0).SerializeToString(),
                    prev_value=struct(x=1.0).SerializeToString(),
                    revision=7)
    assert change.change_type is datasync.Op.PUT
    prev = struct_pb2.Struct()
    assert change.get_prev_value(prev) is True
    assert prev == struct(x=1.0)
    assert change.get_value(struct_pb2.Struct()) == struct(x=2.0)


def test_change_delete_drops_value():
    change = Change("/k", "delete", value=b"ignored", prev_value=b"old")
    assert change.change_type is datasync.Op.DELETE
    assert change.value is None
    assert change.prev_value == b"old"


@pytest.mark.parametrize("change_type", [datasync.Op.INVALID, "bogus"])
def test_change_bad_type_raises(change_type):
    with pytest.raises(ValueError):
        Change("/k", change_type, value=b"v")


def test_change_put_without_value_raises():
    with pytest.raises(ValueError, match="'/k'"):
        Change("/k", datasync.Op.PUT)
