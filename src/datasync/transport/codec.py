"""Content types of the values that clients send, and their decoding.

Values are stored and delivered as protobuf binary. A client sends each
value as protobuf binary or as protobuf JSON and names the encoding in
its content type: the ``content_type`` field over gRPC, the
``Content-Type`` header over HTTP.

``application/x-protobuf`` (or ``application/protobuf``)
    Protobuf binary, stored as sent. With a ``proto=<full name>``
    parameter the server first parses it as that message type; without
    one it checks that the bytes are well-formed protobuf wire format.
``application/json``
    Protobuf JSON (the proto3 JSON mapping), converted to binary. The
    server takes the message type from, in this order: the
    ``proto=<full name>`` parameter, an ``"@type"`` member of the JSON
    object (``"type.googleapis.com/<full name>"`` or the bare full name,
    as in the JSON form of google.protobuf.Any), or the type registered
    for the longest matching key prefix (MessageTypes.register).
``application/octet-stream``
    Opaque bytes, stored as sent without any check: for values that are
    not protobuf messages.
empty
    Read as ``application/json``, because the Go original parses every
    value as protobuf JSON whatever its content type says.

A full name is looked up among the messages of protobuf's default
descriptor pool, that is of every generated ``_pb2`` module the server
has imported. Any other content type, an unknown message type, a value
that does not parse and a value above the size limit are rejected with a
ProtocolError that names the key and the problem.
"""

import json

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import DecodeError

from datasync.errors import InvalidKeyError
from datasync.keyval.lmdb.store import encode_key
from datasync.transport.errors import ProtocolError

__all__ = ["BINARY", "JSON", "OPAQUE", "DEFAULT_MAX_VALUE_SIZE",
           "MessageTypes", "ValueCodec", "parse_content_type", "decode_key"]

#: Content type of protobuf binary values.
BINARY = "application/x-protobuf"

#: Content type of protobuf JSON values.
JSON = "application/json"

#: Content type of opaque values, stored without a check.
OPAQUE = "application/octet-stream"

_BINARY_TYPES = frozenset({BINARY, "application/protobuf"})

#: Default largest value, in bytes, that a transport accepts. etcd's
#: default request limit is 1.5 MiB; 1 MiB keeps a value and its key
#: below it.
DEFAULT_MAX_VALUE_SIZE = 1 << 20

# Depth of nested JSON objects accepted, as in json_format.Parse.
_MAX_JSON_DEPTH = 100


def parse_content_type(content_type):
    """Split a content type into (media type, parameters dict).

    The media type and parameter names are lower-cased; quotes around a
    parameter value are removed.
    """
    media, _, rest = content_type.partition(";")
    params = {}
    for part in rest.split(";"):
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        params[name] = value if sep else ""
    return media.strip().lower(), params


def decode_key(key):
    """Return ``key`` (str or bytes) as bytes, or raise ProtocolError.

    A key must be non-empty, valid UTF-8 and at most 511 bytes, the limit
    of the embedded store.
    """
    if isinstance(key, bytes):
        try:
            key.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(
                f"key {key[:60]!r} is not valid UTF-8: {exc}") from None
    try:
        return encode_key(key)
    except InvalidKeyError as exc:
        raise ProtocolError(f"invalid key: {exc}") from None


class MessageTypes:
    """Message types of keys, registered by key prefix.

    ``mapping`` maps prefixes to message classes or full names, as
    ``register`` takes them.
    """

    def __init__(self, mapping=None):
        self._by_prefix = {}
        self._classes = {}
        for prefix, message_type in (mapping or {}).items():
            self.register(prefix, message_type)

    def register(self, prefix, message_type):
        """Read JSON values of keys under ``prefix`` as ``message_type``.

        ``message_type`` is a generated message class or the full name of
        one whose module is imported. The longest registered prefix of a
        key wins. Raises ValueError for an unknown full name and
        TypeError for anything else than a message class or a name.
        """
        if isinstance(message_type, str):
            message_type = self.by_name(message_type)
        elif not (isinstance(message_type, type) and
                  hasattr(message_type, "DESCRIPTOR")):
            raise TypeError(
                "message_type must be a protobuf message class or a full "
                f"name, got {message_type!r}")
        if isinstance(prefix, str):
            prefix = prefix.encode("utf-8")
        self._by_prefix[prefix] = message_type

    def for_key(self, key):
        """Return the class registered for the longest prefix of ``key``
        (bytes), or None."""
        best = None
        best_len = -1
        for prefix, message_type in self._by_prefix.items():
            if len(prefix) > best_len and key.startswith(prefix):
                best, best_len = message_type, len(prefix)
        return best

    def by_name(self, name):
        """Return the message class of the full name ``name``.

        Raises ValueError when no imported module defines it.
        """
        cls = self._classes.get(name)
        if cls is not None:
            return cls
        try:
            descriptor = descriptor_pool.Default().FindMessageTypeByName(
                name)
        except KeyError:
            raise ValueError(
                f"unknown message type {name!r}: no imported protobuf "
                "module defines it; import its _pb2 module in the server "
                "(datasync serve --proto-module)") from None
        cls = message_factory.GetMessageClass(descriptor)
        self._classes[name] = cls
        return cls

    def __len__(self):
        return len(self._by_prefix)


