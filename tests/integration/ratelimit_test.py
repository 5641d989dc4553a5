#!/usr/bin/python3
"""envoy.filters.http.local_ratelimit end to end: skiff configured by tools/xds-files over ADS
(a unix socket), HTTP/1.1 clients on 127.0.0.1, and a backend on 127.0.0.1 that counts what
reaches it.

  - a listener-level limit of 10 tokens over a long fill interval: 10 requests pass, the 11th
    gets 429 with x-envoy-ratelimited and the configured response header, the backend saw
    exactly 10, and /stats has Envoy's counters;
  - with --concurrency 2 the one bucket holds across both workers and many connections;
  - a per-route limit (typed_per_filter_config, as Istio's EnvoyFilter sets it, with the
    listener-level filter carrying only a stat_prefix) limits its route and leaves another
    route unlimited."""
import http.client
import os
import re
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (TYPE, SimpleBackend, cluster, connectable, free_port, hcm,  # noqa: E402
                     listener, start_proxy, stop_proxy)
from harness import request as http_request  # noqa: E402

LRL = TYPE + "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
FILTER = "envoy.filters.http.local_ratelimit"


class Backend(SimpleBackend):
    """An HTTP/1.1 server on 127.0.0.1 that answers 200 and counts requests per path."""

    def __init__(self):
        self.hits = {}
        self.lock = threading.Lock()
        super().__init__(self.respond)

    def respond(self, req):
        with self.lock:
            self.hits[req.path] = self.hits.get(req.path, 0) + 1
        return 200, b"ok"

    def count(self, path=None):
        with self.lock:
            return sum(self.hits.values()) if path is None else self.hits.get(path, 0)


def percent(n):
    return {"default_value": {"numerator": n, "denominator": "HUNDRED"}}


def istio_limit(stat_prefix, max_tokens, fill="3600s"):
    """The LocalRateLimit of Istio's local rate limit example (EnvoyFilter)."""
    return {
        "@type": LRL,
        "stat_prefix": stat_prefix,
        "token_bucket": {"max_tokens": max_tokens, "tokens_per_fill": max_tokens,
                         "fill_interval": fill},
        "filter_enabled": dict(percent(100), runtime_key="local_rate_limit_enabled"),
        "filter_enforced": dict(percent(100), runtime_key="local_rate_limit_enforced"),
        "response_headers_to_add": [
            {"append": False, "header": {"key": "x-local-rate-limit", "value": "true"}}],
    }


def resources(listen_port, backend_port, listener_limit, routes):
    manager = hcm("rl_in", websocket=False,
                  filters=[{"name": FILTER, "typed_config": listener_limit}],
                  route_config={"name": "rl_routes", "virtual_hosts": [
                      {"name": "all", "domains": ["*"], "routes": routes}]})
    return {"resources": [cluster("backend", backend_port),
                          listener("rl_in", listen_port, manager)]}


def route(prefix, per_filter=None):
    r = {"match": {"prefix": prefix}, "route": {"cluster": "backend"}}
    if per_filter is not None:
        r["typed_per_filter_config"] = {FILTER: per_filter}
    return r


def request(port, path, conn=None):
    """One GET; on its own connection unless conn is given. Returns (status, headers, body)."""
    return http_request(port, "GET", path, {"host": "rl.example"}, conn=conn)


