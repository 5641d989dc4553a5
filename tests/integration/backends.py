#!/usr/bin/python3
"""Test backends for skiff's HTTP integration tests and benchmark, on 127.0.0.1.

  python3 backends.py http --port N [--name NAME] [--control-port M]
  python3 backends.py grpc --port N [--name NAME]
  python3 backends.py ws   --port N [--name NAME]     (the http backend answers upgrades too)

HttpBackend: one asyncio loop on raw sockets that speaks HTTP/1.1 (its own small, permissive
parser) and HTTP/2 with prior knowledge (h2c, python3-h2) on the same port, chosen by the
connection preface. It records every request it receives (method, path, headers as received,
body, which connection) and answers 200 with a JSON body echoing them, with the header
`x-backend: NAME`. Knobs, as request headers:
  x-backend-status: 503        answer with this status
  x-backend-delay-ms: 500      wait before answering
  x-backend-chunked: 1         HTTP/1.1: a chunked response
  x-backend-size: N            a body of N bytes ("x" repeated) instead of the JSON echo
  x-backend-close: 1           close the connection after the response
  x-backend-trailers: 1        HTTP/2 (and chunked HTTP/1.1): trailers x-trailer: yes
An `Upgrade: websocket` request is answered with RFC 6455's handshake and every frame received
is echoed back (text and binary; ping gets pong; close is answered and closes).

GrpcBackend: python3-grpcio without generated code, service skiff.test.Echo with raw bytes
messages: Unary (echo), ServerStream (10 messages: request + b":<i>"), ClientStream (the
messages joined), BidiStream (echo each), Fail (request b"CODE:message" ends with that status
code, that message and trailing metadata x-fail: yes).

In a test, construct the classes directly (each runs in a daemon thread and records in
memory); as a program, `--control-port` serves the record as JSON on GET /__received."""
import argparse
import asyncio
import base64
import hashlib
import json
import socket
import struct
import sys
import threading
import time

