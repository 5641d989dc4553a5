#!/usr/bin/python3
"""skiff's HTTP data plane end to end, configured the way istiod configures it: tools/xds-files
serves Envoy resources (clusters, listeners with an http_connection_manager and the router,
route configurations over RDS or inline) over delta ADS on a unix socket, and real clients
(curl, nghttp, h2load, python's http.client, grpcio, raw sockets) talk to skiff's listeners on
127.0.0.1 in front of the recording backends of backends.py.

Every expectation is Envoy's documented behaviour (the exact local-reply bodies, header
handling, status codes); each case is bounded in time and stops what it starts by pid. The
Backends cases check the test peers alone, without skiff.

  meson test -C build integration-http
  SKIFF=build/agent/skiff SRCDIR=. python3 tests/integration/http_test.py [Class[.test]]"""
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from backends import GrpcBackend, HttpBackend, ws_frame, ws_parse  # noqa: E402
from harness import (SHARED, T_CLA, T_ROUTE, ControlPlane, Skiff, ads_bootstrap,  # noqa: E402
                     cluster, curl, endpoints, free_port, hc_get, hcm, listener, raw, raw_status,
                     route, start_proxy, stop_proxy, to, wait_serving, write_atomic)

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
# Envoy's router, when the upstream connection cannot be made (1.21+ says "remote connection
# failure" and adds the transport failure reason; older ones "connection failure").
CONNECT_FAILURE = re.compile(
    r"^upstream connect error or disconnect/reset before headers\. (retried and the latest )?"
    r"reset reason: (remote |local )?connection failure(, transport failure reason: .*)?$")


# --- the shared environment --------------------------------------------------------------------

class RawUpstream:
    """An HTTP/1.1 upstream on 127.0.0.1 that answers each request with the bytes RESPONSES
    holds for its path (malformed ones among them), as they are; after a truncated one it
    closes. Records (connection number, path) per request."""

    RESPONSES = {
        b"/raw/ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"/raw/cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked"
                           b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"/raw/nul": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
        b"/raw/status": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
        b"/raw/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"/raw/204-with-length": b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\nxyz",
        b"/raw/204-length-0": b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        b"/raw/truncated-length": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"a" * 50,
        b"/raw/truncated-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   b"5\r\nhello\r\n",
    }

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.requests, self.n_conns, self.lock = [], 0, threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.n_conns += 1
                n = self.n_conns
            threading.Thread(target=self.serve, args=(c, n), daemon=True).start()

    def serve(self, c, n):
        buf = b""
        with c:
            while True:
                try:
                    d = c.recv(65536)
                except OSError:
                    return
                if not d:
                    return
                buf += d
                while b"\r\n\r\n" in buf:
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    path = head.split(b" ")[1]
                    with self.lock:
                        self.requests.append((n, path.decode()))
                    c.sendall(self.RESPONSES.get(path, self.RESPONSES[b"/raw/ok"]))
                    if b"truncated" in path:
                        return

    def stop(self):
        self.sock.close()


