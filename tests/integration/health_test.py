#!/usr/bin/python3
"""Active health checks and envoy.filters.network.local_ratelimit end to end: skiff configured
by tools/xds-files over ADS (a unix socket), clients and backends on 127.0.0.1.

  - a cluster of two hosts with an HTTP health check (interval 200 ms, thresholds 1) where one
    backend's /healthz answers 503: within a second every request through an HTTP listener
    goes to the healthy backend; once it answers 200 again, traffic returns to both; Envoy's
    cluster.<name>.health_check.* stats are in /stats;
  - a TCP health check (connect only) against a port where nothing listens keeps that host
    out of a tcp_proxy-free HTTP cluster;
  - a tcp_proxy listener behind local_ratelimit with max_tokens 3 and a long fill interval:
    3 connections are relayed, the 4th is closed without data, and
    local_ratelimit.<stat_prefix>.rate_limited counts 1;
  - the same filter in front of an HTTP connection manager."""
import http.client
import os
import socket
import socketserver
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (HCM_NAME, TYPE, SimpleBackend, cluster, free_port, hcm,  # noqa: E402
                     listener, listening, request, route, start_proxy, stop_proxy, to,
                     write_atomic)

TCP_PROXY_TYPE = TYPE + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
NET_LRL_TYPE = TYPE + "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit"


class Backend(SimpleBackend):
    """An HTTP/1.1 server answering its name on every path but /healthz, which answers
    self.health (mutable)."""

    def __init__(self, name):
        self.name = name
        self.health = 200
        self.hits = 0
        self.checks = 0
        self.lock = threading.Lock()
        super().__init__(self.respond)

    def respond(self, req):
        if req.path == "/healthz":
            with self.lock:
                self.checks += 1
            return self.health, b"health"
        with self.lock:
            self.hits += 1
        return 200, self.name.encode()


class Echo:
    """A TCP echo server that counts its connections."""

    def __init__(self):
        self.conns = 0
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                owner.conns += 1
                while True:
                    data = self.request.recv(4096)
                    if not data:
                        return
                    self.request.sendall(data)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def hcm_to(stat_prefix, cluster_name):
    """A connection manager sending every request to cluster_name."""
    return hcm(stat_prefix, websocket=False, route_config={
        "name": stat_prefix + "_routes", "virtual_hosts": [
            {"name": "all", "domains": ["*"],
             "routes": [route({"prefix": "/"}, route=to(cluster_name))]}]})


def net_limit(stat_prefix, max_tokens):
    return {"name": "envoy.filters.network.local_ratelimit", "typed_config": {
        "@type": NET_LRL_TYPE, "stat_prefix": stat_prefix,
        "token_bucket": {"max_tokens": max_tokens, "fill_interval": "3600s"}}}


