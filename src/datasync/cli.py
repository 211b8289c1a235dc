"""The ``datasync`` command: read, write and watch a store from a shell.

Every command opens the store at ``--db`` (default ``$DATASYNC_DB``, else
``./datasync.lmdb``), or the etcd at ``--etcd`` (default
``$DATASYNC_ETCD`` when ``--db`` is not given), does its work and closes
it. With ``--nats HOST:PORT --topic NAME``, ``put``, ``del`` and
``watch`` publish to and watch a topic on NATS JetStream instead (see
datasync.msgsync). Commands print JSON,
one object per line, so that their output can be piped into ``jq`` or
read line by line from another program.
"""

import argparse
import base64
import importlib
import json
import os
import queue
import signal
import sys
import threading

from datasync.errors import DatasyncError, ValueParseError
from datasync.keyval.lmdb.env import DEFAULT_MAP_SIZE
from datasync.options import (with_client_lifetime_ttl, with_prefix,
                              with_ttl)

__all__ = ["main", "resolve_message_type", "EXIT_OK", "EXIT_ERROR",
           "EXIT_USAGE", "EXIT_NOT_FOUND"]

EXIT_OK = 0
#: A datasync error: invalid key or value, not a store, compacted log...
EXIT_ERROR = 1
#: Invalid arguments, including an unknown --type (argparse's code).
EXIT_USAGE = 2
#: ``get`` of a key that does not exist.
EXIT_NOT_FOUND = 3

DB_ENV = "DATASYNC_DB"
ETCD_ENV = "DATASYNC_ETCD"
DEFAULT_DB = "datasync.lmdb"

# Modules imported before a --type full name is looked up in protobuf's
# default descriptor pool, so that their messages can be named directly.
_KNOWN_PROTO_MODULES = (
    "google.protobuf.any_pb2",
    "google.protobuf.descriptor_pb2",
    "google.protobuf.duration_pb2",
    "google.protobuf.empty_pb2",
    "google.protobuf.field_mask_pb2",
    "google.protobuf.struct_pb2",
    "google.protobuf.timestamp_pb2",
    "google.protobuf.wrappers_pb2",
    "datasync.examples.netagent_pb2",
)

_DESCRIPTION = """\
Read, write and watch the keys of a datasync store.

Values are printed as UTF-8 text, or, when they are not valid UTF-8, as
base64 with a "<field>_encoding": "base64" marker next to the field.
With --type they are read and printed as protobuf JSON instead.
"""

_EPILOG = f"""\
--type NAME accepts either an importable class path such as
google.protobuf.struct_pb2.Struct or mypackage.config_pb2.Interface, or
the full protobuf name of a message such as google.protobuf.Struct. Full
names are looked up among the messages of the modules imported by then:
the well-known types of google.protobuf and the example schema
datasync.examples.netagent.

exit status:
  {EXIT_OK}  success
  {EXIT_ERROR}  error (invalid key or value, not a store, compacted log...)
  {EXIT_USAGE}  invalid arguments, including an unknown --type
  {EXIT_NOT_FOUND}  get: the key does not exist

environment:
  {DB_ENV}  store path used when --db is not given
  {ETCD_ENV}  etcd HOST:PORT used when neither --db nor --etcd is given
"""


class CommandError(Exception):
    """An error to report as one line on stderr with an exit status."""

    def __init__(self, message, status=EXIT_ERROR):
        super().__init__(message)
        self.status = status


class _StopSignals:
    """Calls ``on_stop`` on a helper thread when SIGINT or SIGTERM arrives.

    The signal module's C handler writes each signal number to a wake-up
    pipe the moment the signal arrives, and the helper thread blocks on
    that pipe. Nothing is raised in the main thread, so a signal cannot
    cut an output line in half or be missed just before a blocking call.
    Only the main thread may install signal handlers; elsewhere this does
    nothing.
    """

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, on_stop):
        self._on_stop = on_stop
        self._previous = {}
        self._previous_fd = None
        self._thread = None
        self._read_fd = self._write_fd = None

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous_fd = signal.set_wakeup_fd(
            self._write_fd, warn_on_full_buffer=False)
        for signum in self._SIGNALS:
            self._previous[signum] = signal.signal(signum, _ignore_signal)
        self._thread = threading.Thread(
            target=self._wait, name="datasync-cli-signals", daemon=True)
        self._thread.start()
        return self

    def _wait(self):
        while True:
            data = os.read(self._read_fd, 64)
            if not data:
                return
            if any(signum in data for signum in self._SIGNALS):
                self._on_stop()

    def __exit__(self, *exc_info):
        if self._thread is None:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        # Closing the write end ends the helper thread's read with EOF.
        os.close(self._write_fd)
        self._thread.join()
        os.close(self._read_fd)


