"""Aggregators: many watchers, writers or registrations used as one.

Each call reaches every member, even after one of them fails, and every
failure is reported together in an AggregateError.
"""

from datasync.errors import AggregateError

__all__ = ["KVProtoWatchers", "KVProtoWriters", "AggregatedRegistration"]


def _call_all(members, action, what):
    errors = []
    results = []
    for member in members:
        try:
            results.append(action(member))
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise AggregateError(
            f"{len(errors)} of {len(members)} {what} failed", errors)
    return results


class AggregatedRegistration:
    """Several watch registrations handled as one."""

    def __init__(self, registrations):
        self.registrations = list(registrations)

    def register(self, resync_name, key_prefix):
        """Add ``key_prefix`` to every registration.

        Raises AggregateError listing every registration that failed.
        """
        _call_all(self.registrations,
                  lambda r: r.register(resync_name, key_prefix),
                  "registrations")

    def unregister(self, key_prefix):
        """Remove ``key_prefix`` from every registration.

        Raises AggregateError listing every registration that failed.
        """
        _call_all(self.registrations, lambda r: r.unregister(key_prefix),
                  "registrations")

    def close(self):
        """Close every registration.

        Raises AggregateError listing every registration that failed to
        close; the others are closed regardless.
        """
        _call_all(self.registrations, lambda r: r.close(), "registrations")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class KVProtoWatchers:
    """Several watchers that subscribe together."""

    def __init__(self, watchers):
        self.watchers = list(watchers)

    def watch(self, resync_name, change_chan, resync_chan, *key_prefixes):
        """Subscribe through every watcher; return AggregatedRegistration.

        If any watcher fails, the registrations already made are closed
        and AggregateError lists every failure.
        """
        made = []
        errors = []
        for watcher in self.watchers:
            try:
                made.append(watcher.watch(resync_name, change_chan,
                                          resync_chan, *key_prefixes))
            except Exception as exc:
                errors.append(exc)
        if errors:
            for registration in made:
                try:
                    registration.close()
                except Exception as exc:
                    errors.append(exc)
            raise AggregateError(
                f"{len(errors)} watch calls or cleanups failed for "
                f"{resync_name!r}", errors)
        return AggregatedRegistration(made)


class KVProtoWriters:
    """Several writers that receive every put."""

    def __init__(self, writers):
        self.writers = list(writers)

    def put(self, key, message, *opts):
        """Put through every writer.

        Raises AggregateError listing every writer that failed; the others
        have stored the value.
        """
        _call_all(self.writers, lambda w: w.put(key, message, *opts),
                  "writers")
