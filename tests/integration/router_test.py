#!/usr/bin/python3
"""The router's resilience end to end: skiff configured by tools/xds-files over ADS, backends
on 127.0.0.1 that fail, stall and count what reaches them, and real clients (http.client for
HTTP/1.1, python3-grpcio for gRPC).

Covered: Istio's default retry policy (connect-failure, previous_hosts) turning a dead host into
zero client-visible failures; a 5xx retry with num_retries 2 against a backend that fails twice
(3 attempts, x-envoy-attempt-count 1, 2, 3 upstream, and in the response); retries exhausted
(the last 503 goes through, URX in the access log); per-try timeouts (504 UT after 3 tries); a
POST body replayed intact; no retry once a response started; a trailers-only gRPC UNAVAILABLE
retried; the route timeout from grpc-timeout and max_grpc_timeout; x-envoy-retry-on and
x-envoy-max-retries from the (trusted) client, not forwarded; a reset before the response
retried; route idle_timeout and max_stream_duration; the max_retries and max_requests
breakers; a body past the 1 MiB buffer limit not retried (but delivered whole); a mirror that
gets the request with host "<host>-shadow" while the client's response does not wait for it,
cluster_header mirrors and a 0% runtime_fraction; a header hash policy on a RING_HASH cluster
(the same key always to one host, keys spread) and a cookie policy with a ttl (Set-Cookie,
then sticky); and the upstream_rq_retry* / per_try_timeout stats.

Run: SKIFF=build/agent/skiff SRCDIR=. python3 tests/integration/router_test.py"""
import http.server
import os
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (T_ROUTE, TYPE, cluster, free_port, hcm, listener, request,  # noqa: E402
                     route, start_proxy, stop_proxy, to, wait_started)

PREFIX = "outbound_0.0.0.0_router"


class Flaky:
    """An HTTP/1.1 backend that counts requests per path (query included) and, by query
    parameter, fails the first `fail` of them with `status` (503), or stalls them `hang` ms,
    or (`partial=1`) sends a head and part of the body and closes; `delay` ms before every
    answer. It records (path, headers, body) of each request and answers 200 with
    "<name> <n>" where n is the request's number for its path."""

    def __init__(self, name):
        self.name = name
        self.seen = []
        self.counts = {}
        self.lock = threading.Lock()
        self.slow_ms = 0  # a wait before every answer
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_one(self):
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else b""
                q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                with outer.lock:
                    k = outer.counts.get(self.path, 0) + 1
                    outer.counts[self.path] = k
                    outer.seen.append((self.path, {h.lower(): v for h, v in self.headers.items()},
                                       body))
                if outer.slow_ms:
                    time.sleep(outer.slow_ms / 1000)
                if "delay" in q:
                    time.sleep(int(q["delay"]) / 1000)
                failing = k <= int(q.get("fail", "0"))
                if failing and "hang" in q:
                    time.sleep(int(q["hang"]) / 1000)
                if failing and q.get("drop") == "1":
                    self.close_connection = True
                    return
                if failing and q.get("partial") == "1":
                    self.send_response(200)
                    self.send_header("content-length", "1000")
                    self.end_headers()
                    self.wfile.write(b"x" * 10)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                status = int(q.get("status", "503")) if failing else 200
                out = ("%s %d" % (outer.name, k)).encode()
                self.send_response(status)
                self.send_header("content-length", str(len(out)))
                self.send_header("x-backend", outer.name)
                self.end_headers()
                try:
                    self.wfile.write(out)
                except OSError:
                    pass

            do_GET = do_POST = do_PUT = handle_one

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.server.handle_error = lambda *a: None  # skiff resets abandoned attempts
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def requests(self, path):
        with self.lock:
            return [(h, b) for p, h, b in self.seen if p == path]

    def count(self, path):
        with self.lock:
            return self.counts.get(path, 0)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class FlakyGrpc:
    """skiff.test.Flaky/Call over python3-grpcio: the first `n` calls whose request is
    b"<key>:<n>" end UNAVAILABLE without any header (a trailers-only response), later ones
    echo the request."""

    def __init__(self):
        import grpc
        from concurrent import futures
        self.counts = {}
        self.lock = threading.Lock()
        ident = (lambda b: b)
        h = {"Call": grpc.unary_unary_rpc_method_handler(
            self.call, request_deserializer=ident, response_serializer=ident),
             "Late": grpc.unary_unary_rpc_method_handler(
            self.late, request_deserializer=ident, response_serializer=ident)}
        self.server = grpc.server(futures.ThreadPoolExecutor(8))
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("skiff.test.Flaky", h),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def call(self, req, context):
        import grpc
        key, _, n = req.decode().partition(":")
        with self.lock:
            k = self.counts.get(key, 0) + 1
            self.counts[key] = k
        if k <= int(n or "0"):
            context.abort(grpc.StatusCode.UNAVAILABLE, "not yet")
        return req

    def late(self, req, context):
        """UNAVAILABLE after the response headers: grpc-status only in the trailers."""
        import grpc
        with self.lock:
            self.counts[req] = self.counts.get(req, 0) + 1
        context.send_initial_metadata((("x-late", "1"),))
        context.abort(grpc.StatusCode.UNAVAILABLE, "late")

    def stop(self):
        self.server.stop(0).wait(5)


