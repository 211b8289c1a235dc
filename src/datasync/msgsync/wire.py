"""The wire format of a topic: stream, subjects, headers and payloads.

A topic ``T`` is the JetStream stream ``DATASYNC_T`` holding the subjects
``datasync.T.>``. Each change of a key is one message on the subject
``datasync.T.<token>``, where the token is the key with every byte
outside ``SAFE_KEY_BYTES`` written as ``%XX`` (upper-case hex). The
encoding is reversible and keeps the key in one subject token, because
NATS splits subjects at ``.`` and reserves ``*``, ``>`` and whitespace.
One subject per key lets last-per-subject delivery return the latest
value of every key.

Headers of each message:

``Nats-Msg-Id``
    Id under which JetStream drops a repeated publish within the
    stream's duplicate window.
``Datasync-Op``
    ``put`` or ``delete``.
``Datasync-Key``
    The key token, as in the subject.
``Content-Type``
    ``application/x-protobuf`` (binary) or ``application/json`` (protobuf
    JSON), on puts only.
``Datasync-Message-Type``
    Full name of the protobuf message type, on puts only.

A delete has an empty payload.
"""

import json
import re

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from datasync._core.events import Change, KeyVal
from datasync.errors import (InvalidKeyError, InvalidOptionError,
                             InvalidValueError, ValueParseError)
from datasync.ops import Op

#: Largest key in bytes, the same as the embedded store's (LMDB's default
#: MDB_MAXKEYSIZE), so that keys move freely between a store and a topic.
#: Encoded, such a key takes at most 1533 bytes of a subject, well inside
#: nats-server's default max_control_line of 4096 bytes.
MAX_KEY_SIZE = 511

#: Key bytes written as they are in a subject token. Any other byte,
#: ``%`` included, is escaped.
SAFE_KEY_BYTES = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    b"-_/:=+@~,")

#: Bytes kept in a consumer name. nats-server rejects ``/`` there,
#: because consumer names become directory names of the store, and
#: nats-server 2.9 garbles ack subjects of names that contain ``%``
#: (it passes them through a printf-style format).
SAFE_NAME_BYTES = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")

SUBJECT_ROOT = "datasync"
STREAM_PREFIX = "DATASYNC_"

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_OP = "Datasync-Op"
HEADER_KEY = "Datasync-Key"
HEADER_CONTENT_TYPE = "Content-Type"
HEADER_MESSAGE_TYPE = "Datasync-Message-Type"

CONTENT_PROTOBUF = "application/x-protobuf"
CONTENT_JSON = "application/json"

#: Encodings a publisher accepts, mapped to their content types.
ENCODINGS = {"protobuf": CONTENT_PROTOBUF, "json": CONTENT_JSON}

_TOPIC_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ESCAPE = {b: f"%{b:02X}" for b in range(256)}
_ESCAPED_RE = re.compile(rb"%([0-9A-F]{2})")


def check_topic(topic):
    """Return ``topic`` if it is a valid topic name.

    A topic is 1 to 64 ASCII letters, digits, ``-`` or ``_``, so that it
    fits both a stream name and one subject token. Raises
    InvalidOptionError otherwise.
    """
    if not isinstance(topic, str) or not _TOPIC_RE.fullmatch(topic):
        raise InvalidOptionError(
            f"topic {topic!r} is invalid: use 1 to 64 ASCII letters, "
            "digits, '-' or '_'")
    return topic


def stream_name(topic):
    """Return the name of the JetStream stream of ``topic``."""
    return STREAM_PREFIX + topic


def topic_filter(topic):
    """Return the subject filter that matches every key of ``topic``."""
    return f"{SUBJECT_ROOT}.{topic}.>"


