"""A real HTTP server on 127.0.0.1 for the weights tests, with faults on demand.

Each path is a :class:`Route`: a body plus a behaviour (drop the connection mid-file, answer an
HTTP error, stall, show a Google-Drive-style confirmation page, ...). The server records every
request so tests can count downloads and check Range headers. It also acts as a plain HTTP proxy
(requests sends ``GET http://host/path`` to a proxy), which lets a test prove that the proxy
environment variables are honoured without anything leaving 127.0.0.1.
"""
from __future__ import annotations

import hashlib
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import parse_qs, urlsplit

ALWAYS = 10**9
_BLOCK = 64 * 1024


@dataclass
class Route:
    body: bytes
    # ok | drop | status | slow | stall | drive | drive_quota | gate | empty | trickle | redirect
    mode: str = "ok"
    times: int = ALWAYS  # how many requests misbehave before the route serves normally
    status: int = 500
    delay: float = 0.0
    range_ok: bool = True
    drive_style: str = "form"  # form | link | cookie
    token: str = "t0k3n-XYZ"
    gate: threading.Event = field(default_factory=threading.Event)
    throttle: float = 0.0  # seconds between 64 KiB blocks
    hits: int = 0
    # The file's version: a strong ETag (from the body's hash) and a Last-Modified date.
    validators: str = "both"  # both | etag | last-modified | none
    if_range_ok: bool = True  # False: a server that ignores If-Range and always honours Range
    next_body: Optional[bytes] = None  # replaces body once `switch_after` requests were served
    switch_after: int = ALWAYS
    location: str = ""  # the Location header of mode "redirect"
    trickle_bytes: int = ALWAYS  # mode "trickle": bytes sent one at a time, `delay` apart
    content_type: str = "application/octet-stream"
    length_header: Optional[str] = None  # a Content-Length value sent instead of the true one

    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'

    def last_modified(self) -> str:
        # A different date for each version, derived from the body.
        day = 1 + int(hashlib.sha256(self.body).hexdigest()[:4], 16) % 28
        return f"Mon, {day:02d} Jan 2024 10:00:00 GMT"


@dataclass
class Seen:
    path: str
    query: dict
    range: Optional[str]
    absolute: bool  # the request line carried a full URL: it came through us as a proxy
    host: str
    if_range: Optional[str] = None


class FaultyServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.seen: list[Seen] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"owner": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, route: Route) -> Route:
        self.routes[path] = route
        return route

    def requests_for(self, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path == path]

    def full_downloads(self, path: str) -> int:
        """Requests for ``path`` that asked for the file from byte 0 (not a resume, not a page)."""
        return sum(1 for s in self.requests_for(path) if not s.range)

    def stop(self) -> None:
        self.stopping.set()
        for route in self.routes.values():
            route.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)


class _Handler(BaseHTTPRequestHandler):
    owner: FaultyServer

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.owner._record(Seen(parts.path, query, self.headers.get("Range"),
                                self.path.startswith("http"), parts.netloc,
                                self.headers.get("If-Range")))
        route = self.owner.routes.get(parts.path)
        if route is None:
            return self._plain(404, b"not found")
        route.hits += 1
        if route.next_body is not None and route.hits > route.switch_after:
            route.body, route.next_body = route.next_body, None  # the file is replaced upstream
        misbehave = route.hits <= route.times
        mode = route.mode if misbehave else "ok"
        if mode == "empty":
            return self._plain(200, b"", content_type="application/octet-stream")
        if mode == "redirect":
            self.send_response(302)
            self.send_header("Location", route.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "trickle":
            return self._serve(route, trickle=True)
        if mode == "status":
            return self._plain(route.status, b"server says no")
        if mode == "slow":
            self.owner.stopping.wait(route.delay)
            return self._serve(route)
        if mode == "drive_quota":
            return self._html(b"<html><body>Too many users have viewed or downloaded this file "
                              b"recently.</body></html>")
        if route.mode == "drive" and query.get("confirm") != route.token:
            return self._drive_page(route, parts.path)
        if mode == "drop":
            return self._serve(route, stop_after=0.5)
        if mode == "stall":
            return self._serve(route, stall_after=0.5)
        if mode == "gate":
            return self._serve(route, gate_after=0.5)
        return self._serve(route)

    # -- responses -------------------------------------------------------------------------

    def _serve(self, route: Route, *, stop_after: Optional[float] = None,
               stall_after: Optional[float] = None, gate_after: Optional[float] = None,
               trickle: bool = False) -> None:
        body = route.body
        start = 0
        header = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if header and if_range is not None and route.if_range_ok \
                and if_range not in (route.etag(), route.last_modified()):
            header = None  # RFC 9110: a changed file is sent whole, with 200
        if header and route.range_ok:
            start = int(header.split("=", 1)[1].split("-", 1)[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Type", route.content_type)
        self.send_header("Content-Length", route.length_header or str(len(payload)))
        self.send_header("Accept-Ranges", "bytes" if route.range_ok else "none")
        if route.validators in ("both", "etag"):
            self.send_header("ETag", route.etag())
        if route.validators in ("both", "last-modified"):
            self.send_header("Last-Modified", route.last_modified())
        self.end_headers()
        if trickle:
            try:
                for offset in range(min(len(payload), route.trickle_bytes)):
                    self.wfile.write(payload[offset:offset + 1])
                    self.wfile.flush()
                    if self.owner.stopping.wait(route.delay):
                        break
                self.close_connection = True
            except OSError:
                self.close_connection = True
            return
        cut = None
        for fraction in (stop_after, stall_after, gate_after):
            if fraction is not None:
                cut = int(len(payload) * fraction)
        try:
            self._send(payload[:cut] if cut is not None else payload, route.throttle)
            if cut is None:
                return
            if stop_after is not None:
                # Drop the connection although Content-Length promised more.
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if stall_after is not None:
                self.wfile.flush()
                self.owner.stopping.wait(route.delay)
                self.close_connection = True
                return
            self.wfile.flush()
            route.gate.wait(30)
            self._send(payload[cut:], 0.0)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def _send(self, data: bytes, throttle: float) -> None:
        for offset in range(0, len(data), _BLOCK):
            self.wfile.write(data[offset:offset + _BLOCK])
            if throttle:
                self.wfile.flush()
                self.owner.stopping.wait(throttle)

    def _drive_page(self, route: Route, path: str) -> None:
        if route.drive_style == "form":
            page = (f'<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>'
                    f'</head><body><p>can\'t scan this file for viruses.</p>'
                    f'<form id="download-form" action="{path}" method="get">'
                    f'<input type="submit" id="uc-download-link" value="Download anyway"/>'
                    f'<input type="hidden" name="id" value="FILEID">'
                    f'<input type="hidden" name="export" value="download">'
                    f'<input type="hidden" name="confirm" value="{route.token}">'
                    f'<input type="hidden" name="uuid" value="0000-1111"></form></body></html>')
            return self._html(page.encode())
        if route.drive_style == "link":
            page = (f'<html><body><a id="uc-download-link" href="{path}?export=download&amp;'
                    f'confirm={route.token}&amp;id=FILEID">Download anyway</a></body></html>')
            return self._html(page.encode())
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Set-Cookie", f"download_warning_13058876669334088843={route.token}; "
                                       "Path=/")
        body = b"<html><body>Google Drive can't scan this file for viruses.</body></html>"
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _html(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _plain(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
