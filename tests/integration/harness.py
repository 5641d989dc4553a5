"""What the Python integration tests share: tools/xds-files as a control plane, an ADS
bootstrap, skiff as a process (admin get, /stats, waits, stop by pid with a timeout), Envoy
resources in the proto3 JSON mapping, and HTTP clients (http.client, curl, raw sockets), all on
127.0.0.1. The test backends are in backends.py.

Each test file imports this from its own directory (Python puts the script's directory first
on sys.path); SKIFF and SRCDIR come from the environment, as tests/integration/meson.build
sets them."""
import http.client
import http.server
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

SKIFF = os.environ["SKIFF"]
SRCDIR = os.environ["SRCDIR"]
SHARED = os.environ.get("SHARED", os.path.join(SRCDIR, "..", "shared"))
HERE = os.path.dirname(os.path.abspath(__file__))

TYPE = "type.googleapis.com/"
T_CLUSTER = TYPE + "envoy.config.cluster.v3.Cluster"
T_CLA = TYPE + "envoy.config.endpoint.v3.ClusterLoadAssignment"
T_LISTENER = TYPE + "envoy.config.listener.v3.Listener"
T_ROUTE = TYPE + "envoy.config.route.v3.RouteConfiguration"
T_HCM = TYPE + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
T_ROUTER = TYPE + "envoy.extensions.filters.http.router.v3.Router"
T_PROTO = TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HCM_NAME = "envoy.filters.network.http_connection_manager"
PROTO_NAME = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_handed_out = set()


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of the call), chosen below
    the kernel's ephemeral range: a port the kernel hands out for port 0 (skiff's admin, a
    backend) or as a connection's source port could otherwise be this one by the time it is
    bound. Never the same port twice in one process."""
    low = _ephemeral_low()
    if low > 12000:
        for _ in range(200):
            port = random.randrange(10000, low)
            if port in _handed_out:
                continue
            with socket.socket() as so:
                try:
                    so.bind(("127.0.0.1", port))
                except OSError:
                    continue
                _handed_out.add(port)
                return port
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def write_atomic(path, doc, indent=1):
    """Writes `doc` as JSON to path by a rename, so that a polling reader never sees half (the
    file in between is hidden, and is no .json, for a control plane reading a directory)."""
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=indent)
    os.rename(tmp, path)


def wait_until(pred, timeout=10, interval=0.05):
    """Calls pred until it is true (True) or `timeout` seconds passed (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return False


def wait_started(probe, timeout, cp, cleanup, what, skiff=None):
    """Calls probe every 0.1 s until true; after `timeout` seconds calls cleanup() and raises
    an AssertionError: `what`, the control plane's NACKs, and skiff's log tail when given."""
    if wait_until(probe, timeout, 0.1):
        return
    nacks = cp.nacks()
    log = skiff.log_tail() if skiff else None
    cleanup()
    raise AssertionError(f"{what}; NACKs: {nacks}" + (f"; log: {log}" if skiff else ""))


# --- Envoy resources (proto3 JSON mapping) -----------------------------------------------------

def ads_source(initial_fetch_timeout=None):
    """A ConfigSource on ADS."""
    s = {"ads": {}, "resource_api_version": "V3"}
    if initial_fetch_timeout is not None:
        s["initial_fetch_timeout"] = initial_fetch_timeout
    return s


def endpoint(port, host="127.0.0.1"):
    return {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}


def endpoints(name, *ports):
    """A ClusterLoadAssignment body: one locality, a host on 127.0.0.1 per port."""
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint(p) for p in ports]}]}


def cluster(name, *ports, h2=False, auto=False, eds=False, **extra):
    """A STATIC cluster on 127.0.0.1 ports (or an EDS one from ADS); h2: explicit_http_config
    http2_protocol_options; auto: use_downstream_protocol_config; extra: more Cluster fields."""
    c = {"@type": T_CLUSTER, "name": name, "connect_timeout": "1s"}
    if eds:
        c.update(type="EDS", eds_cluster_config={"eds_config": ads_source()})
    else:
        c.update(type="STATIC", load_assignment=endpoints(name, *ports))
    if h2 or auto:
        opts = {"@type": T_PROTO}
        if h2:
            opts["explicit_http_config"] = {"http2_protocol_options": {}}
        else:
            opts["use_downstream_protocol_config"] = {"http_protocol_options": {},
                                                      "http2_protocol_options": {}}
        c["typed_extension_protocol_options"] = {PROTO_NAME: opts}
    c.update(extra)
    return c


def http_filter(name, type_url, **config):
    """An HttpFilter entry: `name` with typed_config {"@type": type_url, **config}."""
    return {"name": name, "typed_config": dict({"@type": type_url}, **config)}


