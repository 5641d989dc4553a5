#!/usr/bin/python3
"""skiff's ADS client against a real gRPC ADS server (python3-grpcio), over TCP and a unix
socket, state of the world and delta: initial sync and readiness, updates, removals, a bad
cluster NACKed with an error_detail naming it (its last good version kept, the good ones
applied), and the control plane stopped and restarted (the last good config keeps serving,
skiff reconnects and resyncs).

The server here is a scripted test peer: it answers what the test tells it to and records
every request, so each assertion can look at the exact protocol exchange."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (SHARED, SKIFF, SRCDIR, ControlPlane, Skiff, ads_bootstrap,  # noqa: E402
                     free_port)

sys.path.insert(0, os.path.join(SRCDIR, "tools"))
from xdslib import (CDS, EDS, LDS, RDS, SDS, TYPE, Ads, Any, CLA, Cluster, HCM,  # noqa: E402
                    Listener, M, RouteConfiguration, Secret, pack)


def eds_cluster(name):
    c = Cluster(name=name)
    c.type = 3  # EDS
    c.eds_cluster_config.service_name = name
    c.connect_timeout.seconds = 1
    return c


def static_cluster(name, port):
    c = Cluster(name=name)
    c.type = 0  # STATIC
    lb = c.load_assignment.endpoints.add().lb_endpoints.add()
    lb.endpoint.address.socket_address.address = "127.0.0.1"
    lb.endpoint.address.socket_address.port_value = port
    c.load_assignment.cluster_name = name
    return c


def bad_cluster(name):
    c = Cluster(name=name)
    c.transport_socket.name = "envoy.transport_sockets.nope"
    c.transport_socket.typed_config.CopyFrom(Any(type_url=TYPE + "nope.v1.Nope"))
    return c


def cla(name, port):
    m = CLA(cluster_name=name)
    lb = m.endpoints.add().lb_endpoints.add()
    lb.endpoint.address.socket_address.address = "127.0.0.1"
    lb.endpoint.address.socket_address.port_value = port
    return m


def http_listener(name, route):
    l = Listener(name=name)
    l.address.socket_address.address = "0.0.0.0"
    l.address.socket_address.port_value = 9080
    hcm = HCM(stat_prefix=name)
    hcm.rds.route_config_name = route
    hcm.rds.config_source.ads.SetInParent()
    f = l.filter_chains.add().filters.add()
    f.name = "envoy.filters.network.http_connection_manager"
    f.typed_config.CopyFrom(pack(hcm))
    return l




def start_skiff(target, delta, workdir, bootstrap=None, extra_args=()):
    """skiff at -l debug on `bootstrap`, or on an ADS bootstrap for target ("unix:<path>" or
    "<host>:<port>"), SotW or delta."""
    if bootstrap is None:
        bootstrap = ads_bootstrap(target or None, pod="t-1", app="t.default", delta=delta,
                                  grpc_clusters=("xds-grpc",))
    return Skiff(workdir, bootstrap, extra_args, level="debug", start_timeout=5)


def cluster_names(d):
    return sorted(e["cluster"]["name"] for e in d.get("dynamic_active_clusters", []))


class AdsTest:
    delta = False
    unix = False

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addr = ("unix:" + os.path.join(self.tmp.name, "xds.sock")) if self.unix else "127.0.0.1:0"
        self.ads = Ads(self.addr)
        if not self.unix:
            self.addr = f"127.0.0.1:{self.ads.port}"
        self.ads.set(CDS, eds_cluster("outbound|9080||reviews.default.svc.cluster.local"),
                     static_cluster("static-one", 9001))
        self.ads.set(EDS, cla("outbound|9080||reviews.default.svc.cluster.local", 9080))
        self.ads.set(LDS, http_listener("0.0.0.0_9080", "9080"))
        self.ads.set(RDS, RouteConfiguration(name="9080"))
        self.skiff = start_skiff(self.addr, self.delta, self.tmp.name)

    def tearDown(self):
        rc = self.skiff.stop()
        self.ads.stop()
        if rc != 0:
            print(open(os.path.join(self.tmp.name, "skiff.log")).read()[-3000:])
        self.assertEqual(rc, 0, "skiff exit status")
        self.tmp.cleanup()

    def live(self):
        return self.skiff.get("/ready")[0] == 200

    def test_initial_sync_update_removal_and_nack(self):
        s = self.skiff
        self.assertTrue(s.wait(self.live), "skiff did not become LIVE")
        self.assertEqual(s.stat("server.state"), "0")
        self.assertEqual(s.stat("listener_manager.workers_started"), "1")
        self.assertEqual(s.stat("cluster_manager.cds.update_success"), "1")
        self.assertEqual(s.stat("listener_manager.lds.update_success"), "1")
        self.assertEqual(s.stat("control_plane.connected_state"), "1")
        self.assertEqual(cluster_names(s.dump("ClustersConfigDump")),
                         ["outbound|9080||reviews.default.svc.cluster.local", "static-one"])
        eds = s.dump("EndpointsConfigDump")["dynamic_endpoint_configs"]
        self.assertEqual(eds[0]["endpoint_config"]["cluster_name"],
                         "outbound|9080||reviews.default.svc.cluster.local")
        lds = s.dump("ListenersConfigDump")["dynamic_listeners"]
        self.assertEqual(lds[0]["name"], "0.0.0.0_9080")
        self.assertIn("active_state", lds[0])
        self.assertEqual(lds[0]["active_state"]["listener"]["filter_chains"][0]["filters"][0]
                         ["typed_config"]["rds"]["route_config_name"], "9080")
        rds = s.dump("RoutesConfigDump")["dynamic_route_configs"]
        self.assertEqual(rds[0]["route_config"]["name"], "9080")
        self.assertEqual(s.stat("http.0.0.0.0_9080.rds.9080.update_success"), "1")
        self.assertEqual(
            s.stat("cluster.outbound|9080||reviews.default.svc.cluster.local.update_success"), "1")
        # node only on the first request of the stream
        first = self.ads.requests[0]
        self.assertTrue(first[6].startswith("sidecar~"))
        self.assertTrue(all(r[6] == "" for r in self.ads.requests[1:]))
        # EDS and RDS were asked for by name
        self.assertTrue(self.ads.wait_for(lambda rs: any(
            r[1] == EDS and r[4] == ["outbound|9080||reviews.default.svc.cluster.local"] for r in rs)))
        self.assertTrue(self.ads.wait_for(lambda rs: any(r[1] == RDS and r[4] == ["9080"] for r in rs)))

        # update: a new cluster
        self.ads.set(CDS, static_cluster("static-two", 9002))
        self.assertTrue(s.wait(lambda: "static-two" in cluster_names(s.dump("ClustersConfigDump"))))
        self.assertEqual(s.stat("cluster_manager.cds.update_success"), "2")

        # a bad cluster: NACKed naming it and the field; the good ones of the same response
        # apply; the bad one's last good version keeps serving
        self.ads.set(CDS, bad_cluster("static-one"), static_cluster("static-three", 9003))
        self.assertTrue(self.ads.wait_for(lambda rs: any(r[1] == CDS and r[5] for r in rs)),
                        "no NACK")
        nack = [r for r in self.ads.requests if r[1] == CDS and r[5]][-1]
        self.assertIn("static-one", nack[5])
        self.assertIn("transport_socket.typed_config", nack[5])
        self.assertIn("nope.v1.Nope", nack[5])
        self.assertTrue(s.wait(lambda: s.stat("cluster_manager.cds.update_rejected") == "1"))
        names = cluster_names(s.dump("ClustersConfigDump"))
        self.assertIn("static-three", names)
        kept = [e for e in s.dump("ClustersConfigDump")["dynamic_active_clusters"]
                if e["cluster"]["name"] == "static-one"]
        self.assertEqual(kept[0]["cluster"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
                         ["endpoint"]["address"]["socket_address"]["port_value"], 9001)
        if not self.delta:
            # SotW NACK: the last accepted version, the rejected nonce
            self.assertNotEqual(nack[2], "")
            self.assertEqual(nack[3], f"v{self.ads.version - 1}")

        # removal
        self.ads.set(CDS, static_cluster("static-one", 9001), remove=["static-two"])
        self.assertTrue(s.wait(lambda: "static-two" not in cluster_names(s.dump("ClustersConfigDump"))))
        self.assertEqual(s.get("/ready")[0], 200)

    def test_control_plane_restart(self):
        s = self.skiff
        self.assertTrue(s.wait(self.live))
        self.ads.stop()
        self.assertTrue(s.wait(lambda: s.stat("control_plane.connected_state") == "0"))
        self.assertEqual(s.stat("cluster_manager.cds.update_failure"), "1")
        # the last good config keeps serving
        self.assertEqual(s.get("/ready")[0], 200)
        self.assertEqual(len(cluster_names(s.dump("ClustersConfigDump"))), 2)
        # a new control plane on the same address: skiff reconnects and resyncs
        if not self.unix:
            self.ads = Ads(self.addr)
        else:
            os.unlink(self.addr[5:]) if os.path.exists(self.addr[5:]) else None
            self.ads = Ads(self.addr)
        self.ads.set(CDS, static_cluster("after-restart", 9010))
        self.ads.set(LDS, http_listener("0.0.0.0_9080", "9080"))
        self.ads.set(RDS, RouteConfiguration(name="9080"))
        self.assertTrue(s.wait(lambda: "after-restart" in cluster_names(s.dump("ClustersConfigDump")),
                               timeout=15), "no resync after the control plane came back")
        self.assertEqual(s.stat("control_plane.connected_state"), "1")
        if self.delta:
            # delta: the reconnect names the versions already held
            first_cds = [r for r in self.ads.requests if r[1] == CDS][0]
            self.assertIn("static-one", first_cds[7])


def dump_resources(path):
    """The dynamic clusters, listeners and route configurations of a real config dump, decoded
    with the project's own declarations."""
    from google.protobuf import json_format
    out = {CDS: [], LDS: [], RDS: []}
    for cfg in json.load(open(path))["configs"]:
        for e in cfg.get("dynamic_active_clusters", []):
            out[CDS].append(e["cluster"])
        for e in cfg.get("dynamic_listeners", []):
            if "active_state" in e:
                out[LDS].append(e["active_state"]["listener"])
        for e in cfg.get("dynamic_route_configs", []):
            out[RDS].append(e["route_config"])
    decoded = {}
    for t, items in out.items():
        cls = {CDS: Cluster, LDS: Listener, RDS: RouteConfiguration}[t]
        decoded[t] = [json_format.ParseDict({k: v for k, v in r.items() if k != "@type"}, cls(),
                                            descriptor_pool=Cluster.DESCRIPTOR.file.pool)
                      for r in items]
    return decoded


