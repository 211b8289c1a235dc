"""Exceptions of msgsync, all derived from datasync.DatasyncError."""

from datasync.errors import DatasyncError

__all__ = [
    "BrokerError",
    "BrokerUnavailableError",
    "PublishError",
    "PublishTimeoutError",
]


class BrokerError(DatasyncError):
    """Base class of the failures of the NATS broker behind a topic."""


class BrokerUnavailableError(BrokerError, ConnectionError):
    """No connection to the NATS server could be made."""


class PublishError(BrokerError):
    """JetStream rejected a publish; it was not stored.

    ``key`` and ``msg_id`` identify the change.
    """

    def __init__(self, message, key, msg_id):
        super().__init__(message)
        self.key = key
        self.msg_id = msg_id


class PublishTimeoutError(PublishError, TimeoutError):
    """JetStream did not acknowledge a publish in time.

    The change may or may not be stored. Publishing it again with the
    same ``msg_id`` within the stream's duplicate window stores it at
    most once.
    """