def router_filter():
    return http_filter("envoy.filters.http.router", T_ROUTER)


def hcm(stat_prefix, rds=None, route_config=None, filters=(), websocket=True,
        rds_fetch_timeout=None, **extra):
    """An HttpConnectionManager (codec AUTO): routes over RDS (`rds`: the route configuration's
    name, its config source with `rds_fetch_timeout` as initial_fetch_timeout when given) or
    inline (`route_config`); `filters` before the router; websocket: an upgrade config."""
    h = {"@type": T_HCM, "stat_prefix": stat_prefix, "codec_type": "AUTO"}
    if websocket:
        h["upgrade_configs"] = [{"upgrade_type": "websocket"}]
    h["http_filters"] = list(filters) + [router_filter()]
    if rds:
        h["rds"] = {"route_config_name": rds, "config_source": ads_source(rds_fetch_timeout)}
    else:
        h["route_config"] = route_config
    h.update(extra)
    return h


def listener(name, port, manager=None, filters=None):
    """A Listener on 127.0.0.1:port with one filter chain: the connection manager `manager`,
    or the network filters `filters`."""
    if filters is None:
        filters = [{"name": HCM_NAME, "typed_config": manager}]
    return {"@type": T_LISTENER, "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": filters}]}


def route(match, **action):
    """A Route: `match` and its action (route, redirect or direct_response) and other fields."""
    r = {"match": match}
    r.update(action)
    if not any(k in action for k in ("route", "redirect", "direct_response")):
        raise ValueError("a route needs an action")
    return r


def to(cluster_name, **extra):
    """A RouteAction to `cluster_name`."""
    a = {"cluster": cluster_name}
    a.update(extra)
    return a


# --- processes ---------------------------------------------------------------------------------

