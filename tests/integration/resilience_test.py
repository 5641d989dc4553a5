#!/usr/bin/python3
"""Circuit breakers and outlier detection end to end, configured the way istiod configures
bookinfo's DestinationRule of Istio's circuit-breaking task (ISTIO.md §4.7):

  connectionPool {tcp.maxConnections: 1, http.http1MaxPendingRequests: 1,
                  http.maxRequestsPerConnection: 1}
  outlierDetection {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m,
                    maxEjectionPercent: 100}

become circuit_breakers.thresholds[0] {max_connections 1, max_pending_requests 1,
max_requests/max_retries 4294967295, track_remaining}, common_http_protocol_options
.max_requests_per_connection 1 and outlier_detection {consecutive_5xx 1,
enforcing_consecutive_5xx 100, enforcing_success_rate 0, interval 1s, base_ejection_time 180s,
max_ejection_percent 100}. tools/xds-files serves them over delta ADS on a unix socket; clients
on 127.0.0.1 talk to skiff's listener in front of backends.py and a backend that always answers
503.

  - 20 concurrent requests from 5 threads at a slow backend: some are refused with Envoy's
    503 (x-envoy-overloaded: true, "upstream connect error or disconnect/reset before headers.
    reset reason: overflow"), the others succeed; cluster.<name>.upstream_rq_pending_overflow
    counts them in /stats and /stats/prometheus, with the circuit_breakers gauges;
  - a backend that answers 503 is ejected at its first 5xx and every later request goes to the
    healthy one (outlier_detection.ejections_active 1);
  - both again with two workers, which share the counts and the ejections.

  meson test -C build integration-resilience
  SKIFF=build/agent/skiff SRCDIR=. python3 tests/integration/resilience_test.py"""
import os
import re
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from backends import HttpBackend  # noqa: E402
from harness import (T_CLUSTER, T_PROTO, T_ROUTE, ControlPlane, SimpleBackend,  # noqa: E402
                     Skiff, ads_bootstrap, endpoints, free_port, hcm, listener, request,
                     route, to, wait_serving, write_atomic)

SRCDIR = os.environ["SRCDIR"]
OVERFLOW_BODY = ("upstream connect error or disconnect/reset before headers. "
                 "reset reason: overflow")
CB = "outbound|9080||reviews.default.svc.cluster.local"
OD = "outbound|9080||ratings.default.svc.cluster.local"
UNLIMITED = 4294967295


class Failing(SimpleBackend):
    """An HTTP/1.1 server on 127.0.0.1 that answers every request 503 and counts them."""

    def __init__(self):
        self.count = 0
        self.lock = threading.Lock()
        super().__init__(self.respond)

    def respond(self, req):
        with self.lock:
            self.count += 1
        return 503, b"failing\n", [("x-backend", "failing")]


def destination_rule_cluster(name, *ports):
    """A cluster as istiod builds it for the DestinationRule above (STATIC here rather than EDS,
    with the same traffic policy)."""
    return {
        "@type": T_CLUSTER, "name": name, "type": "STATIC", "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "load_assignment": endpoints(name, *ports),
        "circuit_breakers": {"thresholds": [{
            "max_connections": 1, "max_pending_requests": 1, "max_requests": UNLIMITED,
            "max_retries": UNLIMITED, "track_remaining": True}]},
        "outlier_detection": {
            "consecutive_5xx": 1, "enforcing_consecutive_5xx": 100, "enforcing_success_rate": 0,
            "interval": "1s", "base_ejection_time": "180s", "max_ejection_percent": 100},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": T_PROTO,
                "common_http_protocol_options": {"idle_timeout": "3600s",
                                                 "max_requests_per_connection": 1},
                "explicit_http_config": {"http_protocol_options": {}}}},
    }


def router_reports_host_results():
    """Whether the router feeds outlier detection (dp_upstream_host_result)."""
    try:
        src = open(os.path.join(SRCDIR, "handlers", "router", "router.c")).read()
    except OSError:
        return False
    return "dp_upstream_host_result" in src


