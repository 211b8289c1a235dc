"""Building blocks shared by the transports of datasync.

A transport that has no store of its own (gRPC, REST, local
transactions) keeps its subscriptions in a Registry. The registry routes
each propagated change to the subscriptions whose prefixes match, fills
in the revision and the previous value of every key, and waits for each
subscriber's done(). A resync replaces the values it recorded for
every key.

The event and key-value classes are the compiled ones that the embedded
store delivers, so a consumer handles events from either in the same
way. DoneChannel, DoneCallback and aggregate_done let a producer learn
the outcome of done().
"""

from datasync.syncbase.done import (AggregateDone, DoneCallback, DoneChannel,
                                    aggregate_done)
from datasync.syncbase.registry import (DEFAULT_DONE_TIMEOUT,
                                        ChannelFullError, DeliveryReport,
                                        Registration, Registry)
from datasync.syncbase.values import (Change, ChangeEvent, KeyVal,
                                      KeyValBytes, KVIterator,
                                      PrevRevisions, ResyncEvent)

__all__ = [
    "DEFAULT_DONE_TIMEOUT",
    "AggregateDone",
    "Change",
    "ChangeEvent",
    "ChannelFullError",
    "DeliveryReport",
    "DoneCallback",
    "DoneChannel",
    "KVIterator",
    "KeyVal",
    "KeyValBytes",
    "PrevRevisions",
    "Registration",
    "Registry",
    "ResyncEvent",
    "aggregate_done",
]
