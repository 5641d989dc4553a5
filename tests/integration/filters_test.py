#!/usr/bin/python3
"""The fault and CORS HTTP filters end to end: skiff configured by tools/xds-files over ADS
(a listener whose connection manager runs envoy.filters.http.fault, envoy.filters.http.cors and
the router, with empty filter configs as Istio sends them, and the faults and CORS policies in
the routes' typed_per_filter_config), an HTTP backend on 127.0.0.1 that records what reaches
it, and real clients: http.client for HTTP/1.1 and python3-grpcio for gRPC.

Covered: abort 100% (the configured status; the backend gets nothing), abort 50% over 400
requests, a fixed 200 ms delay, a route without a per-route fault is untouched by the empty
listener-level one, a gRPC abort's grpc-status reaches a gRPC client, an HTTP abort to a gRPC
client maps to UNAVAILABLE, CORS preflights (allowed, forwarded when not matching) and simple
requests, and the filters' stats."""
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (T_ROUTE, TYPE, Client, SimpleBackend, cluster, free_port,  # noqa: E402
                     hcm, http_filter, listener, start_proxy, stop_proxy, wait_started)

FAULT = TYPE + "envoy.extensions.filters.http.fault.v3.HTTPFault"
CORS = TYPE + "envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY = TYPE + "envoy.extensions.filters.http.cors.v3.CorsPolicy"
PREFIX = "outbound_0.0.0.0_filters"
CP_ARGS = {"sock_name": "xds.sock", "poll": None}
BOOT_ARGS = {"pod": "t-1", "app": "t.default", "delta": False, "grpc_clusters": ("xds-grpc",)}


def million(pct):
    """Istio's translatePercentToFractionalPercent: percent * 10000 of a MILLION."""
    return {"numerator": int(pct * 10000), "denominator": "MILLION"}


class Backend(SimpleBackend):
    """An HTTP/1.1 server on 127.0.0.1 that answers every request 200 and records it."""

    def __init__(self):
        self.seen = []
        self.body_sizes = []
        self.lock = threading.Lock()
        super().__init__(self.respond)

    def respond(self, req):
        with self.lock:
            self.seen.append((req.command, req.path))
            self.body_sizes.append(len(req.body))
        return 200, b"from backend", [("access-control-allow-origin", "*")]

    def paths(self):
        return [p for _, p in list(self.seen)]


def resources(backend_port, listen_port):
    """Listener, route configuration and cluster, in the shapes istiod generates."""
    manager = hcm(PREFIX, rds="filters", rds_fetch_timeout="0s", websocket=False, filters=[
        http_filter("envoy.filters.http.fault", FAULT),
        http_filter("envoy.filters.http.cors", CORS)])

    def route(name, prefix, per_filter=None):
        r = {"name": name, "match": {"prefix": prefix, "case_sensitive": True},
             "route": {"cluster": "backend", "timeout": "0s"}}
        if per_filter:
            r["typed_per_filter_config"] = per_filter
        return r

    def fault(**kw):
        return {"envoy.filters.http.fault": dict({"@type": FAULT}, **kw)}

    cors_policy = {"envoy.filters.http.cors": {
        "@type": CORS_POLICY,
        "allow_origin_string_match": [{"exact": "https://app.example.com"},
                                      {"safe_regex": {"regex": "https://[a-z]+\\.corp\\.io"}}],
        "allow_methods": "GET,POST,PUT", "allow_headers": "x-custom,content-type",
        "expose_headers": "x-reply", "max_age": "86400", "allow_credentials": True,
        "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        "forward_not_matching_preflights": True}}
    routes = {
        "@type": T_ROUTE, "name": "filters",
        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            # VirtualService fault.abort{httpStatus: 503, percentage: 100}
            route("abort", "/abort", fault(abort={"http_status": 503,
                                                  "percentage": million(100)})),
            route("teapot", "/teapot", fault(abort={"http_status": 418,
                                                    "percentage": million(100)})),
            route("half", "/half", fault(abort={"http_status": 503,
                                                "percentage": million(50)})),
            # fault.delay{fixedDelay: 200ms, percentage: 100}
            route("delay", "/delay", fault(delay={"fixed_delay": "0.200s",
                                                  "percentage": million(100)})),
            # both: the abort comes after the delay
            route("delay-abort", "/both", fault(
                delay={"fixed_delay": "0.200s", "percentage": million(100)},
                abort={"http_status": 502, "percentage": million(100)})),
            # fault.abort{grpcStatus: RESOURCE_EXHAUSTED}
            route("grpc-abort", "/test.Echo/", fault(abort={"grpc_status": 8,
                                                            "percentage": million(100)})),
            route("grpc-http-abort", "/test.Http/", fault(abort={"http_status": 503,
                                                                "percentage": million(100)})),
            route("cors", "/cors", cors_policy),
            route("ok", "/"),
        ]}]}
    return {"resources": [cluster("backend", backend_port),
                          listener("filters", listen_port, manager), routes]}


