"""datasync keeps agents in sync with data held in a key-value store.

Vocabulary, used the same way in every module:

key
    A non-empty str or bytes of at most 511 bytes in UTF-8 (LMDB's key
    limit). Keys are compared as bytes.
prefix
    A key fragment; a key is under a prefix when it starts with it.
revision
    A global counter, one step per committed transaction that changed
    something. Strictly increasing and never reused.
change
    One put or delete of a key at a revision, with the value before it.
resync
    A snapshot of every key under a subscription's prefixes, taken at one
    revision R and followed only by changes with revisions above R.
watch
    The call that creates a subscription.
subscription
    A resync name, a set of prefixes, and the channels that receive its
    change and resync events.

Channels are a ``queue.Queue``, an ``asyncio.Queue`` or a callable that
takes the event. The receiver reports back with ``event.done(error)``.
"""

try:
    from datasync._core import commit as _commit  # noqa: F401
    from datasync._core import events as _events  # noqa: F401
    from datasync._core import prefix as _prefix  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "the compiled core of datasync (datasync._core) is not built: "
        "run 'pip install -e .' (or 'make install') in the source tree, "
        "which compiles ext/ with Cython and a C compiler; "
        f"import failed with: {exc}") from exc

from datasync.aggregator import (AggregatedRegistration, KVProtoWatchers,
                                 KVProtoWriters)
from datasync.channels import DEFAULT_NOTIF_TIMEOUT
from datasync.errors import (AggregateError, CompactedError, DatasyncError,
                             DeliveryTimeoutError, InvalidKeyError,
                             InvalidOptionError, InvalidStoreError,
                             InvalidValueError, MapFullError, NotReadyError,
                             RegistrationError, StoreClosedError,
                             ValueParseError)
from datasync.interfaces import (CallbackResult, ChangeEvent, ChangeValue,
                                 KeyProtoValWriter, KeyVal, KeyValIterator,
                                 KeyValProtoWatcher, LazyValue,
                                 ProtoWatchResp, ResyncEvent,
                                 WatchRegistration, WithChangeType, WithKey,
                                 WithPrevValue, WithRevision)
from datasync.keyval.lmdb import Store
from datasync.ops import Op
from datasync.options import (DelOption, DelOptionMarker, PutOption,
                              PutOptionMarker, WithClientLifetimeTTLOpt,
                              WithPrefixOpt, WithTTLOpt,
                              with_client_lifetime_ttl, with_prefix,
                              with_ttl)

__version__ = "0.1.0"


__all__ = [
    "DEFAULT_NOTIF_TIMEOUT",
    "AggregateError",
    "AggregatedRegistration",
    "CallbackResult",
    "ChangeEvent",
    "ChangeValue",
    "CompactedError",
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
]
