"""The xDS server side skiff's tools and tests share: message classes built from protos/ (the
project's own declarations), and an ADS/SDS server (python3-grpcio) that serves resources
held in memory, state of the world and delta, and records every request it gets."""
import os
import subprocess
import tempfile
import threading
import time
from concurrent import futures

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TYPE = "type.googleapis.com/"
CDS = TYPE + "envoy.config.cluster.v3.Cluster"
EDS = TYPE + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = TYPE + "envoy.config.listener.v3.Listener"
RDS = TYPE + "envoy.config.route.v3.RouteConfiguration"
SDS = TYPE + "envoy.extensions.transport_sockets.tls.v3.Secret"


def load_classes(top=TOP):
    """Message classes built from the project's own declarations in protos/."""
    files = [l.strip().replace("local:", "") for l in open(os.path.join(top, "protos", "files.txt"))
             if l.strip() and not l.startswith(("#", "system:"))]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "d.pb")
        subprocess.run(["protoc", "--include_imports", f"--descriptor_set_out={out}",
                        "-I" + os.path.join(top, "protos"), "-I/usr/include"] + files,
                       check=True, stderr=subprocess.DEVNULL)
        fds = descriptor_pb2.FileDescriptorSet.FromString(open(out, "rb").read())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    factory = message_factory.MessageFactory(pool)
    return lambda name: factory.GetPrototype(pool.FindMessageTypeByName(name)), pool


M, POOL = load_classes()
Any = M("google.protobuf.Any")
Cluster = M("envoy.config.cluster.v3.Cluster")
CLA = M("envoy.config.endpoint.v3.ClusterLoadAssignment")
Listener = M("envoy.config.listener.v3.Listener")
RouteConfiguration = M("envoy.config.route.v3.RouteConfiguration")
HCM = M("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager")
Secret = M("envoy.extensions.transport_sockets.tls.v3.Secret")
Req = M("envoy.service.discovery.v3.DiscoveryRequest")
Resp = M("envoy.service.discovery.v3.DiscoveryResponse")
DReq = M("envoy.service.discovery.v3.DeltaDiscoveryRequest")
DResp = M("envoy.service.discovery.v3.DeltaDiscoveryResponse")


def pack(m):
    return Any(type_url=TYPE + m.DESCRIPTOR.full_name, value=m.SerializeToString())