class Env:
    """Backends, tools/xds-files and one skiff with the main listener ("ingress_http", RDS
    route "local") and an edge listener (use_remote_address, loopback not internal). Shared by
    the cases of one class; each case reads only what it caused (records are cleared first)."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory()
        d = self.tmp.name
        self.b = {n: HttpBackend(n) for n in ("a", "b", "c", "d", "h2", "auto", "counted")}
        self.grpc = GrpcBackend("g")
        self.raw = RawUpstream()
        self.port = free_port()
        self.edge_port = free_port()
        self.timeouts_port = free_port()
        self.headers_port = free_port()
        # path normalisation: Istio's BASE (normalize_path, escaped slashes kept) with
        # merge_slashes, and the three other path_with_escaped_slashes_action values
        self.norm_ports = {a: free_port() for a in ("KEEP_UNCHANGED", "REJECT_REQUEST",
                                                    "UNESCAPE_AND_REDIRECT",
                                                    "UNESCAPE_AND_FORWARD")}
        self.us_ports = {a: free_port() for a in ("REJECT_REQUEST", "DROP_HEADER")}
        self.closed_port = free_port()  # nothing listens there
        self.clusters_file = os.path.join(d, "clusters.json")
        self.listeners_file = os.path.join(d, "listeners.json")
        self.routes_file = os.path.join(d, "routes.json")
        write_atomic(self.clusters_file, {"resources": self.clusters()})
        write_atomic(self.listeners_file, {"resources": self.listeners()})
        write_atomic(self.routes_file, {"resources": [self.routes()]})
        self.cp = ControlPlane(d, self.clusters_file, self.listeners_file, self.routes_file)
        self.skiff = Skiff(d, ads_bootstrap(self.cp.sock))
        ok = self.skiff.wait(lambda: self.skiff.get("/ready")[0] == 200, timeout=20)
        ok = ok and wait_serving(self.port, "/a/ready") and wait_serving(self.edge_port, "/a/ready")
        ok = ok and wait_serving(self.timeouts_port, "/a/ready")
        ok = ok and wait_serving(self.headers_port, "/a/ready")
        ok = ok and all(wait_serving(p, "/a/ready") for p in self.norm_ports.values())
        ok = ok and all(wait_serving(p, "/a/ready") for p in self.us_ports.values())
        if not ok:
            log = open(self.skiff.logpath).read()[-3000:]
            self.stop()
            raise RuntimeError("skiff is not serving HTTP on its listeners; its log:\n" + log)

    def clusters(self):
        b = self.b
        return [cluster("a", b["a"].port), cluster("b", b["b"].port), cluster("c", b["c"].port),
                cluster("d", b["d"].port), cluster("counted", b["counted"].port),
                cluster("h2", b["h2"].port, h2=True), cluster("auto", b["auto"].port, auto=True),
                cluster("grpc", self.grpc.port, h2=True),
                cluster("empty", eds=True), cluster("grpc-empty", eds=True, h2=True),
                cluster("closed", self.closed_port), cluster("raw", self.raw.port)]

    def listeners(self):
        edge = hcm("edge_http", rds="local", use_remote_address=True,
                   internal_address_config={"cidr_ranges": [
                       {"address_prefix": "10.0.0.0", "prefix_len": 8}]})
        short = hcm("timeouts_http", rds="local", stream_idle_timeout="0.3s",
                    request_timeout="0.6s",
                    common_http_protocol_options={"idle_timeout": "0.8s"})
        # Istio's stream_idle_timeout of 0: only request_headers_timeout ends a slow head
        heads = hcm("headers_http", rds="local", stream_idle_timeout="0s",
                    request_headers_timeout="0.5s",
                    forward_client_cert_details="ALWAYS_FORWARD_ONLY")
        norm = [listener("norm_" + a.lower(), p, hcm(
            "norm_" + a.lower(), rds="local", normalize_path=True,
            merge_slashes=(a == "KEEP_UNCHANGED"), path_with_escaped_slashes_action=a))
            for a, p in self.norm_ports.items()]
        return [listener("ingress", self.port, hcm("ingress_http", rds="local")),
                listener("edge", self.edge_port, edge),
                listener("timeouts", self.timeouts_port, short),
                listener("headers", self.headers_port, heads)] + norm + [
                listener("us_" + a.lower(), p, hcm("us_" + a.lower(), rds="local",
                         common_http_protocol_options={"headers_with_underscores_action": a}))
                for a, p in self.us_ports.items()]

    def routes(self):
        main = [
            route({"path": "/exact-path"}, route=to("b")),
            route({"prefix": "/b/"}, route=to("b")),
            route({"prefix": "/raw/"}, route=to("raw")),
            route({"prefix": "/fmt/"}, route=to("a"), request_headers_to_add=[
                {"header": {"key": "x-client", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}},
                {"header": {"key": "x-ua", "value": "ua=%REQ(user-agent)%;"}},
                {"header": {"key": "x-pct", "value": "100%%"}},
                {"header": {"key": "x-absent", "value": "%REQ(x-nothing)%"}},
                {"header": {"key": "x-absent-kept", "value": "%REQ(x-nothing)%"},
                 "keep_empty_value": True}],
                response_headers_to_add=[
                {"header": {"key": "x-code", "value": "%RESPONSE_CODE% via %PROTOCOL%"}}]),
            route({"safe_regex": {"regex": "^/re/[0-9]+$"}}, route=to("c")),
            route({"prefix": "/hdr", "headers": [{"name": "x-pick",
                                                  "string_match": {"exact": "d"}}]}, route=to("d")),
            route({"prefix": "/query", "query_parameters": [
                {"name": "pick", "string_match": {"exact": "c"}}]}, route=to("c")),
            route({"prefix": "/weighted"}, route={"weighted_clusters": {"clusters": [
                {"name": "a", "weight": 80}, {"name": "b", "weight": 20}]}}),
            route({"prefix": "/direct"}, direct_response={"status": 200,
                                                          "body": {"inline_string": "direct hello\n"}}),
            route({"prefix": "/redirect"}, redirect={"host_redirect": "new.example.com",
                                                     "path_redirect": "/moved"}),
            route({"prefix": "/rewrite/"}, route=to("b", prefix_rewrite="/rewritten/")),
            route({"prefix": "/headers"}, route=to("a"),
                  request_headers_to_add=[{"header": {"key": "x-added", "value": "yes"}}],
                  request_headers_to_remove=["x-remove-me"],
                  response_headers_to_add=[{"header": {"key": "x-resp-added", "value": "yes"}}],
                  response_headers_to_remove=["x-backend-remove"]),
            route({"prefix": "/noendpoints"}, route=to("empty")),
            route({"prefix": "/closed"}, route=to("closed")),
            route({"prefix": "/slow"}, route=to("a", timeout="0.5s")),
            route({"prefix": "/h2up"}, route=to("h2")),
            route({"prefix": "/auto"}, route=to("auto")),
            route({"prefix": "/counted"}, route=to("counted")),
            route({"prefix": "/skiff.test.Echo/"}, route=to("grpc")),
            route({"prefix": "/"}, route=to("a")),
        ]
        return {"@type": T_ROUTE, "name": "local", "virtual_hosts": [
            {"name": "exact", "domains": ["exact.example.com"], "routes": [
                route({"prefix": "/"}, route=to("b"))]},
            {"name": "suffix", "domains": ["*.suffix.test"], "routes": [
                route({"prefix": "/"}, route=to("c"))]},
            {"name": "prefix", "domains": ["prefix.*"], "routes": [
                route({"prefix": "/"}, route=to("d"))]},
            {"name": "noroute", "domains": ["noroute.test"], "routes": [
                route({"path": "/only-this"}, route=to("a"))]},
            {"name": "grpc-empty", "domains": ["grpc-empty.test", "grpc-empty.test:*"],
             "routes": [route({"prefix": "/"}, route=to("grpc-empty"))]},
            {"name": "main", "domains": ["*"], "routes": main},
        ]}

    def url(self, path, edge=False):
        return f"http://127.0.0.1:{self.edge_port if edge else self.port}{path}"

    def clear(self):
        with self.raw.lock:
            self.raw.requests.clear()
        for b in self.b.values():
            b.record.clear()
        with self.grpc.lock:
            self.grpc.calls.clear()

    def stop(self):
        rc = None
        if getattr(self, "skiff", None):
            rc = self.skiff.stop()
        if getattr(self, "cp", None):
            self.cp.stop()
        for b in self.b.values():
            b.stop()
        self.grpc.stop()
        self.raw.stop()
        self.tmp.cleanup()
        return rc


class EnvCase(unittest.TestCase):
    env = None
    env_error = None

    @classmethod
    def setUpClass(cls):
        # a failure to start is reported by every case of the class, each under its name
        try:
            cls.env = Env()
        except RuntimeError as e:
            cls.env, cls.env_error = None, str(e)

    @classmethod
    def tearDownClass(cls):
        if cls.env is None:
            return
        log = open(cls.env.skiff.logpath).read()[-3000:]
        rc = cls.env.stop()
        if rc != 0:
            print(log)
        assert rc == 0, f"skiff exit status {rc}"

    def setUp(self):
        if self.env is None:
            self.fail(self.env_error)
        self.env.clear()

    def got(self, name):
        """What backend `name` received (recorded before it answers, so complete once the
        client has its response)."""
        return self.env.b[name].requests

    def only(self, name):
        reqs = self.got(name)
        self.assertEqual(len(reqs), 1, reqs)
        return reqs[0]


# --- 0. the test peers themselves -----------------------------------------------------------------

class Backends(unittest.TestCase):
    """The backends answered directly, without skiff: what every case below relies on (the echo,
    the knobs, the record, h2c, trailers, WebSocket, gRPC), so that a failing case points at the
    proxy, and the smuggling cases' "received nothing" is shown to be able to fail."""

    @classmethod
    def setUpClass(cls):
        cls.b = HttpBackend("direct")
        cls.g = GrpcBackend("gdirect")

    @classmethod
    def tearDownClass(cls):
        cls.b.stop()
        cls.g.stop()

    def setUp(self):
        self.b.record.clear()

    def url(self, path):
        return f"http://127.0.0.1:{self.b.port}{path}"

    def test_http1_echo_knobs_and_record(self):
        data = os.urandom(100_000)
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            r, _ = curl(self.url("/p?q=1"), "--http1.1", "-H", "Transfer-Encoding: chunked",
                        "-H", "Expect: 100-continue", "--data-binary", "@" + f.name)
        self.assertEqual((r.status, r.h("x-backend"), r.json()["path"]), (200, "direct", "/p?q=1"))
        req = self.b.requests[0]
        self.assertTrue(req["body"] == data)
        r, _ = curl(self.url("/s"), "-H", "x-backend-status: 503", "-H", "x-backend-chunked: 1",
                    "-H", "x-backend-size: 5000")
        self.assertEqual((r.status, len(r.body)), (503, 5000))
        t0 = time.monotonic()
        r, _ = curl(self.url("/d"), "-H", "x-backend-delay-ms: 300")
        self.assertGreaterEqual(time.monotonic() - t0, 0.3)
        self.assertEqual(len(self.b.requests), 3)

    def test_h2c_and_trailers(self):
        r, _ = curl(self.url("/h2"), "--http2-prior-knowledge", "-d", "abc")
        self.assertEqual((r.status, r.json()["proto"], r.json()["body_len"]), (200, "h2", 3))
        p = subprocess.run(["nghttp", "-v", "-t", "10", "-H", "x-backend-trailers: 1",
                            self.url("/t")], capture_output=True, text=True, timeout=15)
        self.assertRegex(p.stdout, r"recv \(stream_id=\d+\) x-trailer: yes")

    def test_smuggled_request_would_be_recorded(self):
        out = raw(self.b.port, b"POST /a/s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + Malformed.SMUGGLED,
                  timeout=1)
        self.assertEqual(raw_status(out), 200)
        self.assertNotEqual(self.b.requests, [])

    def test_websocket_echo(self):
        with socket.create_connection(("127.0.0.1", self.b.port), timeout=5) as so:
            so.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       b"Sec-WebSocket-Version: 13\r\n\r\n")
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += so.recv(4096)
            head, buf = buf.split(b"\r\n\r\n", 1)
            # RFC 6455's own example key and accept value
            self.assertIn(b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", head)
            so.sendall(ws_frame(1, b"hi", mask=True))
            while ws_parse(buf) is None:
                buf += so.recv(4096)
            self.assertEqual(ws_parse(buf)[:2], (1, b"hi"))

    def test_grpc_methods(self):
        import grpc
        ident = (lambda b: b)
        with grpc.insecure_channel(f"127.0.0.1:{self.g.port}") as ch:
            m = lambda kind, name: getattr(ch, kind)("/skiff.test.Echo/" + name,  # noqa: E731
                                                     request_serializer=ident,
                                                     response_deserializer=ident)
            self.assertEqual(m("unary_unary", "Unary")(b"x", timeout=5), b"x")
            self.assertEqual(len(list(m("unary_stream", "ServerStream")(b"x", timeout=5))), 10)
            self.assertEqual(m("stream_unary", "ClientStream")(iter([b"a", b"b"]), timeout=5), b"ab")
            self.assertEqual(list(m("stream_stream", "BidiStream")(iter([b"a", b"b"]), timeout=5)),
                             [b"a", b"b"])
            with self.assertRaises(grpc.RpcError) as cm:
                m("unary_unary", "Fail")(b"UNAVAILABLE:down", timeout=5)
            self.assertEqual((cm.exception.code(), cm.exception.details()),
                             (grpc.StatusCode.UNAVAILABLE, "down"))


# --- 1. HTTP/1.1 -------------------------------------------------------------------------------

class Http1(EnvCase):
    def test_get_reaches_backend_and_echo_comes_back(self):
        r, _ = curl(self.env.url("/a/get?x=1"), "--http1.1", "-H", "x-custom: v")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.h("x-backend"), "a")
        self.assertEqual(r.json()["path"], "/a/get?x=1")
        req = self.only("a")
        self.assertEqual((req["method"], req["path"]), ("GET", "/a/get?x=1"))
        self.assertEqual(dict((k.lower(), v) for k, v in req["headers"])["x-custom"], "v")

    def test_post_1mib_body_arrives_exactly(self):
        data = os.urandom(1 << 20)
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            r, _ = curl(self.env.url("/a/post"), "--http1.1", "--data-binary", "@" + f.name,
                        "-H", "content-type: application/octet-stream")
        self.assertEqual(r.status, 200, r)
        req = self.only("a")
        self.assertEqual(req["method"], "POST")
        self.assertEqual(len(req["body"]), len(data))
        self.assertTrue(req["body"] == data, "the body the backend got differs")

    def test_keep_alive_two_requests_one_connection(self):
        out = subprocess.run(["curl", "-sS", "--http1.1", "--max-time", "10", "-o", "/dev/null",
                              "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\\n",
                              self.env.url("/a/one"), self.env.url("/a/two")],
                             capture_output=True, text=True, timeout=15).stdout.split("\n")
        self.assertEqual(out[0], "200 1")
        self.assertEqual(out[1], "200 0", "the second request opened a new connection")
        self.assertEqual([r["path"] for r in self.got("a")], ["/a/one", "/a/two"])

    def test_upstream_close_keeps_downstream_connection(self):
        """The backend closes after each response (connection: close); skiff opens a new
        upstream connection for the next request and keeps the client's connection."""
        out = subprocess.run(["curl", "-sS", "--http1.1", "--max-time", "10", "-o", "/dev/null",
                              "-o", "/dev/null", "-H", "x-backend-close: 1",
                              "-w", "%{http_code} %{num_connects}\\n",
                              self.env.url("/a/c1"), self.env.url("/a/c2")],
                             capture_output=True, text=True, timeout=15).stdout.split("\n")
        self.assertEqual(out[:2], ["200 1", "200 0"])
        reqs = self.got("a")
        self.assertEqual([r["path"] for r in reqs], ["/a/c1", "/a/c2"])
        self.assertNotEqual(reqs[0]["conn"], reqs[1]["conn"])
        # hop-by-hop: the backend's connection: close is not the client's business
        r, _ = curl(self.env.url("/a/c3"), "--http1.1", "-H", "x-backend-close: 1")
        self.assertNotEqual((r.h("connection") or "").lower(), "close")

    def test_chunked_upload(self):
        data = os.urandom(300_000)
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            r, _ = curl(self.env.url("/a/chunked"), "--http1.1", "-H",
                        "Transfer-Encoding: chunked", "--data-binary", "@" + f.name)
        self.assertEqual(r.status, 200, r)
        self.assertTrue(self.only("a")["body"] == data)

    def test_expect_100_continue_answered_by_the_proxy(self):
        data = os.urandom(200_000)
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            t0 = time.monotonic()
            r, _ = curl(self.env.url("/a/continue"), "--http1.1", "-H", "Expect: 100-continue",
                        "--expect100-timeout", "3", "--data-binary", "@" + f.name)
            took = time.monotonic() - t0
        self.assertEqual(r.status, 200, r)
        self.assertLess(took, 2.5, "no 100 Continue: curl waited for its expect timeout")
        req = self.only("a")
        self.assertTrue(req["body"] == data)
        # Envoy answers 100-continue itself and drops Expect upstream (proxy_100_continue off)
        self.assertNotIn("expect", [k.lower() for k, _ in req["headers"]])

    def test_chunked_response_and_big_response(self):
        r, _ = curl(self.env.url("/a/big"), "--http1.1", "-H", "x-backend-chunked: 1",
                    "-H", "x-backend-size: 100000")
        self.assertEqual((r.status, len(r.body)), (200, 100000))
        r, _ = curl(self.env.url("/a/big"), "--http1.1", "-H", "x-backend-size: 3000000")
        self.assertEqual((r.status, len(r.body)), (200, 3000000))


