"""Event and value classes delivered to subscribers.

They are compiled classes from the core; values stay bytes until a
consumer calls ``get_value``.
"""

from datasync._core.events import (Change, ChangeEvent, KeyVal, KVIterator,
                                   ResyncEvent)
from datasync.ops import Op

__all__ = ["Op", "KeyVal", "Change", "ChangeEvent", "ResyncEvent",
           "KVIterator"]
