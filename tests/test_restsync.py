"""Tests of the REST transport: uvicorn on 127.0.0.1 with real HTTP
clients (httpx and curl), and the adapter's watchers on the other side."""

import base64
import json
import queue
import socket
import ssl
import subprocess

import httpx
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import datasync
from datasync import restsync
from datasync.examples import netagent_pb2
from datasync.transport import Result, StoreBackend

from transport_support import WAIT, Recorder, make_certificate

PREFIX = "/vnf-agent/a1/config/"
TYPE = "datasync.examples.netagent.Interface"
JSON_TYPE = f"application/json; proto={TYPE}"


def interface(name, mtu=1500):
    return netagent_pb2.Interface(name=name, mtu=mtu, enabled=True)


def as_json(message):
    return json_format.MessageToJson(message)


@pytest.fixture
def serve():
    """Start a REST adapter and server; return (adapter, base URL)."""
    started = []

    def start(server_options=None, **adapter_options):
        adapter_options.setdefault("timeout", WAIT)
        adapter = restsync.Adapter(**adapter_options)
        server = restsync.Server(adapter, **(server_options or {}))
        port = server.start()
        started.append((server, adapter))
        scheme = "https" if server_options else "http"
        return adapter, f"{scheme}://127.0.0.1:{port}"

    yield start
    for server, adapter in started:
        server.stop()
        adapter.close()


@pytest.fixture
def http():
    """Return a function that opens an httpx.Client, closed at teardown."""
    clients = []

    def open_(base_url, **options):
        client = httpx.Client(base_url=base_url, timeout=WAIT, **options)
        clients.append(client)
        return client

    yield open_
    for client in clients:
        client.close()


def curl(*args):
    """Run curl; return (HTTP status, parsed JSON body)."""
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", str(WAIT),
         "--write-out", "\n%{http_code}", *args],
        check=True, capture_output=True, text=True)
    body, _, status = result.stdout.rpartition("\n")
    return int(status), json.loads(body) if body else None


# Operations ----------------------------------------------------------------


def test_httpx_put_get_delete_resync(serve, http):
    adapter, url = serve()
    recorder = Recorder()
    adapter.watch("agent", recorder, recorder, PREFIX)
    client = http(url)

    response = client.put(PREFIX + "if1", content=as_json(interface("if1")),
                          headers={"Content-Type": JSON_TYPE})
    assert response.status_code == 200
    assert response.json() == {"key": PREFIX + "if1", "revision": 1,
                               "result": 0}
    change = recorder.next().changes[0]
    assert change.get_value(netagent_pb2.Interface()) == interface("if1")
    assert change.prev_value is None

    binary = interface("if1", mtu=9000).SerializeToString()
    response = client.put(PREFIX + "if1", content=binary, headers={
        "Content-Type": "application/x-protobuf"})
    assert response.status_code == 200
    change = recorder.next().changes[0]
    assert change.value == binary
    assert change.prev_value == interface("if1").SerializeToString()

    response = client.get(PREFIX + "if1", params={"proto": TYPE})
    assert response.status_code == 200
    body = response.json()
    assert body["revision"] == 2
    assert body["create_revision"] == 1
    assert body["version"] == 2
    assert base64.b64decode(body["value_base64"]) == binary
    assert body["value"] == {"name": "if1", "mtu": 9000, "enabled": True}

    response = client.delete(PREFIX + "if1")
    assert response.status_code == 200
    assert response.json()["deleted"] == [PREFIX + "if1"]
    change = recorder.next().changes[0]
    assert change.change_type is datasync.Op.DELETE
    assert change.prev_value == binary
    assert client.get(PREFIX + "if1").status_code == 404

    response = client.post("/resync", json={
        PREFIX + "if2": {"@type": TYPE, "name": "if2"},
        PREFIX + "raw": base64.b64encode(b"opaque").decode(),
    })
    assert response.status_code == 200
    assert response.json()["results"] == {PREFIX + "if2": 0,
                                          PREFIX + "raw": 0}
    event = recorder.next()
    assert isinstance(event, datasync.ResyncEvent)
    values = {kv.key: kv.value for kv in event.values[PREFIX]}
    assert values == {
        PREFIX + "if2": netagent_pb2.Interface(name="if2").SerializeToString(),
        PREFIX + "raw": b"opaque",
    }
    recorder.assert_idle()


