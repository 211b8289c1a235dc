"""Tests of the gRPC transport: a real grpcio server and client on
127.0.0.1, with the adapter's watchers on the other side."""

import gc
import json
import queue
import threading

import grpc
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import datasync
from datasync import grpcsync
from datasync.examples import netagent_pb2
from datasync.grpcsync import msg_pb2, msg_pb2_grpc
from datasync.transport import Result, StoreBackend

from transport_support import WAIT, Recorder, make_certificate

PREFIX = "/vnf-agent/a1/config/"


def interface(name, mtu=1500):
    return netagent_pb2.Interface(name=name, mtu=mtu, enabled=True)


@pytest.fixture
def serve():
    """Start an adapter and a server; return (adapter, target).

    ``serve(**adapter_options)`` may be called once per test; server and
    adapter are stopped at teardown.
    """
    started = []

    def start(server_options=None, **adapter_options):
        adapter_options.setdefault("timeout", WAIT)
        adapter = grpcsync.Adapter(**adapter_options)
        server = grpcsync.Server(adapter, **(server_options or {}))
        port = server.start()
        started.append((server, adapter))
        return adapter, f"127.0.0.1:{port}"

    yield start
    for server, adapter in started:
        server.stop(grace=1.0)
        adapter.close()
    # A call that ended with an error leaves reference cycles that keep
    # file descriptors (an epoll, an eventfd, a socket pair) open until
    # the garbage collector runs, and later tests may count descriptors.
    gc.collect()


@pytest.fixture
def client_for():
    """Return a function that opens a Client, closed at teardown."""
    clients = []

    def open_(target, **options):
        options.setdefault("timeout", WAIT)
        client = grpcsync.Client(target, **options)
        clients.append(client)
        return client

    yield open_
    for client in clients:
        client.close()


