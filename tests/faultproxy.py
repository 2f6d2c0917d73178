"""A fault-injecting HTTP proxy for the tests: in front of a real ``mlflow server`` on 127.0.0.1, it forwards
every request as it comes, except those a rule matches (by method and a regex on the path), which it answers
the way a faulty network or a reverse proxy would:

* ``drop``: read the request (the whole upload body), then close the connection without an answer (a reset
  link, a proxy restarted mid-upload);
* ``status``: answer with that status and an HTML page, as nginx does (413 for its default 1 MB body limit, 401
  from an auth proxy whose token expired, 500/502 from a failing upstream).

A rule fires ``times`` times (``None``: until removed). ``hits`` counts the requests each rule answered.
"""

from __future__ import annotations

import http.client
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade"}
PAGES = {401: "401 Authorization Required", 413: "413 Request Entity Too Large", 500: "500 Internal Server Error",
         502: "502 Bad Gateway"}


@dataclass
class Rule:
    method: str
    path: str  # a regex searched in the request path
    action: str  # "drop" or "status"
    status: int = 0
    times: int | None = 1
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (self.method in ("*", method) and re.search(self.path, path) is not None
                and (self.times is None or self.hits < self.times))


@dataclass
class FaultProxy:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self):
                body = self._body()
                rule = proxy.fire(self.command, self.path)
                if rule is not None and rule.action == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if rule is not None:
                    page = f"<html><head><title>{PAGES.get(rule.status, rule.status)}</title></head></html>".encode()
                    self.send_response(rule.status)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                up = urlsplit(proxy.upstream)
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, rule: Rule) -> Rule:
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def fire(self, method: str, path: str) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.hits += 1
                    return rule
        return None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
