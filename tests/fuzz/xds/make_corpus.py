#!/usr/bin/python3
"""Writes the seed corpus of the xds fuzz target: the clusters, endpoints, listeners and route
configurations of a real Istio sidecar config dump (../shared/istio/01-*), each encoded with
the project's own declarations, prefixed with the byte that selects its type."""
import json
import os
import subprocess
import sys
import tempfile

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
dump = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    top, "..", "shared", "istio", "01-ossm-sidecar-config-dump", "hello-openshift-sidecar-config_dump.json")
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
files = [l.strip().replace("local:", "") for l in open(os.path.join(top, "protos", "files.txt"))
         if l.strip() and not l.startswith(("#", "system:"))]
with tempfile.TemporaryDirectory() as tmp:
    pb = os.path.join(tmp, "d.pb")
    subprocess.run(["protoc", "--include_imports", f"--descriptor_set_out={pb}",
                    "-I" + os.path.join(top, "protos"), "-I/usr/include"] + files, check=True)
    fds = descriptor_pb2.FileDescriptorSet.FromString(open(pb, "rb").read())
pool = descriptor_pool.DescriptorPool()
for f in fds.file:
    pool.Add(f)
factory = message_factory.MessageFactory(pool)
kinds = {"envoy.config.cluster.v3.Cluster": 0, "envoy.config.endpoint.v3.ClusterLoadAssignment": 1,
         "envoy.config.listener.v3.Listener": 2, "envoy.config.route.v3.RouteConfiguration": 3}
os.makedirs(out, exist_ok=True)
n = skipped = 0
reasons = set()
for cfg in json.load(open(dump))["configs"]:
    found = []
    for key in ("dynamic_active_clusters", "static_clusters"):
        found += [e["cluster"] for e in cfg.get(key, [])]
    for e in cfg.get("dynamic_listeners", []):
        if "active_state" in e:
            found.append(e["active_state"]["listener"])
    found += [e["route_config"] for e in cfg.get("dynamic_route_configs", [])]
    found += [e["endpoint_config"] for e in cfg.get("dynamic_endpoint_configs", [])]
    for res in found:
        t = res["@type"].split("/")[-1]
        cls = factory.GetPrototype(pool.FindMessageTypeByName(t))
        body = {k: v for k, v in res.items() if k != "@type"}
        try:
            m = json_format.ParseDict(body, cls(), descriptor_pool=pool)
        except json_format.ParseError as e:
            skipped += 1
            reasons.add(str(e).split(" at ")[0][:120])
            continue
        name = getattr(m, "name", "") or getattr(m, "cluster_name", "")
        safe = "".join(c if c.isalnum() else "_" for c in name)[:60]
        with open(os.path.join(out, f"{kinds[t]}-{safe}"), "wb") as fh:
            fh.write(bytes([kinds[t]]) + m.SerializeToString())
        n += 1
print(f"{n} seeds written, {skipped} resources skipped (types the declarations lack)")
for r in sorted(reasons):
    print("  skipped:", r)