def raw_call(target, method, data, metadata=()):
    """Send ``data`` bytes to a unary method; return the RpcError."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(f"/msg.DataMsgService/{method}")
        with pytest.raises(grpc.RpcError) as info:
            call(data, timeout=WAIT, metadata=metadata)
    return info.value


def raw_changes(target, requests):
    """Stream DataChangeRequests; return (replies, RpcError or None)."""
    replies = []
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(
            "/msg.DataMsgService/dataChanges",
            request_serializer=msg_pb2.DataChangeRequest.SerializeToString,
            response_deserializer=msg_pb2.DataChangeReply.FromString)
        try:
            for reply in call(iter(requests), timeout=WAIT):
                replies.append(reply)
        except grpc.RpcError as exc:
            return replies, exc
    return replies, None


# The protocol -------------------------------------------------------------


def field_numbers(message):
    return {f.name: f.number for f in message.DESCRIPTOR.fields}


def test_proto_wire_format_matches_original():
    assert msg_pb2.DESCRIPTOR.package == "msg"
    service = msg_pb2.DESCRIPTOR.services_by_name["DataMsgService"]
    methods = {m.name: (m.input_type.name, m.output_type.name,
                        m.client_streaming, m.server_streaming)
               for m in service.methods}
    assert methods == {
        "dataChanges": ("DataChangeRequest", "DataChangeReply", True, True),
        "dataResyncs": ("DataResyncRequests", "DataResyncReplies", False,
                        False),
        "ping": ("PingRequest", "PingReply", False, False),
    }

    assert msg_pb2.PUT == 0
    assert msg_pb2.DEL == 1

    assert field_numbers(msg_pb2.DataChangeRequest) == {
        "key": 1, "operationType": 2, "content": 3, "content_type": 4}
    assert field_numbers(msg_pb2.DataChangeReply) == {
        "key": 2, "operationType": 3, "result": 4}
    assert field_numbers(msg_pb2.DataResyncRequests) == {
        "msgId": 1, "dataResyncs": 2}
    assert field_numbers(msg_pb2.DataResyncRequest) == {
        "key": 1, "content": 2, "content_type": 3}
    assert field_numbers(msg_pb2.DataResyncReplies) == {
        "msgId": 1, "error": 2, "dataResyncs": 3}
    assert field_numbers(msg_pb2.DataResyncReplies.DataResyncsReplies) == {
        "replies": 1}
    assert field_numbers(msg_pb2.DataResyncReply) == {
        "resyncId": 1, "key": 2, "result": 3}

    assert field_numbers(msg_pb2.Seq) == {
        "originator": 1, "seqCreatedSec": 2, "seq": 4}
    assert field_numbers(msg_pb2.Error) == {"message": 1}
    assert field_numbers(msg_pb2.PingRequest) == {"message": 1}
    assert field_numbers(msg_pb2.PingReply) == {"message": 1}


# Changes and results ------------------------------------------------------


def test_stream_delivers_thousand_changes_in_order(serve, client_for):
    adapter, target = serve()
    recorder = Recorder(fail=lambda event: ValueError("rejected by agent")
                        if event.changes[0].key.endswith("/bad") else None)
    adapter.watch("agent", recorder, recorder, PREFIX)
    client = client_for(target)

    sent = []
    futures = []
    for i in range(1000):
        key = PREFIX + ("bad" if i % 100 == 99 else f"if{i % 10}")
        message = interface(f"eth{i}", mtu=1000 + i)
        sent.append((key, message.SerializeToString()))
        futures.append(client.submit_put(key, message))

    outcomes = []
    for future in futures:
        try:
            future.result(WAIT)
            outcomes.append(0)
        except grpcsync.ResultError as exc:
            outcomes.append(exc.code)
    assert outcomes == [Result.SUBSCRIBER_ERROR if i % 100 == 99 else 0
                        for i in range(1000)]

    events = recorder.take(1000)
    revisions = [event.revision for event in events]
    assert revisions == list(range(1, 1001))
    latest = {}
    for event, (key, value) in zip(events, sent):
        (change,) = event.changes
        assert change.key == key
        assert change.change_type is datasync.Op.PUT
        assert change.value == value
        assert change.revision == event.revision
        assert change.prev_value == latest.get(key)
        latest[key] = value
    recorder.assert_idle()


def test_put_error_result_raises(serve, client_for):
    adapter, target = serve()
    recorder = Recorder(fail=lambda event: RuntimeError("no such VRF"))
    adapter.watch("agent", recorder, recorder, PREFIX)
    client = client_for(target)

    with pytest.raises(grpcsync.ResultError) as info:
        client.put(PREFIX + "if1", interface("if1"))
    assert info.value.code is Result.SUBSCRIBER_ERROR
    assert info.value.key == PREFIX + "if1"
    assert info.value.operation == "put"
    assert recorder.next().changes[0].key == PREFIX + "if1"


def test_delete_carries_prev_value(serve, client_for):
    adapter, target = serve()
    recorder = Recorder()
    adapter.watch("agent", recorder, recorder, PREFIX)
    client = client_for(target)

    client.put(PREFIX + "if1", interface("if1"))
    client.delete(PREFIX + "if1")
    client.delete(PREFIX + "missing")
    put_event, delete_event = recorder.take(2)
    (change,) = delete_event.changes
    assert change.change_type is datasync.Op.DELETE
    assert change.value is None
    assert change.revision == put_event.revision + 1
    assert change.get_prev_value(netagent_pb2.Interface()) is True
    assert change.prev_value == interface("if1").SerializeToString()
    assert adapter.backend.get(f"{PREFIX}if1".encode()) is None
    recorder.assert_idle()


def test_delivery_timeout_result(serve, client_for):
    adapter, target = serve(timeout=0.3)
    silent = Recorder(answer=False)
    adapter.watch("agent", silent, silent, PREFIX)
    client = client_for(target)

    with pytest.raises(grpcsync.ResultError) as info:
        client.put(PREFIX + "if1", interface("if1"))
    assert info.value.code == Result.DELIVERY_TIMEOUT
    assert silent.next().revision == 1


def test_watcher_sees_only_its_prefix(serve, client_for):
    adapter, target = serve()
    mine = Recorder()
    other = Recorder()
    adapter.watch("mine", mine, mine, PREFIX + "interfaces/")
    adapter.watch("other", other, other, PREFIX + "routes/")
    client = client_for(target)

    client.put(PREFIX + "interfaces/if1", interface("if1"))
    client.put(PREFIX + "routes/r1", netagent_pb2.Route(next_hop="10.0.0.1"))
    assert mine.next().changes[0].key == PREFIX + "interfaces/if1"
    assert other.next().changes[0].key == PREFIX + "routes/r1"
    mine.assert_idle()
    other.assert_idle()


def test_put_options_rejected_by_client(serve, client_for):
    _, target = serve()
    client = client_for(target)
    with pytest.raises(datasync.InvalidOptionError):
        client.put(PREFIX + "if1", interface("if1"), datasync.with_ttl(5))
    with pytest.raises(datasync.InvalidOptionError):
        client.delete(PREFIX, datasync.with_prefix())


# Content types -------------------------------------------------------------


def test_json_encoding_stores_binary(serve, client_for):
    adapter, target = serve()
    recorder = Recorder()
    adapter.watch("agent", recorder, recorder, PREFIX)
    client = client_for(target, encoding="json")

    client.put(PREFIX + "if1", interface("if1", mtu=9000))
    change = recorder.next().changes[0]
    assert change.get_value(netagent_pb2.Interface()) == interface(
        "if1", mtu=9000)


def test_json_type_from_registered_prefix(serve):
    types = grpcsync.MessageTypes({PREFIX: netagent_pb2.Interface})
    adapter, target = serve(types=types)
    content = json_format.MessageToJson(interface("if1")).encode()
    replies, error = raw_changes(target, [
        msg_pb2.DataChangeRequest(key=PREFIX + "if1", content=content,
                                  content_type="application/json"),
        # The Go original sends JSON without a content type.
        msg_pb2.DataChangeRequest(key=PREFIX + "if2", content=content,
                                  content_type=""),
    ])
    assert error is None
    assert [reply.result for reply in replies] == [0, 0]
    stored = adapter.backend.get(f"{PREFIX}if2".encode())
    assert stored.get_value(netagent_pb2.Interface()) == interface("if1")


def test_json_type_from_at_type_member(serve):
    adapter, target = serve()
    obj = json_format.MessageToDict(interface("if1"))
    obj["@type"] = "type.googleapis.com/datasync.examples.netagent.Interface"
    replies, error = raw_changes(target, [msg_pb2.DataChangeRequest(
        key=PREFIX + "if1", content=json.dumps(obj).encode(),
        content_type="application/json")])
    assert error is None
    assert replies[0].result == 0
    stored = adapter.backend.get(f"{PREFIX}if1".encode())
    assert stored.get_value(netagent_pb2.Interface()) == interface("if1")


def test_unknown_content_type_rejected(serve, client_for):
    adapter, target = serve()
    recorder = Recorder()
    adapter.watch("agent", recorder, recorder, PREFIX)
    replies, error = raw_changes(target, [
        msg_pb2.DataChangeRequest(key=PREFIX + "ok", content=b"\x08\x01",
                                  content_type="application/x-protobuf"),
        msg_pb2.DataChangeRequest(key=PREFIX + "bad", content=b"{}",
                                  content_type="text/yaml"),
        msg_pb2.DataChangeRequest(key=PREFIX + "after", content=b"",
                                  content_type="application/x-protobuf"),
    ])
    assert [reply.key for reply in replies] == [PREFIX + "ok"]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "text/yaml" in error.details()
    assert adapter.backend.get(f"{PREFIX}bad".encode()) is None
    assert adapter.backend.get(f"{PREFIX}after".encode()) is None
    assert recorder.next().changes[0].key == PREFIX + "ok"
    recorder.assert_idle()
    assert client_for(target).ping("still there") == "still there"


def test_client_raises_rejection_and_recovers(serve, client_for):
    adapter, target = serve()
    client = client_for(target)
    request = msg_pb2.DataChangeRequest(
        key=PREFIX + "if1", content=b"not json",
        content_type="application/json; proto=datasync.examples.netagent."
                     "Interface")
    with pytest.raises(grpcsync.ProtocolError) as info:
        client._send(request).result(WAIT)
    assert "not valid JSON" in str(info.value)
    client.put(PREFIX + "if2", interface("if2"))
    assert adapter.backend.get(f"{PREFIX}if1".encode()) is None
    assert adapter.backend.get(f"{PREFIX}if2".encode()) is not None


# Resync and ping ------------------------------------------------------------


def test_resync_delivers_event_per_key(serve, client_for):
    adapter, target = serve()
    recorder = Recorder()
    adapter.watch("agent", recorder, recorder, PREFIX)
    client = client_for(target)
    client.put(PREFIX + "old", interface("old"))
    recorder.next()

    client.resync({PREFIX + "if1": interface("if1"),
                   PREFIX + "if2": interface("if2"),
                   "/elsewhere/x": b"opaque"})
    event = recorder.next()
    assert isinstance(event, datasync.ResyncEvent)
    assert event.revision == 2
    keys = [kv.key for kv in event.values[PREFIX]]
    assert keys == [PREFIX + "if1", PREFIX + "if2"]
    assert adapter.backend.get(f"{PREFIX}old".encode()) is None
    assert adapter.backend.get(b"/elsewhere/x").value == b"opaque"


def test_resync_replies_per_key(serve):
    adapter, target = serve()
    recorder = Recorder()
    adapter.watch("agent", recorder, recorder, PREFIX)
    request = msg_pb2.DataResyncRequests()
    request.msgId.originator = "test"
    request.msgId.seq = 7
    for name in ("if1", "if2"):
        request.dataResyncs.add(
            key=PREFIX + name,
            content=interface(name).SerializeToString(),
            content_type="application/x-protobuf")
    with grpc.insecure_channel(target) as channel:
        stub = msg_pb2_grpc.DataMsgServiceStub(channel)
        reply = stub.dataResyncs(request, timeout=WAIT)
    assert reply.msgId.seq == 7
    assert not reply.HasField("error")
    assert [(r.key, r.result) for r in reply.dataResyncs.replies] == [
        (PREFIX + "if1", 0), (PREFIX + "if2", 0)]
    assert reply.dataResyncs.replies[0].resyncId.originator == "test"


def test_resync_error_result_raises(serve, client_for):
    adapter, target = serve()

    def fail_resync(event):
        event.done(ValueError("cannot apply snapshot"))

    adapter.watch("agent", fail_resync, fail_resync, PREFIX)
    client = client_for(target)
    with pytest.raises(grpcsync.ResultError) as info:
        client.resync({PREFIX + "if1": interface("if1")})
    assert info.value.code == Result.SUBSCRIBER_ERROR
    assert info.value.results == {PREFIX + "if1": Result.SUBSCRIBER_ERROR}
    assert "cannot apply snapshot" in str(info.value)


def test_resync_duplicate_key_rejected(serve):
    adapter, target = serve()
    request = msg_pb2.DataResyncRequests()
    for _ in range(2):
        request.dataResyncs.add(key=PREFIX + "if1", content=b"",
                                content_type="application/x-protobuf")
    error = raw_call(target, "dataResyncs", request.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "twice" in error.details()
    assert adapter.backend.registry.revision == 0


def test_adapter_and_client_protocols(serve, client_for):
    adapter, target = serve()
    client = client_for(target)
    assert isinstance(adapter, datasync.KeyValProtoWatcher)
    assert isinstance(client, datasync.KeyProtoValWriter)


def test_ping_answers(serve, client_for):
    _, target = serve()
    client = client_for(target)
    assert client.ping() == "pong"
    assert client.ping("hello") == "hello"


# Safety --------------------------------------------------------------------


def test_token_required(serve, client_for):
    adapter, target = serve(server_options={"token": "s3cret"})
    recorder = Recorder()
    adapter.watch("agent", recorder, recorder, PREFIX)

    for token in (None, "wrong"):
        client = client_for(target, token=token)
        with pytest.raises(grpcsync.TransportError) as info:
            client.put(PREFIX + "if1", interface("if1"))
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpcsync.TransportError) as info:
            client.ping()
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    recorder.assert_idle()

    client_for(target, token="s3cret").put(PREFIX + "if1", interface("if1"))
    assert recorder.next().changes[0].key == PREFIX + "if1"


def test_failed_streams_leave_no_thread(serve):
    _, target = serve(server_options={"token": "s3cret"})
    before = set(threading.enumerate())
    client = grpcsync.Client(target, token="wrong", timeout=WAIT)
    for _ in range(3):
        with pytest.raises(grpcsync.TransportError):
            client.put(PREFIX + "if1", interface("if1"))
    client.close()
    started = set(threading.enumerate()) - before
    for thread in started:
        thread.join(WAIT)
    assert [t.name for t in started if t.is_alive()] == []


def test_oversized_value_rejected(serve, client_for):
    adapter, target = serve(max_value_size=1000)
    client = client_for(target)
    with pytest.raises(grpcsync.ProtocolError) as info:
        client.put(PREFIX + "big", b"x" * 1001)
    assert "1001 bytes" in str(info.value)
    assert info.value.grpc_code == grpc.StatusCode.INVALID_ARGUMENT
    client.put(PREFIX + "small", b"x" * 1000)
    assert adapter.backend.get(f"{PREFIX}big".encode()) is None


def test_oversized_message_rejected(serve, client_for):
    adapter, target = serve(max_message_size=10_000, max_value_size=20_000)
    client = client_for(target)
    with pytest.raises(grpcsync.ProtocolError) as info:
        client.put(PREFIX + "big", b"x" * 15_000)
    assert info.value.grpc_code == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit of 10000 bytes" in str(info.value)
    # Far above the limit grpcio drops the message itself.
    with pytest.raises(grpcsync.ProtocolError) as info:
        client.put(PREFIX + "huge", b"x" * 30_000)
    assert info.value.grpc_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert adapter.backend.get(f"{PREFIX}big".encode()) is None
    assert client.ping() == "pong"


def test_malformed_message_bytes_rejected(serve):
    _, target = serve()
    error = raw_call(target, "dataResyncs", b"\x0a\xff\xff\xff")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed msg.DataResyncRequests" in error.details()


def test_tls_server_and_client(serve, client_for, tmp_path):
    cert, key = make_certificate(tmp_path)
    adapter, target = serve(server_options={"tls_cert": cert,
                                            "tls_key": key})
    client = client_for(target, root_certificates=cert.read_bytes())
    client.put(PREFIX + "if1", interface("if1"))
    assert adapter.backend.get(f"{PREFIX}if1".encode()) is not None

    plain = client_for(target, timeout=2.0)
    with pytest.raises(grpcsync.TransportError) as info:
        plain.ping()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_store_backend_commits(open_store, client_for):
    store = open_store()
    adapter = grpcsync.Adapter(StoreBackend(store))
    events = queue.Queue()
    with grpcsync.Server(adapter) as server, \
            store.watch("local", events, events, PREFIX):
        assert isinstance(events.get(timeout=WAIT), datasync.ResyncEvent)
        client = client_for(f"127.0.0.1:{server.port}")
        client.put(PREFIX + "if1", interface("if1"))
        client.delete(PREFIX + "if1")
        put = events.get(timeout=WAIT)
        delete = events.get(timeout=WAIT)
    adapter.close()
    assert put.changes[0].value == interface("if1").SerializeToString()
    assert delete.changes[0].prev_value == put.changes[0].value
    assert store.get(PREFIX + "if1") is None


# Malformed requests ---------------------------------------------------------


@pytest.fixture(scope="module")
def shared_server():
    adapter = grpcsync.Adapter(timeout=WAIT, max_value_size=2000,
                               max_message_size=4000)
    recorder = Recorder()
    adapter.watch("agent", recorder, recorder, "")
    server = grpcsync.Server(adapter)
    port = server.start()
    yield adapter, recorder, f"127.0.0.1:{port}"
    server.stop(grace=1.0)
    adapter.close()
    gc.collect()


_TYPE = "datasync.examples.netagent.Interface"

bad_keys = st.one_of(
    st.just(""),
    st.text(min_size=1, max_size=5).map(lambda s: "/" + s * 20 + "x" * 512))
bad_content = st.one_of(
    # Unknown content types, with a valid value.
    st.tuples(st.sampled_from(["text/plain", "application/xml",
                               "image/png", "json"]),
              st.just(b"\x08\x01")),
    # JSON that is not JSON, or not an object, or not of the type.
    st.tuples(st.just(f"application/json; proto={_TYPE}"),
              st.sampled_from([b"{", b"[1,2]", b'"text"', b"\xff\xfe",
                               b'{"mtu": "many"}', b'{"nosuchfield": 1}',
                               b'{"name": "a", "name": "b"}'])),
    # JSON without any known type.
    st.tuples(st.just("application/json"), st.just(b'{"name": "a"}')),
    # Binary that is not protobuf wire format.
    st.tuples(st.sampled_from(["application/x-protobuf",
                               f"application/x-protobuf; proto={_TYPE}"]),
              st.sampled_from([b"\xff\xff\xff", b"\x0a\x05ab", b"\x08"])),
    # An unknown message type.
    st.tuples(st.just("application/x-protobuf; proto=no.such.Type"),
              st.just(b"")),
    # Values above the limit.
    st.tuples(st.just("application/octet-stream"),
              st.integers(2001, 3900).map(lambda n: b"x" * n)),
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.one_of(bad_keys, st.just(PREFIX + "k")),
       content=bad_content,
       operation=st.sampled_from([msg_pb2.PUT, 7]))
def test_malformed_changes_rejected(shared_server, key, content, operation):
    adapter, recorder, target = shared_server
    content_type, body = content
    revision = adapter.backend.registry.revision
    replies, error = raw_changes(target, [msg_pb2.DataChangeRequest(
        key=key, operationType=operation, content=body,
        content_type=content_type)])
    assert replies == []
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details()
    assert adapter.backend.registry.revision == revision
    recorder.assert_idle()
    with grpcsync.Client(target, timeout=WAIT) as client:
        assert client.ping() == "pong"


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(good=st.integers(0, 3), key=bad_keys, content=bad_content)
def test_malformed_resync_applies_nothing(shared_server, good, key,
                                          content):
    adapter, recorder, target = shared_server
    content_type, body = content
    revision = adapter.backend.registry.revision
    request = msg_pb2.DataResyncRequests()
    for i in range(good):
        request.dataResyncs.add(key=f"{PREFIX}ok{i}", content=b"\x08\x01",
                                content_type="application/x-protobuf")
    request.dataResyncs.add(key=key or PREFIX + "k", content=body,
                            content_type=content_type)
    error = raw_call(target, "dataResyncs", request.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert adapter.backend.registry.revision == revision
    recorder.assert_idle()