def _ignore_signal(signum, frame):
    # The wake-up pipe carries the signal to _StopSignals; a Python
    # handler must be installed for the pipe to be written.
    pass


# Message types -------------------------------------------------------------

def resolve_message_type(name):
    """Return the protobuf message class that ``name`` designates.

    ``name`` is an importable class path (``module.Class``, nested
    classes allowed) or the full name of a message in protobuf's default
    descriptor pool. Raises CommandError with EXIT_USAGE if it is
    neither.
    """
    cls, reason = _import_message_class(name)
    if cls is None:
        cls = _find_in_pool(name)
    if cls is None:
        raise CommandError(
            f"unknown message type {name!r}: {reason}; pass a class path "
            "such as google.protobuf.struct_pb2.Struct or a full message "
            "name such as google.protobuf.Struct", EXIT_USAGE)
    return cls


def _import_message_class(name):
    """Return (class, None) or (None, why the import path failed)."""
    from google.protobuf.message import Message

    parts = name.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        return None, "it is not a dotted name"
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue
            return None, f"importing {module_name} failed: {exc}"
        except ImportError as exc:
            return None, f"importing {module_name} failed: {exc}"
        obj = module
        for attr in parts[split:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None, (f"module {module_name} has no attribute "
                              f"{'.'.join(parts[split:])}")
        if isinstance(obj, type) and issubclass(obj, Message):
            return obj, None
        return None, f"{name} is not a protobuf message class"
    return None, f"no module of {name} can be imported"


def _find_in_pool(name):
    from google.protobuf import descriptor_pool, message_factory
    from google.protobuf.runtime_version import VersionError

    for module_name in _KNOWN_PROTO_MODULES:
        try:
            importlib.import_module(module_name)
        except (ImportError, VersionError):
            # Generated code newer than the installed protobuf runtime
            # refuses to load; its messages then cannot be named.
            continue
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return None
    return message_factory.GetMessageClass(descriptor)


# Output --------------------------------------------------------------------

def _set_bytes(obj, field, data):
    """Store ``data`` in obj[field] as text, else as marked base64."""
    try:
        obj[field] = data.decode("utf-8")
    except UnicodeDecodeError:
        obj[field] = base64.b64encode(data).decode("ascii")
        obj[field + "_encoding"] = "base64"


def _set_value(obj, field, data, message_type, parse):
    """Store a value in obj[field]: None, protobuf JSON, text or base64.

    ``parse(message)`` fills a message from the value. Raises
    ValueParseError when the bytes are not a ``message_type`` message.
    """
    if data is None:
        obj[field] = None
    elif message_type is None:
        _set_bytes(obj, field, data)
    else:
        from google.protobuf import json_format

        message = message_type()
        parse(message)
        obj[field] = json_format.MessageToDict(message)


def _parse_failure(field, kv, revision, message_type, exc):
    reason = exc.__cause__ if exc.__cause__ is not None else exc
    return (f"{field} of key {kv.key!r} at revision {revision} is not a "
            f"valid {message_type.DESCRIPTOR.full_name} ({reason})")


def _keyval_object(kv, message_type):
    obj = {}
    _set_bytes(obj, "key", kv.key_bytes)
    _set_value(obj, "value", kv.value, message_type, kv.get_value)
    obj["revision"] = kv.revision
    obj["create_revision"] = kv.create_revision
    obj["version"] = kv.version
    return obj


def _emit(obj, indent=None):
    line = json.dumps(obj, ensure_ascii=False, indent=indent)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _warn(message):
    sys.stderr.write(f"datasync: warning: {message}\n")
    sys.stderr.flush()


# Commands ------------------------------------------------------------------

def _db_path(args):
    if args.db is not None:
        return args.db
    return os.environ.get(DB_ENV) or DEFAULT_DB


def _etcd_endpoint(args):
    """Return the etcd endpoint to use, or None for a store directory."""
    endpoint = getattr(args, "etcd", None)
    if endpoint is not None:
        if args.db is not None:
            raise CommandError("--db and --etcd name two stores; pass one",
                               EXIT_USAGE)
        return endpoint
    if args.db is not None:
        return None
    return os.environ.get(ETCD_ENV) or None


def _nats_address(args):
    """Return the NATS address of a topic command, or None."""
    address = getattr(args, "nats", None)
    topic = getattr(args, "topic", None)
    if address is None:
        if topic is not None:
            raise CommandError("--topic needs --nats HOST:PORT", EXIT_USAGE)
        return None
    if getattr(args, "db", None) is not None or \
            getattr(args, "etcd", None) is not None:
        raise CommandError("--nats names a topic, --db and --etcd a store; "
                           "pass one", EXIT_USAGE)
    if topic is None:
        raise CommandError("--nats needs --topic NAME", EXIT_USAGE)
    return address


def _open_publisher(args):
    from datasync.msgsync import TopicPublisher

    return TopicPublisher(_nats_address(args), args.topic)


def _open_watcher(args):
    """Return the Store or TopicWatcher to watch, and its watch options."""
    if _nats_address(args) is None:
        return (_open_store(args, create=True),
                {"from_revision": args.from_revision})
    if args.from_revision is not None:
        raise CommandError("--from-revision works with a store, not with "
                           "--nats", EXIT_USAGE)
    from datasync.msgsync import TopicWatcher

    return TopicWatcher(args.nats, args.topic), {"durable": False}


def _open_store(args, create):
    if getattr(args, "nats", None) is not None:
        raise CommandError("--nats works with the put, del and watch "
                           f"commands only, not with {args.command}",
                           EXIT_USAGE)
    endpoint = _etcd_endpoint(args)
    if endpoint is not None:
        from datasync.keyval.etcd import EtcdStore

        try:
            return EtcdStore(endpoint)
        except ValueError as exc:
            raise CommandError(f"invalid --etcd {endpoint!r}: {exc}",
                               EXIT_USAGE) from None

    from datasync.keyval.lmdb import Store

    path = _db_path(args)
    if not create and not os.path.exists(path):
        raise CommandError(
            f"no store at {path}; pass --db (or set {DB_ENV}) to the path "
            "of a store, or create one with 'datasync put'")
    if not create and os.path.isdir(path) and not os.path.exists(
            os.path.join(path, "data.mdb")):
        raise CommandError(
            f"{path} is not a store: it has no data.mdb; pass --db (or "
            f"set {DB_ENV}) to the path of a store")
    return Store(path, create=create, **_map_options(args))


def _map_options(args):
    if args.max_map_size is None:
        return {}
    return {"max_map_size": args.max_map_size,
            "map_size": min(DEFAULT_MAP_SIZE, args.max_map_size)}


def _message_type(args):
    if args.type_name is None:
        return None
    return resolve_message_type(args.type_name)


def _read_value(args, message_type):
    if args.value == "-":
        data = sys.stdin.buffer.read()
    else:
        data = os.fsencode(args.value)
    if message_type is None:
        return data
    from google.protobuf import json_format

    message = message_type()
    try:
        json_format.Parse(data.decode("utf-8"), message)
    except (UnicodeDecodeError, json_format.ParseError) as exc:
        raise CommandError(
            f"value of key {args.key!r} is not valid protobuf JSON for "
            f"{message.DESCRIPTOR.full_name}: {exc}") from None
    return message


def cmd_put(args):
    message_type = _message_type(args)
    value = _read_value(args, message_type)
    opts = []
    if args.ttl is not None:
        opts.append(with_ttl(args.ttl))
    if _nats_address(args) is not None:
        if opts or args.lifetime:
            raise CommandError("a topic does not expire keys: --ttl and "
                               "--lifetime do not work with --nats",
                               EXIT_USAGE)
        with _open_publisher(args) as publisher:
            _emit({"revision": publisher.put(args.key, value)})
        return EXIT_OK
    if not args.lifetime:
        with _open_store(args, create=True) as store:
            revision = store.put(args.key, value, *opts)
        _emit({"revision": revision})
        return EXIT_OK

    # The key lives as long as this store is open: hold it until SIGINT
    # or SIGTERM, then close the store, which deletes the key.
    stop = threading.Event()
    with _StopSignals(stop.set):
        with _open_store(args, create=True) as store:
            revision = store.put(args.key, value,
                                 with_client_lifetime_ttl())
            _emit({"revision": revision})
            stop.wait()
    return EXIT_OK


def cmd_get(args):
    message_type = _message_type(args)
    with _open_store(args, create=False) as store:
        kv = store.get(args.key)
        if kv is None:
            raise CommandError(f"key {args.key!r} not found",
                               EXIT_NOT_FOUND)
        if args.raw:
            sys.stdout.flush()
            sys.stdout.buffer.write(kv.value)
            sys.stdout.buffer.flush()
            return EXIT_OK
        try:
            obj = _keyval_object(kv, message_type)
        except ValueParseError as exc:
            raise CommandError(
                _parse_failure("value", kv, kv.revision, message_type, exc)
                + "; pass the --type the writer used, or no --type"
            ) from None
    _emit(obj)
    return EXIT_OK


def cmd_del(args):
    opts = [with_prefix()] if args.prefix else []
    if _nats_address(args) is not None:
        with _open_publisher(args) as publisher:
            _emit({"revision": publisher.delete(args.key, *opts)})
        return EXIT_OK
    with _open_store(args, create=False) as store:
        result = store.delete(args.key, *opts)
    _emit({"revision": result.revision, "deleted": len(result.deleted)})
    return EXIT_OK


def cmd_list(args):
    message_type = _message_type(args)
    with _open_store(args, create=False) as store:
        if args.keys_only:
            for key in store.list_keys(args.prefix):
                text = os.fsencode(key).decode("utf-8", "backslashreplace")
                sys.stdout.write(text + "\n")
            sys.stdout.flush()
            return EXIT_OK
        listing = store.list_values(args.prefix)
    failed = 0
    for kv in listing:
        try:
            obj = _keyval_object(kv, message_type)
        except ValueParseError as exc:
            _warn(_parse_failure("value", kv, kv.revision, message_type,
                                 exc) + "; shown as text or base64")
            obj = _keyval_object(kv, None)
            failed += 1
        _emit(obj)
    if failed:
        raise CommandError(
            f"{failed} of {len(listing)} values are not "
            f"{message_type.DESCRIPTOR.full_name} messages; they are "
            "shown as text or base64")
    return EXIT_OK


def cmd_stat(args):
    with _open_store(args, create=False) as store:
        _emit(store.stat(), indent=2)
    return EXIT_OK


def cmd_compact(args):
    with _open_store(args, create=False) as store:
        try:
            floor = store.compact(args.revision)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    _emit({"compacted_revision": floor})
    return EXIT_OK


def cmd_watch(args):
    message_type = _message_type(args)
    # One queue for resync events, change events and the stop request
    # keeps them in order.
    events = queue.Queue()
    stop = object()
    source, options = _open_watcher(args)
    with _StopSignals(lambda: events.put(stop)):
        with source:
            registration = source.watch(
                f"datasync-cli-{os.getpid()}", events, events,
                *args.prefixes, **options)
            with registration:
                while True:
                    event = events.get()
                    if event is stop:
                        break
                    _print_event(event, message_type)
                    event.done()
    return EXIT_OK


def _print_event(event, message_type):
    changes = getattr(event, "changes", None)
    if changes is None:
        seen = set()
        # Overlapping prefixes list a key once per prefix; print it once.
        for iterator in event.values.values():
            for kv in iterator:
                if kv.key_bytes in seen:
                    continue
                seen.add(kv.key_bytes)
                _print_change(event.revision, "resync", kv, kv.value,
                              kv.get_value, None, None, message_type)
        return
    for change in changes:
        _print_change(change.revision, change.change_type.value, change,
                      change.value, change.get_value, change.prev_value,
                      change.get_prev_value, message_type)


def _print_change(revision, op, kv, value, parse, prev, parse_prev,
                  message_type):
    obj = {"revision": revision, "op": op}
    _set_bytes(obj, "key", kv.key_bytes)
    for field, data, fill in (("value", value, parse),
                              ("prev_value", prev, parse_prev)):
        try:
            _set_value(obj, field, data, message_type, fill)
        except ValueParseError as exc:
            # One foreign value must not end a long-running watch.
            _warn(_parse_failure(field, kv, revision, message_type, exc) +
                  "; shown as text or base64")
            _set_value(obj, field, data, None, None)
    _emit(obj)


def cmd_demo(args):
    from datasync import demo

    for option in ("nats", "etcd"):
        if getattr(args, option, None) is not None:
            raise CommandError(
                f"demo runs on the embedded store only; drop --{option}",
                EXIT_USAGE)
    return demo.run(path=args.db, records=args.records, batch=args.batch,
                    progress=args.progress, **_map_options(args))


def cmd_serve(args):
    from datasync import serve

    with _open_store(args, create=True) as store:
        try:
            return serve.run(args, store)
        except serve.ServeError as exc:
            raise CommandError(str(exc)) from None


# Argument parsing ----------------------------------------------------------

def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid revision {text!r}: expected an integer >= 0") from None
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"invalid revision {text!r}: expected an integer >= 0")
    return value


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"invalid count {text!r}: expected an integer > 0")
    return value


