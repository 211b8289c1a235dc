"""datasync over a key-value backend, with resync.

``KVDBSync`` implements ``KeyValProtoWatcher`` and ``KeyProtoValWriter``
over a backend, the embedded ``datasync.Store`` by default::

    store = datasync.Store("agent.lmdb")
    orchestrator = Resync()
    sync = KVDBSync(store, resync=orchestrator)
    registration = sync.watch("interfaces", chan, chan, "config/if/")
    orchestrator.do_resync()   # each subscriber gets its snapshot
    sync.put("config/if/eth0", interface)

Each subscriber gets a resync (a snapshot taken at a revision R) and then
only the changes above R, each with its previous value. Local
transactions without a store are in ``datasync.kvdbsync.local``.
"""

from datasync.kvdbsync.backend import Backend, BackendWatch
from datasync.kvdbsync.sync import KVDBRegistration, KVDBSync

__all__ = ["Backend", "BackendWatch", "KVDBRegistration", "KVDBSync"]
