"""The LMDB environment behind a store, shared by every Store object of a
process that opens the same path.

LMDB forbids opening one environment twice in a process (its locks are
per process), so environments are kept in a registry keyed by real path
and reference-counted.
"""

import contextlib
import ctypes
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
META_LISTENERS = b"listeners"

# LMDB errors that mean the file's pages are not what LMDB wrote (lmdb.h:
# MDB_CORRUPTED, MDB_PAGE_NOTFOUND, MDB_PANIC). A transaction that met
# such a page fails its later calls with MDB_BAD_TXN (seen with LMDB
# 0.9.36 on pages overwritten with random bytes).
DAMAGE_ERRORS = (lmdb.CorruptedError, lmdb.PageNotFoundError,
                 lmdb.PanicError, lmdb.BadTxnError)

# Seconds a group commit leader waits for writers to queue, at most; a
# small fraction of a disk sync (hundreds of microseconds even on SSDs).
GATHER_WAIT = 0.0002

DEFAULT_MAP_SIZE = 1 << 30
DEFAULT_MAX_MAP_SIZE = 1 << 40
MAX_READERS = 1024

# madvise(2) from the C library, or None where it is not available.
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _madvise = _libc.madvise
    _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _madvise.restype = ctypes.c_int
except (OSError, AttributeError):
    _madvise = None
# MADV_DONTNEED from <sys/mman.h> on Linux.
_MADV_DONTNEED = 4 if os.uname().sysname == "Linux" else None
if _MADV_DONTNEED is None:
    _madvise = None



def _mappings_of(path):
    """Yield (start, end) of this process's mappings of file ``path``.

    Read from /proc/self/maps, because LMDB reports its map address only
    for fixed-address maps. Only shared, read-only mappings are returned,
    so a private or writable mapping is never touched.
    """
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) < 6 or fields[5].rstrip("\n") != path:
                    continue
                if not fields[1].startswith("r-"):
                    continue
                if fields[1][3] != "s":
                    continue
                start, end = (int(x, 16) for x in fields[0].split("-"))
                yield start, end
    except OSError:
        return


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
        # Group commit: writers queue here and one of them, the leader,
        # commits the whole queue in one LMDB transaction.
        self._writes = []
        self._writes_lock = threading.Lock()
        self._writes_added = threading.Condition(self._writes_lock)
        self._leader_busy = False
        self._last_batch = 1
        # Records of recent commits, by revision, for this process's
        # dispatcher (None while there is none), so it need not copy
        # them out of the log again.
        self.handoff = None
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

        Returns what ``apply`` returns, once the transaction is durable.
        Writers that arrive while another commits are committed together
        in one LMDB transaction and one sync (group commit). Each runs in
        a nested transaction of its own, so one that raises is rolled back
        alone, and each keeps the revision it assigned itself.

        When the map is full it is grown (doubling, up to max_map_size)
        and ``apply`` runs again from the start, so it must not have side
        effects outside ``txn``. Raises MapFullError when the map cannot
        grow, and whatever ``apply`` raises.
        """
        request = _WriteRequest(apply)
        with self._writes_lock:
            self._writes.append(request)
            if len(self._writes) >= self._last_batch:
                # Only the writer that completes the batch wakes a leader
                # waiting for it, not every writer on the way there.
                self._writes_added.notify()
            lead = not self._leader_busy
            self._leader_busy = True
            if not lead:
                # Only a writer that waits needs a lock to wait on; the
                # leader of an uncontended commit never creates one. A
                # held lock released by the leader is the cheapest
                # one-shot signal between two threads.
                request.finished = threading.Lock()
                request.finished.acquire()
        if not lead:
            request.finished.acquire()
            if not request.lead:
                return request.outcome()
        self._lead()
        return request.outcome()

    def _lead(self):
        """Commit the queued writes as one batch, then hand over."""
        with self._writes_lock:
            # Writers that were just woken from the previous batch are
            # about to queue again. Waiting a moment for as many as last
            # time keeps batches full instead of alternating with batches
            # of one. A lone writer has a last batch of one and never waits.
            if len(self._writes) < self._last_batch:
                self._writes_added.wait_for(
                    lambda: len(self._writes) >= self._last_batch,
                    GATHER_WAIT)
            batch, self._writes = self._writes, []
            self._last_batch = len(batch)
        try:
            self._commit_batch(batch)
        except BaseException as exc:
            _fail_all(batch, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            with self._writes_lock:
                successor = self._writes[0] if self._writes else None
                self._leader_busy = successor is not None
            for request in batch:
                if request.finished is not None and not request.lead:
                    request.finished.release()
            if successor is not None:
                # The first writer that queued during this batch leads
                # the next one, so no thread commits for others forever.
                successor.lead = True
                successor.finished.release()

    def _commit_batch(self, batch):
        while True:
            txn = self._begin(write=True)
            try:
                if len(batch) == 1:
                    batch[0].run(txn)
                else:
                    for request in batch:
                        self._run_nested(txn, request)
                txn.commit()
                return
            except lmdb.MapFullError:
                txn.abort()
                try:
                    self._grow()
                except MapFullError as exc:
                    _fail_all(batch, exc)
                    return
            except DAMAGE_ERRORS as exc:
                txn.abort()
                _fail_all(batch, self.damaged(exc))
                return
            except BaseException as exc:
                txn.abort()
                _fail_all(batch, exc)
                return

    def _run_nested(self, txn, request):
        child = self.env.begin(write=True, parent=txn)
        try:
            request.run(child)
        except (lmdb.MapFullError,) + DAMAGE_ERRORS:
            child.abort()
            raise
        except Exception:
            # Only this writer's changes are rolled back; its error was
            # recorded by run() and is raised in its own thread.
            child.abort()
            return
        child.commit()

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

    def announce_listener(self):
        """Commit a new listener generation (see notify.py)."""
        def bump(txn):
            generation = self.listener_generation(txn) + 1
            txn.put(META_LISTENERS, pack_u64(generation), db=self.meta)
        self.write(bump)

    def listener_generation(self, txn):
        return unpack_u64(txn.get(META_LISTENERS, db=self.meta))

    def drop_resident_pages(self):
        """Drop this process's mapping of the store's pages (Linux).

        A scan of a large snapshot maps every page it reads, and mapped
        file pages count in the process's resident set although they
        belong to the kernel's page cache. MADV_DONTNEED on LMDB's
        read-only map only unmaps them. A later read maps them again from
        the page cache, so readers in other threads get the same data.
        """
        if _madvise is None:
            return
        for start, end in _mappings_of(os.path.join(self.path, "data.mdb")):
            _madvise(start, end - start, _MADV_DONTNEED)

    def revision(self, txn):
        return unpack_u64(txn.get(META_REVISION, db=self.meta))

    def compacted(self, txn):
        return unpack_u64(txn.get(META_COMPACTED, db=self.meta))


class _WriteRequest:
    """One writer's transaction waiting in the group commit queue."""

    __slots__ = ("apply", "result", "error", "finished", "lead")

    def __init__(self, apply):
        self.apply = apply
        self.result = None
        self.error = None
        self.finished = None
        self.lead = False

    def run(self, txn):
        self.error = None
        try:
            self.result = self.apply(txn)
        except Exception as exc:
            self.error = exc
            raise

    def outcome(self):
        if self.error is not None:
            raise self.error
        return self.result


def _fail_all(batch, exc):
    for request in batch:
        request.error = exc


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
