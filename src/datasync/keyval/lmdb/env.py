"""The LMDB environment behind a store, shared by every Store object of a
process that opens the same path.

LMDB forbids opening one environment twice in a process (its locks are
per process), so environments are kept in a registry keyed by real path
and reference-counted.
"""

import contextlib
import logging
import os
import threading

import lmdb

from datasync.errors import InvalidStoreError, MapFullError

log = logging.getLogger("datasync.store")

# Written under b"format" in the meta table by the first process that
# creates a store; any other value means the files belong to something else.
FORMAT = b"datasync-lmdb-1"

META_REVISION = b"revision"
META_COMPACTED = b"compacted"
META_NEXT_LEASE = b"next_lease"
META_FORMAT = b"format"

# LMDB errors that mean the file's pages are not what LMDB wrote (lmdb.h:
# MDB_CORRUPTED, MDB_PAGE_NOTFOUND, MDB_PANIC). A transaction that met
# such a page fails its later calls with MDB_BAD_TXN (seen with LMDB
# 0.9.36 on pages overwritten with random bytes).
DAMAGE_ERRORS = (lmdb.CorruptedError, lmdb.PageNotFoundError,
                 lmdb.PanicError, lmdb.BadTxnError)

DEFAULT_MAP_SIZE = 1 << 30
DEFAULT_MAX_MAP_SIZE = 1 << 40
MAX_READERS = 1024

_registry = {}
_registry_lock = threading.Lock()


def pack_u64(value):
    return value.to_bytes(8, "little")


def unpack_u64(data, default=0):
    return default if data is None else int.from_bytes(data, "little")


def rev_key(revision):
    """Key of a revision in the log table: big-endian, so keys sort."""
    return revision.to_bytes(8, "big")


class SharedEnv:
    """One open LMDB environment with its tables and per-process state."""

    def __init__(self, path, map_size, max_map_size, durable, create):
        self.path = path
        self.max_map_size = max_map_size
        self.durable = durable
        self.refs = 0
        self.lock = threading.RLock()
        self._active_reads = 0
        self._reads_lock = threading.Lock()
        self.env = _open_env(path, map_size, durable, create)
        try:
            self._open_tables()
        except BaseException:
            self.env.close()
            raise
        # Filled in by the store: the notifier and the background loop.
        self.notifier = None
        self.loop = None

    def _open_tables(self):
        env = self.env
        try:
            with env.begin(write=True) as txn:
                self.meta = env.open_db(b"meta", txn=txn)
                fmt = txn.get(META_FORMAT, db=self.meta)
                empty = txn.stat(self.meta)["entries"] == 0
                if fmt is None and empty and _only_tables(env, txn):
                    txn.put(META_FORMAT, FORMAT, db=self.meta)
                    fmt = FORMAT
                if fmt != FORMAT:
                    raise InvalidStoreError(
                        f"{self.path} is an LMDB environment but not a "
                        f"datasync store (format marker {fmt!r}, expected "
                        f"{FORMAT!r}); open the right path or a new one")
                self.kv = env.open_db(b"kv", txn=txn)
                self.log = env.open_db(b"log", txn=txn)
                self.leases = env.open_db(b"leases", txn=txn)
                self.lease_keys = env.open_db(b"lease_keys", txn=txn,
                                              dupsort=True)
                self.ttl = env.open_db(b"ttl", txn=txn)
        except lmdb.Error as exc:
            raise InvalidStoreError(
                f"cannot open the tables of store {self.path}: {exc}; the "
                "file is damaged or not a datasync store") from exc

    @contextlib.contextmanager
    def read(self):
        """Yield a read transaction (a consistent snapshot)."""
        txn = self.begin_read()
        try:
            yield txn
        except DAMAGE_ERRORS as exc:
            raise self.damaged(exc) from exc
        finally:
            self.end_read(txn)

    def begin_read(self):
        """Begin a read transaction that the caller ends with end_read."""
        with self._reads_lock:
            self._active_reads += 1
        try:
            return self._begin(write=False, own_reads=1)
        except BaseException:
            with self._reads_lock:
                self._active_reads -= 1
            raise

    def end_read(self, txn):
        try:
            txn.abort()
        finally:
            with self._reads_lock:
                self._active_reads -= 1

    def _begin(self, write, own_reads=0):
        try:
            return self.env.begin(write=write)
        except lmdb.MapResizedError:
            # Another process grew the map: adopt its size, then retry.
            self._adopt_map_size(own_reads)
            return self.env.begin(write=write)

    def _adopt_map_size(self, own_reads):
        with self._reads_lock:
            busy = self._active_reads - own_reads
            if busy == 0:
                self.env.set_mapsize(0)
                return
        raise MapFullError(
            f"another process grew the map of store {self.path}, and this "
            f"process cannot adopt the new size while {busy} read "
            "transactions (for example unfinished resync events) are open;"
            " finish them and retry", self.env.info()["map_size"])

    def write(self, apply):
        """Run ``apply(txn)`` in a write transaction and commit it.

        Returns what ``apply`` returns. When the map is full the map is
        grown (doubling, up to max_map_size) and ``apply`` runs again from
        the start, so it must not have side effects outside ``txn``.
        Raises MapFullError when the map cannot grow.
        """
        while True:
            txn = self._begin(write=True)
            try:
                result = apply(txn)
                txn.commit()
                return result
            except lmdb.MapFullError:
                txn.abort()
                self._grow()
            except DAMAGE_ERRORS as exc:
                txn.abort()
                raise self.damaged(exc) from exc
            except BaseException:
                txn.abort()
                raise

    def damaged(self, exc):
        """Return the InvalidStoreError for an LMDB error of a damaged
        file."""
        return InvalidStoreError(
            f"store {self.path} is damaged: {exc}; restore it from a copy "
            "or rebuild it (keys on undamaged pages may still be read)")

    def _grow(self):
        size = self.env.info()["map_size"]
        new_size = min(size * 2, self.max_map_size)
        if new_size <= size:
            raise MapFullError(
                f"store {self.path} is full at its maximum map size of "
                f"{size} bytes; nothing of the transaction was written. "
                "Open it with a larger max_map_size (CLI: --max-map-size), "
                "or compact and delete data", size)
        with self._reads_lock:
            busy = self._active_reads
            if busy == 0:
                # set_mapsize invalidates every open transaction of this
                # process, so it is only safe with none open.
                self.env.set_mapsize(new_size)
        if busy:
            raise MapFullError(
                f"store {self.path} is full at {size} bytes and cannot grow "
                f"while {busy} read transactions (for example unfinished "
                "resync events) are open; finish them and retry, or open "
                "the store with a larger map_size", size)
        log.info("grew map of %s from %d to %d bytes", self.path, size,
                 new_size)

    def revision(self, txn):
        return unpack_u64(txn.get(META_REVISION, db=self.meta))

    def compacted(self, txn):
        return unpack_u64(txn.get(META_COMPACTED, db=self.meta))