# Istio's default retry policy (networking/core/route/retry: DefaultPolicy).
ISTIO_RETRY = {
    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    "num_retries": 2,
    "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                              "typed_config": {"@type": TYPE + "envoy.extensions.retry.host."
                                               "previous_hosts.v3.PreviousHostsPredicate"}}],
    "host_selection_retry_max_attempts": "5",
    "retriable_status_codes": [503],
}


def resources(listen_port, b, dead_port, grpc_port):
    def r(prefix, cl, **action):
        return route({"prefix": prefix}, route=to(cl, **dict({"timeout": "5s"}, **action)))

    retry5 = {"retry_on": "5xx", "num_retries": 2,
              "retry_back_off": {"base_interval": "0.010s"}}
    routes = {
        "@type": T_ROUTE, "name": "router",
        "virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "include_request_attempt_count": True,
            "include_attempt_count_in_response": True,
            "routes": [
                r("/istio", "two", retry_policy=ISTIO_RETRY),
                r("/5xx", "flaky", retry_policy=retry5),
                r("/pertry", "flaky", retry_policy=dict(retry5, per_try_timeout="0.2s")),
                r("/noretry", "flaky"),
                r("/idletry", "flaky",
                      retry_policy=dict(retry5, per_try_idle_timeout="0.2s")),
                r("/skiff.test.Flaky/", "grpc",
                      retry_policy={"retry_on": "unavailable", "num_retries": 2}),
                r("/grpc-timeout", "flaky", max_grpc_timeout="0s"),
                r("/grpc-capped", "flaky", max_grpc_timeout="0.3s"),
                r("/mirror/", "flaky", request_mirror_policies=[
                    {"cluster": "shadow",
                     "runtime_fraction": {"default_value": {"numerator": 100}}}]),
                r("/tight", "tight", retry_policy=retry5),
                r("/idle", "flaky", idle_timeout="0.3s"),
                r("/duration", "flaky", max_stream_duration={"max_stream_duration": "0.3s"}),
                r("/mirror-header", "flaky", request_mirror_policies=[
                    {"cluster_header": "x-mirror-to"}]),
                r("/mirror-never", "flaky", request_mirror_policies=[
                    {"cluster": "shadow",
                     "runtime_fraction": {"default_value": {"numerator": 0}}}]),
                r("/cookie", "ring", hash_policy=[
                    {"cookie": {"name": "affinity", "ttl": "3600s", "path": "/"}}]),
                r("/hash", "ring", hash_policy=[{"header": {"header_name": "x-user"}}]),
                r("/", "flaky"),
            ]}]}
    manager = hcm(PREFIX, rds="router", rds_fetch_timeout="0s", websocket=False)
    return {"resources": [
        cluster("flaky", b["flaky"].port),
        cluster("two", dead_port, b["live"].port),
        cluster("shadow", b["shadow"].port),
        cluster("ring", b["r1"].port, b["r2"].port, b["r3"].port, lb_policy="RING_HASH"),
        cluster("grpc", grpc_port, h2=True),
        cluster("tight", b["tight"].port, circuit_breakers={"thresholds": [
            {"max_retries": 0, "max_requests": 1}]}),
        listener("router", listen_port, manager), routes]}