def _positive_seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"invalid TTL {text!r}: expected a number of seconds > 0")
    return value


def _add_db_options(parser, default,
                    db_help=f"store directory (default: ${DB_ENV}, else "
                            f"./{DEFAULT_DB})"):
    parser.add_argument("--db", metavar="PATH", default=default,
                        help=db_help)
    parser.add_argument(
        "--max-map-size", metavar="BYTES", type=_positive_int,
        default=default,
        help="largest size in bytes the store file may grow to (default: "
             "1 TiB)")


def _add_etcd_option(parser, default):
    parser.add_argument(
        "--etcd", metavar="HOST:PORT", default=default,
        help=f"use the etcd at HOST:PORT instead of a store directory "
             f"(default: ${ETCD_ENV} when --db is not given)")


def _add_nats_options(parser, default):
    parser.add_argument(
        "--nats", metavar="HOST:PORT", default=default,
        help="put, del and watch: use a topic on the NATS server (with "
             "JetStream) at HOST:PORT instead of a store")
    parser.add_argument(
        "--topic", metavar="NAME", default=default,
        help="name of the topic on --nats")


def _add_type_option(parser, default):
    parser.add_argument(
        "--type", metavar="NAME", dest="type_name", default=default,
        help="read and print values as protobuf JSON of this message "
             "type (forms: see datasync --help)")