# --- 2. HTTP/2 (h2c prior knowledge) -------------------------------------------------------------

class StreamTimeouts(EnvCase):
    """The connection manager's stream_idle_timeout and request_timeout (the "timeouts"
    listener: 300 ms and 600 ms): Envoy's 408 before a response began."""

    def test_request_timeout_when_the_body_never_completes(self):
        t0 = time.time()
        out = raw(self.env.timeouts_port, b"POST /a/slow-body HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 10\r\n\r\nabc", timeout=5)
        self.assertEqual(raw_status(out), 408, out[:300])
        self.assertTrue(out.endswith(b"request timeout") or b"stream timeout" in out, out)
        self.assertLess(time.time() - t0, 3)

    def test_stream_idle_timeout_while_the_upstream_is_silent(self):
        r, _ = curl(f"http://127.0.0.1:{self.env.timeouts_port}/a/idle", "--http1.1",
                    "-H", "x-backend-delay-ms: 1500")
        self.assertEqual((r.status, r.body), (408, b"stream timeout"), r)
        self.assertGreaterEqual(self.env.skiff.stat_int("http.timeouts_http.downstream_rq_idle_timeout"), 1)

    def test_an_idle_connection_is_closed_after_idle_timeout(self):
        """common_http_protocol_options.idle_timeout (0.8 s): a keep-alive connection with no
        request in flight is closed; one in use is not."""
        with socket.create_connection(("127.0.0.1", self.env.timeouts_port), timeout=5) as so:
            for _ in range(3):  # kept busy past the idle timeout: stays open
                so.sendall(b"GET /a/busy HTTP/1.1\r\nHost: x\r\n\r\n")
                got = b""
                while b"\r\n\r\n" not in got or not got.endswith(b"}"):
                    chunk = so.recv(65536)
                    self.assertTrue(chunk, "closed while in use")
                    got += chunk
                time.sleep(0.4)
            t0 = time.time()
            so.settimeout(3)
            self.assertEqual(so.recv(1), b"")  # the proxy closes it
            self.assertLess(time.time() - t0, 2.5)

    def test_a_quick_request_is_unaffected(self):
        r, _ = curl(f"http://127.0.0.1:{self.env.timeouts_port}/a/quick", "--http1.1",
                    "-H", "x-backend-delay-ms: 100")
        self.assertEqual(r.status, 200, r)


class RequestHeadersTimeout(EnvCase):
    """request_headers_timeout (the "headers" listener: 0.5 s, with Istio's stream_idle_timeout
    of 0): a request head still arriving after it gets Envoy's 408 "request header timeout",
    counted in downstream_rq_header_timeout; over HTTP/1 the connection closes and nothing
    reaches the backend. The time runs from the head's first byte: an idle keep-alive
    connection is not timed by it, a head sent in pieces within it is served."""

    STAT = "http.headers_http.downstream_rq_header_timeout"

    def read_until_closed(self, so, feed=None, limit=5.0):
        """Reads until the peer closes (or limit); feed, when given, is sent every 0.1 s
        meanwhile. Returns what was read and the monotonic time its first byte came."""
        got, first = b"", None
        deadline = time.monotonic() + limit
        so.settimeout(0.1)
        while time.monotonic() < deadline:
            if feed:
                try:
                    so.sendall(feed)
                except OSError:
                    feed = None  # the proxy stopped reading: read what it said
            try:
                chunk = so.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            if first is None:
                first = time.monotonic()
            got += chunk
        return got, first

    def read_200(self, so):
        """Reads one response of the echo backend (its JSON body ends the message): a 200."""
        got = b""
        while not got.endswith(b"}"):
            chunk = so.recv(65536)
            self.assertTrue(chunk, "closed before the response ended")
            got += chunk
        self.assertEqual(raw_status(got), 200, got[:300])

    def test_a_head_sent_a_line_at_a_time_gets_408_and_the_connection_closes(self):
        n0 = self.env.skiff.stat_int(self.STAT)
        with socket.create_connection(("127.0.0.1", self.env.headers_port), timeout=5) as so:
            t0 = time.monotonic()
            so.sendall(b"GET /a/slow-head HTTP/1.1\r\nHost: x\r\n")
            got, first = self.read_until_closed(so, feed=b"x-slow: 1\r\n")
        self.assertEqual(raw_status(got), 408, got[:300])
        self.assertTrue(got.endswith(b"\r\n\r\nrequest header timeout"), got)
        self.assertIn(b"connection: close", got.lower())
        self.assertGreaterEqual(first - t0, 0.45)
        self.assertLess(first - t0, 1.5)
        self.assertEqual(self.got("a"), [])
        self.assertEqual(self.env.skiff.stat_int(self.STAT), n0 + 1)

    def test_keep_alive_idle_time_does_not_count_and_a_pipelined_head_is_timed(self):
        with socket.create_connection(("127.0.0.1", self.env.headers_port), timeout=5) as so:
            so.sendall(b"GET /a/ka1 HTTP/1.1\r\nHost: x\r\n\r\n")
            self.read_200(so)
            time.sleep(0.8)  # idle past the header timeout: no head, nothing timed
            so.sendall(b"GET /a/ka2 HTTP/1.1\r\nHost: x\r\n\r\nGET /a/ka3 HTTP/1.1\r\nHo")
            t0 = time.monotonic()
            got, first = self.read_until_closed(so)
            took = time.monotonic() - t0
        self.assertEqual(raw_status(got), 200, got[:300])
        self.assertEqual(got.count(b"HTTP/1.1 "), 2, got)
        tail = got[got.rindex(b"HTTP/1.1 "):]
        self.assertEqual(raw_status(tail), 408, got)
        self.assertTrue(tail.endswith(b"request header timeout"), tail)
        self.assertGreaterEqual(took, 0.45)
        self.assertEqual([r["path"] for r in self.got("a")], ["/a/ka1", "/a/ka2"])

    def test_a_head_in_pieces_within_the_timeout_is_served_and_the_next_is_timed(self):
        with socket.create_connection(("127.0.0.1", self.env.headers_port), timeout=5) as so:
            for piece in (b"GET /a/pieces HT", b"TP/1.1\r\nHost: x\r\n", b"x-a: 1\r\n", b"\r\n"):
                so.sendall(piece)
                time.sleep(0.1)
            self.read_200(so)
            time.sleep(0.3)  # with the last head's 0.4 s: past the timeout, were it still running
            so.sendall(b"GET /a/pieces2 HTTP/1.1\r\nHo")
            t0 = time.monotonic()
            got, first = self.read_until_closed(so)
        self.assertEqual(raw_status(got), 408, got[:300])
        self.assertGreaterEqual(first - t0, 0.45)
        self.assertLess(first - t0, 1.5)
        self.assertEqual([r["path"] for r in self.got("a")], ["/a/pieces"])

    def test_h2_a_header_block_never_ended_gets_408_on_its_stream(self):
        from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, RstStreamFrame
        n0 = self.env.skiff.stat_int(self.STAT)
        block = h2_block(("/a/h2-slow-head", "x"))
        t0 = time.monotonic()
        frames, heads = h2_exchange(self.env.headers_port, [
            HeadersFrame(1, data=block[:3], flags=["END_STREAM"]),
            ContinuationFrame(1, data=block[3:5])], limit=2.0)
        on1 = [f for f in frames if f.stream_id == 1]
        self.assertEqual([type(f) for f in on1], [HeadersFrame, DataFrame, RstStreamFrame], on1)
        self.assertEqual(heads[0][":status"], "408", heads)
        self.assertEqual(on1[1].data, b"request header timeout")
        self.assertIn("END_STREAM", on1[1].flags)
        self.assertEqual(on1[2].error_code, 0)  # NO_ERROR: the stream is over, not failed
        self.assertGreaterEqual(time.monotonic() - t0, 0.45)
        self.assertEqual(self.got("a"), [])
        self.assertEqual(self.env.skiff.stat_int(self.STAT), n0 + 1)

    def test_h2_a_408_the_client_has_no_window_for_is_reset_later_and_counted_once(self):
        from hyperframe.frame import ContinuationFrame, HeadersFrame, RstStreamFrame
        n0 = self.env.skiff.stat_int(self.STAT)
        block = h2_block(("/a/h2-no-window", "x"))
        frames, heads = h2_exchange(self.env.headers_port, [
            HeadersFrame(1, data=block[:3], flags=["END_STREAM"]),
            ContinuationFrame(1, data=block[3:5])], limit=2.0, settings={4: 0})
        on1 = [f for f in frames if f.stream_id == 1]
        self.assertEqual([type(f) for f in on1], [HeadersFrame, RstStreamFrame], on1)
        self.assertEqual(heads[0][":status"], "408", heads)
        self.assertNotIn("END_STREAM", on1[0].flags)  # the body waits for a window
        self.assertEqual(self.env.skiff.stat_int(self.STAT), n0 + 1)


def h2_block(path_authority, method="GET"):
    """An HPACK header block of a request (a fresh encoder: no dynamic table references)."""
    import hpack
    path, authority = path_authority
    return hpack.Encoder().encode([(":method", method), (":scheme", "http"), (":path", path),
                                   (":authority", authority)])