class Filters(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        tmp = cls.tmp.name
        cls.backend = Backend()
        cls.port = free_port()
        try:
            cls.cp, cls.skiff = start_proxy(tmp, resources(cls.backend.port, cls.port),
                                            cp_args=CP_ARGS, boot_args=BOOT_ARGS, level="debug")
        except Exception:
            cls.tearDownClass()
            raise
        cls.client = Client(cls.port)

        # every resource ACKed, then the listener serves the plain route
        def probe():
            try:
                status, _, body = cls.client.request("GET", "/ready-probe")
                return status == 200 and body == b"from backend"
            except OSError:
                cls.client.close()
                return False

        wait_started(probe, 15, cls.cp, cls.tearDownClass, "the listener never served /ready-probe")

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "client", None):
            cls.client.close()
        rc = stop_proxy(getattr(cls, "skiff", None), getattr(cls, "cp", None))
        cls.skiff = cls.cp = None
        cls.backend.stop()
        cls.tmp.cleanup()
        assert rc == 0, "skiff exited with %d" % rc

    def stat(self, name):
        return self.skiff.stat_int(f"http.{PREFIX}.{name}", None)

    # ---- fault ----

    def test_abort_all(self):
        before = self.stat("fault.aborts_injected") or 0
        seen = len(self.backend.seen)
        for _ in range(5):
            status, headers, body = self.client.request("GET", "/abort/x")
            self.assertEqual(status, 503)
            self.assertEqual(body, b"fault filter abort")
        status, _, body = self.client.request("POST", "/teapot", {"content-length": "0"})
        self.assertEqual(status, 418)
        self.assertEqual(body, b"fault filter abort")
        self.assertEqual(len(self.backend.seen), seen, "an aborted request reached the backend")
        self.assertEqual(self.stat("fault.aborts_injected"), before + 6)
        self.assertEqual(self.stat("fault.active_faults"), 0)

    def test_abort_half(self):
        n, aborted, passed = 400, 0, 0
        seen = len([p for p in self.backend.paths() if p.startswith("/half")])
        for i in range(n):
            status, _, body = self.client.request("GET", f"/half/{i}")
            if status == 503:
                self.assertEqual(body, b"fault filter abort")
                aborted += 1
            else:
                self.assertEqual(status, 200)
                passed += 1
        # binomial(400, 0.5): sd 10; 60 is six of them
        self.assertGreater(aborted, 140, f"{aborted} of {n} aborted")
        self.assertLess(aborted, 260, f"{aborted} of {n} aborted")
        reached = len([p for p in self.backend.paths() if p.startswith("/half")]) - seen
        self.assertEqual(reached, passed)

    def test_fixed_delay(self):
        before = self.stat("fault.delays_injected") or 0
        t0 = time.monotonic()
        status, _, body = self.client.request("GET", "/plain")
        plain = time.monotonic() - t0
        self.assertEqual((status, body), (200, b"from backend"))
        for _ in range(3):
            t0 = time.monotonic()
            status, _, body = self.client.request("GET", "/delay")
            took = time.monotonic() - t0
            self.assertEqual((status, body), (200, b"from backend"))
            self.assertGreaterEqual(took, 0.195, f"delayed request took {took:.3f}s")
            self.assertLess(took, 2.0)
        self.assertLess(plain, 0.15, f"an undelayed request took {plain:.3f}s")
        self.assertEqual(self.stat("fault.delays_injected"), before + 3)
        # delay then abort: both counted, and the abort comes after the delay
        t0 = time.monotonic()
        seen = len(self.backend.seen)
        status, _, body = self.client.request("GET", "/both")
        self.assertEqual(status, 502)
        self.assertGreaterEqual(time.monotonic() - t0, 0.195)
        self.assertEqual(len(self.backend.seen), seen)
        self.assertEqual(self.stat("fault.active_faults"), 0)

    def test_delayed_request_with_a_body_past_the_buffer_limit(self):
        """A body that arrives while the fault filter holds the request back (3 MiB, past the
        1 MiB per-stream limit, so the connection manager stops reading the client) reaches the
        backend whole once the delay ends."""
        body = bytes(range(256)) * (3 * 4096)
        with tempfile.NamedTemporaryFile() as f:
            f.write(body)
            f.flush()
            out = subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10",
                 "--data-binary", "@" + f.name, f"http://127.0.0.1:{self.port}/delay/big"],
                capture_output=True, text=True, timeout=20)
        self.assertEqual(out.stdout, "200")
        with self.backend.lock:
            got = [n for (m, p), n in zip(self.backend.seen, self.backend.body_sizes)
                   if p == "/delay/big"]
        self.assertEqual(got, [len(body)])

    def test_delay_of_concurrent_requests(self):
        """Delays run on timers: 10 requests on 10 connections take about one delay."""
        out = []

        def one():
            c = Client(self.port)
            try:
                out.append(c.request("GET", "/delay")[0])
            finally:
                c.close()

        t0 = time.monotonic()
        ts = [threading.Thread(target=one) for _ in range(10)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(10)
        took = time.monotonic() - t0
        self.assertEqual(out, [200] * 10)
        self.assertLess(took, 1.5, f"10 delayed requests took {took:.3f}s")

    def test_route_override_of_empty_listener_config(self):
        """The listener-level HTTPFault is empty (Istio's); only routes with a per-route
        config are faulted, each by its own."""
        for _ in range(20):
            status, _, body = self.client.request("GET", "/other/path")
            self.assertEqual((status, body), (200, b"from backend"))
        self.assertEqual(self.client.request("GET", "/abort")[0], 503)
        self.assertEqual(self.client.request("GET", "/teapot")[0], 418)

    def test_grpc_abort(self):
        import grpc
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            call = ch.unary_unary("/test.Echo/Say", request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
            with self.assertRaises(grpc.RpcError) as e:
                call(b"\x0a\x02hi", timeout=5)
            self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
            self.assertEqual(e.exception.details(), "fault filter abort")
            # an HTTP status abort to a gRPC caller: 503 maps to UNAVAILABLE
            call = ch.unary_unary("/test.Http/Say", request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
            with self.assertRaises(grpc.RpcError) as e:
                call(b"", timeout=5)
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertFalse([p for p in self.backend.paths() if p.startswith("/test.")])

    def test_grpc_abort_over_http1(self):
        """A gRPC abort to a plain HTTP request is a 200 with the abort text (Envoy)."""
        status, _, body = self.client.request("POST", "/test.Echo/Say",
                                              {"content-type": "text/plain",
                                               "content-length": "0"})
        self.assertEqual((status, body), (200, b"fault filter abort"))

    # ---- CORS ----

    def test_cors_preflight(self):
        valid = self.stat("cors.origin_valid") or 0
        seen = len(self.backend.seen)
        status, h, body = self.client.request("OPTIONS", "/cors/a", {
            "origin": "https://app.example.com", "access-control-request-method": "PUT",
            "access-control-request-headers": "x-custom"})
        self.assertEqual(status, 200)
        self.assertEqual(body, b"")
        self.assertEqual(h.get("access-control-allow-origin"), "https://app.example.com")
        self.assertEqual(h.get("access-control-allow-methods"), "GET,POST,PUT")
        self.assertEqual(h.get("access-control-allow-headers"), "x-custom,content-type")
        self.assertEqual(h.get("access-control-max-age"), "86400")
        self.assertEqual(h.get("access-control-allow-credentials"), "true")
        self.assertNotIn("access-control-expose-headers", h)
        self.assertEqual(len(self.backend.seen), seen, "the preflight reached the backend")
        # the regex origin, matched whole
        status, h, _ = self.client.request("OPTIONS", "/cors/b", {
            "origin": "https://team.corp.io", "access-control-request-method": "GET"})
        self.assertEqual(status, 200)
        self.assertEqual(h.get("access-control-allow-origin"), "https://team.corp.io")
        self.assertEqual(len(self.backend.seen), seen)
        self.assertEqual(self.stat("cors.origin_valid"), valid + 2)

    def test_cors_preflight_not_matching_is_forwarded(self):
        invalid = self.stat("cors.origin_invalid") or 0
        status, h, body = self.client.request("OPTIONS", "/cors/c", {
            "origin": "https://team.corp.io.evil", "access-control-request-method": "GET"})
        self.assertEqual((status, body), (200, b"from backend"))
        self.assertIn(("OPTIONS", "/cors/c"), self.backend.seen)
        # the backend's own header is what the client gets
        self.assertEqual(h.get("access-control-allow-origin"), "*")
        self.assertNotIn("access-control-allow-credentials", h)
        self.assertEqual(self.stat("cors.origin_invalid"), invalid + 1)

    def test_cors_simple_request(self):
        status, h, body = self.client.request("GET", "/cors/d",
                                              {"origin": "https://app.example.com"})
        self.assertEqual((status, body), (200, b"from backend"))
        self.assertEqual(h.get("access-control-allow-origin"), "https://app.example.com")
        self.assertEqual(h.get("access-control-allow-credentials"), "true")
        self.assertEqual(h.get("access-control-expose-headers"), "x-reply")
        self.assertNotIn("access-control-allow-methods", h)
        # no origin: untouched
        status, h, _ = self.client.request("GET", "/cors/e")
        self.assertEqual(status, 200)
        self.assertEqual(h.get("access-control-allow-origin"), "*")
        self.assertNotIn("access-control-expose-headers", h)
        # a route without a CorsPolicy: untouched even with an origin
        status, h, _ = self.client.request("GET", "/plain", {"origin": "https://app.example.com"})
        self.assertEqual(h.get("access-control-allow-origin"), "*")
        self.assertNotIn("access-control-allow-credentials", h)


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    print(f"{result.testsRun - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
