#!/usr/bin/python3
"""Istio's bookinfo through skiff, on the resources istiod would send a sidecar calling
bookinfo's services (tools/examples/bookinfo/, see its README.md): tools/xds-files serves
them over ADS, skiff runs the outbound listener 0.0.0.0_9080 with Istio's seven HTTP filters,
and recording backends (backends.py) stand in for productpage v1, reviews v1/v2/v3, ratings
v1/v2 and details v1/v2 on 127.0.0.1, each answering with its name and version in the
x-backend header. The example files' ports are rewritten to free ones.

Each test puts its scenario in the control plane's files (as kubectl apply would make istiod
push it) and waits for skiff to take it:
  - all-v1: every service, by every domain form, reaches v1;
  - reviews-50-v3: 2000 requests split v1/v3 within 50% +- 5%, no v2;
  - reviews-jason-v2-v3: end-user: jason reaches v2, everyone else v3;
  - ratings-test-delay (1 s instead of bookinfo's 7 s): jason waits >= 1 s, others do not;
  - ratings-test-abort: jason gets 500 from the fault filter, others reach ratings-v1;
  - details fault injection: every details request is a 555;
  - the circuit breaker DestinationRule on details: concurrent requests at a slow backend
    get 503 with x-envoy-overloaded: true and upstream_rq_pending_overflow counts them;
  - the local rate limit EnvoyFilter: the 5th request in a minute is a 429 with
    x-local-rate-limit: true.
Every request has a timeout and every wait a deadline."""
import http.client
import json
import os
import sys
import tempfile
import threading
import time
import unittest

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from backends import HttpBackend  # noqa: E402
from harness import (SRCDIR, free_port, start_proxy, stop_proxy, wait_started,  # noqa: E402
                     write_atomic)
from harness import request as http_request  # noqa: E402

EXAMPLES = os.path.join(SRCDIR, "tools", "examples", "bookinfo")

PREFIX = "outbound_0.0.0.0_9080"
LISTEN_PORT = 19080  # the listener's port in the example files
# the example files' endpoint ports, one pod per version (endpoints.yaml)
PODS = {"productpage-v1": 19101, "details-v1": 19111, "details-v2": 19112,
        "ratings-v1": 19121, "ratings-v2": 19122, "reviews-v1": 19131, "reviews-v2": 19132,
        "reviews-v3": 19133}
SERVICES = ["productpage", "reviews", "ratings", "details"]
CLUSTER_IPS = {"details": "10.96.12.11", "productpage": "10.96.12.12",
               "ratings": "10.96.12.13", "reviews": "10.96.12.14"}


def cluster(svc, subset):
    return f"outbound|9080|{subset}|{svc}.default.svc.cluster.local"