def h2_exchange(port, frames, limit, settings=None):
    """Opens an h2c connection (preface and SETTINGS: `settings`, id to value), sends frames
    (hyperframe), and
    reads for `limit` seconds or until the peer closes. Returns the frames read and the header
    lists of the HEADERS frames among them, decoded in order."""
    import hpack
    from hyperframe.frame import Frame, HeadersFrame, SettingsFrame
    got = raw(port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" +
              SettingsFrame(0, settings=settings or {}).serialize() +
              b"".join(f.serialize() for f in frames), timeout=limit)
    out = []
    while len(got) >= 9:
        f, n = Frame.parse_frame_header(memoryview(got[:9]))
        if len(got) < 9 + n:
            break
        f.parse_body(memoryview(got[9:9 + n]))
        out.append(f)
        got = got[9 + n:]
    dec = hpack.Decoder()
    heads = [dict(dec.decode(f.data)) for f in out if isinstance(f, HeadersFrame)]
    return out, heads


class HeaderFormatters(EnvCase):
    """Values of request_headers_to_add and response_headers_to_add with Envoy's command
    operators, formatted per request: a value that comes out empty is not added unless
    keep_empty_value; "%%" is a literal percent sign."""

    def test_request_and_response_values_are_formatted(self):
        for proto, name in (("--http1.1", "HTTP/1.1"), ("--http2-prior-knowledge", "HTTP/2")):
            with self.subTest(proto=proto):
                self.env.clear()
                r, _ = curl(self.env.url("/fmt/x"), proto, "-A", "fmt-test")
                self.assertEqual((r.status, r.h("x-code")), (200, "200 via " + name), r)
                got = dict(self.only("a")["headers"])
                self.assertEqual((got.get("x-client"), got.get("x-ua"), got.get("x-pct")),
                                 ("127.0.0.1", "ua=fmt-test;", "100%"))
                self.assertNotIn("x-absent", got)
                self.assertEqual(got.get("x-absent-kept"), "")


class HeadersWithUnderscores(EnvCase):
    """common_http_protocol_options.headers_with_underscores_action: DROP_HEADER removes the
    header, REJECT_REQUEST answers 400 and closes (HTTP/1) or resets the stream (HTTP/2), and
    nothing reaches the backend; counted in Envoy's http1./http2. codec stats."""

    def test_drop(self):
        for proto, v in (("--http1.1", "http1"), ("--http2-prior-knowledge", "http2")):
            with self.subTest(proto=proto):
                self.env.clear()
                n0 = self.env.skiff.stat_int(v + ".dropped_headers_with_underscores")
                r, _ = curl(f"http://127.0.0.1:{self.env.us_ports['DROP_HEADER']}/a/us", proto,
                            "-H", "x_under: 1", "-H", "x-dash: 2")
                self.assertEqual(r.status, 200, r)
                got = dict(self.only("a")["headers"])
                self.assertNotIn("x_under", got)
                self.assertEqual(got.get("x-dash"), "2")
                self.assertEqual(self.env.skiff.stat_int(v + ".dropped_headers_with_underscores"),
                                 n0 + 1)

    def test_reject(self):
        port = self.env.us_ports["REJECT_REQUEST"]
        stat = "%s.requests_rejected_with_underscores_in_headers"
        n1, n2 = (self.env.skiff.stat_int(stat % v) for v in ("http1", "http2"))
        out = raw(port, b"GET /a/us HTTP/1.1\r\nHost: x\r\nx_under: 1\r\n\r\n"
                  b"GET /a/us2 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(raw_status(out), 400, out)
        self.assertIn(b"connection: close", out.lower())
        self.assertEqual(out.count(b"HTTP/1.1 "), 1, out)  # the next request is not served
        p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-m", "5", "--http2-prior-knowledge",
                            "-H", "x_under: 1", f"http://127.0.0.1:{port}/a/us3"], timeout=10)
        self.assertEqual(p.returncode, 92)  # the stream was reset
        self.assertEqual(self.got("a"), [])
        self.assertEqual((self.env.skiff.stat_int(stat % "http1"),
                          self.env.skiff.stat_int(stat % "http2")), (n1 + 1, n2 + 1))


class PathNormalization(EnvCase):
    """normalize_path, merge_slashes and path_with_escaped_slashes_action as Envoy applies them
    before routing: the route is chosen on the normalised path and the upstream gets it; %00
    is a 400 that reaches nothing; escaped slashes are kept (Istio's default), refused,
    redirected to (307; a 400 for gRPC) or decoded and forwarded."""

    def url(self, action, path):
        return f"http://127.0.0.1:{self.env.norm_ports[action]}{path}"

    def path_at(self, backend, url, *args):
        self.env.clear()
        r, _ = curl(url, "--path-as-is", *args)
        self.assertEqual(r.status, 200, r)
        return self.only(backend)["path"]

    def test_dot_segments_and_slashes_are_normalised_before_routing(self):
        for proto in ("--http1.1", "--http2-prior-knowledge"):
            with self.subTest(proto=proto):
                keep = lambda p: self.url("KEEP_UNCHANGED", p)  # noqa: E731
                self.assertEqual(self.path_at("b", keep("/a/../b/x"), proto), "/b/x")
                self.assertEqual(self.path_at("b", keep("/a/%2e%2E/b/y?q=/../z"), proto),
                                 "/b/y?q=/../z")
                self.assertEqual(self.path_at("b", keep("//b//./z"), proto), "/b/z")
                self.assertEqual(self.path_at("a", keep("/a/%7Ex%2Fy"), proto), "/a/~x%2Fy")
        # without normalize_path the same request goes where its bytes say
        self.assertEqual(self.path_at("a", self.env.url("/a/../b/x"), "--http1.1"), "/a/../b/x")

    def test_an_escaped_nul_is_refused(self):
        stat = "http.norm_keep_unchanged.downstream_rq_failed_path_normalization"
        n0 = self.env.skiff.stat_int(stat)
        r, _ = curl(self.url("KEEP_UNCHANGED", "/b/%00x"), "--path-as-is", "--http1.1")
        self.assertEqual((r.status, r.body), (400, b""), r)
        self.assertEqual((self.got("a"), self.got("b")), ([], []))
        self.assertEqual(self.env.skiff.stat_int(stat), n0 + 1)

    def test_escaped_slashes_refused_redirected_or_forwarded(self):
        r, _ = curl(self.url("REJECT_REQUEST", "/b%2Fx"), "--path-as-is", "--http1.1")
        self.assertEqual(r.status, 400, r)
        r, _ = curl(self.url("UNESCAPE_AND_REDIRECT", "/b%2Fx%5Cy"), "--path-as-is", "--http1.1")
        self.assertEqual((r.status, r.h("location")), (307, "/b/x/y"), r)
        self.assertEqual(self.env.skiff.stat_int(
            "http.norm_unescape_and_redirect.downstream_rq_redirected_with_normalized_path"), 1)
        r, _ = curl(self.url("UNESCAPE_AND_REDIRECT", "/b%2Fx"), "--path-as-is",
                    "--http2-prior-knowledge", "-H", "content-type: application/grpc",
                    "-H", "te: trailers")
        self.assertEqual((r.status, r.h("grpc-status")), (200, "13"), r)  # 400 as gRPC INTERNAL
        self.assertEqual((self.got("a"), self.got("b")), ([], []))
        self.assertEqual(self.path_at("b", self.url("UNESCAPE_AND_FORWARD", "/b%2Fx%5C..%2Fy"),
                                      "--http1.1"), "/b/y")
        # escaped slashes kept: routed and forwarded as they came
        self.assertEqual(self.path_at("a", self.url("KEEP_UNCHANGED", "/a%2Fb"), "--http1.1"),
                         "/a%2Fb")


class MalformedUpstream(EnvCase):
    """Responses that break HTTP/1.1 from an upstream (RawUpstream): Envoy's 502 UPE with
    "reset reason: protocol error", over HTTP/1.1 and h2c, the connection that carried it not
    used again; a response cut short never looks complete downstream (curl: HTTP/1.1 "transfer
    closed with outstanding read data", h2c a stream error); a 204 whose length is 0 reaches an
    HTTP/2 client without the content-length it would refuse."""

    BAD = ("cl-and-te", "nul", "status", "two-lengths", "204-with-length")
    BODY = b"upstream connect error or disconnect/reset before headers. reset reason: protocol error"

    def test_a_malformed_response_is_a_502_and_its_connection_is_dropped(self):
        for bad in self.BAD:
            for proto in ("--http1.1", "--http2-prior-knowledge"):
                with self.subTest(bad=bad, proto=proto):
                    self.env.clear()
                    r, _ = curl(self.env.url("/raw/" + bad), proto)
                    self.assertEqual((r.status, r.body), (502, self.BODY), r)
                    r, _ = curl(self.env.url("/raw/ok"), "--http1.1")
                    self.assertEqual(r.status, 200, r)
                    with self.env.raw.lock:
                        reqs = list(self.env.raw.requests)
                    self.assertEqual([p for _, p in reqs], ["/raw/" + bad, "/raw/ok"])
                    self.assertNotEqual(reqs[0][0], reqs[1][0], "the bad connection was reused")

    def test_a_truncated_response_never_looks_complete(self):
        for cut in ("truncated-length", "truncated-chunked"):
            for proto, rc in (("--http1.1", 18), ("--http2-prior-knowledge", 92)):
                with self.subTest(cut=cut, proto=proto):
                    p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-m", "5", proto,
                                        self.env.url("/raw/" + cut)], timeout=10)
                    self.assertEqual(p.returncode, rc)

    def test_a_204_with_length_0_reaches_an_h2_client(self):
        r, _ = curl(self.env.url("/raw/204-length-0"), "--http2-prior-knowledge")
        self.assertEqual((r.status, r.body, r.h("content-length")), (204, b"", None), r)


