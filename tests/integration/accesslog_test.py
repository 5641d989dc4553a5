#!/usr/bin/python3
"""Envoy's file access log end to end: skiff configured by tools/xds-files over ADS with a
listener whose http_connection_manager carries access_log entries of envoy.access_loggers.file
(Istio's TEXT format in log_format.text_format_source.inline_string, as istiod sends for
meshConfig.accessLogFile, and a JSON format to a second file), and on tcp_proxy, started with
--file-flush-interval-msec 100 as pilot-agent starts Envoy (with 1000), in front of the
recording backend of backends.py.

Covered: a 200 over HTTP/1.1 and over h2c (method, path, protocol, code, "-" flags,
via_upstream, body bytes, upstream host and cluster, addresses, route name), a 404 NR
route_not_found, a 503 UF to a closed port with its upstream host, a 503 UH for a cluster
without endpoints, a fault abort with FI, the JSON line's keys and types, a tcp_proxy connection ("- - -" 0, bytes both ways, upstream
host and cluster) and one to a closed port (UF), each line within
about a second, and POST /reopen_logs after the file was renamed making a new one.

  meson test -C build integration-accesslog
  SKIFF=build/agent/skiff SRCDIR=. python3 tests/integration/accesslog_test.py [Class[.test]]"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

SKIFF = os.environ["SKIFF"]
SRCDIR = os.environ["SRCDIR"]
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from backends import HttpBackend  # noqa: E402
from harness import free_port  # noqa: E402

TYPE = "type.googleapis.com/"
FAULT = TYPE + "envoy.extensions.filters.http.fault.v3.HTTPFault"
FILE_LOG = TYPE + "envoy.extensions.access_loggers.file.v3.FileAccessLog"
PREFIX = "outbound_0.0.0.0_accesslog"

# Istio's EnvoyTextLogFormat (pilot/pkg/model/telemetry_logging.go).
ISTIO_TEXT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    '%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% '
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% '
    '%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% '
    '%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n')
# Istio's EnvoyJSONLogFormatIstio, in part.
ISTIO_JSON = {
    "start_time": "%START_TIME%", "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%", "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%", "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%", "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "user_agent": "%REQ(USER-AGENT)%", "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%", "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%", "route_name": "%ROUTE_NAME%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}
TEXT_LINE = re.compile(
    r'^\[(?P<start>\S+)\] "(?P<method>\S+) (?P<path>\S+) (?P<proto>\S+)" (?P<code>\d+) '
    r'(?P<flags>\S+) (?P<details>\S+) (?P<term>\S+) "(?P<utfr>[^"]*)" (?P<rx>\d+) (?P<tx>\d+) '
    r'(?P<duration>\d+) (?P<ust>\S+) "(?P<xff>[^"]*)" "(?P<ua>[^"]*)" "(?P<rid>[^"]*)" '
    r'"(?P<authority>[^"]*)" "(?P<uhost>[^"]*)" (?P<ucluster>\S+) (?P<ulocal>\S+) '
    r'(?P<dlocal>\S+) (?P<dremote>\S+) (?P<sni>\S+) (?P<route>\S+)$')
START = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")




def million(pct):
    return {"numerator": int(pct * 10000), "denominator": "MILLION"}


def file_log(path, fmt):
    """An access_log entry as istiod writes it for meshConfig.accessLogFile."""
    if isinstance(fmt, dict):
        log_format = {"json_format": fmt}
    else:
        log_format = {"text_format_source": {"inline_string": fmt}}
    return {"name": "envoy.access_loggers.file",
            "typed_config": {"@type": FILE_LOG, "path": path, "log_format": log_format}}


def tcp_listener(name, port, cluster, path):
    """A listener whose only chain is tcp_proxy to cluster, logging to path."""
    tp = {"@type": TYPE + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
          "stat_prefix": name, "cluster": cluster, "access_log": [file_log(path, ISTIO_TEXT)]}
    return {"@type": TYPE + "envoy.config.listener.v3.Listener", "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [
                {"name": "envoy.filters.network.tcp_proxy", "typed_config": tp}]}]}


def resources(backend_port, dead_port, listen_port, text_path, json_path, tcp_port=None,
              tcp_dead_port=None, tcp_path=None):
    def static(name, *ports):
        return {"@type": TYPE + "envoy.config.cluster.v3.Cluster", "name": name,
                "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": p}}}} for p in ports]}]}}

    backend = "outbound|80||backend.default.svc.cluster.local"
    hcm = {
        "@type": TYPE + "envoy.extensions.filters.network.http_connection_manager.v3."
                        "HttpConnectionManager",
        "stat_prefix": PREFIX, "codec_type": "AUTO",
        "rds": {"route_config_name": "accesslog",
                "config_source": {"ads": {}, "initial_fetch_timeout": "0s",
                                  "resource_api_version": "V3"}},
        "access_log": [file_log(text_path, ISTIO_TEXT), file_log(json_path, ISTIO_JSON)],
        "http_filters": [
            {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": TYPE + "envoy.extensions.filters.http.router.v3.Router"}},
        ]}
    listener = {
        "@type": TYPE + "envoy.config.listener.v3.Listener", "name": "accesslog",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
        "filter_chains": [{"filters": [
            {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}

    def route(name, prefix, cluster, per_filter=None):
        r = {"name": name, "match": {"prefix": prefix, "case_sensitive": True},
             "route": {"cluster": cluster, "timeout": "0s"}}
        if per_filter:
            r["typed_per_filter_config"] = per_filter
        return r

    routes = {
        "@type": TYPE + "envoy.config.route.v3.RouteConfiguration", "name": "accesslog",
        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            route("ok", "/ok", backend),
            route("dead", "/dead", "dead"),
            route("empty", "/empty", "empty"),
            route("abort", "/abort", backend, {"envoy.filters.http.fault": {
                "@type": FAULT, "abort": {"http_status": 503, "percentage": million(100)}}}),
        ]}]}
    res = [static(backend, backend_port), static("dead", dead_port), static("empty"), listener,
           routes]
    if tcp_port:
        res.append(tcp_listener("tcp-ok", tcp_port, backend, tcp_path))
        res.append(tcp_listener("tcp-dead", tcp_dead_port, "dead", tcp_path))
    return {"resources": res}


class Skiff:
    def __init__(self, sock, workdir):
        boot = {
            "node": {"id": "sidecar~127.0.0.1~t-1.default~default.svc.cluster.local",
                     "cluster": "t.default"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "dynamic_resources": {
                "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                               "set_node_on_first_message_only": True,
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
        path = os.path.join(workdir, "bootstrap.json")
        with open(path, "w") as f:
            json.dump(boot, f)
        self.log = open(os.path.join(workdir, "skiff.log"), "w")
        adm = os.path.join(workdir, "admin")
        self.proc = subprocess.Popen([SKIFF, "-c", path, "--admin-address-path", adm,
                                      "-l", "info", "--concurrency", "2",
                                      "--file-flush-interval-msec", "100"],
                                     stdout=self.log, stderr=self.log)
        for _ in range(200):
            if os.path.exists(adm) and os.path.getsize(adm) > 0:
                break
            time.sleep(0.05)
        self.admin = "http://" + open(adm).read().strip()

    def post(self, path):
        req = urllib.request.Request(self.admin + path, method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        self.log.close()
        return rc


def http1(port, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def read_lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def wait_line(path, needle, timeout=3.0):
    """The first line of path containing needle, and how long it took to appear."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        for line in read_lines(path):
            if needle in line:
                return line, time.time() - t0
        time.sleep(0.02)
    raise AssertionError("no line with %r in %s within %.1fs: %s"
                         % (needle, path, timeout, read_lines(path)[-5:]))