MAX_HEAD = 1 << 20        # a request head larger than this closes the connection
MAX_BODY = 256 << 20      # a body larger than this closes the connection
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Record:
    """What a backend received: a list of request dicts, and connection/byte counters."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.connections = 0
        self.bytes = 0

    def add(self, req):
        with self.lock:
            self.requests.append(req)

    def snapshot(self):
        with self.lock:
            return list(self.requests)

    def clear(self):
        with self.lock:
            self.requests.clear()
            self.connections = 0
            self.bytes = 0

    def as_json(self):
        with self.lock:
            return json.dumps({"connections": self.connections, "bytes": self.bytes,
                               "requests": [dict(r, body=r["body"].decode("latin-1"))
                                            for r in self.requests]})


def header_map(headers):
    """Lower-cased name -> values joined with ',' (what the echo reports)."""
    out = {}
    for k, v in headers:
        k = k.lower()
        out[k] = out[k] + "," + v if k in out else v
    return out


def reason(status):
    return {100: "Continue", 101: "Switching Protocols", 200: "OK", 204: "No Content",
            400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
            503: "Service Unavailable", 504: "Gateway Timeout"}.get(status, "Status")


class HttpBackend:
    """HTTP/1.1 + h2c (prior knowledge) + WebSocket recording backend in its own thread."""

    def __init__(self, name, port=0, host="127.0.0.1"):
        self.name = name
        self.record = Record()
        self.conn_seq = 0
        self.loop = asyncio.new_event_loop()
        self.server = None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(host, port, ready), daemon=True)
        self.thread.start()
        if not ready.wait(5) or self.server is None:
            raise RuntimeError("backend did not start")
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def requests(self):
        return self.record.snapshot()

    def _run(self, host, port, ready):
        asyncio.set_event_loop(self.loop)

        async def start():
            self.server = await asyncio.start_server(self._conn, host, port, limit=MAX_HEAD,
                                                     reuse_address=True)
        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()
        # the cancelled connection tasks finish, then the loop closes with its selector
        pending = asyncio.all_tasks(self.loop)
        if pending:
            self.loop.run_until_complete(asyncio.wait(pending, timeout=2))
        self.loop.close()

    def stop(self):
        if self.loop.is_closed():
            return  # stopped before
        def close():
            self.server.close()
            for t in asyncio.all_tasks(self.loop):
                t.cancel()
            self.loop.call_soon(self.loop.stop)
        self.loop.call_soon_threadsafe(close)
        self.thread.join(5)

    # --- HTTP/1.1 ---------------------------------------------------------------------------

    async def _conn(self, reader, writer):
        self.conn_seq += 1
        conn = self.conn_seq
        with self.record.lock:
            self.record.connections += 1
        try:
            first = await reader.read(len(H2_PREFACE))
            if not first:
                return
            self.record.bytes += len(first)
            if H2_PREFACE.startswith(first) and len(first) < len(H2_PREFACE):
                first += await reader.readexactly(len(H2_PREFACE) - len(first))
            if first == H2_PREFACE:
                await H2Session(self, conn, reader, writer, first).run()
                return
            buf = first
            while True:
                req, buf = await self._read_request(reader, buf, conn, writer)
                if req is None:
                    return
                self.record.add(req)
                hm = header_map(req["headers"])
                if hm.get("upgrade", "").lower() == "websocket":
                    await self._websocket(reader, writer, hm, buf)
                    return
                keep = await self._respond(writer, req, hm)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError):
            return
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def _fill(self, reader, buf):
        data = await reader.read(65536)
        if not data:
            raise asyncio.IncompleteReadError(buf, None)
        self.record.bytes += len(data)
        return buf + data

    async def _read_request(self, reader, buf, conn, writer):
        """One request from the connection: (request dict, bytes left over), or (None, b"")
        when the peer closed between requests."""
        while True:
            end = buf.find(b"\r\n\r\n")
            lf = buf.find(b"\n\n")
            if end >= 0 and (lf < 0 or end < lf):
                head, buf = buf[:end], buf[end + 4:]
                break
            if lf >= 0:  # permissive: bare LF, so that a forwarded one is seen and recorded
                head, buf = buf[:lf], buf[lf + 2:]
                break
            if len(buf) > MAX_HEAD:
                raise ValueError("head too large")
            try:
                buf = await self._fill(reader, buf)
            except asyncio.IncompleteReadError:
                return None, b""
        lines = head.replace(b"\r\n", b"\n").split(b"\n")
        parts = lines[0].decode("latin-1").split(" ")
        method, path, version = (parts + ["", "", ""])[:3]
        headers = []
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            headers.append([name.strip(), value.strip()])
        hm = header_map(headers)
        body = b""
        if hm.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in hm.get("transfer-encoding", "").lower():
            while True:
                while b"\r\n" not in buf:
                    buf = await self._fill(reader, buf)
                line, buf = buf.split(b"\r\n", 1)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while b"\r\n\r\n" not in b"\r\n" + buf:
                        buf = await self._fill(reader, buf)
                    buf = (b"\r\n" + buf).split(b"\r\n\r\n", 1)[1]
                    break
                while len(buf) < size + 2:
                    buf = await self._fill(reader, buf)
                body += buf[:size]
                buf = buf[size + 2:]
                if len(body) > MAX_BODY:
                    raise ValueError("body too large")
        elif "content-length" in hm:
            n = int(hm["content-length"].split(",")[0])
            if n > MAX_BODY:
                raise ValueError("body too large")
            while len(buf) < n:
                buf = await self._fill(reader, buf)
            body, buf = buf[:n], buf[n:]
        req = {"backend": self.name, "proto": "http/1.1", "conn": conn, "method": method,
               "path": path, "version": version, "headers": headers, "body": body,
               "time": time.time()}
        return req, buf

    def _echo(self, req, hm):
        status = int(hm.get("x-backend-status", "200"))
        if "x-backend-size" in hm:
            body = b"x" * int(hm["x-backend-size"])
        else:
            body = json.dumps({"backend": self.name, "proto": req["proto"],
                               "method": req["method"], "path": req["path"],
                               "headers": header_map(req["headers"]),
                               "body_len": len(req["body"]), "conn": req["conn"]}).encode()
        return status, body

    async def _respond(self, writer, req, hm):
        if "x-backend-delay-ms" in hm:
            await asyncio.sleep(int(hm["x-backend-delay-ms"]) / 1000)
        status, body = self._echo(req, hm)
        close = hm.get("x-backend-close") == "1" or hm.get("connection", "").lower() == "close" \
            or req["version"] == "HTTP/1.0"
        head = [f"HTTP/1.1 {status} {reason(status)}", "content-type: application/json",
                f"x-backend: {self.name}", "x-backend-remove: present",
                "server: recording-backend"]
        chunked = hm.get("x-backend-chunked") == "1"
        if chunked:
            head.append("transfer-encoding: chunked")
        else:
            head.append(f"content-length: {len(body)}")
        if close:
            head.append("connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        if req["method"] == "HEAD":
            pass
        elif chunked:
            for i in range(0, len(body), 1000):
                part = body[i:i + 1000]
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            trailer = b"x-trailer: yes\r\n" if hm.get("x-backend-trailers") == "1" else b""
            writer.write(b"0\r\n" + trailer + b"\r\n")
        else:
            writer.write(body)
        await writer.drain()
        return not close

    # --- WebSocket (RFC 6455) ---------------------------------------------------------------

    async def _websocket(self, reader, writer, hm, buf):
        key = hm.get("sec-websocket-key", "")
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        writer.write(("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                      f"connection: Upgrade\r\nsec-websocket-accept: {accept}\r\n"
                      f"x-backend: {self.name}\r\n\r\n").encode())
        await writer.drain()
        for _ in range(100000):
            while True:
                frame = ws_parse(buf)
                if frame is not None:
                    break
                buf = await self._fill(reader, buf)
            opcode, payload, used = frame
            buf = buf[used:]
            if opcode == 8:
                writer.write(ws_frame(8, payload[:2]))
                await writer.drain()
                return
            if opcode == 9:
                writer.write(ws_frame(10, payload))
            elif opcode in (1, 2):
                writer.write(ws_frame(opcode, payload))
            await writer.drain()


def ws_frame(opcode, payload, mask=False):
    """One final frame; masked (as a client must send) when mask is true."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if mask:
        key = b"\x11\x22\x33\x44"
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    return head + payload