class Http2(EnvCase):
    def test_a_response_that_ends_before_its_request_resets_the_stream_with_no_error(self):
        """A 404 (no route) to a request whose body is still open: the response, then
        RST_STREAM(NO_ERROR) as Envoy sends (RFC 9113 8.1), not a stream left half open for a
        body nobody reads; the connection goes on serving."""
        from hyperframe.frame import DataFrame, HeadersFrame, RstStreamFrame
        frames, heads = h2_exchange(self.env.port, [
            HeadersFrame(1, data=h2_block(("/not-routed", "noroute.test"), "POST"),
                         flags=["END_HEADERS"]),
            DataFrame(1, data=b"part of a body"),
            HeadersFrame(3, data=h2_block(("/a/after", "x")), flags=["END_HEADERS", "END_STREAM"])],
            limit=1.5)
        on1 = [f for f in frames if f.stream_id == 1]
        self.assertEqual([type(f) for f in on1], [HeadersFrame, RstStreamFrame], on1)
        self.assertIn("END_STREAM", on1[0].flags)
        self.assertEqual(on1[1].error_code, 0)
        self.assertEqual([h[":status"] for h in heads], ["404", "200"], heads)
        self.assertEqual([r["path"] for r in self.got("a")], ["/a/after"])

    def test_h2c_get_and_post(self):
        r, _ = curl(self.env.url("/a/h2get"), "--http2-prior-knowledge")
        self.assertEqual((r.status, r.h("x-backend")), (200, "a"), r)
        data = os.urandom(1 << 20)
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            r, _ = curl(self.env.url("/a/h2post"), "--http2-prior-knowledge",
                        "--data-binary", "@" + f.name)
        self.assertEqual(r.status, 200, r)
        posts = [x for x in self.got("a") if x["path"] == "/a/h2post"]
        self.assertEqual(len(posts), 1)
        self.assertTrue(posts[0]["body"] == data)

    def test_nghttp(self):
        p = subprocess.run(["nghttp", "-nv", "-t", "10", self.env.url("/a/nghttp")],
                           capture_output=True, text=True, timeout=15)
        self.assertEqual(p.returncode, 0, p.stdout[-2000:] + p.stderr)
        self.assertRegex(p.stdout, r"recv \(stream_id=\d+\) :status: 200")
        self.assertRegex(p.stdout, r"recv \(stream_id=\d+\) x-backend: a")

    def test_h2load_2000_requests_none_failed(self):
        p = subprocess.run(["h2load", "-n", "2000", "-c", "10", "-m", "10", "-T", "10",
                            self.env.url("/a/load")], capture_output=True, text=True, timeout=60)
        self.assertIn("2000 succeeded, 0 failed, 0 errored, 0 timeout", p.stdout, p.stdout)
        self.assertIn("status codes: 2000 2xx", p.stdout)


# --- 3. routing --------------------------------------------------------------------------------

class Routing(EnvCase):
    def backend_for(self, path, host=None, headers=()):
        args = ["--http1.1"]
        if host:
            args += ["-H", "Host: " + host]
        for h in headers:
            args += ["-H", h]
        r, _ = curl(self.env.url(path), *args)
        self.assertEqual(r.status, 200, (path, host, r))
        return r.h("x-backend")

    def test_virtual_hosts_by_host(self):
        self.assertEqual(self.backend_for("/x", "exact.example.com"), "b")
        self.assertEqual(self.backend_for("/x", "one.suffix.test"), "c")
        # a suffix wildcard wins over a prefix wildcard (Envoy's order: exact, suffix, prefix, *)
        self.assertEqual(self.backend_for("/x", "prefix.suffix.test"), "c")
        self.assertEqual(self.backend_for("/x", "prefix.anything.org"), "d")
        self.assertEqual(self.backend_for("/x", "other.example.com"), "a")
        self.assertEqual(self.backend_for("/x", "EXACT.example.com"), "b")  # case-insensitive

    def test_path_prefix_regex_header_query_matches(self):
        self.assertEqual(self.backend_for("/exact-path"), "b")
        self.assertEqual(self.backend_for("/exact-path/more"), "a")  # path is exact
        self.assertEqual(self.backend_for("/b/x"), "b")
        self.assertEqual(self.backend_for("/re/123"), "c")
        self.assertEqual(self.backend_for("/re/12a"), "a")
        self.assertEqual(self.backend_for("/hdr", headers=["x-pick: d"]), "d")
        self.assertEqual(self.backend_for("/hdr", headers=["x-pick: e"]), "a")
        self.assertEqual(self.backend_for("/query?pick=c"), "c")
        self.assertEqual(self.backend_for("/query?pick=x"), "a")
        self.assertEqual(self.backend_for("/query?other=1&pick=c"), "c")

    def test_weighted_clusters_80_20(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.env.port, timeout=10)
        counts = {"a": 0, "b": 0}
        for i in range(1000):
            r = hc_get(conn, f"/weighted/{i}")
            self.assertEqual(r.status, 200)
            counts[r.h("x-backend")] += 1
        conn.close()
        # binomial(1000, 0.8): sd 12.6; +-60 is more than 4.7 sd
        self.assertTrue(740 <= counts["a"] <= 860, counts)
        self.assertEqual(counts["a"] + counts["b"], 1000)

    def test_upstream_status_passes_through(self):
        r, _ = curl(self.env.url("/a/status"), "--http1.1", "-H", "x-backend-status: 503")
        self.assertEqual((r.status, r.h("x-backend")), (503, "a"), r)
        self.assertEqual(r.json()["path"], "/a/status")

    def test_direct_response(self):
        r, _ = curl(self.env.url("/direct"), "--http1.1")
        self.assertEqual((r.status, r.body), (200, b"direct hello\n"))
        self.assertEqual(sum(len(b.requests) for b in self.env.b.values()), 0)

    def test_redirect(self):
        # a Host without a port, so that only host_redirect and path_redirect shape Location
        r, _ = curl(self.env.url("/redirect/x"), "--http1.1", "-H", "Host: old.example.com")
        self.assertEqual(r.status, 301, r)  # RedirectAction's default response_code
        self.assertEqual(r.h("location"), "http://new.example.com/moved")

    def test_prefix_rewrite(self):
        self.assertEqual(self.backend_for("/rewrite/some/thing?q=1"), "b")
        req = self.only("b")
        self.assertEqual(req["path"], "/rewritten/some/thing?q=1")
        hm = {k.lower(): v for k, v in req["headers"]}
        # Envoy keeps the original path in x-envoy-original-path
        self.assertEqual(hm.get("x-envoy-original-path"), "/rewrite/some/thing?q=1")

    def test_request_and_response_headers_add_remove(self):
        r, _ = curl(self.env.url("/headers"), "--http1.1", "-H", "x-remove-me: 1",
                    "-H", "x-keep-me: 2")
        self.assertEqual(r.status, 200)
        hm = {k.lower(): v for k, v in self.only("a")["headers"]}
        self.assertEqual(hm.get("x-added"), "yes")
        self.assertNotIn("x-remove-me", hm)
        self.assertEqual(hm.get("x-keep-me"), "2")
        self.assertEqual(r.h("x-resp-added"), "yes")
        self.assertIsNone(r.h("x-backend-remove"))
        # without the route's removal the backend's header is there
        r2, _ = curl(self.env.url("/a/plain"), "--http1.1")
        self.assertEqual(r2.h("x-backend-remove"), "present")

    def test_no_route_is_404_without_body(self):
        r, _ = curl(self.env.url("/not-this"), "--http1.1", "-H", "Host: noroute.test")
        self.assertEqual((r.status, r.body), (404, b""), r)
        self.assertEqual(sum(len(b.requests) for b in self.env.b.values()), 0)

    def test_no_healthy_upstream_503(self):
        r, _ = curl(self.env.url("/noendpoints"), "--http1.1")
        self.assertEqual((r.status, r.body), (503, b"no healthy upstream"), r)
        self.assertEqual(r.h("content-type"), "text/plain")

    def test_connection_failure_503(self):
        r, _ = curl(self.env.url("/closed"), "--http1.1")
        self.assertEqual(r.status, 503, r)
        self.assertRegex(r.body.decode(), CONNECT_FAILURE)

    def test_route_timeout_504(self):
        t0 = time.monotonic()
        r, _ = curl(self.env.url("/slow"), "--http1.1", "-H", "x-backend-delay-ms: 3000")
        took = time.monotonic() - t0
        self.assertEqual((r.status, r.body), (504, b"upstream request timeout"), r)
        self.assertTrue(0.4 < took < 2.5, took)


# --- 4. the headers Envoy's connection manager adds and strips ------------------------------------

class ProxyHeaders(EnvCase):
    def test_a_client_cannot_claim_a_certificate_identity(self):
        """x-forwarded-client-cert from a connection that is not mTLS is removed under every
        forward_client_cert_details but ALWAYS_FORWARD_ONLY (the "headers" listener's)."""
        xfcc = "By=spiffe://cluster.local/ns/default/sa/admin;URI=spiffe://evil"
        for url, kept in ((self.env.url("/a/xfcc"), False),
                          (f"http://127.0.0.1:{self.env.headers_port}/a/xfcc", True)):
            with self.subTest(url=url):
                self.env.clear()
                r, _ = curl(url, "--http1.1", "-H", "x-forwarded-client-cert: " + xfcc)
                self.assertEqual(r.status, 200, r)
                got = dict(self.only("a")["headers"])
                self.assertEqual(got.get("x-forwarded-client-cert"), xfcc if kept else None)

    def backend_headers(self, r, name="a"):
        self.assertEqual(r.status, 200, r)
        return {k.lower(): v for k, v in self.only(name)["headers"]}

    def test_forwarded_proto_request_id_server_service_time(self):
        r, _ = curl(self.env.url("/a/h"), "--http1.1")
        hm = self.backend_headers(r)
        self.assertEqual(hm.get("x-forwarded-proto"), "http")
        self.assertRegex(hm.get("x-request-id", ""), UUID)
        self.assertEqual(r.h("server"), "envoy")  # server_name's default, overwriting upstream's
        self.assertRegex(r.h("x-envoy-upstream-service-time") or "", r"^\d+$")

    def test_internal_request_keeps_request_id_and_obeys_envoy_timeout(self):
        """use_remote_address false (a sidecar's setting): not an edge request, so the client's
        x-request-id is kept and x-envoy-upstream-rq-timeout-ms is obeyed. With no XFF naming an
        internal address the request is not internal either, so the client's claim
        x-envoy-internal: true does not pass; with xff_num_trusted_hops 0 x-forwarded-proto is
        set from the connection (http), whatever the client sent."""
        r, _ = curl(self.env.url("/a/i"), "--http1.1", "-H", "x-request-id: my-id-1",
                    "-H", "x-forwarded-proto: https", "-H", "x-envoy-internal: true")
        hm = self.backend_headers(r)
        self.assertEqual(hm.get("x-request-id"), "my-id-1")
        self.assertEqual(hm.get("x-forwarded-proto"), "http")
        self.assertNotEqual(hm.get("x-envoy-internal"), "true")
        self.assertNotIn("x-forwarded-for", hm)  # use_remote_address false: XFF untouched
        self.env.clear()
        r, _ = curl(self.env.url("/a/t"), "--http1.1", "-H", "x-envoy-upstream-rq-timeout-ms: 200",
                    "-H", "x-backend-delay-ms: 1500")
        self.assertEqual((r.status, r.body), (504, b"upstream request timeout"), r)

    def test_edge_request_strips_envoy_headers(self):
        """use_remote_address true and loopback outside internal_address_config: an external
        request. Envoy removes the x-envoy-* control headers (so a client cannot set a timeout
        or retries), replaces x-request-id, sets x-forwarded-proto from the connection and
        appends the peer to x-forwarded-for."""
        r, _ = curl(self.env.url("/a/e", edge=True), "--http1.1",
                    "-H", "x-envoy-upstream-rq-timeout-ms: 100", "-H", "x-envoy-retry-on: 5xx",
                    "-H", "x-envoy-max-retries: 3", "-H", "x-envoy-internal: true",
                    "-H", "x-request-id: client-chosen", "-H", "x-forwarded-proto: https",
                    "-H", "x-backend-delay-ms: 400")
        self.assertEqual(r.status, 200, "the client's x-envoy-upstream-rq-timeout-ms was obeyed")
        hm = self.backend_headers(r)
        for h in ("x-envoy-upstream-rq-timeout-ms", "x-envoy-retry-on", "x-envoy-max-retries",
                  "x-envoy-internal"):
            self.assertNotIn(h, hm)
        self.assertRegex(hm.get("x-request-id", ""), UUID)
        self.assertEqual(hm.get("x-forwarded-proto"), "http")
        self.assertEqual(hm.get("x-forwarded-for"), "127.0.0.1")
        self.assertEqual(hm.get("x-envoy-external-address"), "127.0.0.1")


