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
import http.server
import json
import os
import signal
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

SKIFF = os.environ["SKIFF"]
SRCDIR = os.environ["SRCDIR"]
TYPE = "type.googleapis.com/"
HCM_TYPE = TYPE + "envoy.extensions.filters.network.http_connection_manager.v3." \
                  "HttpConnectionManager"
TCP_PROXY_TYPE = TYPE + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
NET_LRL_TYPE = TYPE + "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit"


class Backend:
    """An HTTP/1.1 server answering its name on every path but /healthz, which answers
    self.health (mutable)."""

    def __init__(self, name):
        self.name = name
        self.health = 200
        self.hits = 0
        self.checks = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                if self.path == "/healthz":
                    with owner.lock:
                        owner.checks += 1
                    status, body = owner.health, b"health"
                else:
                    with owner.lock:
                        owner.hits += 1
                    status, body = 200, owner.name.encode()
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


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


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def listening(port):
    """Whether something listens on 127.0.0.1:port, from /proc (connecting would take a
    rate-limit token)."""
    want = "0100007F:%04X" % port
    with open("/proc/net/tcp") as f:
        return any(line.split()[1] == want and line.split()[3] == "0A"
                   for line in list(f)[1:])


def endpoint(port):
    return {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                        "port_value": port}}}}


def cluster(name, ports, health_check=None):
    c = {
        "@type": TYPE + "envoy.config.cluster.v3.Cluster",
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name,
                            "endpoints": [{"lb_endpoints": [endpoint(p) for p in ports]}]},
    }
    if health_check:
        c["health_checks"] = [health_check]
    return c


def hcm(stat_prefix, cluster_name):
    return {
        "@type": HCM_TYPE,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "route_config": {"name": stat_prefix + "_routes", "virtual_hosts": [
            {"name": "all", "domains": ["*"],
             "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster_name}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": TYPE + "envoy.extensions.filters.http.router.v3.Router"}}],
    }


def listener(name, port, filters):
    return {
        "@type": TYPE + "envoy.config.listener.v3.Listener",
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": filters}],
    }


def net_limit(stat_prefix, max_tokens):
    return {"name": "envoy.filters.network.local_ratelimit", "typed_config": {
        "@type": NET_LRL_TYPE, "stat_prefix": stat_prefix,
        "token_bucket": {"max_tokens": max_tokens, "fill_interval": "3600s"}}}