def ws_parse(buf):
    """(opcode, unmasked payload, bytes used) for the first frame in buf, or None if partial."""
    if len(buf) < 2:
        return None
    opcode, n, masked, pos = buf[0] & 0x0F, buf[1] & 0x7F, buf[1] & 0x80, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, pos = struct.unpack("!H", buf[2:4])[0], 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, pos = struct.unpack("!Q", buf[2:10])[0], 10
    if n > MAX_BODY:
        raise ValueError("frame too large")
    key = b""
    if masked:
        if len(buf) < pos + 4:
            return None
        key, pos = buf[pos:pos + 4], pos + 4
    if len(buf) < pos + n:
        return None
    payload = buf[pos:pos + n]
    if masked:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return opcode, payload, pos + n


class H2Session:
    """One h2c connection of an HttpBackend (server side, python3-h2)."""

    def __init__(self, backend, conn, reader, writer, preface):
        import h2.config
        import h2.connection
        self.b, self.conn_id, self.reader, self.writer = backend, conn, reader, writer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="latin-1", validate_inbound_headers=False))
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(16 << 20)
        self.streams = {}  # id -> [headers, body]
        self.window = asyncio.Event()
        self.preface = preface
        self.tasks = set()

    async def run(self):
        import h2.events
        self.writer.write(self.h2.data_to_send())
        data = self.preface
        for _ in range(10_000_000):
            try:
                events = self.h2.receive_data(data)
            except Exception:
                self.writer.write(self.h2.data_to_send())
                return
            for ev in events:
                if isinstance(ev, h2.events.RequestReceived):
                    self.streams[ev.stream_id] = [list(ev.headers), b""]
                    if ev.stream_ended:
                        self._done(ev.stream_id)
                elif isinstance(ev, h2.events.DataReceived):
                    if ev.stream_id in self.streams:
                        self.streams[ev.stream_id][1] += ev.data
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    if ev.stream_ended:
                        self._done(ev.stream_id)
                elif isinstance(ev, h2.events.TrailersReceived):
                    if ev.stream_id in self.streams:
                        self.streams[ev.stream_id][0] += list(ev.headers)
                    self._done(ev.stream_id)
                elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                    self.window.set()
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.writer.write(self.h2.data_to_send())
                    await self.writer.drain()
                    return
            self.writer.write(self.h2.data_to_send())
            await self.writer.drain()
            data = await self.reader.read(65536)
            if not data:
                return
            self.b.record.bytes += len(data)

    def _done(self, sid):
        if sid not in self.streams:
            return
        headers, body = self.streams.pop(sid)
        hm = header_map(headers)
        req = {"backend": self.b.name, "proto": "h2", "conn": self.conn_id,
               "method": hm.get(":method", ""), "path": hm.get(":path", ""), "version": "HTTP/2",
               "headers": [[k, v] for k, v in headers], "body": body, "time": time.time()}
        self.b.record.add(req)
        t = asyncio.ensure_future(self._respond(sid, req, hm))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _respond(self, sid, req, hm):
        import h2.exceptions
        if "x-backend-delay-ms" in hm:
            await asyncio.sleep(int(hm["x-backend-delay-ms"]) / 1000)
        status, body = self.b._echo(req, hm)
        trailers = hm.get("x-backend-trailers") == "1"
        try:
            self.h2.send_headers(sid, [(":status", str(status)),
                                       ("content-type", "application/json"),
                                       ("x-backend", self.b.name),
                                       ("x-backend-remove", "present"),
                                       ("server", "recording-backend"),
                                       ("content-length", str(len(body)))])
            pos = 0
            while pos < len(body):
                n = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size,
                        len(body) - pos)
                if n <= 0:
                    self.window.clear()
                    self.writer.write(self.h2.data_to_send())
                    await self.writer.drain()
                    await asyncio.wait_for(self.window.wait(), 30)
                    continue
                self.h2.send_data(sid, body[pos:pos + n])
                pos += n
            if trailers:
                self.h2.send_headers(sid, [("x-trailer", "yes")], end_stream=True)
            else:
                self.h2.end_stream(sid)
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError,
                asyncio.TimeoutError):
            pass
        self.writer.write(self.h2.data_to_send())
        await self.writer.drain()


