"""Serializers: how protobuf messages become the bytes stored in etcd.

The Go original (Ligato cn-infra) stores messages in etcd as protobuf
JSON by default, so this backend does too: an agent written in Go and one
written in Python read each other's values. ``BINARY`` stores the
protobuf wire format instead, as the embedded store does.

Values given as bytes are stored as they are, whatever the serializer.

Reading goes the other way. ``KeyVal.get_value(message)`` and
``Change.get_prev_value(message)`` of the compiled event classes parse
the protobuf wire format, so with any other serializer the backend hands
out subclasses of them whose ``get_value`` and ``get_prev_value`` decode
with that serializer. ``.value`` and ``.prev_value`` stay the stored
bytes (JSON text with ``JSON``).
"""

import json

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from datasync._core.events import Change, KeyVal
from datasync.errors import ValueParseError

__all__ = ["Serializer", "JSONSerializer", "BinarySerializer", "JSON",
           "BINARY", "get_serializer"]


class Serializer:
    """Base class of serializers.

    A subclass sets ``name`` and implements ``encode`` and ``decode``.
    """

    name = ""

    def encode(self, message):
        """Return the bytes to store for protobuf ``message``."""
        raise NotImplementedError

    def decode(self, data, message):
        """Fill ``message`` from stored ``data``, replacing its fields.

        Raises ValueError (or a subclass) when ``data`` is not a valid
        encoding of that message type.
        """
        raise NotImplementedError

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}>"


class JSONSerializer(Serializer):
    """Protobuf JSON, as Go's jsonpb writes it by default.

    Fields are named in lowerCamelCase, fields with default values are
    left out and the text is compact UTF-8. Reading ignores fields that
    the message type does not have, as binary parsing does, so a newer
    writer's values stay readable.
    """

    name = "json"

    def encode(self, message):
        fields = json_format.MessageToDict(message)
        return json.dumps(fields, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")

    def decode(self, data, message):
        message.Clear()
        json_format.Parse(data, message, ignore_unknown_fields=True)


class BinarySerializer(Serializer):
    """The protobuf wire format, as the embedded store stores messages."""

    name = "binary"

    def encode(self, message):
        return message.SerializeToString()

    def decode(self, data, message):
        message.ParseFromString(data)


JSON = JSONSerializer()
BINARY = BinarySerializer()

_BY_NAME = {"json": JSON, "binary": BINARY}


def get_serializer(serializer):
    """Return the Serializer for ``serializer``: "json", "binary" or an
    object with ``encode`` and ``decode``.

    Raises ValueError for an unknown name or an object without them.
    """
    if isinstance(serializer, str):
        try:
            return _BY_NAME[serializer]
        except KeyError:
            raise ValueError(
                f"unknown serializer {serializer!r}; use 'json', 'binary' "
                "or a Serializer object") from None
    if not (callable(getattr(serializer, "encode", None)) and
            callable(getattr(serializer, "decode", None))):
        raise ValueError(
            f"serializer {serializer!r} has no encode() and decode(); "
            "subclass datasync.keyval.etcd.Serializer")
    return serializer


def _decode_into(serializer, data, message, owner):
    if not hasattr(message, "DESCRIPTOR"):
        raise TypeError(
            "get_value needs a protobuf message instance, got "
            f"{type(message).__name__}; use .value for the raw bytes")
    try:
        serializer.decode(data, message)
    except (ValueError, DecodeError, json_format.ParseError) as exc:
        name = message.DESCRIPTOR.full_name
        raise ValueParseError(
            f"value of key {owner.key!r} at revision {owner.revision} is "
            f"not a valid {name} in {serializer.name or 'the'} encoding: "
            f"{exc}; read it with the message type the writer used, or "
            "use .value for the raw bytes") from exc


class _SerializedKeyVal(KeyVal):
    """A KeyVal whose get_value decodes with the class's serializer."""

    __slots__ = ()
    serializer = None

    def get_value(self, message):
        value = self.value
        if value is None:
            return None
        _decode_into(self.serializer, value, message, self)
        return message


class _SerializedChange(Change):
    """A Change whose get_value and get_prev_value decode with the
    class's serializer."""

    __slots__ = ()
    serializer = None

    def get_value(self, message):
        value = self.value
        if value is None:
            return None
        _decode_into(self.serializer, value, message, self)
        return message

    def get_prev_value(self, message):
        prev = self.prev_value
        if prev is None:
            return False
        _decode_into(self.serializer, prev, message, self)
        return True


# Event classes per serializer object; the classes keep their serializer
# alive, so its id is never reused while it is a key here.
_CLASSES = {}


def event_classes(serializer):
    """Return the (KeyVal, Change) classes that read ``serializer``'s
    values: the compiled ones for the wire format, else subclasses."""
    if isinstance(serializer, BinarySerializer):
        return KeyVal, Change
    classes = _CLASSES.get(id(serializer))
    if classes is None:
        classes = (
            type("KeyVal", (_SerializedKeyVal,),
                 {"__slots__": (), "serializer": serializer}),
            type("Change", (_SerializedChange,),
                 {"__slots__": (), "serializer": serializer}),
        )
        _CLASSES[id(serializer)] = classes
    return classes