def build_parser():
    """Return the argument parser of the ``datasync`` command."""
    parser = argparse.ArgumentParser(
        prog="datasync", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_db_options(parser, None)
    _add_etcd_option(parser, None)
    _add_nats_options(parser, None)
    _add_type_option(parser, None)

    # The global options are accepted after the command name too. There
    # they default to SUPPRESS, so they do not reset a value given before
    # the command name.
    common = argparse.ArgumentParser(add_help=False)
    _add_db_options(common, argparse.SUPPRESS)
    _add_etcd_option(common, argparse.SUPPRESS)
    _add_nats_options(common, argparse.SUPPRESS)
    typed = argparse.ArgumentParser(add_help=False)
    _add_type_option(typed, argparse.SUPPRESS)

    commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     required=True)

    put = commands.add_parser(
        "put", parents=[common, typed], help="store a value under a key",
        description="Store VALUE under KEY and print the revision.")
    put.add_argument("key", metavar="KEY")
    put.add_argument(
        "value", metavar="VALUE",
        help="the value as text, '-' to read its bytes from stdin, or "
             "with --type its protobuf JSON")
    lifetime = put.add_mutually_exclusive_group()
    lifetime.add_argument(
        "--ttl", metavar="SECONDS", type=_positive_seconds,
        help="delete the key this many seconds after the put")
    lifetime.add_argument(
        "--lifetime", action="store_true",
        help="keep running after the put until SIGINT or SIGTERM, then "
             "delete the key; if the command is killed instead, the next "
             "process that opens the store deletes it")
    put.set_defaults(run=cmd_put)

    get = commands.add_parser(
        "get", parents=[common, typed], help="print the value of a key",
        description="Print KEY with its value, revision, create revision "
                    f"and version; exit {EXIT_NOT_FOUND} if it does not "
                    "exist.")
    get.add_argument("key", metavar="KEY")
    get.add_argument("--raw", action="store_true",
                     help="write only the value bytes, unchanged")
    get.set_defaults(run=cmd_get)

    delete = commands.add_parser(
        "del", parents=[common], help="delete a key or a prefix",
        description="Delete KEY and print the revision and the number of "
                    "keys deleted (0 when KEY did not exist).")
    delete.add_argument("key", metavar="KEY")
    delete.add_argument("--prefix", action="store_true",
                        help="delete every key that starts with KEY")
    delete.set_defaults(run=cmd_del)

    listing = commands.add_parser(
        "list", parents=[common, typed], help="print the keys under a prefix",
        description="Print every key under PREFIX with its value, one JSON "
                    "object per line, all read at one revision.")
    listing.add_argument("prefix", metavar="PREFIX", nargs="?", default="",
                         help="key prefix (default: every key)")
    listing.add_argument("--keys-only", action="store_true",
                         help="print only the keys, one per line")
    listing.set_defaults(run=cmd_list)

    watch = commands.add_parser(
        "watch", parents=[common, typed],
        help="print the changes of keys under prefixes",
        description="Print each change under the PREFIXes as one JSON "
                    "object per line (revision, op, key, value, "
                    "prev_value). Without --from-revision, the current "
                    "keys come first as objects with op \"resync\". The "
                    "revision of an object is that of its commit, or for "
                    "resync objects that of the snapshot, so it can be "
                    "passed to --from-revision to resume. Runs "
                    "until SIGINT or SIGTERM, then exits with status 0. "
                    "Creates the store when it is missing, so that a "
                    "watch can start before the first put.")
    watch.add_argument("prefixes", metavar="PREFIX", nargs="+")
    watch.add_argument(
        "--from-revision", metavar="N", type=_non_negative_int,
        help="print every change after revision N instead of the current "
             "keys; fails if the log was compacted past N")
    watch.set_defaults(run=cmd_watch)

    stat = commands.add_parser(
        "stat", parents=[common], help="print statistics of the store",
        description="Print the revision, key count, log range and file "
                    "size of the store as JSON.")
    stat.set_defaults(run=cmd_stat)

    compact = commands.add_parser(
        "compact", parents=[common], help="drop old revisions from the log",
        description="Drop the revision log up to REV; watchers can then "
                    "resume only from REV or later.")
    compact.add_argument("revision", metavar="REV", type=_non_negative_int)
    compact.set_defaults(run=cmd_compact)

    demo_db = argparse.ArgumentParser(add_help=False)
    _add_db_options(demo_db, argparse.SUPPRESS,
                    "store directory (default: a new temporary directory, "
                    f"removed at the end; ${DB_ENV} is not used)")
    demo = commands.add_parser(
        "demo", parents=[demo_db],
        help="run a network agent against a generated workload",
        description="Run a network agent with two watchers while a writer "
                    "loads, updates and deletes configuration records, "
                    "then check that the agent's view equals the store. "
                    "Without --db the store is a temporary directory, "
                    "removed at the end.")
    demo.add_argument("--records", metavar="N", type=_positive_int,
                      default=100_000,
                      help="configuration records to load (default: "
                           "100000)")
    demo.add_argument("--batch", metavar="N", type=_positive_int,
                      default=1_000,
                      help="records per transaction (default: 1000)")
    demo.add_argument("--no-progress", dest="progress",
                      action="store_false",
                      help="do not show the progress bar")
    demo.set_defaults(run=cmd_demo)

    from datasync.serve import add_arguments as add_serve_arguments

    serve = commands.add_parser(
        "serve", parents=[common],
        help="serve the store to remote writers over gRPC and REST",
        description="Commit what clients send over gRPC (DataMsgService) "
                    "or REST to the store, so that its watchers in every "
                    "process see it. Listens only on the addresses given; "
                    "runs until SIGINT or SIGTERM. docs/transports.md "
                    "describes both protocols.")
    add_serve_arguments(serve)
    serve.set_defaults(run=cmd_serve)
    return parser


def main(argv=None):
    """Run the ``datasync`` command with ``argv``; return the exit status.

    Errors are printed to stderr as one line each.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code
    try:
        return args.run(args)
    except CommandError as exc:
        status = exc.status
        message = str(exc)
    except (DatasyncError, OSError) as exc:
        if isinstance(exc, BrokenPipeError):
            return _stdout_closed()
        status = EXIT_ERROR
        message = str(exc)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    sys.stderr.write(f"datasync: error: {message}\n")
    return status


def _stdout_closed():
    # The reader of stdout went away (for example 'datasync list | head').
    # Point stdout at /dev/null so that the interpreter's final flush does
    # not fail again, and end without a message.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