def _only_tables(env, txn):
    """True when the main table holds only datasync table names."""
    names = {b"meta", b"kv", b"log", b"leases", b"lease_keys", b"ttl"}
    with txn.cursor() as cursor:
        return all(key in names for key in cursor.iternext(values=False))


def _open_env(path, map_size, durable, create):
    data_file = os.path.join(path, "data.mdb")
    if os.path.isfile(path):
        raise InvalidStoreError(
            f"{path} is a file, but a store is a directory holding "
            "data.mdb and lock.mdb; pass the directory or a new path")
    if not os.path.exists(data_file):
        if not create:
            raise InvalidStoreError(
                f"no store at {path}: open it with create=True (the "
                "default) to make a new one")
        if os.path.isdir(path) and _has_foreign_files(path):
            raise InvalidStoreError(
                f"{path} is a non-empty directory without data.mdb, so it "
                "is not a store; pass an empty or new path")
    try:
        return lmdb.open(path, map_size=map_size, subdir=True, max_dbs=8,
                         max_readers=MAX_READERS, sync=durable,
                         metasync=durable, create=create)
    except lmdb.Error as exc:
        raise InvalidStoreError(
            f"cannot open store {path}: {exc}; it is damaged or not an "
            "LMDB file") from exc


def _has_foreign_files(path):
    return any(name not in ("notify", "lock.mdb") for name in os.listdir(path))


def acquire(path, map_size=DEFAULT_MAP_SIZE, max_map_size=None,
            durable=True, create=True):
    """Open the environment at ``path`` or take another reference to it."""
    if max_map_size is None:
        max_map_size = max(map_size, DEFAULT_MAX_MAP_SIZE)
    if max_map_size < map_size:
        raise ValueError(
            f"max_map_size {max_map_size} is below map_size {map_size}; "
            "raise max_map_size")
    real = os.path.realpath(os.fspath(path))
    with _registry_lock:
        shared = _registry.get(real)
        if shared is None:
            shared = SharedEnv(real, map_size, max_map_size, durable, create)
            _registry[real] = shared
        shared.refs += 1
        return shared


def release(shared):
    """Drop a reference; the last one closes the environment."""
    with _registry_lock:
        shared.refs -= 1
        if shared.refs > 0:
            return False
        del _registry[shared.path]
    return True