def key_bytes(key, what="key"):
    """Return ``key`` as bytes, or raise InvalidKeyError naming it."""
    if isinstance(key, str):
        data = key.encode("utf-8", "surrogateescape")
    elif isinstance(key, bytes):
        data = key
    else:
        raise InvalidKeyError(
            f"{what} must be str or bytes, got {type(key).__name__} "
            f"{key!r}")
    if not data:
        raise InvalidKeyError(f"{what} must not be empty")
    if len(data) > MAX_KEY_SIZE:
        raise InvalidKeyError(
            f"{what} {key[:40]!r}... is {len(data)} bytes, above the "
            f"limit of {MAX_KEY_SIZE} bytes; use a shorter key")
    return data


def prefix_bytes(prefix):
    """Return a watch prefix as bytes; the empty prefix matches all."""
    if prefix in ("", b""):
        return b""
    return key_bytes(prefix, "prefix")


def encode_token(data):
    """Return the subject token of the key bytes ``data``."""
    return "".join(chr(b) if b in SAFE_KEY_BYTES else _ESCAPE[b]
                   for b in data)


def decode_token(token):
    """Return the key bytes of a subject token.

    Raises ValueError when the token is not one that encode_token makes.
    """
    raw = token.encode("ascii")
    data = _ESCAPED_RE.sub(lambda m: bytes.fromhex(m.group(1).decode()),
                           raw)
    if not data or encode_token(data) != token:
        raise ValueError(f"subject token {token!r} is not an encoded key")
    return data


def key_subject(topic, data):
    """Return the subject of the key bytes ``data`` in ``topic``."""
    return f"{SUBJECT_ROOT}.{topic}.{encode_token(data)}"


def subject_key(topic, subject):
    """Return the key bytes of ``subject``, a subject of ``topic``.

    Raises ValueError for a subject of another topic or a malformed one.
    """
    head = f"{SUBJECT_ROOT}.{topic}."
    if not subject.startswith(head) or "." in subject[len(head):]:
        raise ValueError(
            f"subject {subject!r} is not a key subject of topic {topic!r}")
    return decode_token(subject[len(head):])


def consumer_name(resync_name):
    """Return the durable consumer name of a watch's resync name.

    The name is ``ds_`` and the resync name with bytes outside
    ``SAFE_NAME_BYTES`` escaped as ``_XX`` (upper-case hex).
    """
    data = resync_name.encode("utf-8", "surrogateescape")
    return "ds_" + "".join(chr(b) if b in SAFE_NAME_BYTES else f"_{b:02X}"
                           for b in data)


