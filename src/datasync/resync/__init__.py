"""The resync orchestrator.

A resync makes a subscriber rebuild its state from a snapshot of the
store (see the vocabulary in ``datasync``). The orchestrator decides when
that happens for a group of subscribers, each registered under a name.
``do_resync()`` sends each registration, in registration order, a
StatusEvent with Status.STARTED. It waits for the event to be taken and
then acked, and gives up on a registration after either timeout.

A registration reads its events from a StatusQueue (a ``queue.Queue``)::

    orchestrator = Resync(accept_timeout=1.0, ack_timeout=10.0)
    registration = orchestrator.register("interfaces")
    ...
    event = registration.status_chan.get()   # in the subscriber's thread
    if event.status is Status.STARTED:
        rebuild_state()
    event.ack()

or passes a callable to ``register(name, callback)`` that gets each
event on a thread of its own.
"""

from datasync.resync.orchestrator import (DEFAULT_ACCEPT_TIMEOUT,
                                          DEFAULT_ACK_TIMEOUT, Registration,
                                          Resync, ResyncReport)
from datasync.resync.status import Status, StatusEvent, StatusQueue

__all__ = [
    "DEFAULT_ACCEPT_TIMEOUT",
    "DEFAULT_ACK_TIMEOUT",
    "Registration",
    "Resync",
    "ResyncReport",
    "Status",
    "StatusEvent",
    "StatusQueue",
]