class AccessLog(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        tmp = cls.tmp.name
        cls.backend = HttpBackend("backend")
        cls.dead_port = free_port()
        cls.port = free_port()
        cls.text = os.path.join(tmp, "access.log")
        cls.json = os.path.join(tmp, "access.json")
        cls.tcp_port = free_port()
        cls.tcp_dead_port = free_port()
        cls.tcp_log = os.path.join(tmp, "tcp.log")
        res = os.path.join(tmp, "resources.json")
        with open(res, "w") as f:
            json.dump(resources(cls.backend.port, cls.dead_port, cls.port, cls.text, cls.json,
                                cls.tcp_port, cls.tcp_dead_port, cls.tcp_log), f, indent=1)
        sock = os.path.join(tmp, "xds.sock")
        cls.events = os.path.join(tmp, "events.jsonl")
        cls.cp_log = open(os.path.join(tmp, "cp.log"), "w")
        cls.cp = subprocess.Popen(["/usr/bin/python3", "-W", "ignore",
                                   os.path.join(SRCDIR, "tools", "xds-files"),
                                   "--listen", "unix:" + sock, "--config", res,
                                   "--events", cls.events],
                                  stdout=subprocess.PIPE, stderr=cls.cp_log, text=True)
        line = cls.cp.stdout.readline().strip()
        if line != "listening on unix:" + sock:
            cls.tearDownClass()
            raise AssertionError("control plane did not start: " + line)
        cls.skiff = Skiff(sock, tmp)
        deadline = time.time() + 15
        ready = False
        while time.time() < deadline and not ready:
            try:
                ready = http1(cls.port, "/ok/ready-probe")[0] == 200
            except OSError:
                pass
            if not ready:
                time.sleep(0.1)
        if not ready:
            nacks = [ln for ln in open(cls.events)] if os.path.exists(cls.events) else []
            nacks = [ln for ln in nacks if '"nack"' in ln]
            cls.tearDownClass()
            raise AssertionError("the listener never served /ok/ready-probe; NACKs: %s" % nacks)

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "skiff", None):
            rc = cls.skiff.stop()
            cls.skiff = None
            if rc != 0:
                print("skiff exited with", rc, file=sys.stderr)
        if getattr(cls, "cp", None):
            cls.cp.terminate()
            try:
                cls.cp.wait(10)
            except subprocess.TimeoutExpired:
                cls.cp.kill()
                cls.cp.wait(10)
            cls.cp = None
        if getattr(cls, "cp_log", None):
            cls.cp_log.close()
        if getattr(cls, "backend", None):
            cls.backend.stop()
        cls.tmp.cleanup()

    def text_line(self, needle):
        line, took = wait_line(self.text, needle)
        m = TEXT_LINE.match(line)
        self.assertIsNotNone(m, line)
        self.assertLess(took, 1.5, "the line took %.2fs to appear" % took)
        return m.groupdict()

    def test_200_http1(self):
        status, body = http1(self.port, "/ok/one?x=1", {"user-agent": "al-test/1",
                                                         "x-request-id": "rid-http1"})
        self.assertEqual(status, 200)
        f = self.text_line("/ok/one?x=1")
        self.assertRegex(f["start"], START)
        self.assertEqual((f["method"], f["path"], f["proto"]), ("GET", "/ok/one?x=1", "HTTP/1.1"))
        self.assertEqual((f["code"], f["flags"], f["details"]), ("200", "-", "via_upstream"))
        self.assertEqual((f["term"], f["utfr"]), ("-", "-"))
        self.assertEqual(f["rx"], "0")
        self.assertEqual(int(f["tx"]), len(body))
        self.assertRegex(f["ust"], r"^\d+$")
        self.assertEqual((f["ua"], f["rid"]), ("al-test/1", "rid-http1"))
        self.assertEqual(f["authority"], "127.0.0.1:%d" % self.port)
        self.assertEqual(f["uhost"], "127.0.0.1:%d" % self.backend.port)
        self.assertEqual(f["ucluster"], "outbound|80||backend.default.svc.cluster.local")
        self.assertEqual(f["dlocal"], "127.0.0.1:%d" % self.port)
        self.assertRegex(f["dremote"], r"^127\.0\.0\.1:\d+$")
        self.assertEqual((f["sni"], f["route"]), ("-", "ok"))

    def test_200_post_bytes(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("POST", "/ok/post", body=b"x" * 1234)
        r = conn.getresponse()
        body = r.read()
        conn.close()
        self.assertEqual(r.status, 200)
        f = self.text_line("/ok/post")
        self.assertEqual((f["method"], f["rx"], f["tx"]), ("POST", "1234", str(len(body))))

    def test_200_h2c(self):
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              "--http2-prior-knowledge", "-A", "al-h2",
                              "http://127.0.0.1:%d/ok/h2" % self.port],
                             capture_output=True, text=True, timeout=10)
        self.assertEqual(out.stdout, "200")
        f = self.text_line("/ok/h2")
        self.assertEqual((f["method"], f["proto"], f["code"], f["flags"]),
                         ("GET", "HTTP/2", "200", "-"))
        self.assertEqual(f["ua"], "al-h2")
        self.assertEqual(f["uhost"], "127.0.0.1:%d" % self.backend.port)

    def test_404_no_route(self):
        self.assertEqual(http1(self.port, "/nowhere")[0], 404)
        f = self.text_line("/nowhere")
        self.assertEqual((f["code"], f["flags"], f["details"]), ("404", "NR", "route_not_found"))
        self.assertEqual((f["uhost"], f["ucluster"], f["route"], f["ust"]), ("-", "-", "-", "-"))

    def test_503_connect_failure(self):
        self.assertEqual(http1(self.port, "/dead/x")[0], 503)
        f = self.text_line("/dead/x")
        self.assertEqual((f["code"], f["flags"]), ("503", "UF"))
        self.assertEqual(f["details"],
                         "upstream_reset_before_response_started{connection_failure}")
        self.assertEqual((f["uhost"], f["ucluster"]), ("127.0.0.1:%d" % self.dead_port, "dead"))

    def test_503_no_healthy_upstream(self):
        self.assertEqual(http1(self.port, "/empty/x")[0], 503)
        f = self.text_line("/empty/x")
        self.assertEqual((f["code"], f["flags"], f["details"]),
                         ("503", "UH", "no_healthy_upstream"))
        self.assertEqual((f["uhost"], f["ucluster"]), ("-", "empty"))

    def test_fault_abort(self):
        self.assertEqual(http1(self.port, "/abort/x")[0], 503)
        f = self.text_line("/abort/x")
        self.assertEqual((f["code"], f["flags"], f["details"]),
                         ("503", "FI", "fault_filter_abort"))
        self.assertEqual(f["route"], "abort")

    def test_json(self):
        self.assertEqual(http1(self.port, "/ok/json", {"user-agent": "al-json"})[0], 200)
        line, took = wait_line(self.json, "/ok/json")
        self.assertLess(took, 1.5)
        j = json.loads(line)
        self.assertEqual(set(j), set(ISTIO_JSON))
        self.assertEqual((j["method"], j["path"], j["protocol"]), ("GET", "/ok/json", "HTTP/1.1"))
        self.assertEqual((j["response_code"], j["response_flags"]), (200, "-"))
        self.assertEqual((j["bytes_received"], j["user_agent"]), (0, "al-json"))
        self.assertIsInstance(j["duration"], int)
        self.assertIsNone(j["upstream_transport_failure_reason"])
        self.assertEqual(j["upstream_cluster"], "outbound|80||backend.default.svc.cluster.local")
        self.assertRegex(j["start_time"], START)

    def tcp_line(self, needle):
        line, took = wait_line(self.tcp_log, needle)
        m = TEXT_LINE.match(line)
        self.assertIsNotNone(m, line)
        self.assertLess(took, 1.5, "the line took %.2fs to appear" % took)
        return m.groupdict()

    def test_tcp_proxy(self):
        req = b"GET /tcp HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        deadline = time.time() + 10
        resp = b""
        while time.time() < deadline and not resp:
            try:
                with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=5) as so:
                    so.sendall(req)
                    while True:
                        b = so.recv(65536)
                        if not b:
                            break
                        resp += b
            except OSError:
                time.sleep(0.1)
        self.assertTrue(resp.startswith(b"HTTP/1.1 200"), resp[:100])
        f = self.tcp_line("127.0.0.1:%d " % self.tcp_port)
        self.assertEqual((f["method"], f["path"], f["proto"]), ("-", "-", "-"))
        self.assertEqual((f["code"], f["flags"], f["details"]), ("0", "-", "-"))
        self.assertEqual((f["rx"], f["tx"]), (str(len(req)), str(len(resp))))
        self.assertEqual(f["uhost"], "127.0.0.1:%d" % self.backend.port)
        self.assertEqual(f["ucluster"], "outbound|80||backend.default.svc.cluster.local")

    def test_tcp_proxy_connect_failure(self):
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.tcp_dead_port), timeout=5) as so:
                    self.assertEqual(so.recv(100), b"")
                break
            except OSError:
                time.sleep(0.1)
        f = self.tcp_line("127.0.0.1:%d " % self.tcp_dead_port)
        self.assertEqual((f["code"], f["flags"]), ("0", "UF"))
        self.assertEqual((f["uhost"], f["ucluster"]), ("127.0.0.1:%d" % self.dead_port, "dead"))

    def test_zz_reopen(self):
        self.assertEqual(http1(self.port, "/ok/before-rotate")[0], 200)
        wait_line(self.text, "/ok/before-rotate")
        rotated = self.text + ".1"
        os.rename(self.text, rotated)
        self.assertEqual(self.skiff.post("/reopen_logs")[0], 200)
        self.assertEqual(http1(self.port, "/ok/after-rotate")[0], 200)
        line, _ = wait_line(self.text, "/ok/after-rotate")
        self.assertTrue(TEXT_LINE.match(line), line)
        self.assertFalse(any("/ok/after-rotate" in ln for ln in read_lines(rotated)))
        self.assertTrue(any("/ok/before-rotate" in ln for ln in read_lines(rotated)))


if __name__ == "__main__":
    unittest.main(verbosity=2)