def refused(port, payload):
    """What comes back on a connection the limit closes: nothing (or a reset, as nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(payload)
            return s.recv(100)
        except (ConnectionResetError, BrokenPipeError):
            return b""


def get(port, path="/"):
    status, _, body = request(port, "GET", path, {"host": "hc.example"})
    return status, body


class Base(unittest.TestCase):
    def start(self, res, ports):
        self.tmp = tempfile.TemporaryDirectory()
        self.res_path = os.path.join(self.tmp.name, "resources.json")
        write_atomic(self.res_path, res)
        self.cp, self.proxy = start_proxy(
            self.tmp.name, self.res_path, cp_args={"poll": None},
            boot_args={"pod": "hc-1", "app": "hc.default", "delta": False, "node_first": False,
                       "grpc_clusters": ("xds-grpc",)},
            concurrency=2, wait_timeout=20)
        p = self.proxy
        self.assertTrue(p.wait(lambda: p.get("/ready")[0] == 200), "skiff not LIVE")
        self.assertEqual(self.cp.nacks(), [])
        for port in ports:
            self.assertTrue(p.wait(lambda: listening(port)), "listener not accepting")

    def tearDown(self):
        if getattr(self, "proxy", None):
            rc = stop_proxy(self.proxy, getattr(self, "cp", None))
            self.assertEqual(rc, 0, "skiff exit status")
        for b in getattr(self, "backends", []):
            b.stop()
        if getattr(self, "tmp", None):
            self.tmp.cleanup()


class HealthCheckTest(Base):
    def test_http_health_check(self):
        a, b = Backend("a"), Backend("b")
        self.backends = [a, b]
        b.health = 503
        port = free_port()
        hc = {"timeout": "1s", "interval": "0.2s", "no_traffic_interval": "0.2s",
              "unhealthy_threshold": 1, "healthy_threshold": 1,
              "http_health_check": {"path": "/healthz"}}
        res = {"resources": [cluster("hc", a.port, b.port, health_checks=[hc]),
                             listener("hc_in", port, filters=[
                                 {"name": HCM_NAME, "typed_config": hcm_to("hc_in", "hc")}])]}
        self.start(res, [port])
        p = self.proxy
        time.sleep(1)
        self.assertTrue(p.wait(lambda: p.stat("cluster.hc.health_check.healthy") == "1"),
                        p.stat("cluster.hc.health_check.healthy"))
        answers = [get(port) for _ in range(20)]
        self.assertEqual(answers, [(200, b"a")] * 20)
        self.assertEqual(b.hits, 0)
        self.assertGreater(b.checks, 0)
        # b recovers: traffic returns to both.
        b.health = 200
        self.assertTrue(p.wait(lambda: p.stat("cluster.hc.health_check.healthy") == "2"))
        answers = [get(port) for _ in range(20)]
        self.assertEqual({s for s, _ in answers}, {200})
        self.assertEqual({body for _, body in answers}, {b"a", b"b"})
        attempt = int(p.stat("cluster.hc.health_check.attempt"))
        success = int(p.stat("cluster.hc.health_check.success"))
        failure = int(p.stat("cluster.hc.health_check.failure"))
        self.assertGreater(attempt, 4)
        self.assertGreater(success, 0)
        self.assertGreater(failure, 0)
        self.assertLessEqual(success + failure, attempt)
        self.assertEqual(p.stat("cluster.hc.health_check.network_failure"), "0")
        # b fails again: it leaves the rotation at the next check.
        b.health = 500
        self.assertTrue(p.wait(lambda: p.stat("cluster.hc.health_check.healthy") == "1"))
        hits = b.hits
        self.assertEqual([get(port) for _ in range(10)], [(200, b"a")] * 10)
        self.assertEqual(b.hits, hits)

    def test_tcp_health_check(self):
        a = Backend("a")
        self.backends = [a]
        dead, port = free_port(), free_port()
        hc = {"timeout": "0.5s", "interval": "0.2s", "no_traffic_interval": "0.2s",
              "unhealthy_threshold": 2,
              "healthy_threshold": 2, "tcp_health_check": {}}
        res = {"resources": [cluster("tcphc", a.port, dead, health_checks=[hc]),
                             listener("tcphc_in", port, filters=[
                                 {"name": HCM_NAME, "typed_config": hcm_to("tcphc_in", "tcphc")}])]}
        self.start(res, [port])
        p = self.proxy
        self.assertTrue(p.wait(lambda: p.stat("cluster.tcphc.health_check.healthy") == "1"))
        self.assertTrue(p.wait(
            lambda: int(p.stat("cluster.tcphc.health_check.network_failure") or 0) > 0))
        self.assertEqual([get(port) for _ in range(10)], [(200, b"a")] * 10)


class NetworkRateLimitTest(Base):
    def test_tcp_proxy(self):
        echo = Echo()
        self.backends = [echo]
        port = free_port()
        res = {"resources": [cluster("echo", echo.port),
                             listener("rl_tcp", port, filters=[
                                 net_limit("tcp_rl", 3),
                                 {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                                     "@type": TCP_PROXY_TYPE, "stat_prefix": "rl_tcp",
                                     "cluster": "echo"}}])]}
        self.start(res, [port])
        for i in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"hello %d" % i)
                self.assertEqual(s.recv(100), b"hello %d" % i)
        self.assertEqual(refused(port, b"again"), b"")
        self.assertEqual(echo.conns, 3)
        p = self.proxy
        self.assertTrue(p.wait(lambda: p.stat("local_ratelimit.tcp_rl.rate_limited") == "1"))
        # A rebuilt snapshot (a cluster more) keeps the bucket, and it is still empty.
        clusters = int(p.stat("cluster_manager.active_clusters"))
        res["resources"].append(cluster("other", echo.port))
        write_atomic(self.res_path, res)
        self.assertTrue(p.wait(
            lambda: int(p.stat("cluster_manager.active_clusters")) == clusters + 1))
        time.sleep(0.2)  # the workers swap the new snapshot in
        self.assertEqual(refused(port, b"after rebuild"), b"")
        self.assertEqual(echo.conns, 3)
        self.assertTrue(p.wait(lambda: p.stat("local_ratelimit.tcp_rl.rate_limited") == "2"))

    def test_http_connection_manager(self):
        a = Backend("a")
        self.backends = [a]
        port = free_port()
        res = {"resources": [cluster("web", a.port),
                             listener("rl_http", port, filters=[
                                 net_limit("http_rl", 2),
                                 {"name": HCM_NAME, "typed_config": hcm_to("rl_http", "web")}])]}
        self.start(res, [port])
        self.assertEqual(get(port), (200, b"a"))
        self.assertEqual(get(port), (200, b"a"))
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionResetError,
                                BrokenPipeError)):
            get(port)
        self.assertEqual(a.hits, 2)
        p = self.proxy
        self.assertTrue(p.wait(lambda: p.stat("local_ratelimit.http_rl.rate_limited") == "1"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
