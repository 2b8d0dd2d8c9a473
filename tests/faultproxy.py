"""A fault-injecting HTTP proxy for S3 tests, on loopback only.

It forwards every request to an upstream S3 endpoint, except that, in a fixed repeating
pattern, it answers 503 SlowDown, resets the connection without answering, or delays the
answer. The pattern is deterministic, so a test is repeatable; each retry is a new request
and lands on a different point of the pattern.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class FaultProxy:
    def __init__(self, upstream: str, pattern: str = "ok,503,ok,reset,delay,ok,503,ok", delay: float = 0.3,
                 before: Callable[[str, str], None] | None = None,
                 after: Callable[[str, str, int], None] | None = None):
        """``before(method, path)``, when given, runs before each request is answered (it may
        hold the request back, e.g. to make one upload slow); ``after(method, path, status)``
        once the upstream answered a forwarded request."""
        self.before, self.after = before, after
        self.upstream = urlsplit(upstream)
        self.pattern = pattern.split(",")
        self.delay = delay
        self.counts = {"ok": 0, "503": 0, "reset": 0, "delay": 0}
        self._n = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        chunk = self.rfile.read(size)
                        self.rfile.readline()
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(chunk)
                return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

            def _handle(self):
                body = self._body()
                if proxy.before is not None:
                    proxy.before(self.command, self.path)
                fault = proxy.next_fault()
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "503":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                if fault == "delay":
                    time.sleep(proxy.delay)
                self._forward(body)

            def _forward(self, body: bytes):
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None,
                             headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if proxy.after is not None:
                    proxy.after(self.command, self.path, resp.status)
                self.send_response_only(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP and (k.lower() != "content-length" or self.command == "HEAD"):
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def next_fault(self) -> str:
        with self._lock:
            fault = self.pattern[self._n % len(self.pattern)]
            self._n += 1
            self.counts[fault] += 1
            return fault

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