def _reject_duplicates(pairs):
    obj = {}
    for name, value in pairs:
        if name in obj:
            raise ValueError(f"duplicate member {name!r}")
        obj[name] = value
    return obj


class ValueCodec:
    """Turns the content of a request into the value bytes to store.

    ``types`` is a MessageTypes (an empty one by default) and
    ``max_value_size`` the largest content, in bytes, accepted.
    """

    def __init__(self, types=None, max_value_size=DEFAULT_MAX_VALUE_SIZE):
        if isinstance(max_value_size, bool) or not isinstance(
                max_value_size, int) or max_value_size < 1:
            raise ValueError(
                f"max_value_size must be an int >= 1, got {max_value_size!r}")
        self.types = types if types is not None else MessageTypes()
        self.max_value_size = max_value_size

    def decode(self, key, content, content_type):
        """Return the protobuf binary value of ``content`` for ``key``.

        ``key`` is the key as bytes, ``content`` the bytes received and
        ``content_type`` their content type. Raises ProtocolError naming
        the key and the problem.
        """
        if len(content) > self.max_value_size:
            raise ProtocolError(
                f"value of key {_show(key)} is {len(content)} bytes, above "
                f"the limit of {self.max_value_size} bytes; split it, or "
                "start the server with a larger --max-value-size",
                http_status=413)
        media, params = parse_content_type(content_type)
        if media in _BINARY_TYPES:
            return self._decode_binary(key, content, params.get("proto"))
        if media in (JSON, ""):
            return self._decode_json(key, content, params.get("proto"))
        if media == OPAQUE:
            return bytes(content)
        raise ProtocolError(
            f"unsupported content type {content_type!r} for key "
            f"{_show(key)}; use {BINARY!r} for protobuf binary, {JSON!r} "
            f"for protobuf JSON or {OPAQUE!r} for opaque bytes")

    def _decode_binary(self, key, content, name):
        message = self._message(key, name) if name else Empty()
        try:
            message.ParseFromString(content)
        except DecodeError as exc:
            raise ProtocolError(
                f"value of key {_show(key)} is not valid protobuf binary "
                f"of type {message.DESCRIPTOR.full_name}: {exc}") from None
        return bytes(content)

    def _decode_json(self, key, content, name):
        try:
            obj = json.loads(content.decode("utf-8"),
                             object_pairs_hook=_reject_duplicates)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ProtocolError(
                f"value of key {_show(key)} is not valid JSON: "
                f"{_first_line(exc)}") from None
        return self.decode_json_object(key, obj, name)

    def decode_json_object(self, key, obj, name=None):
        """Return the protobuf binary value of a parsed JSON object.

        The message type is ``name``, the object's "@type" member or the
        type registered for ``key``'s prefix, in this order. Raises
        ProtocolError naming the key and the problem.
        """
        if not isinstance(obj, dict):
            raise ProtocolError(
                f"value of key {_show(key)} must be a JSON object (protobuf "
                f"JSON of a message), got {type(obj).__name__}")
        obj = dict(obj)
        type_url = obj.pop("@type", None)
        if name is None and type_url is not None:
            if not isinstance(type_url, str):
                raise ProtocolError(
                    f'"@type" of the value of key {_show(key)} must be a '
                    f"string, got {type_url!r}")
            name = type_url.rpartition("/")[2]
        message = self._message(key, name)
        try:
            json_format.ParseDict(obj, message,
                                  max_recursion_depth=_MAX_JSON_DEPTH)
        except (json_format.ParseError, ValueError, TypeError,
                RecursionError) as exc:
            raise ProtocolError(
                f"value of key {_show(key)} is not valid protobuf JSON of "
                f"type {message.DESCRIPTOR.full_name}: "
                f"{_first_line(exc)}") from None
        return message.SerializeToString()

    def _message(self, key, name):
        """Return a new message of the type ``name``, or of the key's type."""
        if name:
            try:
                return self.types.by_name(name)()
            except ValueError as exc:
                raise ProtocolError(f"key {_show(key)}: {exc}") from None
        cls = self.types.for_key(key)
        if cls is None:
            raise ProtocolError(
                f"no message type known for the JSON value of key "
                f"{_show(key)}; name it in the content type "
                f"('{JSON}; proto=<full name>'), in an \"@type\" member, "
                "or register one for the key's prefix")
        return cls()

    def to_json(self, key, value, name=None):
        """Return ``value`` as a protobuf JSON dict, or None.

        The type is ``name`` or the one registered for ``key``'s prefix;
        None is returned when neither is known or the value does not
        parse as that type. Raises ProtocolError for an unknown ``name``.
        """
        if name:
            message = self._message(key, name)
        else:
            cls = self.types.for_key(key)
            if cls is None:
                return None
            message = cls()
        try:
            message.ParseFromString(value)
        except DecodeError:
            return None
        return json_format.MessageToDict(message)


def _show(key):
    """Return a key for a message, cut to 80 characters."""
    text = key.decode("utf-8", "backslashreplace") if isinstance(
        key, bytes) else key
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _first_line(exc):
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