class GrpcBackend:
    """skiff.test.Echo over python3-grpcio, raw bytes messages, in its own thread pool."""

    SERVICE = "skiff.test.Echo"

    def __init__(self, name, port=0, host="127.0.0.1"):
        import grpc
        from concurrent import futures
        self.name = name
        self.calls = []  # (method, invocation metadata dict)
        self.lock = threading.Lock()
        ident = (lambda b: b)
        h = {
            "Unary": grpc.unary_unary_rpc_method_handler(
                self.unary, request_deserializer=ident, response_serializer=ident),
            "ServerStream": grpc.unary_stream_rpc_method_handler(
                self.server_stream, request_deserializer=ident, response_serializer=ident),
            "ClientStream": grpc.stream_unary_rpc_method_handler(
                self.client_stream, request_deserializer=ident, response_serializer=ident),
            "BidiStream": grpc.stream_stream_rpc_method_handler(
                self.bidi, request_deserializer=ident, response_serializer=ident),
            "Fail": grpc.unary_unary_rpc_method_handler(
                self.fail, request_deserializer=ident, response_serializer=ident),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(16))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(self.SERVICE, h),))
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        self.server.start()

    def _note(self, method, context):
        with self.lock:
            self.calls.append((method, dict(context.invocation_metadata())))
        context.send_initial_metadata((("x-backend", self.name),))

    def unary(self, req, context):
        self._note("Unary", context)
        return req

    def server_stream(self, req, context):
        self._note("ServerStream", context)
        for i in range(10):
            yield req + b":%d" % i

    def client_stream(self, it, context):
        self._note("ClientStream", context)
        return b"".join(it)

    def bidi(self, it, context):
        self._note("BidiStream", context)
        for m in it:
            yield m

    def fail(self, req, context):
        import grpc
        self._note("Fail", context)
        code, _, msg = req.decode().partition(":")
        context.set_trailing_metadata((("x-fail", "yes"),))
        context.abort(grpc.StatusCode[code], msg)

    def stop(self):
        self.server.stop(0).wait(5)


def grpc_frame(msg):
    """A gRPC length-prefixed message (uncompressed)."""
    return b"\x00" + struct.pack("!I", len(msg)) + msg


def wait_port(port, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=["http", "ws", "grpc"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default="backend")
    ap.add_argument("--control-port", type=int, help="serve the record on GET /__received")
    args = ap.parse_args()
    if args.kind == "grpc":
        b = GrpcBackend(args.name, args.port)
    else:
        b = HttpBackend(args.name, args.port)
    if args.control_port and args.kind != "grpc":
        rec = b.record

        async def control(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            body = rec.as_json().encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            writer.close()

        async def start():
            await asyncio.start_server(control, "127.0.0.1", args.control_port)
        asyncio.run_coroutine_threadsafe(start(), b.loop).result(5)
    print(f"{args.kind} backend {args.name} on 127.0.0.1:{b.port}", flush=True)
    stop = threading.Event()
    import signal
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    b.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