def serialize(message, encoding, key):
    """Return (payload, message type name) of ``message`` for a put.

    ``message`` is a protobuf message, or bytes already serialized as
    protobuf binary (then the type name is empty and the encoding must be
    ``protobuf``). Raises InvalidValueError for anything else.
    """
    if isinstance(message, (bytes, bytearray, memoryview)):
        if encoding != "protobuf":
            raise InvalidValueError(
                f"value of key {key!r} is bytes, which the {encoding} "
                "encoding cannot convert; pass the protobuf message")
        return bytes(message), ""
    if not (hasattr(message, "SerializeToString") and
            hasattr(message, "DESCRIPTOR")):
        raise InvalidValueError(
            f"value of key {key!r} must be a protobuf message or bytes, "
            f"got {type(message).__name__}")
    name = message.DESCRIPTOR.full_name
    if encoding == "protobuf":
        return message.SerializeToString(), name
    # Compact JSON; MessageToDict gives the proto3 JSON mapping, with
    # lowerCamelCase field names as the protobuf JSON spec prescribes.
    text = json.dumps(json_format.MessageToDict(message),
                      separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8"), name


def put_headers(msg_id, data, content_type, type_name):
    """Return the headers of a put of the key bytes ``data``."""
    headers = {
        HEADER_MSG_ID: msg_id,
        HEADER_OP: Op.PUT.value,
        HEADER_KEY: encode_token(data),
        HEADER_CONTENT_TYPE: content_type,
    }
    if type_name:
        headers[HEADER_MESSAGE_TYPE] = type_name
    return headers


def delete_headers(msg_id, data):
    """Return the headers of a delete of the key bytes ``data``."""
    return {
        HEADER_MSG_ID: msg_id,
        HEADER_OP: Op.DELETE.value,
        HEADER_KEY: encode_token(data),
    }


def read_op(headers):
    """Return (Op, content type) of a message's headers.

    Raises ValueError when the headers do not describe a datasync change.
    """
    headers = headers or {}
    op = headers.get(HEADER_OP)
    if op == Op.PUT.value:
        content_type = headers.get(HEADER_CONTENT_TYPE, CONTENT_PROTOBUF)
        if content_type not in (CONTENT_PROTOBUF, CONTENT_JSON):
            raise ValueError(f"unknown content type {content_type!r}")
        return Op.PUT, content_type
    if op == Op.DELETE.value:
        return Op.DELETE, None
    raise ValueError(f"header {HEADER_OP} is {op!r}, not 'put' or 'delete'")


# Values published as JSON -------------------------------------------------
#
# Subscribers call get_value(message) on every change, whatever encoding
# the publisher chose. Binary values use the compiled classes as they
# are. A change that involves a JSON value uses a subclass that parses
# JSON, so the payload stays unparsed until get_value is called.


def _parse_json(message, data, owner):
    if not hasattr(message, "DESCRIPTOR"):
        raise TypeError(
            "get_value needs a protobuf message instance, got "
            f"{type(message).__name__}; use .value for the raw bytes")
    try:
        json_format.Parse(data, message)
    except (json_format.ParseError, DecodeError, UnicodeDecodeError) as exc:
        name = message.DESCRIPTOR.full_name
        raise ValueParseError(
            f"JSON value of key {owner.key!r} at revision "
            f"{owner.revision} is not a valid {name}: {exc}; read it with "
            "the message type the publisher used, or use .value for the "
            "raw bytes") from exc


class JsonKeyVal(KeyVal):
    """A KeyVal whose value is protobuf JSON; ``get_value`` parses it."""

    __slots__ = ("content_type",)

    def get_value(self, message):
        """Parse the JSON value into ``message`` and return it.

        Raises ValueParseError when the text is not a valid ``message``.
        """
        value = self.value
        if value is None:
            return None
        _parse_json(message, value, self)
        return message


class JsonChange(Change):
    """A Change whose value or previous value is protobuf JSON.

    ``content_type`` and ``prev_content_type`` tell the encoding of each;
    ``get_value`` and ``get_prev_value`` parse either one.
    """

    __slots__ = ("content_type", "prev_content_type")

    def get_value(self, message):
        """Parse the value into ``message`` and return it.

        Returns None for a delete. Raises ValueParseError when the value
        is not a valid ``message``.
        """
        if self.content_type != CONTENT_JSON:
            return super().get_value(message)
        value = self.value
        if value is None:
            return None
        _parse_json(message, value, self)
        return message

    def get_prev_value(self, message):
        """Parse the previous value into ``message``.

        Returns False, leaving ``message`` untouched, when the key had no
        value before.
        """
        if self.prev_content_type != CONTENT_JSON:
            return super().get_prev_value(message)
        prev = self.prev_value
        if prev is None:
            return False
        _parse_json(message, prev, self)
        return True


def make_change(key, op, value, content_type, prev, revision):
    """Build the Change of one message.

    ``prev`` is the key's entry before the change, a tuple (value,
    content type, revision), or None. A topic keeps no create revisions
    or versions, because a resync reads only the last message of each
    key, so both are 0.
    """
    prev_value = None if prev is None else prev[0]
    prev_type = None if prev is None else prev[1]
    if content_type != CONTENT_JSON and prev_type != CONTENT_JSON:
        return Change(key, op, value, prev_value, revision)
    change = JsonChange(key, op, value, prev_value, revision)
    change.content_type = content_type
    change.prev_content_type = prev_type
    return change


def make_keyval(key, entry):
    """Build the KeyVal of a key's latest entry for a resync."""
    value, content_type, revision = entry
    if content_type == CONTENT_JSON:
        return JsonKeyVal(key, value, revision)
    return KeyVal(key, value, revision)