class Resilience(unittest.TestCase):
    EXTRA_ARGS = ()

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.tmp.name
        cls.slow = HttpBackend("slow")
        cls.good = HttpBackend("good")
        cls.bad = Failing()
        cls.port = free_port()
        resources = [
            destination_rule_cluster(CB, cls.slow.port),
            destination_rule_cluster(OD, cls.bad.port, cls.good.port),
            listener("ingress", cls.port, hcm("ingress_http", rds="local")),
            {"@type": T_ROUTE, "name": "local", "virtual_hosts": [
                {"name": "all", "domains": ["*"], "routes": [
                    route({"prefix": "/reviews"}, route=to(CB, timeout="0s")),
                    route({"prefix": "/ratings"}, route=to(OD, timeout="0s")),
                ]}]},
        ]
        path = os.path.join(d, "resources.json")
        write_atomic(path, {"resources": resources})
        cls.cp = ControlPlane(d, path)
        cls.skiff = None
        # Istio's bootstrap names a cluster ending in .svc.cluster.local whole in its tag
        bootstrap = ads_bootstrap(cls.cp.sock)
        bootstrap["stats_config"] = {"stats_tags": [{
            "tag_name": "cluster_name",
            "regex": r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)"}]}
        try:
            cls.skiff = Skiff(d, bootstrap, cls.EXTRA_ARGS)
            ok = cls.skiff.wait(lambda: cls.skiff.get("/ready")[0] == 200, timeout=20)
            if not ok or not wait_serving(cls.port, "/reviews/ready"):
                raise RuntimeError("skiff is not serving: " +
                                   open(cls.skiff.logpath).read()[-3000:])
        except Exception:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        rc = cls.skiff.stop() if cls.skiff else 0
        cls.cp.stop()
        cls.slow.stop()
        cls.good.stop()
        cls.bad.stop()
        cls.tmp.cleanup()
        assert rc == 0, f"skiff exit status {rc}"

    def test_1_circuit_breaker_overflow(self):
        self.slow.record.clear()
        results, lock = [], threading.Lock()

        def worker():
            for _ in range(4):
                try:
                    r = request(self.port, "GET", "/reviews/x", {"x-backend-delay-ms": "300"})
                except OSError as e:
                    r = (0, {}, str(e).encode())
                with lock:
                    results.append(r)

        threads = [threading.Thread(target=worker) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(len(results), 20)
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 503]
        self.assertEqual(len(ok) + len(refused), 20, [r[0] for r in results])
        self.assertGreater(len(ok), 0)
        self.assertGreater(len(refused), 0)
        for status, headers, body in refused:
            self.assertEqual(headers.get("x-envoy-overloaded"), "true", headers)
            self.assertEqual(body.decode(), OVERFLOW_BODY)
        # what the slow backend saw: never more than one at a time (one connection, one
        # request per connection)
        self.assertEqual(len(self.slow.requests), len(ok))
        overflow = self.skiff.stat_int(f"cluster.{CB}.upstream_rq_pending_overflow")
        self.assertEqual(overflow, len(refused))
        self.assertGreaterEqual(self.skiff.stat_int(f"cluster.{CB}.upstream_cx_total"), len(ok))
        # Envoy's gauges, idle again: nothing open, everything remaining
        pre = f"cluster.{CB}.circuit_breakers.default."
        self.assertTrue(self.skiff.wait(lambda: self.skiff.stat(pre + "cx_open") == "0"),
                        "a connection stays open: " + self.skiff.get(
                            f"/stats?filter=cluster\\.{re.escape(CB)}\\.(upstream_cx|"
                            "circuit_breakers)")[1] + self.skiff.log_tail(1500))
        self.assertEqual(self.skiff.stat(pre + "rq_pending_open"), "0")
        self.assertEqual(self.skiff.stat(pre + "remaining_pending"), "1")
        self.assertEqual(self.skiff.stat(pre + "remaining_cx"), "1")
        self.assertEqual(self.skiff.stat(pre + "remaining_rq"), str(UNLIMITED))
        # and the Prometheus form, with the cluster name as a label
        status, body = self.skiff.get("/stats/prometheus")
        self.assertEqual(status, 200)
        label = r'\{[^}]*(?:envoy_)?cluster_name="' + re.escape(CB) + r'"[^}]*\} (\d+)$'
        m = re.search(r'^envoy_cluster_upstream_rq_pending_overflow' + label, body, re.M)
        self.assertIsNotNone(m, "no upstream_rq_pending_overflow for the cluster:\n" +
                             "\n".join(l for l in body.splitlines() if "pending_overflow" in l))
        self.assertEqual(int(m.group(1)), len(refused))
        m = re.search(r'^envoy_cluster_circuit_breakers_default_remaining_pending' + label, body,
                      re.M)
        self.assertIsNotNone(m, "no circuit_breakers gauge for the cluster")

    def test_2_outlier_ejection(self):
        if not router_reports_host_results():
            self.skipTest("the router does not report host results to the pools yet")
        statuses = []
        for _ in range(10):
            status, headers, _ = request(self.port, "GET", "/ratings/x")
            statuses.append(status)
            if status == 503:
                break
        self.assertIn(503, statuses, "the failing host was never chosen")
        self.assertEqual(self.bad.count, 1)
        pre = f"cluster.{OD}.outlier_detection."
        self.assertEqual(self.skiff.stat_int(pre + "ejections_active"), 1)
        self.assertEqual(self.skiff.stat_int(pre + "ejections_enforced_consecutive_5xx"), 1)
        self.assertEqual(self.skiff.stat_int(pre + "ejections_detected_consecutive_5xx"), 1)
        # every later request goes to the healthy host, across interval boundaries
        for i in range(12):
            status, headers, _ = request(self.port, "GET", "/ratings/x")
            self.assertEqual((status, headers.get("x-backend")), (200, "good"), i)
            if i == 5:
                time.sleep(1.2)
        self.assertEqual(self.bad.count, 1)
        self.assertEqual(self.skiff.stat_int(pre + "ejections_active"), 1)


class ResilienceTwoWorkers(Resilience):
    """The same with two workers: the breakers' counts and the hosts' ejections are shared."""
    EXTRA_ARGS = ("--concurrency", "2")

    def test_0_two_workers(self):
        self.assertEqual(self.skiff.stat("server.concurrency"), "2")


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    bad = result.failures + result.errors
    print(f"{result.testsRun - len(bad) - len(result.skipped)} passed, {len(bad)} failed, "
          f"{len(result.skipped)} skipped")
    sys.exit(1 if bad else 0)