def test_curl_put_get_delete_resync(serve):
    types = restsync.MessageTypes({PREFIX: netagent_pb2.Interface})
    adapter, url = serve(types=types)
    recorder = Recorder()
    adapter.watch("agent", recorder, recorder, PREFIX)

    status, body = curl("-X", "PUT", "-H", "Content-Type: application/json",
                        "--data", '{"name": "if1", "mtu": 1400}',
                        url + PREFIX + "if1")
    assert status == 200
    assert body["result"] == 0
    change = recorder.next().changes[0]
    assert change.get_value(netagent_pb2.Interface()).mtu == 1400

    status, body = curl(url + PREFIX + "if1")
    assert status == 200
    assert body["value"] == {"name": "if1", "mtu": 1400}

    status, body = curl("-X", "POST", "-H", "Content-Type: application/json",
                        "--data", json.dumps({PREFIX + "if2": {"mtu": 1}}),
                        url + "/resync")
    assert status == 200
    assert body["results"] == {PREFIX + "if2": 0}
    assert isinstance(recorder.next(), datasync.ResyncEvent)

    status, body = curl("-X", "DELETE", url + PREFIX + "?prefix=true")
    assert status == 200
    assert body["deleted"] == [PREFIX + "if2"]
    change = recorder.next().changes[0]
    assert change.key == PREFIX + "if2"
    assert change.change_type is datasync.Op.DELETE

    status, body = curl("-X", "PUT", "--data", "x", url + PREFIX + "if3")
    assert status == 400
    assert "application/x-www-form-urlencoded" in body["error"]
    recorder.assert_idle()


def test_adapter_is_watcher(serve):
    adapter, _ = serve()
    assert isinstance(adapter, datasync.KeyValProtoWatcher)


def test_list_prefix(serve, http):
    adapter, url = serve()
    client = http(url)
    for name in ("if1", "if2"):
        client.put(PREFIX + name, content=interface(name).SerializeToString(),
                   headers={"Content-Type": "application/x-protobuf"})
    client.put("/other/x", content=b"x",
               headers={"Content-Type": "application/octet-stream"})

    body = client.get(PREFIX, params={"list": "true", "proto": TYPE}).json()
    assert body["prefix"] == PREFIX
    assert body["revision"] == 3
    assert [item["key"] for item in body["items"]] == [PREFIX + "if1",
                                                       PREFIX + "if2"]
    assert body["items"][1]["value"]["name"] == "if2"
    everything = client.get("/", params={"list": "true"}).json()
    assert len(everything["items"]) == 3


def test_percent_encoded_key(serve, http):
    adapter, url = serve()
    client = http(url)
    response = client.put("/a%20b/c%3Fd", content=b"v",
                          headers={"Content-Type": "application/octet-stream"})
    assert response.json()["key"] == "/a b/c?d"
    assert adapter.backend.get("/a b/c?d".encode()).value == b"v"


# Results -------------------------------------------------------------------


def test_watcher_error_gives_500(serve, http):
    adapter, url = serve()
    recorder = Recorder(fail=lambda event: ValueError("unknown VRF 7"))
    adapter.watch("agent", recorder, recorder, PREFIX)
    response = http(url).put(PREFIX + "if1", content=b"x", headers={
        "Content-Type": "application/octet-stream"})
    assert response.status_code == 500
    body = response.json()
    assert body["result"] == Result.SUBSCRIBER_ERROR
    assert "unknown VRF 7" in body["error"]
    assert body["revision"] == 1


def test_delivery_timeout_gives_504(serve, http):
    adapter, url = serve(timeout=0.3)
    silent = Recorder(answer=False)
    adapter.watch("agent", silent, silent, PREFIX)
    response = http(url).put(PREFIX + "if1", content=b"x", headers={
        "Content-Type": "application/octet-stream"})
    assert response.status_code == 504
    assert response.json()["result"] == Result.DELIVERY_TIMEOUT


def test_store_backend_commits(open_store, http):
    store = open_store()
    adapter = restsync.Adapter(StoreBackend(store))
    events = queue.Queue()
    with restsync.Server(adapter) as server, \
            store.watch("local", events, events, PREFIX):
        assert isinstance(events.get(timeout=WAIT), datasync.ResyncEvent)
        client = http(f"http://127.0.0.1:{server.port}")
        client.put(PREFIX + "if1", content=b"v1",
                   headers={"Content-Type": "application/octet-stream"})
        response = client.post("/resync", json={PREFIX + "if2": "djI="})
        put = events.get(timeout=WAIT)
        resync = events.get(timeout=WAIT)
    adapter.close()
    assert response.status_code == 200
    assert put.changes[0].value == b"v1"
    kinds = sorted((c.change_type.value, c.key) for c in resync.changes)
    assert kinds == [("delete", PREFIX + "if1"), ("put", PREFIX + "if2")]
    assert store.get(PREFIX + "if2").value == b"v2"


# Safety --------------------------------------------------------------------


def test_token_required(serve, http):
    adapter, url = serve(token="s3cret")
    recorder = Recorder()
    adapter.watch("agent", recorder, recorder, PREFIX)
    for headers in ({}, {"Authorization": "Bearer wrong"},
                    {"Authorization": "s3cret"}):
        response = http(url).put(PREFIX + "if1", content=b"x", headers={
            "Content-Type": "application/octet-stream", **headers})
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    recorder.assert_idle()

    client = http(url, headers={"Authorization": "Bearer s3cret"})
    response = client.put(PREFIX + "if1", content=b"x", headers={
        "Content-Type": "application/octet-stream"})
    assert response.status_code == 200
    assert recorder.next().changes[0].key == PREFIX + "if1"