class Proxy:
    """tools/xds-files serving one resources file, and skiff pointed at it."""

    def __init__(self, tmp, res):
        self.tmp = tmp
        self.path = os.path.join(tmp, "resources.json")
        with open(self.path, "w") as f:
            json.dump(res, f)
        sock = os.path.join(tmp, "XDS")
        self.events = os.path.join(tmp, "events.jsonl")
        self.cp_log = open(os.path.join(tmp, "cp.log"), "w")
        self.cp = subprocess.Popen(["/usr/bin/python3", "-W", "ignore",
                                    os.path.join(SRCDIR, "tools", "xds-files"), "--listen",
                                    "unix:" + sock, "--config", self.path, "--events",
                                    self.events],
                                   stdout=subprocess.PIPE, stderr=self.cp_log, text=True)
        line = self.cp.stdout.readline().strip()
        if line != "listening on unix:" + sock:
            raise RuntimeError("xds-files did not start: " + line)
        boot = {
            "node": {"id": "sidecar~127.0.0.1~hc-1.default~default.svc.cluster.local",
                     "cluster": "hc.default"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "dynamic_resources": {
                "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                               "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
                "cds_config": {"ads": {}, "initial_fetch_timeout": "0s",
                               "resource_api_version": "V3"},
                "lds_config": {"ads": {}, "initial_fetch_timeout": "0s",
                               "resource_api_version": "V3"},
            },
            "static_resources": {"clusters": [{
                "name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [
                    {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": sock}}}}]}]}}]},
        }
        bpath = os.path.join(tmp, "bootstrap.json")
        with open(bpath, "w") as f:
            json.dump(boot, f)
        adm = os.path.join(tmp, "admin")
        self.log = open(os.path.join(tmp, "skiff.log"), "w")
        self.proc = subprocess.Popen([SKIFF, "-c", bpath, "--admin-address-path", adm,
                                      "-l", "info", "--concurrency", "2"],
                                     stdout=self.log, stderr=self.log)
        for _ in range(200):
            if os.path.exists(adm) and os.path.getsize(adm) > 0:
                break
            time.sleep(0.05)
        self.admin = "http://" + open(adm).read().strip()

    def get(self, path):
        try:
            with urllib.request.urlopen(self.admin + path, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stat(self, name):
        _, body = self.get("/stats?filter=^" + name.replace(".", "\\.") + "$")
        for line in body.splitlines():
            k, _, v = line.partition(": ")
            if k == name:
                return v
        return None

    def nacks(self):
        if not os.path.exists(self.events):
            return []
        return [e["error"] for e in map(json.loads, open(self.events)) if e["event"] == "nack"]

    def wait(self, pred, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if pred():
                return True
            time.sleep(0.05)
        return False

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.log.close()
        self.cp.send_signal(signal.SIGTERM)
        try:
            self.cp.wait(10)
        except subprocess.TimeoutExpired:
            self.cp.kill()
            self.cp.wait()
        self.cp_log.close()
        return rc


def get(port, path="/"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path, headers={"host": "hc.example"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


class Base(unittest.TestCase):
    def start(self, res, ports):
        self.tmp = tempfile.TemporaryDirectory()
        self.proxy = Proxy(self.tmp.name, res)
        p = self.proxy
        self.assertTrue(p.wait(lambda: p.get("/ready")[0] == 200), "skiff not LIVE")
        self.assertEqual(p.nacks(), [])
        for port in ports:
            self.assertTrue(p.wait(lambda: listening(port)), "listener not accepting")

    def tearDown(self):
        if getattr(self, "proxy", None):
            rc = self.proxy.stop()
            if rc != 0:
                print(open(os.path.join(self.tmp.name, "skiff.log")).read()[-3000:])
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
        res = {"resources": [cluster("hc", [a.port, b.port], hc),
                             listener("hc_in", port, [
                                 {"name": "envoy.filters.network.http_connection_manager",
                                  "typed_config": hcm("hc_in", "hc")}])]}
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
        res = {"resources": [cluster("tcphc", [a.port, dead], hc),
                             listener("tcphc_in", port, [
                                 {"name": "envoy.filters.network.http_connection_manager",
                                  "typed_config": hcm("tcphc_in", "tcphc")}])]}
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
        res = {"resources": [cluster("echo", [echo.port]),
                             listener("rl_tcp", port, [
                                 net_limit("tcp_rl", 3),
                                 {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                                     "@type": TCP_PROXY_TYPE, "stat_prefix": "rl_tcp",
                                     "cluster": "echo"}}])]}
        self.start(res, [port])
        for i in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"hello %d" % i)
                self.assertEqual(s.recv(100), b"hello %d" % i)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            try:
                s.sendall(b"again")
                data = s.recv(100)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            self.assertEqual(data, b"")
        self.assertEqual(echo.conns, 3)
        p = self.proxy
        self.assertTrue(p.wait(lambda: p.stat("local_ratelimit.tcp_rl.rate_limited") == "1"))
        # A rebuilt snapshot (a cluster more) keeps the bucket, and it is still empty.
        clusters = int(p.stat("cluster_manager.active_clusters"))
        res["resources"].append(cluster("other", [echo.port]))
        with open(p.path + ".new", "w") as f:
            json.dump(res, f)
        os.replace(p.path + ".new", p.path)
        self.assertTrue(p.wait(
            lambda: int(p.stat("cluster_manager.active_clusters")) == clusters + 1))
        time.sleep(0.2)  # the workers swap the new snapshot in
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            try:
                s.sendall(b"after rebuild")
                data = s.recv(100)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            self.assertEqual(data, b"")
        self.assertEqual(echo.conns, 3)
        self.assertTrue(p.wait(lambda: p.stat("local_ratelimit.tcp_rl.rate_limited") == "2"))

    def test_http_connection_manager(self):
        a = Backend("a")
        self.backends = [a]
        port = free_port()
        res = {"resources": [cluster("web", [a.port]),
                             listener("rl_http", port, [
                                 net_limit("http_rl", 2),
                                 {"name": "envoy.filters.network.http_connection_manager",
                                  "typed_config": hcm("rl_http", "web")}])]}
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