def load(name, ports):
    """The resources of tools/examples/bookinfo/<name>.yaml, every port_value in `ports`
    rewritten."""
    with open(os.path.join(EXAMPLES, name + ".yaml")) as f:
        doc = yaml.safe_load(f)

    def walk(v):
        if isinstance(v, dict):
            return {k: (ports.get(x, x) if k == "port_value" else walk(x)) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v
    return {"resources": walk(doc["resources"])}


def request(port, host, path="/", headers=None, conn=None, timeout=10):
    """One GET with Host `host`; on its own connection unless conn is given.
    Returns (status, headers with lower-cased names, body, seconds taken)."""
    t0 = time.monotonic()
    status, hdrs, body = http_request(port, "GET", path, dict({"host": host}, **(headers or {})),
                                      conn=conn, timeout=timeout)
    return status, hdrs, body, time.monotonic() - t0


class Bookinfo(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        tmp = cls.tmp.name
        cls.backends = {name: HttpBackend(name) for name in PODS}
        cls.port = free_port()
        cls.ports = {LISTEN_PORT: cls.port}
        cls.ports.update({PODS[n]: b.port for n, b in cls.backends.items()})
        cls.confdir = os.path.join(tmp, "config")
        os.mkdir(cls.confdir)
        cls.files = {}
        for n, name in (("10-listener", "listener"), ("20-clusters", "clusters"),
                        ("30-endpoints", "endpoints"), ("40-routes", "all-v1")):
            cls.put(n, name)
        try:
            cls.cp, cls.skiff = start_proxy(
                tmp, cls.confdir, cp_args={"sock_name": "xds.sock", "poll": "0.1"},
                boot_args={"pod": "productpage-v1-0", "app": "productpage.default",
                           "grpc_clusters": ("xds-grpc",)})
        except Exception:
            cls.tearDownClass()
            raise

        def productpage():
            try:
                return request(cls.port, "productpage", timeout=2)[1].get("x-backend") == \
                    "productpage-v1"
            except OSError:
                return False

        wait_started(productpage, 20, cls.cp, cls.tearDownClass,
                     "productpage never answered through skiff", cls.skiff)

    @classmethod
    def tearDownClass(cls):
        rc = stop_proxy(getattr(cls, "skiff", None), getattr(cls, "cp", None))
        cls.skiff = cls.cp = None
        for b in cls.backends.values():
            b.stop()
        cls.tmp.cleanup()
        assert rc == 0, "skiff exited with %d" % rc

    @classmethod
    def put(cls, slot, name):
        """Writes example `name` into the control plane's directory as <slot>.json (renamed
        into place, so that it never sees half a file); name None removes the slot."""
        path = os.path.join(cls.confdir, slot + ".json")
        if name is None:
            if os.path.exists(path):
                os.unlink(path)
            cls.files.pop(slot, None)
            return
        write_atomic(path, load(name, cls.ports))
        cls.files[slot] = name

    def apply(self, routes, overlay=None):
        """Puts RouteConfiguration `routes` and an optional overlay (circuit-breaker replaces
        the details clusters, local-ratelimit the listener) in place, and waits until skiff
        has taken every change: the update_success counters of what changed moved, and the
        overlay is (or is no longer) in effect."""
        want = {}
        if self.files.get("40-routes") != routes:
            want[f"http.{PREFIX}.rds.9080.update_success"] = None
        old = self.files.get("50-overlay")
        if old != overlay:
            for o in (old, overlay):
                if o == "circuit-breaker":
                    want["cluster_manager.cds.update_success"] = None
                elif o == "local-ratelimit":
                    want["listener_manager.lds.update_success"] = None
        if not want:
            return
        for k in want:
            want[k] = self.skiff.stat_int(k)
        self.put("40-routes", routes)
        self.put("50-overlay", overlay)

        def overlay_in_effect():
            _, clusters = self.skiff.get("/clusters")
            cb = (cluster("details", "v1") + "::default_priority::max_connections::1\n") \
                in clusters
            _, dump = self.skiff.get("/config_dump")
            try:
                active = [json.dumps(l.get("active_state", {}))
                          for c in json.loads(dump)["configs"]
                          for l in c.get("dynamic_listeners", [])]
            except ValueError:
                return False
            rl = any("http_local_rate_limiter" in a for a in active)
            warming = any('"warming_state"' in json.dumps(c) for c in json.loads(dump)["configs"])
            return (cb == (overlay == "circuit-breaker") and
                    rl == (overlay == "local-ratelimit") and not warming and
                    self.skiff.stat_int("cluster_manager.warming_clusters") == 0)

        deadline = time.time() + 20
        while time.time() < deadline:
            if all(self.skiff.stat_int(k) > v for k, v in want.items()) and \
                    overlay_in_effect():
                break
            time.sleep(0.05)
        else:
            self.fail(f"skiff did not take {routes} + {overlay}; NACKs: {self.cp.nacks()}")
        self.assertEqual(self.cp.nacks(), [])
        time.sleep(0.3)  # the workers pick the new snapshot up from their mailboxes

    def answers(self, host, n, headers=None, path="/"):
        """n requests on one keep-alive connection: {x-backend value: count} (status 200
        only; anything else fails the test)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        seen = {}
        try:
            for i in range(n):
                status, hdrs, body, _ = request(self.port, host, path, headers, conn)
                self.assertEqual(status, 200, f"{host}{path} #{i}: {body[:200]!r}")
                who = hdrs.get("x-backend")
                seen[who] = seen.get(who, 0) + 1
        finally:
            conn.close()
        return seen

    def reached(self, pod, header, value):
        """How many requests pod received with header: value."""
        return sum(1 for r in self.backends[pod].requests
                   if any(k.lower() == header and v == value for k, v in r["headers"]))

    def test_istio_filter_chain(self):
        """The listener is active with Istio's outbound HTTP filters as sent (the Istio ones
        passed through), and every resource was ACKed."""
        _, dump = self.skiff.get("/config_dump")
        listeners = [l for c in json.loads(dump)["configs"]
                     for l in c.get("dynamic_listeners", []) if l.get("name") == "0.0.0.0_9080"]
        self.assertEqual(len(listeners), 1)
        hcm = listeners[0]["active_state"]["listener"]["filter_chains"][0]["filters"][0]
        names = [f["name"] for f in hcm["typed_config"]["http_filters"]]
        if names[0] == "envoy.filters.http.local_ratelimit":
            names = names[1:]
        self.assertEqual(names, ["istio.metadata_exchange", "envoy.filters.http.grpc_stats",
                                 "istio.alpn", "envoy.filters.http.fault",
                                 "envoy.filters.http.cors", "istio.stats",
                                 "envoy.filters.http.router"])
        self.assertEqual(self.cp.nacks(), [])
        for k in ("listener_manager.lds.update_rejected", "cluster_manager.cds.update_rejected",
                  f"http.{PREFIX}.rds.9080.update_rejected"):
            self.assertEqual(self.skiff.stat_int(k), 0, k)
        clusters = [c["cluster"]["name"] for cfg in json.loads(dump)["configs"]
                    for c in cfg.get("dynamic_active_clusters", [])]
        self.assertEqual(len(clusters), 16)  # 14 of bookinfo's, Passthrough and BlackHole
        self.assertIn(cluster("ratings", "v2-mysql-vm"), clusters)

    # ---- VirtualServices -----------------------------------------------------------------

    def test_all_v1(self):
        self.apply("all-v1")
        for svc in SERVICES:
            fqdn = f"{svc}.default.svc.cluster.local"
            for host in (svc, f"{svc}.default", f"{svc}.default.svc", fqdn, CLUSTER_IPS[svc],
                         f"{svc}:9080", f"{fqdn}:9080"):
                self.assertEqual(self.answers(host, 5), {f"{svc}-v1": 5}, host)
        self.assertEqual(self.answers("reviews", 100), {"reviews-v1": 100})
        # what the upstream got: Istio's route asks for x-envoy-attempt-count
        last = self.backends["reviews-v1"].requests[-1]
        self.assertIn(["x-envoy-attempt-count", "1"], [[k.lower(), v] for k, v in
                                                       last["headers"]])
        self.assertEqual(self.skiff.stat_int(
            f"cluster.{cluster('reviews', 'v2')}.upstream_rq_total"), 0)

    def test_reviews_50_v3(self):
        self.apply("reviews-50-v3")
        v1 = self.skiff.stat_int(f"cluster.{cluster('reviews', 'v1')}.upstream_rq_total")
        n = 2000
        seen = self.answers("reviews", n)
        self.assertEqual(set(seen) - {"reviews-v1", "reviews-v3"}, set(), seen)
        # 50% +- 5% of 2000: 900..1100 (binomial sd is 22, so this is about 4.5 sd)
        self.assertGreaterEqual(seen.get("reviews-v1", 0), 900, seen)
        self.assertLessEqual(seen.get("reviews-v1", 0), 1100, seen)
        self.assertEqual(seen.get("reviews-v1", 0) + seen.get("reviews-v3", 0), n)
        self.assertEqual(self.skiff.stat_int(
            f"cluster.{cluster('reviews', 'v1')}.upstream_rq_total") - v1, seen["reviews-v1"])

    def test_reviews_jason_v2_v3(self):
        self.apply("reviews-jason-v2-v3")
        self.assertEqual(self.answers("reviews", 20, {"end-user": "jason"}), {"reviews-v2": 20})
        self.assertEqual(self.answers("reviews", 20), {"reviews-v3": 20})
        # exact, case-sensitive value match
        self.assertEqual(self.answers("reviews", 5, {"end-user": "Jason"}), {"reviews-v3": 5})
        self.assertEqual(self.answers("reviews", 5, {"end-user": "jason2"}), {"reviews-v3": 5})
        # other services untouched
        self.assertEqual(self.answers("ratings", 5, {"end-user": "jason"}), {"ratings-v1": 5})

    # ---- faults ----------------------------------------------------------------------------

    def test_ratings_delay_for_jason(self):
        self.apply("ratings-test-delay")
        before = self.skiff.stat_int(f"http.{PREFIX}.fault.delays_injected")
        for _ in range(2):
            status, hdrs, _, took = request(self.port, "ratings", "/ratings/0",
                                            {"end-user": "jason"})
            self.assertEqual((status, hdrs.get("x-backend")), (200, "ratings-v1"))
            self.assertGreaterEqual(took, 0.99, f"jason's request took {took:.3f}s")
            self.assertLess(took, 3.0, f"jason's request took {took:.3f}s")
        for _ in range(5):
            status, hdrs, _, took = request(self.port, "ratings", "/ratings/0")
            self.assertEqual((status, hdrs.get("x-backend")), (200, "ratings-v1"))
            self.assertLess(took, 0.5, f"an undelayed request took {took:.3f}s")
        self.assertEqual(self.skiff.stat_int(f"http.{PREFIX}.fault.delays_injected"), before + 2)
        self.assertEqual(self.skiff.stat_int(f"http.{PREFIX}.fault.active_faults"), 0)

    def test_ratings_abort_for_jason(self):
        self.apply("ratings-test-abort")
        before = self.skiff.stat_int(f"http.{PREFIX}.fault.aborts_injected")
        reached = self.reached("ratings-v1", "end-user", "jason")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            for _ in range(10):
                status, _, body, _ = request(self.port, "ratings", "/ratings/0",
                                             {"end-user": "jason"}, conn)
                self.assertEqual((status, body), (500, b"fault filter abort"))
        finally:
            conn.close()
        self.assertEqual(self.answers("ratings", 10, path="/ratings/0"), {"ratings-v1": 10})
        self.assertEqual(self.answers("ratings", 5, {"end-user": "bob"}), {"ratings-v1": 5})
        self.assertEqual(self.answers("reviews", 5, {"end-user": "jason"}), {"reviews-v1": 5})
        self.assertEqual(self.reached("ratings-v1", "end-user", "jason"), reached,
                         "an aborted request reached ratings")
        self.assertEqual(self.skiff.stat_int(f"http.{PREFIX}.fault.aborts_injected"), before + 10)

    def test_details_fault(self):
        self.apply("details-fault")
        before = self.skiff.stat_int(f"http.{PREFIX}.fault.aborts_injected")
        count = len(self.backends["details-v1"].requests)
        for host in ("details", "details.default.svc.cluster.local:9080"):
            for _ in range(5):
                status, _, body, _ = request(self.port, host, "/details/0")
                self.assertEqual((status, body), (555, b"fault filter abort"))
        self.assertEqual(len(self.backends["details-v1"].requests), count)
        self.assertEqual(self.answers("productpage", 5), {"productpage-v1": 5})
        self.assertEqual(self.skiff.stat_int(f"http.{PREFIX}.fault.aborts_injected"), before + 10)

    # ---- DestinationRule: circuit breaker ----------------------------------------------------

    def test_circuit_breaker(self):
        self.apply("all-v1", "circuit-breaker")
        name = cluster("details", "v1")
        overflow0 = self.skiff.stat_int(f"cluster.{name}.upstream_rq_pending_overflow")
        n = 10
        results = []
        lock = threading.Lock()
        go = threading.Barrier(n)

        def one():
            try:
                go.wait(5)
                status, hdrs, body, took = request(self.port, "details", "/details/0",
                                                   {"x-backend-delay-ms": "1000"}, timeout=15)
                out = (status, hdrs.get("x-envoy-overloaded"), body, took)
            except Exception as e:  # noqa: BLE001 (reported below)
                out = ("error", repr(e), b"", 0)
            with lock:
                results.append(out)

        threads = [threading.Thread(target=one) for _ in range(n)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertLess(time.monotonic() - t0, 30)
        self.assertEqual(len(results), n, results)
        ok = [r for r in results if r[0] == 200]
        shed = [r for r in results if r[0] == 503]
        self.assertEqual(len(ok) + len(shed), n, [r[:2] for r in results])
        for r in shed:
            self.assertEqual(r[1], "true", f"a 503 without x-envoy-overloaded: {r[2][:200]!r}")
            self.assertIn(b"overflow", r[2])
            self.assertLess(r[3], 0.9, "an overflow 503 waited for the slow backend")
        # one connection (maxConnections 1) and one pending request (http1MaxPendingRequests
        # 1) at a time: of ten at once, two get through and eight are shed; a slow start of
        # a thread may let one more in
        self.assertGreaterEqual(len(ok), 1)
        self.assertLessEqual(len(ok), 3, [r[:2] for r in results])
        self.assertGreaterEqual(len(shed), 7, [r[:2] for r in results])
        self.assertEqual(self.skiff.stat_int(f"cluster.{name}.upstream_rq_pending_overflow")
                         - overflow0, len(shed))
        # maxRequestsPerConnection 1: every request that got through had a connection of its
        # own (the backend numbers its connections)
        conns = [json.loads(r[2])["conn"] for r in ok]
        self.assertEqual(len(set(conns)), len(conns))
        # once the burst is over the breaker lets requests through again
        status, hdrs, _, _ = request(self.port, "details", "/details/0")
        self.assertEqual((status, hdrs.get("x-backend")), (200, "details-v1"))

    # ---- EnvoyFilter: local rate limit -------------------------------------------------------

    def test_local_rate_limit(self):
        self.apply("all-v1", "local-ratelimit")
        pre = "http_local_rate_limiter.http_local_rate_limit."
        limited0 = self.skiff.stat_int(pre + "rate_limited")
        ok0 = self.skiff.stat_int(pre + "ok")
        count = sum(len(b.requests) for b in self.backends.values())
        statuses = []
        for i, svc in enumerate(["productpage", "reviews", "ratings", "details",
                                 "productpage", "reviews"]):
            status, hdrs, body, _ = request(self.port, svc, f"/{i}")
            statuses.append(status)
            if i < 4:
                self.assertEqual(hdrs.get("x-backend"), f"{svc}-v1")
                self.assertNotIn("x-local-rate-limit", hdrs)
            else:
                self.assertEqual(body, b"local_rate_limited")
                self.assertEqual(hdrs.get("x-local-rate-limit"), "true")
                self.assertEqual(hdrs.get("x-envoy-ratelimited"), "true")
        self.assertEqual(statuses, [200, 200, 200, 200, 429, 429])
        self.assertEqual(sum(len(b.requests) for b in self.backends.values()) - count, 4)
        self.assertEqual(self.skiff.stat_int(pre + "rate_limited") - limited0, 2)
        self.assertEqual(self.skiff.stat_int(pre + "ok") - ok0, 4)


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    print(f"{result.testsRun - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