def test_oversized_body_gives_413(serve, http):
    adapter, url = serve(max_body_size=1000, max_value_size=500)
    client = http(url)
    octets = {"Content-Type": "application/octet-stream"}
    response = client.put(PREFIX + "big", content=b"x" * 1001,
                          headers=octets)
    assert response.status_code == 413
    assert "1001 bytes" in response.json()["error"]

    response = client.put(PREFIX + "big", content=b"x" * 501, headers=octets)
    assert response.status_code == 413
    assert "limit of 500 bytes" in response.json()["error"]

    def chunks():
        for _ in range(10):
            yield b"x" * 200

    response = client.put(PREFIX + "big", content=chunks(), headers=octets)
    assert response.status_code == 413
    assert adapter.backend.get(f"{PREFIX}big".encode()) is None
    assert client.put(PREFIX + "ok", content=b"x",
                      headers=octets).status_code == 200


def test_tls_server(serve, http, tmp_path):
    cert, key = make_certificate(tmp_path)
    adapter, url = serve(server_options={"tls_cert": str(cert),
                                         "tls_key": str(key)})
    client = http(url, verify=ssl.create_default_context(cafile=str(cert)))
    response = client.put(PREFIX + "if1", content=b"x", headers={
        "Content-Type": "application/octet-stream"})
    assert response.status_code == 200
    with pytest.raises(httpx.HTTPError):
        http(url.replace("https", "http")).get(PREFIX + "if1")


# Malformed requests ---------------------------------------------------------


@pytest.fixture(scope="module")
def shared_server():
    adapter = restsync.Adapter(timeout=WAIT, max_value_size=2000,
                               max_body_size=4000)
    recorder = Recorder()
    adapter.watch("agent", recorder, recorder, "/")
    server = restsync.Server(adapter)
    port = server.start()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}",
                      timeout=WAIT) as client:
        yield adapter, recorder, client
    server.stop()
    adapter.close()


bad_paths = st.one_of(
    st.just("/" + "k" * 600),
    st.sampled_from(["/%FF%FE", "/a%C3"]))
bad_puts = st.one_of(
    st.tuples(st.sampled_from([None, "text/plain", "application/xml",
                               "multipart/form-data"]),
              st.just(b"\x08\x01"), st.just(400)),
    st.tuples(st.just(JSON_TYPE),
              st.sampled_from([b"{", b"[1]", b"null", b"\xff",
                               b'{"mtu": -1}', b'{"bogus": true}']),
              st.just(400)),
    st.tuples(st.just("application/json"), st.just(b'{"name": "a"}'),
              st.just(400)),
    st.tuples(st.just(f"application/x-protobuf; proto={TYPE}"),
              st.sampled_from([b"\xff\xff", b"\x0a\x09short"]),
              st.just(400)),
    st.tuples(st.just("application/octet-stream"),
              st.integers(2001, 4000).map(lambda n: b"x" * n),
              st.just(413)),
    st.tuples(st.just("application/octet-stream"),
              st.integers(4001, 20_000).map(lambda n: b"x" * n),
              st.just(413)),
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.one_of(bad_paths, st.just(PREFIX + "k")), put=bad_puts)
def test_malformed_puts_rejected(shared_server, path, put):
    adapter, recorder, client = shared_server
    content_type, body, status = put
    revision = adapter.backend.registry.revision
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.put(path, content=body, headers=headers)
    if path != PREFIX + "k":
        # The key is checked before the body is read.
        status = 400
    assert response.status_code == status
    assert response.json()["error"]
    assert adapter.backend.registry.revision == revision
    recorder.assert_idle()
    assert client.get("/", params={"list": "true"}).status_code == 200


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(
    st.sampled_from([b"", b"[]", b"{", b'"x"', b"\xff",
                     b'{"/a": 5}', b'{"/a": "not base64!"}',
                     b'{"/a": {"@type": "no.Such"}}',
                     b'{"": "eA=="}',
                     json.dumps({"/" + "k" * 600: "eA=="}).encode()]),
    st.dictionaries(st.text(max_size=3).map(lambda s: "/ok/" + s),
                    st.just("eA=="), max_size=3).map(
        lambda good: json.dumps({**good, "/bad": [1]}).encode())))
def test_malformed_resyncs_rejected(shared_server, body):
    adapter, recorder, client = shared_server
    revision = adapter.backend.registry.revision
    response = client.post("/resync", content=body,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]
    assert adapter.backend.registry.revision == revision
    recorder.assert_idle()


def test_server_socket_lets_asyncio_disable_nagle():
    # asyncio sets TCP_NODELAY on accepted sockets only when the
    # listening socket's protocol is IPPROTO_TCP; without it every
    # keep-alive response waits for the client's delayed ACK.
    adapter = restsync.Adapter()
    server = restsync.Server(adapter)
    try:
        assert server._socket.proto == socket.IPPROTO_TCP
    finally:
        server._socket.close()
        adapter.close()
