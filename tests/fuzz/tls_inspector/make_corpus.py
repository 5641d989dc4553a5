#!/usr/bin/python3
"""Writes the tls_inspector fuzz target's seed corpus: real ClientHellos captured from
`openssl s_client` on a loopback socket (with and without SNI and ALPN, TLS 1.2 and 1.3), a
ClientHello split over two records, truncations of it, and inputs that are not TLS.
Run from anywhere; writes next to this script."""
import os
import socket
import subprocess

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def capture(args):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    p = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}"] + args,
                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    conn, _ = srv.accept()
    conn.settimeout(5)
    data = b""
    while len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    conn.close()
    srv.close()
    p.kill()
    p.wait()
    return data[:5 + int.from_bytes(data[3:5], "big")]


def write(name, data):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)


def main():
    os.makedirs(HERE, exist_ok=True)
    full = capture(["-servername", "www.example.com", "-alpn", "istio-http/1.1,h2,http/1.1"])
    write("openssl-sni-alpn", full)
    write("openssl-no-sni", capture(["-noservername"]))
    write("openssl-tls12", capture(["-tls1_2", "-servername", "api.example.com", "-alpn", "h2"]))
    # the same ClientHello as two handshake records
    body = full[5:]
    cut = len(body) // 2
    rec = lambda b: full[:3] + len(b).to_bytes(2, "big") + b  # noqa: E731
    write("split-records", rec(body[:cut]) + rec(body[cut:]))
    write("truncated", full[: len(full) // 2])
    write("http-get", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    write("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    write("garbage", bytes(range(256)))
    write("not-client-hello", b"\x16\x03\x01\x00\x04\x02\x00\x00\x00")


if __name__ == "__main__":
    main()
