"""Reading a closed range of etcd's history of changes.

etcd has no request that returns past changes. A watch started at a
past revision replays them, then waits for new ones, and no response
marks the end of the replay. But every revision after etcd's initial
revision 1 comes from a transaction that changed at least one key,
because etcd does not count transactions that change nothing. So a
watch over the whole key space that has delivered an event of revision
``end`` has delivered every change up to it.
"""

import queue
import threading
import time

import grpc

from datasync.errors import CompactedError
from datasync.keyval.etcd import etcd_messages_pb2 as pb
from datasync.keyval.etcd.client import TO_END
from datasync.keyval.etcd.errors import EtcdError, map_rpc_error
from datasync.ops import Op


def read(client, start, end, change_class):
    """Return the changes of revisions ``start`` to ``end`` as a list.

    Each change has its previous value. Raises CompactedError (with
    ``oldest_revision`` None) when etcd compacted past ``start``, and
    EtcdUnavailableError when etcd sends nothing for the request timeout.
    """
    requests = queue.SimpleQueue()
    requests.put(pb.WatchRequest(create_request=pb.WatchCreateRequest(
        key=TO_END, range_end=TO_END, start_revision=start, prev_kv=True,
        watch_id=1)))

    def send():
        while True:
            request = requests.get()
            if request is None:
                return
            yield request

    call = client.watch.Watch(send())
    watchdog = _Watchdog(call, client.request_timeout)
    changes = []
    try:
        for response in call:
            watchdog.feed()
            if response.canceled:
                _raise_canceled(response, start, client.endpoint)
            for event in response.events:
                if event.kv.mod_revision > end:
                    return changes
                changes.append(_to_change(event, change_class))
            if changes and changes[-1].revision >= end:
                return changes
    except grpc.RpcError as exc:
        if watchdog.fired:
            raise map_rpc_error(_Timeout(), f"reading changes from "
                                f"revision {start}", client.endpoint,
                                start) from exc
        raise map_rpc_error(exc, f"reading changes from revision {start}",
                            client.endpoint, start) from exc
    finally:
        watchdog.stop()
        requests.put(None)
        call.cancel()
    raise EtcdError(f"etcd at {client.endpoint} ended the watch that "
                    f"reads revisions {start} to {end}")


def _raise_canceled(response, start, endpoint):
    if response.compact_revision:
        error = CompactedError(
            f"etcd compacted its history up to revision "
            f"{response.compact_revision}, so the changes from revision "
            f"{start} are gone; read from a later revision or take a "
            "resync", response.compact_revision + 1)
        raise error
    raise EtcdError(f"etcd at {endpoint} canceled the watch that reads "
                    f"changes from revision {start}: "
                    f"{response.cancel_reason or 'no reason given'}")


def _to_change(event, change_class):
    kv = event.kv
    has_prev = event.HasField("prev_kv")
    prev = event.prev_kv.value if has_prev else None
    if event.type == pb.Event.DELETE:
        change = change_class(kv.key, Op.DELETE, None, prev,
                              kv.mod_revision, event.prev_kv.create_revision,
                              0)
    else:
        change = change_class(kv.key, Op.PUT, kv.value, prev,
                              kv.mod_revision, kv.create_revision,
                              kv.version)
    if not has_prev and (event.type == pb.Event.DELETE or kv.version > 1):
        # etcd leaves the previous value out when the revision before the
        # change was compacted while it read it.
        raise CompactedError(
            f"etcd no longer has the previous value of key {kv.key!r} "
            f"changed at revision {kv.mod_revision}; it compacted its "
            "history meanwhile, so read from a later revision or take a "
            "resync", None)
    return change


class _Timeout(grpc.RpcError):
    """Stands for a deadline when the watchdog canceled a silent call."""

    def code(self):
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self):
        return "no response within the request timeout"


class _Watchdog:
    """Cancels a streaming call that sends nothing for ``timeout`` s."""

    def __init__(self, call, timeout):
        self._call = call
        self._timeout = timeout
        self._last = time.monotonic()
        self._stopped = threading.Event()
        self.fired = False
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="datasync-etcd-history")
        self._thread.start()

    def feed(self):
        self._last = time.monotonic()

    def _run(self):
        while True:
            wait = self._last + self._timeout - time.monotonic()
            if wait <= 0:
                self.fired = True
                self._call.cancel()
                return
            if self._stopped.wait(wait):
                return

    def stop(self):
        self._stopped.set()
        self._thread.join()