class Router(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        tmp = cls.tmp.name
        cls.b = {n: Flaky(n) for n in ("flaky", "live", "shadow", "r1", "r2", "r3", "tight")}
        cls.g = FlakyGrpc()
        cls.dead = free_port()  # nothing listens there
        cls.port = free_port()
        try:
            cls.cp, cls.skiff = start_proxy(
                tmp, resources(cls.port, cls.b, cls.dead, cls.g.port),
                cp_args={"sock_name": "xds.sock", "poll": None},
                boot_args={"pod": "t-1", "app": "t.default", "delta": False,
                           "grpc_clusters": ("xds-grpc",)}, level="debug")
        except Exception:
            cls.tearDownClass()
            raise

        def probe():
            try:
                return request(cls.port, "GET", "/ready-probe", timeout=2)[0] == 200
            except OSError:
                return False

        wait_started(probe, 15, cls.cp, cls.tearDownClass, "the listener never served /ready-probe")

    @classmethod
    def tearDownClass(cls):
        rc = stop_proxy(getattr(cls, "skiff", None), getattr(cls, "cp", None), 4000)
        cls.skiff = cls.cp = None
        for b in getattr(cls, "b", {}).values():
            b.stop()
        if getattr(cls, "g", None):
            cls.g.stop()
        if rc != 0:
            raise AssertionError("skiff exited with %d" % rc)

    def get(self, path, headers=None, **kw):
        return request(self.port, "GET", path, headers, **kw)

    def test_istio_default_connect_failure_to_other_host(self):
        # Round robin puts every other first try on the dead host: connect-failure retries it
        # on the live one (previous_hosts).
        for i in range(20):
            status, h, body = self.get("/istio/%d" % i)
            self.assertEqual(status, 200, body)
            self.assertEqual(h.get("x-backend"), "live")
        self.assertGreater(self.skiff.stat_int("cluster.two.upstream_rq_retry"), 0)
        self.assertEqual(self.b["live"].count("/istio/0") + self.b["live"].count("/istio/1"), 2)

    def test_5xx_retried_with_attempt_counts(self):
        before = self.skiff.stat_int("cluster.flaky.upstream_rq_retry_success")
        status, h, body = self.get("/5xx/a?fail=2")
        self.assertEqual(status, 200, body)
        self.assertEqual(body, b"flaky 3")
        self.assertEqual(self.b["flaky"].count("/5xx/a?fail=2"), 3)
        counts = [hd.get("x-envoy-attempt-count") for hd, _ in
                  self.b["flaky"].requests("/5xx/a?fail=2")]
        self.assertEqual(counts, ["1", "2", "3"])
        self.assertEqual(h.get("x-envoy-attempt-count"), "3")
        self.assertEqual(self.skiff.stat_int("cluster.flaky.upstream_rq_retry_success"), before + 1)

    def test_retries_exhausted_final_503_urx(self):
        status, h, body = self.get("/5xx/b?fail=10")
        self.assertEqual(status, 503)
        self.assertEqual(body, b"flaky 3")  # the last attempt's own response
        self.assertEqual(self.b["flaky"].count("/5xx/b?fail=10"), 3)
        time.sleep(0.2)
        lines = self.skiff.access_lines("/5xx/b?fail=10")
        self.assertTrue(lines and "URX" in lines[-1], lines)

    def test_not_retriable_status_passes(self):
        status, _, _ = self.get("/5xx/c?fail=1&status=404")
        self.assertEqual(status, 404)
        self.assertEqual(self.b["flaky"].count("/5xx/c?fail=1&status=404"), 1)

    def test_per_try_timeout(self):
        t0 = time.time()
        status, h, body = self.get("/pertry/a?fail=10&hang=1000")
        took = time.time() - t0
        self.assertEqual(status, 504, body)
        self.assertEqual(body, b"upstream request timeout")
        self.assertEqual(self.b["flaky"].count("/pertry/a?fail=10&hang=1000"), 3)
        self.assertLess(took, 1.5)
        time.sleep(0.2)
        lines = self.skiff.access_lines("/pertry/a?fail=10&hang=1000")
        self.assertTrue(lines and "UT" in lines[-1], lines)
        # a slow first try, a quick second
        status, _, body = self.get("/pertry/b?fail=1&hang=1000")
        self.assertEqual((status, body), (200, b"flaky 2"))

    def test_per_try_idle_timeout(self):
        before = self.skiff.stat_int("cluster.flaky.upstream_rq_per_try_idle_timeout")
        t0 = time.time()
        status, _, body = self.get("/idletry/a?fail=1&hang=1000")
        self.assertEqual((status, body), (200, b"flaky 2"))
        self.assertLess(time.time() - t0, 0.9)
        self.assertEqual(self.skiff.stat_int("cluster.flaky.upstream_rq_per_try_idle_timeout"),
                         before + 1)

    def test_post_body_replayed(self):
        payload = bytes(range(256)) * 200
        status, _, body = request(self.port, "POST", "/5xx/post?fail=2", body=payload,
                                  headers={"content-type": "application/octet-stream"})
        self.assertEqual((status, body), (200, b"flaky 3"))
        bodies = [b for _, b in self.b["flaky"].requests("/5xx/post?fail=2")]
        self.assertEqual(len(bodies), 3)
        for b in bodies:
            self.assertEqual(b, payload)

    def test_no_retry_after_response_started(self):
        with self.assertRaises((http.client.IncompleteRead, ConnectionError,
                                http.client.HTTPException)):
            self.get("/5xx/partial?fail=1&partial=1")
        time.sleep(0.2)
        self.assertEqual(self.b["flaky"].count("/5xx/partial?fail=1&partial=1"), 1)

    def test_retry_headers_from_trusted_client(self):
        # The listener is not an edge one: x-envoy-* from the client are honoured.
        status, _, body = self.get("/noretry/a?fail=3",
                                   {"x-envoy-retry-on": "5xx", "x-envoy-max-retries": "3"})
        self.assertEqual((status, body), (200, b"flaky 4"))
        seen = self.b["flaky"].requests("/noretry/a?fail=3")
        self.assertEqual(len(seen), 4)
        for hd, _ in seen:
            self.assertNotIn("x-envoy-retry-on", hd)
            self.assertNotIn("x-envoy-max-retries", hd)
        status, _, _ = self.get("/noretry/b?fail=1")
        self.assertEqual(status, 503)
        self.assertEqual(self.b["flaky"].count("/noretry/b?fail=1"), 1)
        # a per-try timeout from the client, with retries on reset
        t0 = time.time()
        status, _, body = self.get("/noretry/c?fail=1&hang=1500",
                                   {"x-envoy-retry-on": "reset",
                                    "x-envoy-upstream-rq-per-try-timeout-ms": "200"})
        self.assertEqual((status, body), (200, b"flaky 2"))
        self.assertLess(time.time() - t0, 1.2)
        for hd, _ in self.b["flaky"].requests("/noretry/c?fail=1&hang=1500"):
            self.assertNotIn("x-envoy-upstream-rq-per-try-timeout-ms", hd)
            self.assertEqual(hd.get("x-envoy-expected-rq-timeout-ms"), "200")

    def test_grpc_unavailable_retried(self):
        import grpc
        with grpc.insecure_channel("127.0.0.1:%d" % self.port) as ch:
            call = ch.unary_unary("/skiff.test.Flaky/Call", request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
            self.assertEqual(call(b"k1:2", timeout=5), b"k1:2")
            self.assertEqual(self.g.counts["k1"], 3)
            with self.assertRaises(grpc.RpcError) as e:
                call(b"k2:9", timeout=5)
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)
            self.assertEqual(self.g.counts["k2"], 3)
            # grpc-status in trailers after headers: not retried (Envoy reads the headers only)
            late = ch.unary_unary("/skiff.test.Flaky/Late", request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
            with self.assertRaises(grpc.RpcError) as e:
                late(b"late-1", timeout=5)
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)
            self.assertEqual(self.g.counts[b"late-1"], 1)

    def test_grpc_timeout(self):
        hdr = {"content-type": "application/grpc", "te": "trailers"}
        # max_grpc_timeout 0s: the grpc-timeout header is the route timeout, uncapped
        t0 = time.time()
        status, h, _ = request(self.port, "POST", "/grpc-timeout?delay=2000",
                               dict(hdr, **{"grpc-timeout": "300m"}), body=b"")
        took = time.time() - t0
        self.assertLess(took, 1.5)
        self.assertIn(h.get("grpc-status"), ("4", "14"))
        # max_grpc_timeout 0.3s caps a longer grpc-timeout
        t0 = time.time()
        status, h, _ = request(self.port, "POST", "/grpc-capped?delay=2000",
                               dict(hdr, **{"grpc-timeout": "10S"}), body=b"")
        self.assertLess(time.time() - t0, 1.5)
        self.assertIn(h.get("grpc-status"), ("4", "14"))
        seen = self.b["flaky"].requests("/grpc-capped?delay=2000")
        self.assertEqual(seen[0][0].get("grpc-timeout"), "300m")

    def test_mirror(self):
        # The shadow is slow; the client's answer does not wait for it.
        t0 = time.time()
        status, h, body = request(self.port, "POST", "/mirror/a?delay=0",
                                  {"host": "svc.example", "x-shadow-test": "1"},
                                  body=b"mirrored body")
        self.assertEqual((status, h.get("x-backend")), (200, "flaky"))
        self.assertLess(time.time() - t0, 0.8)
        # the shadow backend gets it with the -shadow host
        deadline = time.time() + 5
        while time.time() < deadline and not self.b["shadow"].requests("/mirror/a?delay=0"):
            time.sleep(0.05)
        seen = self.b["shadow"].requests("/mirror/a?delay=0")
        self.assertEqual(len(seen), 1)
        self.assertEqual(seen[0][0].get("host"), "svc.example-shadow")
        self.assertEqual(seen[0][1], b"mirrored body")
        # a slow shadow: the main response still comes at once
        t0 = time.time()
        self.b["shadow"].slow_ms = 1500
        try:
            status, _, _ = self.get("/mirror/b", {"host": "svc.example"})
            self.assertEqual(status, 200)
            self.assertLess(time.time() - t0, 0.8)
        finally:
            self.b["shadow"].slow_ms = 0

    def test_reset_retried(self):
        # the backend closes without answering: a reset before the response, retried on 5xx
        status, _, body = self.get("/5xx/drop?fail=1&drop=1")
        self.assertEqual((status, body), (200, b"flaky 2"))
        status, _, body = self.get("/noretry/drop?fail=1&drop=1")
        self.assertEqual(status, 503)
        self.assertIn(b"reset reason", body)

    def test_idle_and_duration_timeouts(self):
        for path in ("/idle?delay=2000", "/duration?delay=2000"):
            t0 = time.time()
            status, _, _ = self.get(path)
            self.assertEqual(status, 504, path)
            self.assertLess(time.time() - t0, 1.5, path)
        status, _, _ = self.get("/idle?delay=100")
        self.assertEqual(status, 200)

    def test_breakers(self):
        # max_retries 0: the retry is refused, the 503 goes through, counted as an overflow
        before = self.skiff.stat_int("cluster.tight.upstream_rq_retry_overflow")
        status, _, body = self.get("/tight/a?fail=1")
        self.assertEqual((status, body), (503, b"tight 1"))
        self.assertEqual(self.b["tight"].count("/tight/a?fail=1"), 1)
        self.assertEqual(self.skiff.stat_int("cluster.tight.upstream_rq_retry_overflow"),
                         before + 1)
        # max_requests 1: a second request while one is in flight is 503 UO
        slow = threading.Thread(target=self.get, args=("/tight/slow?delay=800",))
        slow.start()
        deadline = time.time() + 3
        while time.time() < deadline and self.b["tight"].count("/tight/slow?delay=800") == 0:
            time.sleep(0.02)
        status, h, _ = self.get("/tight/b")
        slow.join()
        self.assertEqual(status, 503)
        self.assertEqual(h.get("x-envoy-overloaded"), "true")
        self.assertEqual(self.b["tight"].count("/tight/b"), 0)
        # released: the next one goes
        status, _, _ = self.get("/tight/c")
        self.assertEqual(status, 200)

    def test_mirror_cluster_header_and_fraction(self):
        status, _, _ = self.get("/mirror-header/a", {"x-mirror-to": "shadow"})
        self.assertEqual(status, 200)
        deadline = time.time() + 5
        while time.time() < deadline and not self.b["shadow"].requests("/mirror-header/a"):
            time.sleep(0.05)
        self.assertEqual(len(self.b["shadow"].requests("/mirror-header/a")), 1)
        # an unknown cluster in the header: no shadow, the request is unharmed
        status, _, _ = self.get("/mirror-header/b", {"x-mirror-to": "nope"})
        self.assertEqual(status, 200)
        for i in range(20):
            self.assertEqual(self.get("/mirror-never/%d" % i)[0], 200)
        time.sleep(0.3)
        self.assertEqual(len(self.b["shadow"].requests("/mirror-header/b")), 0)
        self.assertFalse([p for p, _, _ in self.b["shadow"].seen if p.startswith("/mirror-never")])

    def test_large_body_not_retried(self):
        payload = b"z" * (1536 * 1024)  # past the 1 MiB buffer limit
        status, _, _ = request(self.port, "POST", "/5xx/big?fail=1", body=payload)
        self.assertEqual(status, 503)
        seen = self.b["flaky"].requests("/5xx/big?fail=1")
        self.assertEqual(len(seen), 1)
        self.assertEqual(seen[0][1], payload)

    def test_retry_stats(self):
        st = self.skiff.stat_int
        rq_retry, limit = st("cluster.flaky.upstream_rq_retry"), \
            st("cluster.flaky.upstream_rq_retry_limit_exceeded")
        per_try = st("cluster.flaky.upstream_rq_per_try_timeout")
        self.assertEqual(self.get("/5xx/stats?fail=10")[0], 503)
        self.assertEqual(st("cluster.flaky.upstream_rq_retry"), rq_retry + 2)
        self.assertEqual(st("cluster.flaky.upstream_rq_retry_limit_exceeded"), limit + 1)
        self.assertEqual(self.get("/pertry/stats?fail=1&hang=600")[0], 200)
        self.assertEqual(st("cluster.flaky.upstream_rq_per_try_timeout"), per_try + 1)

    def test_cookie_hash_policy(self):
        status, h, _ = self.get("/cookie")
        self.assertEqual(status, 200)
        cookie = h.get("set-cookie", "")
        self.assertRegex(cookie, r'^affinity="[0-9a-f]{16}"; Max-Age=3600; Path=/; HttpOnly$')
        value = cookie.split('"')[1]
        hosts = set()
        for i in range(20):
            _, h2, _ = self.get("/cookie", {"cookie": "affinity=" + value})
            self.assertNotIn("set-cookie", h2)
            hosts.add(h2.get("x-backend"))
        self.assertEqual(len(hosts), 1)

    def test_hash_policy_sticky_and_spread(self):
        hosts = {}
        for i in range(100):
            _, h, _ = self.get("/hash", {"x-user": "alice"})
            hosts[h.get("x-backend")] = hosts.get(h.get("x-backend"), 0) + 1
        self.assertEqual(len(hosts), 1, hosts)
        spread = set()
        for i in range(40):
            _, h, _ = self.get("/hash", {"x-user": "user-%d" % i})
            spread.add(h.get("x-backend"))
        self.assertGreaterEqual(len(spread), 2, spread)


if __name__ == "__main__":
    unittest.main(verbosity=2)