class Ads:
    """A scripted ADS server: holds resources per type, answers subscriptions, records every
    request."""

    def __init__(self, address, on_event=None, tls=None):
        """address: "host:port" (port 0 picks one) or "unix:/path"; tls: (key PEM, cert PEM)
        for a TLS server, as istiod serves on 15012."""
        self.lock = threading.Condition()
        self.resources = {CDS: {}, EDS: {}, LDS: {}, RDS: {}, SDS: {}}
        self.version = 1
        self.requests = []  # (protocol, type_url, nonce, version, names, error, node, ...)
        self.on_event = on_event  # called with a dict per request, ACK and NACK
        self.streams = []
        self.server = grpc.server(futures.ThreadPoolExecutor(8))
        handler = grpc.method_handlers_generic_handler(
            "envoy.service.discovery.v3.AggregatedDiscoveryService", {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self.sotw, request_deserializer=Req.FromString,
                    response_serializer=Resp.SerializeToString),
                "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self.delta, request_deserializer=DReq.FromString,
                    response_serializer=DResp.SerializeToString),
            })
        sds = grpc.method_handlers_generic_handler(
            "envoy.service.secret.v3.SecretDiscoveryService", {
                "StreamSecrets": grpc.stream_stream_rpc_method_handler(
                    self.sotw, request_deserializer=Req.FromString,
                    response_serializer=Resp.SerializeToString),
            })
        self.server.add_generic_rpc_handlers((handler, sds))
        self.metadata = []  # the invocation metadata of every stream
        if tls:
            creds = grpc.ssl_server_credentials([(tls[0], tls[1])])
            self.port = self.server.add_secure_port(address, creds)
        else:
            self.port = self.server.add_insecure_port(address)
        self.server.start()

    def stop(self):
        self.server.stop(0).wait()
        with self.lock:
            for q in self.streams:
                q.append(None)
            self.lock.notify_all()

    def set(self, type_url, *msgs, remove=()):
        with self.lock:
            for m in msgs:
                name = m.cluster_name if type_url == EDS else m.name
                self.resources[type_url][name] = m
            for n in remove:
                self.resources[type_url].pop(n, None)
            self.version += 1
            for q in self.streams:
                q.append(("push", type_url))
            self.lock.notify_all()

    def replace(self, state):
        """Serves `state` ({type_url: {name: message}}) from now on: every type whose set
        changed is pushed to every stream."""
        with self.lock:
            changed = [t for t in self.resources
                       if {n: m.SerializeToString() for n, m in self.resources[t].items()} !=
                       {n: m.SerializeToString() for n, m in state.get(t, {}).items()}]
            if not changed:
                return []
            for t in self.resources:
                self.resources[t] = dict(state.get(t, {}))
            self.version += 1
            for q in self.streams:
                for t in changed:
                    q.append(("push", t))
            self.lock.notify_all()
            return changed

    def record(self, *entry):
        with self.lock:
            self.requests.append(entry)
            self.lock.notify_all()
        if self.on_event:
            kind = "nack" if entry[5] else "ack" if entry[2] else "request"
            self.on_event({"event": kind, "protocol": entry[0], "type_url": entry[1],
                           "nonce": entry[2], "version": entry[3], "names": entry[4],
                           "error": entry[5]})

    def wait_for(self, pred, timeout=10):
        deadline = time.time() + timeout
        with self.lock:
            while not pred(self.requests):
                left = deadline - time.time()
                if left <= 0:
                    return False
                self.lock.wait(left)
        return True

    def _stream(self, request_iterator, on_request, respond, context=None):
        if context is not None:
            with self.lock:
                self.metadata.append(dict(context.invocation_metadata()))
        queue = []
        with self.lock:
            self.streams.append(queue)

        def reader():
            try:
                for r in request_iterator:
                    with self.lock:
                        queue.append(("req", r))
                        self.lock.notify_all()
            except Exception:
                pass
            with self.lock:
                queue.append(None)
                self.lock.notify_all()

        threading.Thread(target=reader, daemon=True).start()
        state = {"subs": {}, "nonce": 0, "sent": {}}
        while True:
            with self.lock:
                while not queue:
                    self.lock.wait()
                item = queue.pop(0)
            if item is None:
                return
            kind, payload = item
            if kind == "req":
                out = on_request(payload, state)
            else:
                out = respond(payload, state, push=True)
            for resp in out or []:
                yield resp

    # ---- state of the world ----
    def sotw(self, request_iterator, context):
        def on_request(r, st):
            self.record("sotw", r.type_url, r.response_nonce, r.version_info,
                        list(r.resource_names), r.error_detail.message, r.node.id)
            names = list(r.resource_names)
            old = st["subs"].get(r.type_url)
            st["subs"][r.type_url] = names
            if r.response_nonce and old is not None and set(names) <= set(old):
                return []
            return self.sotw_response(r.type_url, st)

        def respond(type_url, st, push):
            if type_url not in st["subs"]:
                return []
            return self.sotw_response(type_url, st)

        return self._stream(request_iterator, on_request, respond, context)

    def sotw_response(self, type_url, st):
        with self.lock:
            names = st["subs"][type_url]
            res = self.resources[type_url]
            if type_url in (CDS, LDS):
                chosen = list(res.values())
            else:
                chosen = [res[n] for n in names if n in res]
                if not chosen:
                    return []
            st["nonce"] += 1
            return [Resp(type_url=type_url, version_info=f"v{self.version}",
                         nonce=str(st["nonce"]), resources=[pack(m) for m in chosen])]

    # ---- delta ----
    def delta(self, request_iterator, context):
        def on_request(r, st):
            self.record("delta", r.type_url, r.response_nonce, "",
                        list(r.resource_names_subscribe), r.error_detail.message, r.node.id,
                        dict(r.initial_resource_versions), list(r.resource_names_unsubscribe))
            if r.response_nonce:
                return []
            subs = st["subs"].setdefault(r.type_url, set())
            subs.update(r.resource_names_subscribe)
            subs.difference_update(r.resource_names_unsubscribe)
            st["sent"].setdefault(r.type_url, {}).update(dict(r.initial_resource_versions))
            return self.delta_response(r.type_url, st)

        def respond(type_url, st, push):
            if type_url not in st["subs"]:
                return []
            return self.delta_response(type_url, st)

        return self._stream(request_iterator, on_request, respond, context)

    def delta_response(self, type_url, st):
        with self.lock:
            subs = st["subs"][type_url]
            res = self.resources[type_url]
            wildcard = type_url in (CDS, LDS)
            want = {n: m for n, m in res.items() if wildcard or n in subs}
            sent = st["sent"].setdefault(type_url, {})
            resp = DResp(type_url=type_url, system_version_info=f"v{self.version}")
            for n, m in want.items():
                v = str(hash(m.SerializeToString()) & 0xffffffff)
                if sent.get(n) != v:
                    r = resp.resources.add(name=n, version=v)
                    r.resource.CopyFrom(pack(m))
                    sent[n] = v
            for n in list(sent):
                if n not in want:
                    resp.removed_resources.append(n)
                    del sent[n]
            first = type_url not in st.setdefault("answered", set())
            if not resp.resources and not resp.removed_resources and not first:
                return []
            st["answered"].add(type_url)  # the first answer goes out even when empty, as istiod's
            st["nonce"] += 1
            resp.nonce = str(st["nonce"])
            return [resp]