class IstioGolden:
    """Istio's bootstrap golden, as pilot-agent passes it, pointed at an ADS server on a unix
    socket that serves the resources of a real Istio sidecar's config dump."""
    delta = True

    def test_real_dump_synced_and_acked(self):
        res = dump_resources(os.path.join(SHARED, "istio", "01-ossm-sidecar-config-dump",
                                          "hello-openshift-sidecar-config_dump.json"))
        with tempfile.TemporaryDirectory() as tmp:
            sock = os.path.join(tmp, "XDS")
            ads = Ads("unix:" + sock)
            ads.set(CDS, *res[CDS])
            # istiod sends a ClusterLoadAssignment for every EDS cluster, empty when it has no
            # endpoints; the dump was taken without ?include_eds.
            eds = [c.eds_cluster_config.service_name or c.name for c in res[CDS] if c.type == 3]
            ads.set(EDS, *[CLA(cluster_name=n) for n in eds])
            ads.set(LDS, *res[LDS])
            ads.set(RDS, *res[RDS])
            # pilot-agent's SDS server, on its own unix socket, serves the workload certificate
            # ("default") and the root certificate ("ROOTCA")
            sds_sock = os.path.join(tmp, "sds.sock")
            sds = Ads("unix:" + sds_sock)
            default = Secret(name="default")
            default.tls_certificate.certificate_chain.inline_bytes = b"-----BEGIN CERTIFICATE-----\n"
            default.tls_certificate.private_key.inline_bytes = b"-----BEGIN PRIVATE KEY-----\nsecret\n"
            rootca = Secret(name="ROOTCA")
            rootca.validation_context.trusted_ca.inline_bytes = b"-----BEGIN CERTIFICATE-----\n"
            boot = json.load(open(os.path.join(SHARED, "istio", "04-bootstrap", "default_golden.json")))
            for c in boot["static_resources"]["clusters"]:
                ep = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                if c["name"] == "xds-grpc":
                    ep["address"] = {"pipe": {"path": sock}}
                if c["name"] == "sds-grpc":
                    ep["address"] = {"pipe": {"path": sds_sock}}
            boot["admin"]["address"]["socket_address"]["port_value"] = 0
            if not self.delta:
                boot["dynamic_resources"]["ads_config"]["api_type"] = "GRPC"
            s = start_skiff("", self.delta, tmp, bootstrap=boot, extra_args=[
                "--drain-time-s", "45", "--drain-strategy", "immediate",
                "--local-address-ip-version", "v4", "--file-flush-interval-msec", "1000",
                "--disable-hot-restart", "--allow-unknown-static-fields"])
            try:
                # without secrets the listeners and the mTLS clusters stay warming
                self.assertTrue(sds.wait_for(lambda rs: any(r[1] == SDS for r in rs)),
                                "no SDS request")
                time.sleep(0.3)
                self.assertEqual(s.get("/ready")[0], 503)
                self.assertNotEqual(s.stat("cluster_manager.warming_clusters"), "0")
                sds.set(SDS, default, rootca)
                self.assertTrue(s.wait(lambda: s.get("/ready")[0] == 200, timeout=20),
                                "not LIVE: " + s.get("/ready")[1])
                asked = set()
                for r in sds.requests:
                    if r[1] == SDS:
                        asked.update(r[4])
                self.assertEqual(asked, {"default", "ROOTCA"})
                secrets = s.dump("SecretsConfigDump")["dynamic_active_secrets"]
                self.assertEqual(sorted(x["name"] for x in secrets), ["ROOTCA", "default"])
                dflt = [x for x in secrets if x["name"] == "default"][0]
                self.assertEqual(dflt["secret"]["tls_certificate"]["private_key"],
                                 {"inline_bytes": "W3JlZGFjdGVkXQ=="})
                self.assertEqual(s.stat("cluster_manager.warming_clusters"), "0")
                # Envoy's per-resource stats: sds.<secret>.*, cluster.<name>.* for EDS
                self.assertEqual(s.stat("sds.default.update_success"), "1")
                self.assertEqual(s.stat("sds.ROOTCA.update_success"), "1")
                nacks = [r for r in ads.requests if r[5]]
                self.assertEqual(nacks, [], "every resource of the dump is ACKed")
                self.assertEqual(s.stat("cluster_manager.cds.update_success"), "1")
                self.assertEqual(s.stat("listener_manager.lds.update_success"), "1")
                self.assertEqual(s.stat("cluster_manager.cds.update_rejected"), "0")
                self.assertEqual(len(s.dump("ClustersConfigDump")["dynamic_active_clusters"]),
                                 len(res[CDS]))
                self.assertEqual(len(s.dump("ListenersConfigDump")["dynamic_listeners"]),
                                 len(res[LDS]))
                self.assertEqual(len(s.dump("RoutesConfigDump")["dynamic_route_configs"]),
                                 len(res[RDS]))
                # pilot-agent's readiness checks pass
                _, body = s.get("/stats?usedonly&filter=^(cluster_manager\\.cds|listener_manager\\.lds)\\.(update_success|update_rejected)$")
                self.assertIn("cluster_manager.cds.update_success: 1", body)
                self.assertIn("listener_manager.lds.update_success: 1", body)
                # istioctl reads the dump back: the echoed listener is the one received
                l0 = s.dump("ListenersConfigDump")["dynamic_listeners"][0]["active_state"]["listener"]
                self.assertIn(l0["name"], [l.name for l in res[LDS]])
            finally:
                rc = s.stop()
                ads.stop()
                sds.stop()
            self.assertEqual(rc, 0)


    def test_golden_with_file_control_plane(self):
        """Istio's bootstrap golden pointed at tools/xds-files'
        unix socket, serving a real dump whole (its secrets too, over the SDS service)."""
        dump = os.path.join(SHARED, "istio", "01-ossm-sidecar-config-dump",
                            "hello-openshift-sidecar-config_dump.json")
        with tempfile.TemporaryDirectory() as tmp:
            cp = ControlPlane(tmp, dump, poll=None)
            sock, events = cp.sock, cp.events
            boot = json.load(open(os.path.join(SHARED, "istio", "04-bootstrap", "default_golden.json")))
            for c in boot["static_resources"]["clusters"]:
                if c["name"] in ("xds-grpc", "sds-grpc"):
                    c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] = \
                        {"pipe": {"path": sock}}
            boot["admin"]["address"]["socket_address"]["port_value"] = 0
            if not self.delta:
                boot["dynamic_resources"]["ads_config"]["api_type"] = "GRPC"
            s = start_skiff("", self.delta, tmp, bootstrap=boot,
                      extra_args=["--allow-unknown-static-fields", "--drain-time-s", "45"])
            try:
                self.assertTrue(s.wait(lambda: s.get("/ready")[0] == 200, timeout=20),
                                "not LIVE: " + s.get("/ready")[1])
                evs = [json.loads(l) for l in open(events)]
                self.assertEqual([e for e in evs if e["event"] == "nack"], [])
                acked = {e["type_url"].rsplit(".", 1)[-1] for e in evs if e["event"] == "ack"}
                self.assertTrue({"Cluster", "ClusterLoadAssignment", "Listener",
                                 "RouteConfiguration", "Secret"} <= acked, acked)
                self.assertEqual(len(s.dump("ClustersConfigDump")["dynamic_active_clusters"]), 20)
                # the control plane dies: the last good configuration keeps serving
                cp.proc.send_signal(signal.SIGTERM)
                cp.proc.wait(10)
                self.assertTrue(s.wait(lambda: s.stat("control_plane.connected_state") == "0"))
                self.assertEqual(s.get("/ready")[0], 200)
                self.assertEqual(len(s.dump("ClustersConfigDump")["dynamic_active_clusters"]), 20)
            finally:
                self.assertEqual(s.stop(), 0)
                cp.stop()


    def test_authz_listeners_acked(self):
        """Istio's AuthorizationPolicy listener dump (RBAC, ext_authz, metadata exchange,
        HBONE internal listeners) served whole: every listener ACKed."""
        dump = os.path.join(SHARED, "istio", "03-istio-testdata-sidecar-listeners-rbac",
                            "authz-testdata-sidecar-listeners-configdump.json")
        with tempfile.TemporaryDirectory() as tmp:
            cp = ControlPlane(tmp, dump, poll=None)
            sock, events = cp.sock, cp.events
            s = start_skiff("unix:" + sock, self.delta, tmp)
            try:
                self.assertTrue(s.wait(lambda: s.stat("listener_manager.lds.update_success") == "1",
                                       timeout=20), "LDS not applied")
                evs = [json.loads(l) for l in open(events)]
                self.assertEqual([e["error"] for e in evs if e["event"] == "nack"], [])
                self.assertEqual(len(s.dump("ListenersConfigDump")["dynamic_listeners"]), 27)
            finally:
                self.assertEqual(s.stop(), 0)
                cp.stop()