# --- 5. protocol conversion ----------------------------------------------------------------------

class ProtocolConversion(EnvCase):
    def test_h1_downstream_to_h2_upstream(self):
        r, _ = curl(self.env.url("/h2up/x"), "--http1.1", "-d", "hello")
        self.assertEqual((r.status, r.h("x-backend")), (200, "h2"), r)
        req = self.only("h2")
        self.assertEqual((req["proto"], req["method"], req["path"], req["body"]),
                         ("h2", "POST", "/h2up/x", b"hello"))
        hm = {k: v for k, v in req["headers"]}
        self.assertEqual(hm.get(":authority"), f"127.0.0.1:{self.env.port}")
        self.assertNotIn("connection", hm)

    def test_h2_downstream_to_h1_upstream(self):
        r, _ = curl(self.env.url("/a/from-h2"), "--http2-prior-knowledge", "-d", "hello")
        self.assertEqual(r.status, 200, r)
        req = self.only("a")
        self.assertEqual((req["proto"], req["version"], req["path"], req["body"]),
                         ("http/1.1", "HTTP/1.1", "/a/from-h2", b"hello"))
        hm = {k.lower(): v for k, v in req["headers"]}
        self.assertEqual(hm.get("host"), f"127.0.0.1:{self.env.port}")

    def test_h2_to_h2_with_trailers(self):
        p = subprocess.run(["nghttp", "-v", "-t", "10", "-H", "x-backend-trailers: 1",
                            self.env.url("/h2up/trailers")], capture_output=True, text=True,
                           timeout=15)
        self.assertEqual(p.returncode, 0, p.stdout[-2000:])
        self.assertRegex(p.stdout, r"recv \(stream_id=\d+\) x-trailer: yes")

    def test_use_downstream_protocol_config(self):
        r, _ = curl(self.env.url("/auto/1"), "--http1.1")
        self.assertEqual(r.status, 200, r)
        r, _ = curl(self.env.url("/auto/2"), "--http2-prior-knowledge")
        self.assertEqual(r.status, 200, r)
        got = {x["path"]: x["proto"] for x in self.got("auto")}
        self.assertEqual(got, {"/auto/1": "http/1.1", "/auto/2": "h2"})


# --- 6. gRPC -----------------------------------------------------------------------------------