def stop_process(proc, timeout=10):
    """SIGTERM, then SIGKILL after `timeout` seconds; the exit status."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout)


class ControlPlane:
    """tools/xds-files on a unix socket in workdir, serving the given files or directories;
    poll: its --poll seconds (None: its default); its events in self.events."""

    def __init__(self, workdir, *configs, sock_name="XDS", poll="0.1"):
        self.sock = os.path.join(workdir, sock_name)
        self.events = os.path.join(workdir, "events.jsonl")
        self.logpath = os.path.join(workdir, "cp.log")
        self.log = open(self.logpath, "w")
        args = ["/usr/bin/python3", "-W", "ignore", os.path.join(SRCDIR, "tools", "xds-files"),
                "--listen", "unix:" + self.sock, "--events", self.events]
        if poll is not None:
            args += ["--poll", str(poll)]
        for c in configs:
            args += ["--config", c]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "listening on unix:" + self.sock:
            self.stop()
            raise RuntimeError("xds-files did not start: " + line + " " +
                               open(self.logpath).read()[-2000:])

    def nacks(self):
        """The error of every NACK the control plane saw, oldest first."""
        if not os.path.exists(self.events):
            return []
        return [json.loads(l)["error"] for l in open(self.events) if '"nack"' in l]

    def stop(self):
        stop_process(self.proc)
        if self.proc.stdout and not self.proc.stdout.closed:
            self.proc.stdout.close()
        if not self.log.closed:
            self.log.close()


def ads_address(target):
    """An Envoy address for "unix:<path>", "<host>:<port>" or a bare path."""
    if target.startswith("unix:"):
        return {"pipe": {"path": target[5:]}}
    if target.startswith("/"):
        return {"pipe": {"path": target}}
    host, port = target.rsplit(":", 1)
    return {"socket_address": {"address": host, "port_value": int(port)}}


def ads_bootstrap(sock, pod="http-test", app=None, delta=True, node_first=True,
                  grpc_clusters=("xds-grpc", "sds-grpc")):
    """A sidecar's ADS bootstrap: node sidecar~127.0.0.1~<pod>.default~..., cluster <app>
    (<pod>.default if None), the admin on a free port, CDS and LDS over ADS (initial fetch
    timeout 0s), and the static clusters `grpc_clusters` on `sock` (a unix socket path, or
    what ads_address takes; None: no address)."""
    addr = None if sock is None else ads_address(sock)
    return {
        "node": {"id": f"sidecar~127.0.0.1~{pod}.default~default.svc.cluster.local",
                 "cluster": app or pod + ".default"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": dict({"api_type": "DELTA_GRPC" if delta else "GRPC",
                                "transport_api_version": "V3"},
                               **({"set_node_on_first_message_only": True} if node_first else {}),
                               grpc_services=[{"envoy_grpc": {"cluster_name": "xds-grpc"}}]),
            "cds_config": ads_source("0s"),
            "lds_config": ads_source("0s"),
        },
        "static_resources": {"clusters": [
            {"name": n, "type": "STATIC", "connect_timeout": "1s",
             "load_assignment": {"cluster_name": n, "endpoints": [
                 {"lb_endpoints": [{"endpoint": {"address": addr}}]}]}}
            for n in grpc_clusters]},
    }


class Skiff:
    """skiff on a bootstrap (a dict) in workdir: log level `level`, `concurrency` workers,
    extra_args after those; its admin address read from the file it writes (waited for up to
    start_timeout seconds); wait_timeout: wait()'s default."""

    def __init__(self, workdir, bootstrap, extra_args=(), level="info", concurrency=1,
                 start_timeout=10, wait_timeout=10):
        self.workdir = workdir
        self.wait_timeout = wait_timeout
        path = os.path.join(workdir, "bootstrap.json")
        with open(path, "w") as f:
            json.dump(bootstrap, f)
        self.logpath = os.path.join(workdir, "skiff.log")
        self.log = open(self.logpath, "w")
        adm = os.path.join(workdir, "admin")
        self.proc = subprocess.Popen([SKIFF, "-c", path, "--admin-address-path", adm,
                                      "-l", level, "--concurrency", str(concurrency)] +
                                     list(extra_args), stdout=self.log, stderr=self.log)
        for _ in range(int(start_timeout / 0.05)):
            if os.path.exists(adm) and os.path.getsize(adm) > 0:
                break
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if not os.path.exists(adm) or os.path.getsize(adm) == 0:
            self.stop()
            raise RuntimeError("skiff did not start: " + self.log_tail())
        self.admin = "http://" + open(adm).read().strip()

    def get(self, path):
        """GET on the admin API: (status, body text); status 0 when it cannot be reached."""
        try:
            with urllib.request.urlopen(self.admin + path, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:
            return 0, str(e)

    def stat(self, name):
        """The value of stat `name` in /stats as text, None when it is not there."""
        _, body = self.get("/stats?filter=" + urllib.parse.quote("^" + re.escape(name) + "$"))
        for line in body.splitlines():
            k, _, v = line.partition(": ")
            if k == name:
                return v
        return None

    def stat_int(self, name, default=0):
        """stat(name) as an int, `default` when it is not there (or not a number)."""
        v = self.stat(name)
        try:
            return int(v)
        except (TypeError, ValueError):
            return default

    def wait(self, pred, timeout=None):
        """Calls pred (an OSError counting as false) until true or `timeout` seconds
        (wait_timeout if None) passed."""
        def attempt():
            try:
                return pred()
            except OSError:
                return False
        return wait_until(attempt, self.wait_timeout if timeout is None else timeout)

    def ready(self):
        return self.get("/ready")[0] == 200

    def dump(self, section, query="?include_eds"):
        """The config dump's section whose @type ends in `section` (ClustersConfigDump ...)."""
        _, body = self.get("/config_dump" + query)
        for c in json.loads(body)["configs"]:
            if c["@type"].rsplit(".", 1)[-1] == section:
                return c
        return {}

    def active_clusters(self):
        d = self.dump("ClustersConfigDump", query="")
        return {e["cluster"]["name"] for e in d.get("dynamic_active_clusters", [])}

    def access_lines(self, path):
        """The connection manager's per-request debug lines for path: 'METHOD PATH STATUS
        FLAGS REASON' (skiff at -l debug)."""
        with open(self.logpath, errors="replace") as f:
            return [l.strip() for l in f if (" " + path + " ") in l and "[C" in l]

    def log_tail(self, n=3000):
        with open(self.logpath, errors="replace") as f:
            return f.read()[-n:]

    def stop(self, timeout=10):
        """SIGTERM (SIGKILL after `timeout` seconds); the exit status."""
        rc = stop_process(self.proc, timeout)
        if not self.log.closed:
            self.log.close()
        return rc


def start_proxy(workdir, config, cp_args=None, boot_args=None, **skiff_args):
    """tools/xds-files on `config` (a file or directory; a dict is first written to
    workdir/resources.json) with ControlPlane(**cp_args), then skiff (Skiff(**skiff_args)) on
    ads_bootstrap(its socket, **boot_args): (cp, skiff). When skiff does not start, the control
    plane is stopped before the error goes on."""
    if isinstance(config, dict):
        path = os.path.join(workdir, "resources.json")
        write_atomic(path, config)
        config = path
    cp = ControlPlane(workdir, config, **(cp_args or {}))
    try:
        skiff = Skiff(workdir, ads_bootstrap(cp.sock, **(boot_args or {})), **skiff_args)
    except Exception:
        cp.stop()
        raise
    return cp, skiff


def stop_proxy(skiff, cp, log_chars=3000):
    """Stops skiff, then the control plane (either may be None); prints skiff's log tail when
    its exit status is not 0. The exit status (0 without skiff)."""
    rc = skiff.stop() if skiff else 0
    if cp:
        cp.stop()
    if rc != 0:
        print(skiff.log_tail(log_chars), file=sys.stderr)
    return rc


# --- peers -------------------------------------------------------------------------------------

class SimpleBackend:
    """An HTTP/1.1 server on 127.0.0.1, a thread per connection, answering every request (any
    method) with respond(req) -> (status, body) or (status, body, [(header, value)]); req is
    the request handler (command, path, headers) with the request body read into req.body.
    The recording backends with knobs are backends.py's; this is for a test's own logic."""

    def __init__(self, respond):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_one(self):
                n = int(self.headers.get("content-length") or 0)
                self.body = self.rfile.read(n) if n else b""
                status, body, *more = respond(self)
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                for k, v in (more[0] if more else ()):
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = handle_one

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# --- clients -----------------------------------------------------------------------------------

class Resp:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body  # headers: lower -> [v]

    def h(self, name):
        v = self.headers.get(name.lower())
        return v[-1] if v else None

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<{self.status} {self.headers} {self.body[:300]!r}>"


def parse_head(text):
    """Status and headers of the last response head in curl's -D output (skips 100s)."""
    blocks = [b for b in text.replace("\r\n", "\n").split("\n\n") if b.strip()]
    status, headers = 0, {}
    for b in blocks:
        lines = b.split("\n")
        if not lines[0].startswith("HTTP/"):
            # trailers (curl prints them after the body's head)
            for l in lines:
                k, _, v = l.partition(":")
                headers.setdefault(k.strip().lower(), []).append(v.strip())
            continue
        code = int(lines[0].split()[1])
        if 100 <= code < 200 and code != 101:
            continue
        status, headers = code, {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            headers.setdefault(k.strip().lower(), []).append(v.strip())
    return status, headers


def curl(url, *args, timeout=10):
    """One curl run: (Resp, curl's -w output). args are curl arguments."""
    with tempfile.TemporaryDirectory() as tmp:
        hd, bd = os.path.join(tmp, "h"), os.path.join(tmp, "b")
        p = subprocess.run(["curl", "-sS", "--max-time", str(timeout), "-D", hd, "-o", bd,
                            "-w", "%{http_code} %{num_connects}\\n"] + list(args) + [url],
                           capture_output=True, text=True, timeout=timeout + 5)
        head = open(hd, encoding="latin-1").read() if os.path.exists(hd) else ""
        body = open(bd, "rb").read() if os.path.exists(bd) else b""
        status, headers = parse_head(head)
        return Resp(status, headers, body), p.stdout + p.stderr


def raw(port, data, timeout=3.0):
    """Sends raw bytes, reads until the peer closes or `timeout` passes; the bytes read."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as so:
        try:
            so.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the peer may answer and close before reading everything; read what it said
        deadline = time.time() + timeout
        while time.time() < deadline:
            so.settimeout(max(0.05, deadline - time.time()))
            try:
                chunk = so.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
    return out


def raw_status(data):
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(m.group(1)) if m else 0


def hc_get(conn, path, headers=None, method="GET", body=None):
    """One request on http.client connection conn: a Resp (every value of each header)."""
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    hs = {}
    for k, v in r.getheaders():
        hs.setdefault(k.lower(), []).append(v)
    return Resp(r.status, hs, data)


def request(port, method="GET", path="/", headers=None, body=None, conn=None, timeout=10):
    """One HTTP/1.1 request to 127.0.0.1:port, on its own connection unless conn is given:
    (status, headers with lower-cased names (the last value of each), body)."""
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        if own:
            c.close()


class Client:
    """HTTP/1.1 over one keep-alive connection, reconnecting when the server closed it."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def request(self, method, path, headers=None):
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self.conn.request(method, path, headers=headers or {})
                r = self.conn.getresponse()
                body = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.close()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, body
            except (ConnectionError, http.client.RemoteDisconnected, BrokenPipeError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn:
            self.conn.close()
            self.conn = None


def wait_serving(port, path="/", host=None, timeout=10):
    """Until the listener answers an HTTP request (any status but a connection error)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            r = hc_get(c, path, {"host": host} if host else None)
            c.close()
            if r.status != 0:
                return True
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    return False


def connectable(port):
    """The listener accepts (a connection closed before any byte is no request, so this
    takes no rate-limit token)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def listening(port):
    """Whether something listens on 127.0.0.1:port, from /proc (connecting would take a
    rate-limit token)."""
    want = "0100007F:%04X" % port
    with open("/proc/net/tcp") as f:
        return any(line.split()[1] == want and line.split()[3] == "0A"
                   for line in list(f)[1:])