class IstioLargeDump(unittest.TestCase):
    """Upstream Istio 1.18's sidecar dump with EDS (143 clusters and their endpoints, 140
    listeners, 90 route configurations, Lua and Wasm filters) served whole through
    tools/xds-files over delta: every resource ACKed, LIVE."""

    def test_istio_118_dump(self):
        dump = os.path.join(SHARED, "istio", "02-upstream-istio-1.18-sidecar-config-dump",
                            "geo-hr2-sidecar-config_dump_include_eds.json")
        with tempfile.TemporaryDirectory() as tmp:
            cp = ControlPlane(tmp, dump, poll=None)
            sock, events = cp.sock, cp.events
            boot = {
                "node": {"id": "sidecar~127.0.0.1~geo.default~default.svc.cluster.local",
                         "cluster": "geo.default"},
                "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
                "dynamic_resources": {
                    "ads_config": {"api_type": "DELTA_GRPC", "grpc_services": [
                        {"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
                    "cds_config": {"ads": {}, "initial_fetch_timeout": "0s"},
                    "lds_config": {"ads": {}, "initial_fetch_timeout": "0s"}},
                "static_resources": {"clusters": [
                    {"name": n, "type": "STATIC", "load_assignment": {"cluster_name": n, "endpoints": [
                        {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": sock}}}}]}]}}
                    for n in ("xds-grpc", "sds-grpc")]},
            }
            s = start_skiff("", True, tmp, bootstrap=boot)
            try:
                self.assertTrue(s.wait(lambda: s.get("/ready")[0] == 200, timeout=30),
                                "not LIVE: " + s.get("/ready")[1])
                evs = [json.loads(l) for l in open(events)]
                self.assertEqual([e["error"] for e in evs if e["event"] == "nack"], [])
                self.assertEqual(s.stat("cluster_manager.active_clusters"), "138")
                self.assertEqual(s.stat("listener_manager.total_listeners_active"), "140")
            finally:
                self.assertEqual(s.stop(), 0)
                cp.stop()


class IstioGoldenDelta(IstioGolden, unittest.TestCase):
    delta = True


class IstioGoldenSotw(IstioGolden, unittest.TestCase):
    delta = False


class FileControlPlane:
    """tools/xds-files, the file-based control plane, driving skiff: files in, pushes on
    change, bad files ignored, NACKs logged."""
    delta = False

    def write(self, path, text):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, path)  # atomic, as users (and Kubernetes configmaps) replace files

    def cluster_yaml(self, *names, bad=False):
        out = "resources:\n"
        for n in names:
            out += f"""- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: {n}
  type: STATIC
  connect_timeout: 1s
  load_assignment:
    cluster_name: {n}
    endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9000}}}}}}}}]}}]
"""
            if bad:
                out = out.replace("connect_timeout: 1s", "connect_timeout: -1s")
        return out

    def test_files_drive_skiff(self):
        with tempfile.TemporaryDirectory() as tmp:
            res = os.path.join(tmp, "clusters.yaml")
            lis = os.path.join(tmp, "listeners.json")
            self.write(res, self.cluster_yaml("one", "two"))
            self.write(lis, json.dumps({"resources": [
                {"@type": LDS, "name": "0.0.0.0_9080",
                 "address": {"socket_address": {"address": "0.0.0.0", "port_value": 9080}}}]}))
            cp = ControlPlane(tmp, res, lis, sock_name="xds.sock", poll=None)
            sock, events = cp.sock, cp.events
            try:
                s = start_skiff("unix:" + sock, self.delta, tmp)
                try:
                    self.assertTrue(s.wait(lambda: s.get("/ready")[0] == 200), "not LIVE")
                    self.assertEqual(cluster_names(s.dump("ClustersConfigDump")), ["one", "two"])
                    # a change to a file is pushed
                    self.write(res, self.cluster_yaml("one", "two", "three"))
                    self.assertTrue(s.wait(lambda: "three" in cluster_names(
                        s.dump("ClustersConfigDump"))), "change not pushed")
                    # a file that does not parse is reported; the last good state stays
                    self.write(res, "resources: [ {")
                    time.sleep(0.6)
                    self.assertEqual(cp.proc.poll(), None)
                    self.assertEqual(len(cluster_names(s.dump("ClustersConfigDump"))), 3)
                    # a bad resource: skiff NACKs it, the control plane logs the NACK
                    self.write(res, self.cluster_yaml("one", "two", "three") +
                               self.cluster_yaml("four", bad=True).replace("resources:\n", ""))
                    self.assertTrue(s.wait(lambda: os.path.exists(events) and
                                           '"nack"' in open(events).read()), "no NACK logged")
                    nack = [json.loads(l) for l in open(events) if '"nack"' in l][0]
                    self.assertIn("four", nack["error"])
                    self.assertIn("connect_timeout", nack["error"])
                    self.assertNotIn("four", cluster_names(s.dump("ClustersConfigDump")))
                    # and the ACKs are logged too
                    self.assertIn('"ack"', open(events).read())
                finally:
                    self.assertEqual(s.stop(), 0)
            finally:
                cp.stop()
            log = open(cp.logpath).read()
            self.assertIn("still serving the last good state", log)
            self.assertIn("NACK", log)


class PathConfigSource(unittest.TestCase):
    """Envoy's file-based config sources read by skiff itself: path_config_source with a
    watched_directory, reloaded when a file is moved into place."""

    def cds(self, *names, version="1"):
        out = f"version_info: '{version}'\nresources:\n"
        for n in names:
            out += f"""- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: {n}
  type: STATIC
  load_assignment: {{cluster_name: {n}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9000}}}}}}}}]}}]}}
"""
        return out

    def put(self, d, name, text):
        tmp = os.path.join(d, "." + name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, os.path.join(d, name))

    def test_watched_directory(self):
        with tempfile.TemporaryDirectory() as tmp:
            conf = os.path.join(tmp, "conf")
            os.mkdir(conf)
            self.put(conf, "cds.yaml", self.cds("one", "two"))
            self.put(conf, "lds.json", json.dumps({"version_info": "7", "resources": [
                {"@type": LDS, "name": "l1",
                 "address": {"socket_address": {"address": "0.0.0.0", "port_value": 9080}}}]}))
            boot = {
                "node": {"id": "n", "cluster": "c"},
                "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
                "dynamic_resources": {
                    "cds_config": {"path_config_source": {"path": os.path.join(conf, "cds.yaml"),
                                                          "watched_directory": {"path": conf}},
                                   "resource_api_version": "V3"},
                    "lds_config": {"path_config_source": {"path": os.path.join(conf, "lds.json")},
                                   "resource_api_version": "V3"},
                },
            }
            s = start_skiff("", False, tmp, bootstrap=boot)
            try:
                self.assertTrue(s.wait(lambda: s.get("/ready")[0] == 200), "not LIVE")
                self.assertEqual(cluster_names(s.dump("ClustersConfigDump")), ["one", "two"])
                self.assertEqual(s.dump("ListenersConfigDump")["version_info"], "7")
                self.assertEqual(s.stat("cluster_manager.cds.version_text"), '"1"')
                # an atomic rename into the watched directory reloads
                self.put(conf, "cds.yaml", self.cds("one", "three", version="2"))
                self.assertTrue(s.wait(lambda: cluster_names(s.dump("ClustersConfigDump")) ==
                                       ["one", "three"]), "not reloaded")
                # a broken file is rejected; the last good configuration stays
                self.put(conf, "cds.yaml", "version_info: '3'\nresources: [ {\n")
                self.assertTrue(s.wait(lambda: s.stat("cluster_manager.cds.update_rejected") == "1"))
                self.assertEqual(cluster_names(s.dump("ClustersConfigDump")), ["one", "three"])
                # a file with a bad field names it
                self.put(conf, "cds.yaml", self.cds("one").replace("type: STATIC", "typo: STATIC"))
                self.assertTrue(s.wait(lambda: s.stat("cluster_manager.cds.update_rejected") == "2"))
                log = open(os.path.join(tmp, "skiff.log")).read()
                self.assertRegex(log, r"cds\.yaml:\d+: .*typo")
                # an EDS cluster whose endpoints come from a file, and a listener whose routes do
                self.put(conf, "eds.yaml", f"""resources:
- "@type": {EDS}
  cluster_name: from-eds
  endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9100}}}}}}}}]}}]
""")
                self.put(conf, "rds.yaml", f"""resources:
- "@type": {RDS}
  name: local-routes
  virtual_hosts: [{{name: all, domains: ["*"]}}]
""")
                self.put(conf, "cds.yaml", self.cds("one", version="4") + f"""- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: from-eds
  type: EDS
  eds_cluster_config: {{eds_config: {{path_config_source: {{path: {conf}/eds.yaml}}}}}}
""")
                hcm = {"@type": TYPE + HCM.DESCRIPTOR.full_name, "stat_prefix": "in",
                       "rds": {"route_config_name": "local-routes",
                               "config_source": {"path_config_source": {"path": conf + "/rds.yaml"}}}}
                self.put(conf, "lds.json", json.dumps({"version_info": "8", "resources": [
                    {"@type": LDS, "name": "l2",
                     "address": {"socket_address": {"address": "0.0.0.0", "port_value": 9081}},
                     "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]}]}))
                self.assertTrue(s.wait(lambda: "from-eds" in cluster_names(s.dump("ClustersConfigDump"))),
                                "the EDS cluster did not leave warming")
                eds = s.dump("EndpointsConfigDump")["dynamic_endpoint_configs"]
                self.assertEqual(eds[0]["endpoint_config"]["cluster_name"], "from-eds")
                # l2 (not a listener from before) active, its routes read from rds.yaml
                self.assertTrue(s.wait(lambda: any(
                    l.get("name") == "l2" and "active_state" in l
                    for l in s.dump("ListenersConfigDump")["dynamic_listeners"])))
                self.assertTrue(s.wait(lambda: s.dump("RoutesConfigDump").get("dynamic_route_configs")))
                rds = s.dump("RoutesConfigDump")["dynamic_route_configs"]
                self.assertEqual(rds[0]["route_config"]["name"], "local-routes")
            finally:
                self.assertEqual(s.stop(), 0)


class DirectIstiod(unittest.TestCase):
    """ADS straight to an istiod-like server over TLS (google_grpc with ssl_credentials), with
    a bearer token as call credentials and the ClusterID metadata istiod expects."""

    def test_tls_token_and_metadata(self):
        with tempfile.TemporaryDirectory() as tmp:
            key, cert = os.path.join(tmp, "key.pem"), os.path.join(tmp, "cert.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=istiod",
                            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                           check=True, capture_output=True)
            ads = Ads("127.0.0.1:0", tls=(open(key, "rb").read(), open(cert, "rb").read()))
            ads.set(CDS, static_cluster("tls-one", 9001))
            ads.set(LDS, http_listener("0.0.0.0_9080", "9080"))
            ads.set(RDS, RouteConfiguration(name="9080"))
            boot = {
                "node": {"id": "sidecar~127.0.0.1~t-1.default~default.svc.cluster.local",
                         "cluster": "t.default"},
                "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
                "dynamic_resources": {
                    "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                                   "grpc_services": [{
                                       "google_grpc": {
                                           "target_uri": f"127.0.0.1:{ads.port}",
                                           "stat_prefix": "xds",
                                           "channel_credentials": {"ssl_credentials": {
                                               "root_certs": {"filename": cert}}},
                                           "call_credentials": [{"access_token": "tok-123"}]},
                                       "initial_metadata": [{"key": "clusterid",
                                                             "value": "Kubernetes"}]}]},
                    "cds_config": {"ads": {}, "resource_api_version": "V3"},
                    "lds_config": {"ads": {}, "resource_api_version": "V3"},
                },
            }
            s = start_skiff("", False, tmp, bootstrap=boot)
            try:
                self.assertTrue(s.wait(lambda: s.get("/ready")[0] == 200), "not LIVE over TLS")
                self.assertIn("tls-one", cluster_names(s.dump("ClustersConfigDump")))
                md = ads.metadata[0]
                self.assertEqual(md.get("authorization"), "Bearer tok-123")
                self.assertEqual(md.get("clusterid"), "Kubernetes")
            finally:
                self.assertEqual(s.stop(), 0)
                ads.stop()

    def test_token_file_reread_on_reconnect(self):
        """--xds-token-file: the bearer token comes from a file (Istio's projected
        istio-token) and is read again when the stream reconnects, so a rotated token is used."""
        with tempfile.TemporaryDirectory() as tmp:
            key, cert = os.path.join(tmp, "key.pem"), os.path.join(tmp, "cert.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=istiod",
                            "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                           capture_output=True)
            tls = (open(key, "rb").read(), open(cert, "rb").read())
            token = os.path.join(tmp, "istio-token")
            with open(token, "w") as f:
                f.write("first-token\n")
            ads = Ads("127.0.0.1:0", tls=tls)
            port = ads.port
            ads.set(CDS, static_cluster("x", 9001))
            boot = {
                "node": {"id": "n", "cluster": "c"},
                "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
                "dynamic_resources": {
                    "ads_config": {"api_type": "GRPC", "grpc_services": [{"google_grpc": {
                        "target_uri": f"127.0.0.1:{port}", "stat_prefix": "xds",
                        "channel_credentials": {"ssl_credentials": {"root_certs": {"filename": cert}}}}}]},
                    "cds_config": {"ads": {}}, "lds_config": {"ads": {}}},
            }
            s = start_skiff("", False, tmp, bootstrap=boot, extra_args=["--xds-token-file", token])
            try:
                self.assertTrue(ads.wait_for(lambda rs: len(rs) > 0), "no request")
                self.assertEqual(ads.metadata[0].get("authorization"), "Bearer first-token")
                with open(token, "w") as f:
                    f.write("rotated-token\n")
                ads.stop()
                ads = Ads(f"127.0.0.1:{port}", tls=tls)
                ads.set(CDS, static_cluster("x", 9001))
                self.assertTrue(ads.wait_for(lambda rs: len(rs) > 0, timeout=15), "no reconnect")
                self.assertEqual(ads.metadata[0].get("authorization"), "Bearer rotated-token")
            finally:
                rc = s.stop()
                ads.stop()
                if rc != 0:
                    print(open(os.path.join(tmp, "skiff.log")).read()[-6000:])
                self.assertEqual(rc, 0, "skiff exit status")

    def test_untrusted_server_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            key, cert = os.path.join(tmp, "key.pem"), os.path.join(tmp, "cert.pem")
            other_key, other = os.path.join(tmp, "k2.pem"), os.path.join(tmp, "other.pem")
            for k, c in ((key, cert), (other_key, other)):
                subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                                "-keyout", k, "-out", c, "-days", "1", "-subj", "/CN=istiod",
                                "-addext", "subjectAltName=IP:127.0.0.1"],
                               check=True, capture_output=True)
            ads = Ads("127.0.0.1:0", tls=(open(key, "rb").read(), open(cert, "rb").read()))
            ads.set(CDS, static_cluster("x", 9001))
            boot = {
                "node": {"id": "n", "cluster": "c"},
                "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
                "dynamic_resources": {
                    "ads_config": {"api_type": "GRPC", "grpc_services": [{"google_grpc": {
                        "target_uri": f"127.0.0.1:{ads.port}", "stat_prefix": "xds",
                        "channel_credentials": {"ssl_credentials": {"root_certs": {"filename": other}}}}}]},
                    "cds_config": {"ads": {}}, "lds_config": {"ads": {}}},
            }
            s = start_skiff("", False, tmp, bootstrap=boot)
            try:
                time.sleep(1.5)
                self.assertEqual(ads.requests, [], "a request reached a server skiff must not trust")
                self.assertEqual(s.get("/ready")[0], 503)
            finally:
                self.assertEqual(s.stop(), 0)
                ads.stop()


class EchoServer:
    """A loopback backend that answers every chunk with a prefix and the chunk."""

    def __init__(self, prefix):
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.prefix = prefix
        self.accepted = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self.echo, args=(conn,), daemon=True).start()

    def echo(self, conn):
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                conn.sendall(self.prefix + data)

    def close(self):
        self.sock.close()


class TcpProxyListener(unittest.TestCase):
    """A listener with tcp_proxy from LDS: bound on every worker, relaying to the cluster's
    endpoints round robin; a listener LDS drops stops accepting."""

    def tcp_listener(self, name, port, cluster):
        l = Listener(name=name)
        l.address.socket_address.address = "127.0.0.1"
        l.address.socket_address.port_value = port
        tp = M("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy")(stat_prefix=name,
                                                                          cluster=cluster)
        f = l.filter_chains.add().filters.add()
        f.name = "envoy.filters.network.tcp_proxy"
        f.typed_config.CopyFrom(pack(tp))
        return l

    def roundtrip(self, port, payload):
        import socket
        with socket.create_connection(("127.0.0.1", port), timeout=5) as so:
            so.sendall(payload)
            want = len(payload) + 2
            got = b""
            while len(got) < want:
                chunk = so.recv(65536)
                if not chunk:
                    break
                got += chunk
            return got

    def test_relay(self):
        import socket
        a, b = EchoServer(b"A:"), EchoServer(b"B:")
        port = free_port()
        with tempfile.TemporaryDirectory() as tmp:
            ads = Ads("127.0.0.1:0")
            c = static_cluster("backends", a.port)
            lb = c.load_assignment.endpoints[0].lb_endpoints.add()
            lb.endpoint.address.socket_address.address = "127.0.0.1"
            lb.endpoint.address.socket_address.port_value = b.port
            ads.set(CDS, c)
            ads.set(LDS, self.tcp_listener("tcp_in", port, "backends"))
            s = start_skiff(f"127.0.0.1:{ads.port}", False, tmp, extra_args=["--concurrency", "2"])
            try:
                self.assertTrue(s.wait(lambda: s.get("/ready")[0] == 200))
                # bound on both workers (SO_REUSEPORT): a few connect attempts until up
                self.assertTrue(s.wait(lambda: self.try_roundtrip(port)), "listener not up")
                answers = [self.roundtrip(port, b"hello") for _ in range(8)]
                self.assertTrue(all(x in (b"A:hello", b"B:hello") for x in answers), answers)
                self.assertGreater(a.accepted, 0)
                self.assertGreater(b.accepted, 0)
                big = os.urandom(1 << 20)
                with socket.create_connection(("127.0.0.1", port), timeout=10) as so:
                    so.sendall(big)
                    so.shutdown(socket.SHUT_WR)
                    got = b""
                    while True:
                        chunk = so.recv(1 << 16)
                        if not chunk:
                            break
                        got += chunk
                # 1 MiB through the relay, in order, prefixes aside
                self.assertEqual(got.replace(b"A:", b"").replace(b"B:", b"")[:16], big[:16])
                self.assertGreaterEqual(len(got), len(big))
                # Envoy's connection stats, by listener address and by cluster
                self.assertTrue(s.wait(lambda: s.stat(f"listener.127.0.0.1_{port}.downstream_cx_active") == "0"))
                self.assertGreaterEqual(int(s.stat(f"listener.127.0.0.1_{port}.downstream_cx_total")), 9)
                self.assertGreaterEqual(int(s.stat("cluster.backends.upstream_cx_total")), 9)
                self.assertTrue(s.wait(lambda: s.stat("cluster.backends.upstream_cx_active") == "0"))
                _, prom = s.get("/stats/prometheus")
                self.assertRegex(prom, r'envoy_listener_downstream_cx_total\{envoy_listener_address="127\.0\.0\.1_%d"\} \d+' % port)
                # LDS drops the listener: new connections are refused
                ads.set(LDS, remove=["tcp_in"])
                self.assertTrue(s.wait(lambda: not self.try_roundtrip(port)), "still accepting")
            finally:
                self.assertEqual(s.stop(), 0)
                ads.stop()
                a.close()
                b.close()

    def test_relay_exact_under_load(self):
        """Twenty ping-pong connections and a 1 MiB transfer at once through one worker's
        relay, to an exact echo: every byte arrives, in order, exactly once; a half-close
        right after a write comes after that write's bytes; the 1 MiB comes back whole."""
        import random
        import socket
        echo = EchoServer(b"")
        port = free_port()
        with tempfile.TemporaryDirectory() as tmp:
            ads = Ads("127.0.0.1:0")
            ads.set(CDS, static_cluster("echo", echo.port))
            ads.set(LDS, self.tcp_listener("tcp_exact", port, "echo"))
            s = start_skiff(f"127.0.0.1:{ads.port}", False, tmp, extra_args=["--concurrency", "1"])
            errors = []

            def recv_exactly(so, n):
                got = b""
                while len(got) < n:
                    chunk = so.recv(n - len(got))
                    if not chunk:
                        break
                    got += chunk
                return got

            def pingpong(seed):
                rnd = random.Random(seed)
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=10) as so:
                        for _ in range(150):
                            msg = rnd.randbytes(rnd.randint(1, 300))
                            so.sendall(msg)
                            if recv_exactly(so, len(msg)) != msg:
                                errors.append(f"client {seed}: echo differs")
                                return
                        last = rnd.randbytes(37)
                        so.sendall(last)
                        so.shutdown(socket.SHUT_WR)
                        rest = b""
                        while True:
                            chunk = so.recv(65536)
                            if not chunk:
                                break
                            rest += chunk
                        if rest != last:
                            errors.append(f"client {seed}: {len(rest)} bytes after the half-close")
                except OSError as e:
                    errors.append(f"client {seed}: {e!r}")

            def bulk():
                big = os.urandom(1 << 20)
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=10) as so:
                        t = threading.Thread(target=so.sendall, args=(big,))
                        t.start()
                        got = recv_exactly(so, len(big))
                        t.join()
                        if got != big:
                            errors.append(f"bulk: {len(got)} bytes, equal {got == big}")
                except OSError as e:
                    errors.append(f"bulk: {e!r}")
            try:
                self.assertTrue(s.wait(lambda: s.get("/ready")[0] == 200))
                def up():
                    try:
                        with socket.create_connection(("127.0.0.1", port), timeout=5) as so:
                            so.sendall(b"ping")
                            return recv_exactly(so, 4) == b"ping"
                    except OSError:
                        return False
                self.assertTrue(s.wait(up), "listener not up")
                threads = [threading.Thread(target=pingpong, args=(i,)) for i in range(20)]
                threads.append(threading.Thread(target=bulk))
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(60)
                self.assertFalse(any(t.is_alive() for t in threads), "a client hung")
                self.assertEqual(errors, [])
            finally:
                self.assertEqual(s.stop(), 0)
                ads.stop()
                echo.close()

    def test_weighted_clusters_and_idle_timeout(self):
        """tcp_proxy weighted_clusters split connections by weight; idle_timeout closes a
        connection that carries nothing."""
        import socket
        a, b = EchoServer(b"A:"), EchoServer(b"B:")
        port = free_port()
        with tempfile.TemporaryDirectory() as tmp:
            ads = Ads("127.0.0.1:0")
            ads.set(CDS, static_cluster("ca", a.port), static_cluster("cb", b.port))
            l = self.tcp_listener("split", port, "ca")
            tp = M("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy")(stat_prefix="split")
            for name, w in (("ca", 3), ("cb", 1)):
                tp.weighted_clusters.clusters.add(name=name, weight=w)
            tp.idle_timeout.nanos = 400_000_000
            l.filter_chains[0].filters[0].typed_config.CopyFrom(pack(tp))
            ads.set(LDS, l)
            s = start_skiff(f"127.0.0.1:{ads.port}", False, tmp)  # one worker: an exact split
            try:
                self.assertTrue(s.wait(lambda: self.try_roundtrip(port)))
                got = [self.roundtrip(port, b"x") for _ in range(200)]
                n_a, n_b = got.count(b"A:x"), got.count(b"B:x")
                self.assertEqual(n_a + n_b, 200)
                self.assertTrue(140 <= n_a <= 160, (n_a, n_b))  # 3:1 of 200 is 150:50
                with socket.create_connection(("127.0.0.1", port), timeout=5) as so:
                    t0 = time.monotonic()
                    self.assertEqual(so.recv(16), b"", "not closed when idle")
                    self.assertLess(time.monotonic() - t0, 3)
            finally:
                self.assertEqual(s.stop(), 0)
                ads.stop()
                a.close()
                b.close()

    def test_drain_listeners(self):
        """pilot-agent's SIGTERM call: POST /drain_listeners?inboundonly&graceful. Inbound
        listeners keep accepting for --drain-time-s, then stop; outbound ones go on."""
        a = EchoServer(b"A:")
        pin, pout = free_port(), free_port()
        with tempfile.TemporaryDirectory() as tmp:
            ads = Ads("127.0.0.1:0")
            ads.set(CDS, static_cluster("backends", a.port))
            inbound = self.tcp_listener("in", pin, "backends")
            inbound.traffic_direction = 1  # INBOUND
            ads.set(LDS, inbound, self.tcp_listener("out", pout, "backends"))
            s = start_skiff(f"127.0.0.1:{ads.port}", False, tmp, extra_args=["--drain-time-s", "1"])
            try:
                self.assertTrue(s.wait(lambda: self.try_roundtrip(pin) and self.try_roundtrip(pout)))
                req = urllib.request.Request(s.admin + "/drain_listeners?inboundonly&graceful",
                                             method="POST")
                self.assertEqual(urllib.request.urlopen(req, timeout=5).read(), b"OK\n")
                self.assertEqual(s.get("/ready"), (503, "DRAINING\n"))
                self.assertEqual(s.stat("server.state"), "1")
                self.assertEqual(s.stat("listener_manager.total_listeners_draining"), "1")
                self.assertTrue(self.try_roundtrip(pin), "graceful: still accepting at first")
                self.assertTrue(s.wait(lambda: not self.try_roundtrip(pin), timeout=5),
                                "inbound listener still accepting after the drain time")
                self.assertTrue(self.try_roundtrip(pout), "the outbound listener was drained")
                self.assertEqual(s.stat("listener_manager.total_listeners_draining"), "0")
            finally:
                self.assertEqual(s.stop(), 0)
                ads.stop()
                a.close()

    def try_roundtrip(self, port):
        try:
            return self.roundtrip(port, b"ping") in (b"A:ping", b"B:ping")
        except OSError:
            return False


def tcp_proxy_listener(name, address, port, cluster, bind_to_port=True, use_original_dst=False):
    """A listener whose one filter chain is [istio.stats-like filters elided] tcp_proxy."""
    l = Listener(name=name)
    l.address.socket_address.address = address
    l.address.socket_address.port_value = port
    if not bind_to_port:
        l.bind_to_port.value = False
    if use_original_dst:
        l.use_original_dst.value = True
    add_tcp_chain(l.filter_chains.add(), cluster)
    return l


def add_tcp_chain(fc, cluster):
    tp = M("envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy")(stat_prefix=cluster,
                                                                      cluster=cluster)
    f = fc.filters.add()
    f.name = "envoy.filters.network.tcp_proxy"
    f.typed_config.CopyFrom(pack(tp))
    return fc


def client_hello(sni=None, alpn=()):
    """A TLS 1.2-style ClientHello record with the given server name and ALPN list."""
    def vec(n, b):
        return len(b).to_bytes(n, "big") + b
    ext = b""
    if sni:
        ext += b"\x00\x00" + vec(2, vec(2, b"\x00" + vec(2, sni.encode())))
    if alpn:
        ext += b"\x00\x10" + vec(2, vec(2, b"".join(vec(1, p.encode()) for p in alpn)))
    body = b"\x03\x03" + os.urandom(32) + b"\x00" + vec(2, b"\x13\x01\xc0\x2f") + b"\x01\x00"
    body += vec(2, ext)
    hs = b"\x01" + vec(3, body)
    return b"\x16\x03\x01" + vec(2, hs)


def exchange(port, payload, host="127.0.0.1", pause=None, timeout=5):
    """Sends payload (a list of pieces sent `pause` seconds apart) and returns what comes back
    until the peer has answered all of it or closes."""
    import socket
    pieces = payload if isinstance(payload, list) else [payload]
    with socket.create_connection((host, port), timeout=timeout) as so:
        for i, p in enumerate(pieces):
            if i and pause:
                time.sleep(pause)
            so.sendall(p)
        want = sum(len(p) for p in pieces) + 2
        got = b""
        try:
            while len(got) < want:
                chunk = so.recv(65536)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
        return got


class OriginalDstAndListenerFilters(unittest.TestCase):
    """use_original_dst hands a connection to the listener of its original destination
    (without an iptables redirect that is the address it reached: getsockname); listener
    filters (tls_inspector, http_inspector, the timeout) feed filter-chain matching."""

    def up(self, port, want):
        def ok():
            try:
                return exchange(port, b"ping").startswith(want)
            except OSError:
                return False
        return ok

    def test_handoff_without_redirect(self):
        exact, wild, own = EchoServer(b"E:"), EchoServer(b"W:"), EchoServer(b"P:")
        p1, p2, p3 = free_port(), free_port(), free_port()
        with tempfile.TemporaryDirectory() as tmp:
            ads = Ads("127.0.0.1:0")
            ads.set(CDS, static_cluster("exact", exact.port), static_cluster("wild", wild.port),
                    static_cluster("own", own.port))
            ads.set(LDS,
                    tcp_proxy_listener("virt1", "127.0.0.1", p1, "own", use_original_dst=True),
                    tcp_proxy_listener("exact1", "127.0.0.1", p1, "exact", bind_to_port=False),
                    tcp_proxy_listener("virt2", "127.0.0.1", p2, "own", use_original_dst=True),
                    tcp_proxy_listener("any2", "0.0.0.0", p2, "wild", bind_to_port=False),
                    tcp_proxy_listener("virt3", "127.0.0.1", p3, "own", use_original_dst=True))
            s = start_skiff(f"127.0.0.1:{ads.port}", False, tmp)
            try:
                self.assertTrue(s.wait(self.up(p3, b"P:")), "listener not up")
                # the exact ip:port listener (bind_to_port false) relays it
                self.assertEqual(exchange(p1, b"ping"), b"E:ping")
                # else the 0.0.0.0 one of that port
                self.assertEqual(exchange(p2, b"ping"), b"W:ping")
                # else the accepting listener's own chains
                self.assertEqual(exchange(p3, b"ping"), b"P:ping")
                self.assertGreaterEqual(int(s.stat(f"listener.0.0.0.0_{p2}.downstream_cx_total")), 1)
                self.assertTrue(s.wait(lambda: s.stat(f"listener.0.0.0.0_{p2}.downstream_cx_active") == "0"))
            finally:
                self.assertEqual(s.stop(), 0)
                ads.stop()
                for e in (exact, wild, own):
                    e.close()

    def test_listener_filters_and_chain_match(self):
        backends = {k: EchoServer(k.encode() + b":") for k in ("H", "S", "T", "R", "X")}
        port, nomatch = free_port(), free_port()
        with tempfile.TemporaryDirectory() as tmp:
            ads = Ads("127.0.0.1:0")
            ads.set(CDS, *[static_cluster(k, e.port) for k, e in backends.items()])
            l = Listener(name="sniffed")
            l.address.socket_address.address = "127.0.0.1"
            l.address.socket_address.port_value = port
            for name, typ in (("tls_inspector", "TlsInspector"), ("http_inspector", "HttpInspector")):
                lf = l.listener_filters.add(name="envoy.filters.listener." + name)
                lf.typed_config.CopyFrom(pack(M(
                    f"envoy.extensions.filters.listener.{name}.v3.{typ}")()))
            # never disabled here: the range is another port
            l.listener_filters[1].filter_disabled.destination_port_range.start = 1
            l.listener_filters[1].filter_disabled.destination_port_range.end = 2
            l.listener_filters_timeout.nanos = 500_000_000
            l.continue_on_listener_filters_timeout = True
            fc = add_tcp_chain(l.filter_chains.add(name="http"), "H")
            fc.filter_chain_match.transport_protocol = "raw_buffer"
            fc.filter_chain_match.application_protocols.extend(["http/1.1", "h2c"])
            fc = add_tcp_chain(l.filter_chains.add(name="sni"), "S")
            fc.filter_chain_match.server_names.append("*.example.com")
            fc.filter_chain_match.transport_protocol = "tls"
            fc = add_tcp_chain(l.filter_chains.add(name="tls"), "T")
            fc.filter_chain_match.transport_protocol = "tls"
            fc = add_tcp_chain(l.filter_chains.add(name="mtls"), "X")
            fc.filter_chain_match.transport_protocol = "tls"
            fc.filter_chain_match.application_protocols.append("istio-peer-exchange")
            fc.transport_socket.name = "envoy.transport_sockets.tls"
            fc.transport_socket.typed_config.CopyFrom(pack(M(
                "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext")()))
            add_tcp_chain(l.default_filter_chain, "R")
            nm = tcp_proxy_listener("nomatch", "127.0.0.1", nomatch, "R")
            nm.filter_chains[0].filter_chain_match.destination_port.value = 1
            # the same listener with http_inspector disabled on its port
            blind_port = free_port()
            blind = Listener()
            blind.CopyFrom(l)
            blind.name = "blind"
            blind.address.socket_address.port_value = blind_port
            rng = blind.listener_filters[1].filter_disabled.or_match.rules.add()
            rng.destination_port_range.start = blind_port
            rng.destination_port_range.end = blind_port + 1
            blind.listener_filters[1].filter_disabled.or_match.rules.add().destination_port_range.start = 1
            ads.set(LDS, l, nm, blind)
            s = start_skiff(f"127.0.0.1:{ads.port}", False, tmp)
            try:
                get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
                self.assertTrue(s.wait(self.up(port, b"R:")), "listener not up")
                self.assertEqual(exchange(port, get), b"H:" + get)
                preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                self.assertEqual(exchange(port, preface), b"H:" + preface)  # h2c
                # filter_disabled matches the port: no application protocol, the default chain
                self.assertTrue(s.wait(self.up(blind_port, b"R:")), "blind listener not up")
                self.assertEqual(exchange(blind_port, get), b"R:" + get)
                h = client_hello("www.example.com", ["h2"])
                self.assertEqual(exchange(port, h), b"S:" + h)
                # the ClientHello in pieces: tls_inspector waits for the rest
                got = exchange(port, [h[:3], h[3:40], h[40:]], pause=0.2)
                self.assertTrue(got.startswith(b"S:"), got[:10])
                h = client_hello(None, ["h2", "http/1.1"])
                self.assertEqual(exchange(port, h), b"T:" + h)
                # a chain that terminates TLS cannot be served yet: closed, counted
                self.assertEqual(exchange(port, client_hello(None, ["istio-peer-exchange"])), b"")
                self.assertEqual(s.stat(f"listener.127.0.0.1_{port}.downstream_cx_tls_unserved"), "1")
                # not HTTP, decided at once: the default chain
                self.assertEqual(exchange(port, b"hello world\r\n"), b"R:hello world\r\n")
                # undecided bytes: listener_filters_timeout, then continue
                t0 = time.monotonic()
                self.assertEqual(exchange(port, b"hi"), b"R:hi")
                self.assertGreater(time.monotonic() - t0, 0.4)
                # no chain matches and there is no default: closed, counted
                self.assertEqual(exchange(nomatch, b"ping"), b"")
                self.assertEqual(s.stat(f"listener.127.0.0.1_{nomatch}.no_filter_chain_match"), "1")
                self.assertEqual(backends["X"].accepted, 0)
            finally:
                self.assertEqual(s.stop(), 0)
                ads.stop()
                for e in backends.values():
                    e.close()

    ECHO = """
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[2])))
s.listen(16)
def echo(c):
    with c:
        while True:
            d = c.recv(65536)
            if not d:
                return
            c.sendall(sys.argv[1].encode() + d)
while True:
    c, _ = s.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
"""
    CLIENT = """
import socket, sys, time
for _ in range(100):
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as so:
            so.sendall(b"ping")
            got = b""
            while len(got) < 6:
                c = so.recv(100)
                if not c:
                    break
                got += c
            if got:
                print(got.decode())
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
print("nothing")
"""

    def test_iptables_redirect_in_netns(self):
        """Istio's capture: iptables REDIRECTs outbound TCP to virtualOutbound (15001);
        SO_ORIGINAL_DST gives the address the client dialled, whose listener relays it."""
        ns = f"skiff-lt-{os.getpid()}"
        if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
            self.skipTest("ip netns add refused (needs root / CAP_SYS_ADMIN)")
        nsx = ["ip", "netns", "exec", ns]
        procs = []
        try:
            for cmd in (["ip", "link", "set", "lo", "up"],
                        ["ip", "addr", "add", "10.9.9.9/32", "dev", "lo"]):
                subprocess.run(nsx + cmd, check=True, capture_output=True)
            r = subprocess.run(nsx + ["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp",
                                      "-d", "10.9.9.0/24", "-j", "REDIRECT", "--to-ports", "15001"],
                               capture_output=True)
            if r.returncode != 0:
                self.skipTest("iptables refused: " + r.stderr.decode().strip())
            # inbound capture, as Istio's PREROUTING rule would (here OUTPUT, the traffic being
            # local): port 8080 goes to virtualInbound (15006)
            subprocess.run(nsx + ["iptables", "-t", "nat", "-I", "OUTPUT", "1", "-p", "tcp",
                                  "-d", "10.9.9.9", "--dport", "8080", "-j", "REDIRECT",
                                  "--to-ports", "15006"], check=True, capture_output=True)
            for prefix, port in (("E:", 9001), ("P:", 9002)):
                procs.append(subprocess.Popen(nsx + [sys.executable, "-c", self.ECHO, prefix,
                                                     str(port)]))

            def cluster(name, port):
                return {"name": name, "type": "STATIC", "connect_timeout": "1s",
                        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                            {"endpoint": {"address": {"socket_address": {
                                "address": "127.0.0.1", "port_value": port}}}}]}]}}

            def tcp(cluster_name):
                return {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                    "@type": TYPE + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": cluster_name, "cluster": cluster_name}}

            boot = {
                "node": {"id": "sidecar~10.9.9.1~t-1.default~default.svc.cluster.local",
                         "cluster": "t.default"},
                "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
                "static_resources": {
                    "clusters": [cluster("exact", 9001), cluster("PassthroughCluster", 9002)],
                    "listeners": [
                        {"name": "virtualOutbound", "use_original_dst": True,
                         "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}},
                         "filter_chains": [{"filters": [tcp("PassthroughCluster")]}]},
                        {"name": "virtualInbound",
                         "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15006}},
                         "listener_filters": [{"name": "envoy.filters.listener.original_dst",
                                               "typed_config": {"@type": TYPE + "envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}],
                         "filter_chains": [
                             {"name": "inbound_8080", "filter_chain_match": {"destination_port": 8080},
                              "filters": [tcp("exact")]},
                             {"name": "virtualInbound", "filters": [tcp("PassthroughCluster")]}]},
                        {"name": "10.9.9.9_80", "bind_to_port": False,
                         "address": {"socket_address": {"address": "10.9.9.9", "port_value": 80}},
                         "filter_chains": [{"filters": [tcp("exact")]}]},
                    ]},
            }
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "bootstrap.json")
                with open(path, "w") as f:
                    json.dump(boot, f)
                log = open(os.path.join(tmp, "skiff.log"), "w")
                sk = subprocess.Popen(nsx + [SKIFF, "-c", path, "--concurrency", "1", "-l", "debug"],
                                      stdout=log, stderr=log)
                procs.append(sk)

                def client(host, port):
                    r = subprocess.run(nsx + [sys.executable, "-c", self.CLIENT, host, str(port)],
                                       capture_output=True, timeout=60)
                    return r.stdout.decode().strip()
                # dialled 10.9.9.9:80, redirected to 15001: the 10.9.9.9_80 listener's chain
                self.assertEqual(client("10.9.9.9", 80), "E:ping")
                # no listener for 10.9.9.9:81 (nor 0.0.0.0:81): virtualOutbound's own chain
                self.assertEqual(client("10.9.9.9", 81), "P:ping")
                # virtualInbound's original_dst listener filter: the chain of port 8080
                self.assertEqual(client("10.9.9.9", 8080), "E:ping")
                sk.send_signal(signal.SIGTERM)
                self.assertEqual(sk.wait(10), 0)
                log.close()
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class FileControlPlaneSotw(FileControlPlane, unittest.TestCase):
    delta = False


class FileControlPlaneDelta(FileControlPlane, unittest.TestCase):
    delta = True


class SotwTcp(AdsTest, unittest.TestCase):
    pass


class SotwUnix(AdsTest, unittest.TestCase):
    unix = True


class DeltaTcp(AdsTest, unittest.TestCase):
    delta = True


class DeltaUnix(AdsTest, unittest.TestCase):
    delta = True
    unix = True


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    print(f"{result.testsRun - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