class Grpc(EnvCase):
    def channel(self, authority=None):
        import grpc
        opts = [("grpc.enable_retries", 0)]
        if authority:
            opts.append(("grpc.default_authority", authority))
        return grpc.insecure_channel(f"127.0.0.1:{self.env.port}", options=opts)

    def method(self, ch, kind, name):
        ident = (lambda b: b)
        return getattr(ch, kind)("/skiff.test.Echo/" + name, request_serializer=ident,
                                 response_deserializer=ident)

    def test_unary(self):
        with self.channel() as ch:
            resp, call = self.method(ch, "unary_unary", "Unary").with_call(b"hello", timeout=10)
        self.assertEqual(resp, b"hello")
        self.assertEqual(dict(call.initial_metadata()).get("x-backend"), "g")
        self.assertEqual(self.env.grpc.calls[-1][0], "Unary")

    def test_server_streaming(self):
        with self.channel() as ch:
            got = list(self.method(ch, "unary_stream", "ServerStream")(b"m", timeout=10))
        self.assertEqual(got, [b"m:%d" % i for i in range(10)])

    def test_client_streaming(self):
        msgs = [b"%03d" % i for i in range(100)]
        with self.channel() as ch:
            resp = self.method(ch, "stream_unary", "ClientStream")(iter(msgs), timeout=10)
        self.assertEqual(resp, b"".join(msgs))

    def test_bidirectional_100_messages(self):
        msgs = [os.urandom(64) + b"%d" % i for i in range(100)]
        with self.channel() as ch:
            got = list(self.method(ch, "stream_stream", "BidiStream")(iter(msgs), timeout=20))
        self.assertEqual(got, msgs)

    def test_status_and_message_passed_through(self):
        import grpc
        for code, msg in (("UNAVAILABLE", "backend says unavailable"),
                          ("PERMISSION_DENIED", "custom message: no")):
            with self.channel() as ch:
                with self.assertRaises(grpc.RpcError) as cm:
                    self.method(ch, "unary_unary", "Fail")(f"{code}:{msg}".encode(), timeout=10)
            e = cm.exception
            self.assertEqual(e.code(), grpc.StatusCode[code])
            self.assertEqual(e.details(), msg)
            self.assertEqual(dict(e.trailing_metadata()).get("x-fail"), "yes")

    def test_no_endpoints_is_unavailable_for_grpc(self):
        import grpc
        with self.channel(authority="grpc-empty.test") as ch:
            with self.assertRaises(grpc.RpcError) as cm:
                self.method(ch, "unary_unary", "Unary")(b"x", timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
        # Envoy's local reply to a gRPC caller: HTTP 200, grpc-status 14, the text as message
        self.assertEqual(cm.exception.details(), "no healthy upstream")


# --- 7. WebSocket ------------------------------------------------------------------------------

class WebSocket(EnvCase):
    def test_upgrade_and_echo_10_frames(self):
        import base64
        import hashlib
        key = base64.b64encode(os.urandom(16)).decode()
        with socket.create_connection(("127.0.0.1", self.env.port), timeout=5) as so:
            so.sendall((f"GET /ws/chat HTTP/1.1\r\nHost: ws.local\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                        f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = so.recv(4096)
                self.assertTrue(chunk, "closed during the handshake: %r" % buf)
                buf += chunk
            head, buf = buf.split(b"\r\n\r\n", 1)
            self.assertEqual(raw_status(head), 101, head)
            want = base64.b64encode(hashlib.sha1(
                key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            hs = {}
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                hs[k.strip().lower()] = v.strip()
            self.assertEqual(hs.get(b"sec-websocket-accept"), want)
            self.assertEqual(hs.get(b"upgrade", b"").lower(), b"websocket")
            for i in range(10):
                payload = b"frame %d " % i + os.urandom(i * 50)
                so.sendall(ws_frame(2, payload, mask=True))
                for _ in range(1000):
                    f = ws_parse(buf)
                    if f:
                        break
                    chunk = so.recv(65536)
                    self.assertTrue(chunk, "closed mid-stream")
                    buf += chunk
                op, got, used = f
                buf = buf[used:]
                self.assertEqual((op, got), (2, payload))
            so.sendall(ws_frame(8, b"\x03\xe8", mask=True))
        req = self.only("a")
        self.assertEqual(req["path"], "/ws/chat")


# --- 8. smuggling and malformed requests -----------------------------------------------------------

class Malformed(EnvCase):
    SMUGGLED = b"GET /a/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

    def rejected(self, data, want=None):
        out = raw(self.env.port, data)
        st = raw_status(out)
        if want:
            self.assertEqual(st, want, out[:300])
        else:
            self.assertTrue(400 <= st < 500, out[:300])
        time.sleep(0.2)
        self.assertEqual(self.got("a"), [], "the backend received a request skiff must reject")
        self.assertEqual(self.env.b["a"].record.bytes, 0, "bytes of it reached the backend")
        return out

    def test_content_length_and_transfer_encoding(self):
        self.rejected(b"POST /a/s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + self.SMUGGLED)

    def test_transfer_encoding_then_content_length(self):
        self.rejected(b"POST /a/s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                      b"Content-Length: 40\r\n\r\n0\r\n\r\n" + self.SMUGGLED)

    def test_duplicate_content_length(self):
        self.rejected(b"POST /a/s HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                      b"Content-Length: 40\r\n\r\nabcd" + self.SMUGGLED)

    def test_obs_fold(self):
        self.rejected(b"GET /a/s HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n")

    def test_bare_lf(self):
        self.rejected(b"GET /a/s HTTP/1.1\nHost: x\nX-A: 1\n\n")

    def test_nul_in_header_value(self):
        self.rejected(b"GET /a/s HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n")

    def test_bad_chunk_size(self):
        self.rejected(b"POST /a/s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"zz\r\nhello\r\n0\r\n\r\n")

    def test_header_too_large_431(self):
        big = b"X-Big: " + b"v" * (70 * 1024) + b"\r\n"  # Envoy's default limit is 60 KiB
        self.rejected(b"GET /a/s HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n", want=431)

    def test_too_many_headers_431(self):
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))  # Envoy's default: 100
        self.rejected(b"GET /a/s HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n", want=431)

    def test_a_good_request_still_passes(self):
        out = raw(self.env.port, b"GET /a/good HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertEqual(raw_status(out), 200, out[:300])
        self.assertEqual([r["path"] for r in self.got("a")], ["/a/good"])


# --- 10. stats ---------------------------------------------------------------------------------

class Stats(EnvCase):
    def test_request_counters_and_prometheus(self):
        s = self.env.skiff
        before = s.stat_int("http.ingress_http.downstream_rq_total")
        for i in range(7):
            r, _ = curl(self.env.url(f"/counted/{i}"), "--http1.1")
            self.assertEqual(r.status, 200)
        self.assertTrue(s.wait(lambda: s.stat_int("cluster.counted.upstream_rq_total") == 7),
                        s.stat("cluster.counted.upstream_rq_total"))
        self.assertGreaterEqual(s.stat_int("http.ingress_http.downstream_rq_total"), before + 7)
        self.assertGreaterEqual(s.stat_int("http.ingress_http.downstream_rq_2xx"), 7)
        self.assertEqual(s.stat_int("cluster.counted.upstream_rq_200"), 7)
        _, prom = s.get("/stats/prometheus")
        self.assertRegex(prom, r'(?m)^envoy_cluster_upstream_rq_total\{envoy_cluster_name="counted"\} 7$')
        m = re.search(r'(?m)^envoy_http_downstream_rq_total\{envoy_http_conn_manager_prefix='
                      r'"ingress_http"\} (\d+)$', prom)
        self.assertIsNotNone(m, "no envoy_http_downstream_rq_total for ingress_http")
        self.assertGreaterEqual(int(m.group(1)), before + 7)


# --- 9. configuration change under load -----------------------------------------------------------

class ChangeUnderLoad(unittest.TestCase):
    def test_route_and_cluster_switch_under_load(self):
        a, b = HttpBackend("a"), HttpBackend("b")
        tmp = tempfile.TemporaryDirectory()
        port = free_port()
        cfile, lfile, rfile = (os.path.join(tmp.name, n) for n in ("c.json", "l.json", "r.json"))

        def routes(cl):
            return {"resources": [{"@type": T_ROUTE, "name": "switch", "virtual_hosts": [
                {"name": "all", "domains": ["*"], "routes": [route({"prefix": "/"},
                                                                   route=to(cl))]}]}]}
        write_atomic(cfile, {"resources": [cluster("first", a.port)]})
        write_atomic(lfile, {"resources": [listener("switch", port, hcm("switch", rds="switch"))]})
        write_atomic(rfile, routes("first"))
        cp = ControlPlane(tmp.name, cfile, lfile, rfile)
        s = Skiff(tmp.name, ads_bootstrap(cp.sock))
        results = []
        errors = []
        started = threading.Event()

        def load():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            deadline = time.time() + 60
            for i in range(2000):
                if time.time() > deadline:
                    errors.append("deadline")
                    break
                try:
                    r = hc_get(conn, f"/load/{i}")
                    results.append((r.status, r.h("x-backend")))
                except (OSError, http.client.HTTPException) as e:
                    errors.append(f"{i}: {e!r}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                if i == 400:
                    started.set()
                time.sleep(0.002)
            conn.close()
            started.set()

        try:
            self.assertTrue(wait_serving(port, "/warm"), "not serving")
            t = threading.Thread(target=load, daemon=True)
            t.start()
            self.assertTrue(started.wait(30))
            # a new cluster first (as istiod orders CDS before RDS), then the route to it
            write_atomic(cfile, {"resources": [cluster("first", a.port),
                                               cluster("second", b.port)]})
            self.assertTrue(s.wait(lambda: "second" in s.active_clusters(), timeout=10))
            write_atomic(rfile, routes("second"))
            t.join(90)
            self.assertFalse(t.is_alive())
            self.assertEqual(errors, [])
            self.assertEqual(len(results), 2000)
            self.assertEqual([x for x in results if x[0] != 200], [])
            self.assertEqual(results[0][1], "a")
            # the switch took effect during the run, and stayed
            first_b = next((i for i, x in enumerate(results) if x[1] == "b"), None)
            self.assertIsNotNone(first_b, "no request reached the new cluster")
            self.assertLess(first_b, 1900, "the change took too long to apply")
            self.assertEqual({x[1] for x in results[first_b:]}, {"b"})
            self.assertEqual(cp.nacks(), [])
        finally:
            rc = s.stop()
            cp.stop()
            a.stop()
            b.stop()
            tmp.cleanup()
        self.assertEqual(rc, 0)


# --- 11. Istio's static listeners ----------------------------------------------------------------

class IstioStaticListeners(unittest.TestCase):
    """Istio's bootstrap golden: 15090 serves /stats/prometheus through the prometheus_stats
    cluster (the admin API), 15021 /healthz/ready through the agent cluster (pilot-agent; here
    a backend standing in for it). The golden's ports are remapped to free ones."""

    def test_prometheus_15090_and_healthz_15021(self):
        agent = HttpBackend("pilot-agent")
        tmp = tempfile.TemporaryDirectory()
        admin_port, p15090, p15021 = free_port(), free_port(), free_port()
        boot = json.load(open(os.path.join(SHARED, "istio", "04-bootstrap", "default_golden.json")))
        res = os.path.join(tmp.name, "r.json")
        write_atomic(res, {"resources": [cluster("some-cluster", agent.port)]})
        cp = ControlPlane(tmp.name, res)
        boot["admin"]["address"]["socket_address"]["port_value"] = admin_port
        for c in boot["static_resources"]["clusters"]:
            ep = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            if c["name"] in ("xds-grpc", "sds-grpc"):
                ep["address"] = {"pipe": {"path": cp.sock}}
            elif c["name"] == "prometheus_stats":
                ep["address"]["socket_address"]["port_value"] = admin_port
            elif c["name"] == "agent":
                ep["address"]["socket_address"]["port_value"] = agent.port
        for l in boot["static_resources"]["listeners"]:
            sa = l["address"]["socket_address"]
            sa["address"] = "127.0.0.1"
            sa["port_value"] = {15090: p15090, 15021: p15021}[sa["port_value"]]
        s = Skiff(tmp.name, boot, extra_args=["--allow-unknown-static-fields"])
        try:
            self.assertTrue(s.wait(lambda: s.get("/ready")[0] == 200, timeout=20),
                            s.get("/ready"))
            self.assertTrue(wait_serving(p15021, "/healthz/ready"))
            r, _ = curl(f"http://127.0.0.1:{p15021}/healthz/ready", "--http1.1")
            self.assertEqual((r.status, r.h("x-backend")), (200, "pilot-agent"), r)
            self.assertEqual(agent.requests[-1]["path"], "/healthz/ready")
            r, _ = curl(f"http://127.0.0.1:{p15090}/stats/prometheus", "--http1.1")
            self.assertEqual(r.status, 200, r)
            self.assertRegex(r.body.decode(), r"(?m)^envoy_server_live\{?.*\}? 1$")
            # the same text as the admin API's own
            self.assertIn("# TYPE envoy_server_live gauge", r.body.decode())
            # a path outside the route: 404
            r, _ = curl(f"http://127.0.0.1:{p15090}/config_dump", "--http1.1")
            self.assertEqual(r.status, 404)
            self.assertTrue(s.wait(lambda: s.stat_int("http.stats.downstream_rq_total") >= 2))
            self.assertTrue(s.stat_int("http.agent.downstream_rq_total") >= 1)
        finally:
            rc = s.stop()
            cp.stop()
            agent.stop()
            tmp.cleanup()
        self.assertEqual(rc, 0)


# --- 12. a real Istio sidecar dump ---------------------------------------------------------------

DUMP01 = os.path.join(SHARED, "istio", "01-ossm-sidecar-config-dump",
                      "hello-openshift-sidecar-config_dump.json")


def dump_to_local(dump, listeners, endpoints_for):
    """A real sidecar /config_dump made to run on loopback: every dynamic cluster, route and
    secret as it is; the listeners named in `listeners` ({name: new port}) moved to
    127.0.0.1:<port> and bound (bind_to_port dropped; their filter chains, listener filters
    and RDS routes kept), the other listeners left out; and for each EDS cluster a
    ClusterLoadAssignment, pointing at 127.0.0.1:<endpoints_for[name]> or empty.
    Returns {"resources": [...]} for tools/xds-files."""
    out = []
    for cfg in dump["configs"]:
        for e in cfg.get("dynamic_active_clusters", []):
            c = e["cluster"]
            out.append(c)
            if c.get("type") == "EDS":
                name = c.get("eds_cluster_config", {}).get("service_name") or c["name"]
                cla = {"@type": T_CLA, "cluster_name": name}
                if name in endpoints_for:
                    cla.update(endpoints(name, endpoints_for[name]))
                out.append(cla)
        for e in cfg.get("dynamic_listeners", []):
            l = e.get("active_state", {}).get("listener")
            if l and l["name"] in listeners:
                l = json.loads(json.dumps(l))
                l["address"] = {"socket_address": {"address": "127.0.0.1",
                                                   "port_value": listeners[l["name"]]}}
                l.pop("bind_to_port", None)
                out.append(l)
        out += [e["route_config"] for e in cfg.get("dynamic_route_configs", [])]
        out += [e["secret"] for e in cfg.get("dynamic_active_secrets", [])]
    return {"resources": out}


class IstioDump(unittest.TestCase):
    """Done when: skiff runs a real sidecar's outbound listeners. 0.0.0.0_80 (route "80": the
    VirtualService's exact "/" on hello-openshift.vanilla-playground.svc.cluster.local, setting
    x-internal-mesh-route, → outbound|8080||hello-openshift…, use_downstream_protocol_config)
    over HTTP/1.1 and h2c, and 0.0.0.0_15010 (route "15010": istiod-basic… →
    outbound|15010||istiod-basic…, explicit HTTP/2) over gRPC. Both keep their listener filters
    (tls_inspector, http_inspector) and their raw_buffer + http/1.1,h2c filter chain match."""

    def test_sidecar_dump_routes_to_local_backends(self):
        import grpc
        hello = HttpBackend("hello-openshift")
        g = GrpcBackend("istiod")
        tmp = tempfile.TemporaryDirectory()
        p80, p15010 = free_port(), free_port()
        dump = json.load(open(DUMP01))
        hello_c = "outbound|8080||hello-openshift.vanilla-playground.svc.cluster.local"
        istiod_c = "outbound|15010||istiod-basic.istio-system.svc.cluster.local"
        res = dump_to_local(dump, {"0.0.0.0_80": p80, "0.0.0.0_15010": p15010},
                            {hello_c: hello.port, istiod_c: g.port})
        path = os.path.join(tmp.name, "istio.json")
        write_atomic(path, res)
        cp = ControlPlane(tmp.name, path)
        s = Skiff(tmp.name, ads_bootstrap(cp.sock))
        host = "hello-openshift.vanilla-playground.svc.cluster.local"
        try:
            self.assertTrue(s.wait(lambda: s.get("/ready")[0] == 200, timeout=30),
                            s.get("/ready"))
            self.assertEqual(cp.nacks(), [])
            self.assertTrue(wait_serving(p80, "/", host=host), "0.0.0.0_80 not serving")
            # the VirtualService's route: exact "/" with a request header set
            r, _ = curl(f"http://127.0.0.1:{p80}/", "--http1.1", "-H", "Host: " + host)
            self.assertEqual((r.status, r.h("x-backend")), (200, "hello-openshift"), r)
            req = hello.requests[-1]
            self.assertEqual((req["proto"], req["path"]), ("http/1.1", "/"))
            hm = {k.lower(): v for k, v in req["headers"]}
            self.assertEqual(hm.get("host"), host)
            self.assertEqual(hm.get("x-internal-mesh-route"), "applied")
            # the virtual host's include_request_attempt_count
            self.assertEqual(hm.get("x-envoy-attempt-count"), "1")
            r, _ = curl(f"http://127.0.0.1:{p80}/", "--http2-prior-knowledge",
                        "-H", "Host: " + host)
            self.assertEqual((r.status, r.h("x-backend")), (200, "hello-openshift"), r)
            req = hello.requests[-1]
            # use_downstream_protocol_config: h2c in, HTTP/2 out
            self.assertEqual((req["proto"], req["path"]), ("h2", "/"))
            self.assertIn([":authority", host], req["headers"])
            # another path on that virtual host: no route, 404, nothing reaches the backend
            n = len(hello.requests)
            r, _ = curl(f"http://127.0.0.1:{p80}/other", "--http1.1", "-H", "Host: " + host)
            self.assertEqual(r.status, 404, r)
            self.assertEqual(len(hello.requests), n)
            # gRPC to istiod's service port through its explicit-HTTP/2 cluster
            ident = (lambda b: b)
            with grpc.insecure_channel(f"127.0.0.1:{p15010}", options=[
                    ("grpc.default_authority", "istiod-basic.istio-system.svc.cluster.local")]) as ch:
                resp = ch.unary_unary("/skiff.test.Echo/Unary", request_serializer=ident,
                                      response_deserializer=ident)(b"through the mesh", timeout=10)
                self.assertEqual(resp, b"through the mesh")
                got = list(ch.stream_stream("/skiff.test.Echo/BidiStream",
                                            request_serializer=ident,
                                            response_deserializer=ident)(
                    iter([b"%d" % i for i in range(20)]), timeout=10))
                self.assertEqual(got, [b"%d" % i for i in range(20)])
            self.assertEqual([c[0] for c in g.calls], ["Unary", "BidiStream"])
        finally:
            rc = s.stop()
            cp.stop()
            hello.stop()
            g.stop()
            tmp.cleanup()
        self.assertEqual(rc, 0)


class OutOfDescriptors(unittest.TestCase):
    """skiff at its RLIMIT_NOFILE (lowered with prlimit to a few above what it holds idle):
    connections it has no descriptor for are accepted with a spare one and closed at once,
    counted in listener.<address>.downstream_global_cx_overflow, with one warning in the log;
    the worker does not spin on the listening socket that stays readable; once descriptors
    are free again requests are served."""

    def test_connections_past_the_limit_are_closed_and_service_recovers(self):
        import resource
        backend = HttpBackend("fd")
        port = free_port()
        with tempfile.TemporaryDirectory() as tmp:
            routes = {"name": "fd", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                route({"prefix": "/"}, route=to("fd"))]}]}
            cp, skiff = start_proxy(tmp, {"resources": [
                cluster("fd", backend.port), listener("fd", port, hcm("fd", route_config=routes))]})
            try:
                self.assertTrue(wait_serving(port, "/ready"))
                pid = skiff.proc.pid
                held = len(os.listdir(f"/proc/{pid}/fd"))
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (held + 16, held + 16))
                ticks = lambda: sum(int(x) for x in open(f"/proc/{pid}/stat").read().split()[13:15])
                socks = [socket.create_connection(("127.0.0.1", port), timeout=2)
                         for _ in range(60)]
                t0 = ticks()
                time.sleep(1.0)
                busy = (ticks() - t0) / os.sysconf("SC_CLK_TCK")
                closed = 0
                for so in socks:
                    so.settimeout(0.2)
                    try:
                        closed += so.recv(1) == b""
                    except socket.timeout:
                        pass
                    except ConnectionResetError:
                        closed += 1
                self.assertGreaterEqual(closed, 40, "connections past the limit are not closed")
                self.assertLess(busy, 0.3, f"{busy:.2f} s of CPU in 1 s: spinning on accept")
                log = open(skiff.logpath).read()
                self.assertEqual(log.count("new connections are closed at once"), 1, log[-2000:])
                for so in socks:
                    so.close()
                time.sleep(0.3)
                # (the admin API too needs a descriptor for its connection)
                self.assertGreaterEqual(
                    skiff.stat_int(f"listener.127.0.0.1_{port}.downstream_global_cx_overflow"), 40)
                r, _ = curl(f"http://127.0.0.1:{port}/after", "--http1.1")
                self.assertEqual(r.status, 200, r)
            finally:
                self.assertEqual(stop_proxy(skiff, cp), 0)
                backend.stop()


class GlobalConnectionLimit(unittest.TestCase):
    """The bootstrap's overload_manager resource monitor
    envoy.resource_monitors.global_downstream_max_connections (Istio's bootstrap sets one, and
    ignore_global_conn_limit on its 15021 and 15090 listeners), here 4: a connection past it,
    on any counted listener, is closed at accept and counted in that listener's
    downstream_global_cx_overflow; a listener with ignore_global_conn_limit still takes
    connections; each ended connection gives its place back, however it ended (a served HTTP
    connection, a tcp_proxy with no upstream, one closed for no filter chain)."""

    LIMIT = 4

    def test_the_limit_holds_and_every_place_comes_back(self):
        backend = HttpBackend("gl")
        ports = {n: free_port() for n in ("http", "tcp", "nochain", "free")}
        routes = {"name": "gl", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            route({"prefix": "/"}, route=to("gl"))]}]}
        tcp = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "gl_tcp", "cluster": "nowhere"}}
        nochain = listener("nochain", ports["nochain"], hcm("gl_nc", route_config=routes))
        nochain["filter_chains"][0]["filter_chain_match"] = {"destination_port": 1}
        free = listener("free", ports["free"], hcm("gl_free", route_config=routes))
        free["ignore_global_conn_limit"] = True
        resources = [cluster("gl", backend.port), cluster("nowhere", free_port()),
                     listener("http", ports["http"], hcm("gl", route_config=routes)),
                     listener("tcp", ports["tcp"], filters=[tcp]), nochain, free]
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "resources.json")
            write_atomic(path, {"resources": resources})
            cp = ControlPlane(tmp, path)
            boot = ads_bootstrap(cp.sock)
            boot["overload_manager"] = {"resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                             "downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": self.LIMIT}}]}
            skiff = None
            try:
                skiff = Skiff(tmp, boot)
                self.assertTrue(wait_serving(ports["free"], "/ready"))
                # places taken and given back: 3 rounds of every way a connection ends
                for _ in range(3):
                    for name in ("http", "tcp", "nochain"):
                        for _ in range(self.LIMIT + 1):
                            raw(ports[name], b"GET /x HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n", timeout=2)
                time.sleep(0.3)
                socks, served = self.hold(ports["http"], self.LIMIT + 2)
                self.assertEqual(served, self.LIMIT)
                r, _ = curl(f"http://127.0.0.1:{ports['free']}/free", "--http1.1")
                self.assertEqual(r.status, 200, r)
                for so in socks:
                    so.close()
                time.sleep(0.3)
                socks, served = self.hold(ports["http"], self.LIMIT)
                self.assertEqual(served, self.LIMIT)
                for so in socks:
                    so.close()
                self.assertGreaterEqual(skiff.stat_int(
                    f"listener.127.0.0.1_{ports['http']}.downstream_global_cx_overflow"), 2)
            finally:
                rc = skiff.stop() if skiff else 0
                cp.stop()
                backend.stop()
            self.assertEqual(rc, 0)

    def hold(self, port, n):
        """Opens n keep-alive connections, one request on each in turn: (the sockets, how
        many were answered 200; the others were closed)."""
        socks, served = [], 0
        for _ in range(n):
            so = socket.create_connection(("127.0.0.1", port), timeout=3)
            socks.append(so)
            got = b""
            try:
                so.sendall(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
                while not got.endswith(b"}"):
                    chunk = so.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            except (ConnectionResetError, BrokenPipeError):
                pass
            served += raw_status(got) == 200
        return socks, served


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    bad = result.failures + result.errors
    failed = sum(1 for t, _ in bad if isinstance(t, unittest.TestCase))
    print(f"{result.testsRun - failed} passed, {len(bad)} failed")
    sys.exit(1 if failed else 0)