class RateLimitTest(unittest.TestCase):
    concurrency = 1

    def start(self, listener_limit, routes):
        self.tmp = tempfile.TemporaryDirectory()
        self.backend = Backend()
        self.port = free_port()
        self.cp, self.proxy = start_proxy(
            self.tmp.name, resources(self.port, self.backend.port, listener_limit, routes),
            cp_args={"poll": None},
            boot_args={"pod": "rl-1", "app": "rl.default", "delta": False, "node_first": False,
                       "grpc_clusters": ("xds-grpc",)},
            concurrency=self.concurrency)
        p = self.proxy
        self.assertTrue(p.wait(lambda: p.get("/ready")[0] == 200, 20), "skiff not LIVE")
        self.assertEqual(self.cp.nacks(), [])
        self.assertTrue(p.wait(lambda: connectable(self.port), 20), "listener not accepting")

    def tearDown(self):
        rc = stop_proxy(getattr(self, "proxy", None), getattr(self, "cp", None))
        self.assertEqual(rc, 0, "skiff exit status")
        if getattr(self, "backend", None):
            self.backend.stop()
        if getattr(self, "tmp", None):
            self.tmp.cleanup()

    def test_listener_limit(self):
        self.start(istio_limit("http_local_rate_limiter", 10), [route("/")])
        # Ten on one keep-alive connection pass ...
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        for i in range(10):
            status, hdrs, body = request(self.port, "/ok", conn)
            self.assertEqual(status, 200, f"request {i + 1}")
            self.assertEqual(body, b"ok")
            self.assertNotIn("x-envoy-ratelimited", hdrs)
            self.assertNotIn("x-local-rate-limit", hdrs)
        # ... the eleventh is answered by the filter.
        status, hdrs, body = request(self.port, "/ok", conn)
        conn.close()
        self.assertEqual(status, 429)
        self.assertEqual(body, b"local_rate_limited")
        self.assertEqual(hdrs.get("x-envoy-ratelimited"), "true")
        self.assertEqual(hdrs.get("x-local-rate-limit"), "true")
        # A new connection shares the bucket.
        status, hdrs, _ = request(self.port, "/ok")
        self.assertEqual(status, 429)
        self.assertEqual(self.backend.count(), 10)
        p = self.proxy
        pre = "http_local_rate_limiter.http_local_rate_limit."
        self.assertEqual(p.stat(pre + "enabled"), "12")
        self.assertEqual(p.stat(pre + "ok"), "10")
        self.assertEqual(p.stat(pre + "rate_limited"), "2")
        self.assertEqual(p.stat(pre + "enforced"), "2")
        _, prom = p.get("/stats/prometheus")
        self.assertRegex(prom, re.compile(
            r"^envoy_http_local_rate_limiter_http_local_rate_limit_rate_limited(\{\})? 2$", re.M))

    def test_per_route_limit(self):
        # Istio's EnvoyFilter pair: the listener-level filter with only a stat_prefix (it does
        # nothing by itself), the limit in the route's typed_per_filter_config.
        self.start({"@type": LRL, "stat_prefix": "http_local_rate_limiter"},
                   [route("/limited", istio_limit("route_limiter", 3)), route("/")])
        statuses = [request(self.port, "/limited")[0] for _ in range(5)]
        self.assertEqual(statuses, [200, 200, 200, 429, 429])
        free = [request(self.port, "/free")[0] for _ in range(20)]
        self.assertEqual(free, [200] * 20)
        self.assertEqual(self.backend.count("/limited"), 3)
        self.assertEqual(self.backend.count("/free"), 20)
        p = self.proxy
        self.assertEqual(p.stat("route_limiter.http_local_rate_limit.rate_limited"), "2")
        self.assertEqual(p.stat("route_limiter.http_local_rate_limit.ok"), "3")
        self.assertIn(p.stat("http_local_rate_limiter.http_local_rate_limit.enabled"),
                      ("0", None))


class RateLimitTwoWorkers(RateLimitTest):
    """The same with two workers: connections land on both, the bucket is one."""
    concurrency = 2

    def test_limit_across_workers(self):
        self.start(istio_limit("http_local_rate_limiter", 10), [route("/")])
        self.assertEqual(self.proxy.stat("server.concurrency"), "2")
        results = []
        lock = threading.Lock()

        def client():
            # Each client opens a connection per request, so that both workers take some.
            for _ in range(6):
                status, hdrs, _ = request(self.port, "/w")
                with lock:
                    results.append((status, hdrs.get("x-envoy-ratelimited")))

        threads = [threading.Thread(target=client) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(len(results), 30)
        self.assertEqual(sum(1 for s, _ in results if s == 200), 10)
        self.assertEqual([r for r in results if r[0] != 200], [(429, "true")] * 20)
        self.assertEqual(self.backend.count(), 10)
        self.assertEqual(self.proxy.stat("http_local_rate_limiter.http_local_rate_limit.ok"),
                         "10")


if __name__ == "__main__":
    unittest.main()
