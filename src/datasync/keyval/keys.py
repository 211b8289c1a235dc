"""Checks and encodings of keys, prefixes and values.

Every backend and transport validates through these, so that a key or
value is rejected with the same message wherever it enters.
"""

from google.protobuf.message import EncodeError

from datasync.errors import InvalidKeyError, InvalidValueError

__all__ = ["MAX_KEY_SIZE", "encode_key", "encode_prefix", "encode_value"]

#: LMDB's MDB_MAXKEYSIZE in its default build (liblmdb's lmdb.h), which
#: is the build the lmdb package ships.
MAX_KEY_SIZE = 511


def encode_key(key, what="key"):
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
            f"{what} {key[:40]!r}... is {len(data)} bytes, above LMDB's "
            f"limit of {MAX_KEY_SIZE} bytes; use a shorter key")
    return data


def encode_prefix(prefix):
    """Return a watch prefix as bytes; the empty prefix matches all."""
    if prefix in ("", b""):
        return b""
    return encode_key(prefix, "prefix")


def encode_value(value, key, max_size):
    """Return the bytes to store for ``value`` (bytes or a message)."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, (bytearray, memoryview)):
        data = bytes(value)
    elif hasattr(value, "SerializeToString") and hasattr(value,
                                                          "DESCRIPTOR"):
        try:
            data = value.SerializeToString()
        except EncodeError as exc:
            raise InvalidValueError(
                f"value of key {key!r} is a {value.DESCRIPTOR.full_name} "
                f"that cannot be serialized: {exc}; set its required "
                "fields") from exc
    else:
        raise InvalidValueError(
            f"value of key {key!r} must be bytes or a protobuf message, "
            f"got {type(value).__name__}; encode text with .encode()")
    if len(data) > max_size:
        raise InvalidValueError(
            f"value of key {key!r} is {len(data)} bytes, above the "
            f"limit of {max_size} bytes; split it, or open the store "
            "with a larger max_value_size")
    return data
