"""A small, secure HTTP(S) server on a thread: routes, JSON answers and static files, for the monitor and dispyadmin.

Use::

    server = WebServer(host, port, token=None, certfile=None, keyfile=None, name="dispy monitor")
    server.get("/nodes", lambda request: json_response({...}))        # reads: GET
    server.post("/set_cpus", handler)                                 # changes: POST, CSRF-checked
    server.static(directory, index="monitor.html")                    # pages, scripts, styles
    server.start()                                                    # listens; prints the token URL if any
    ...
    server.shutdown(wait=True)

A handler takes a :class:`Request` and returns a :class:`Response` (:func:`json_response`,
:func:`error_response`); raising :class:`HTTPError` answers with its status and message as JSON. Every route
is authenticated and every POST CSRF-checked before its handler runs, as ``websecurity.py`` describes;
``GET /session`` gives a page its CSRF token and the settings it needs (:meth:`WebServer.page_settings`).
Each request runs on its own thread (``ThreadingHTTPServer``); TLS handshakes too, so a slow client never
holds up the others. Bodies are bounded (:data:`MAX_BODY`) and the access log never carries a query string.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import re
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from dispy_core.monitor.websecurity import AuthResult, WebSecurity, bind_address, server_context

log = logging.getLogger("dispy.web")

__all__ = ["MAX_BODY", "HTTPError", "Request", "Response", "WebServer", "error_response", "json_response"]

MAX_BODY = 64 * 1024
"""Bytes a request body may have: forms and small JSON documents only."""
REQUEST_TIMEOUT = 30.0
STATIC_TYPES = {".html", ".js", ".css", ".svg", ".ico", ".png", ".json", ".txt"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    "Cache-Control": "no-store",
}


class HTTPError(Exception):
    """Raised by a handler: answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    """One request, parsed: ``params`` merges the query string and a form or JSON body (values as lists);
    ``headers`` has lower-case names."""

    method: str
    path: str
    params: dict[str, list[Any]]
    headers: Mapping[str, str]
    client: str
    session: str | None = None

    def param(self, name: str, default: Any = None) -> Any:
        values = self.params.get(name)
        return values[0] if values else default

    def int_param(self, name: str, default: int | None = None) -> int:
        value = self.param(name, default)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise HTTPError(400, f"parameter {name!r} must be an integer, not {value!r}") from None

    def required(self, name: str) -> Any:
        value = self.param(name)
        if value is None or value == "":
            raise HTTPError(400, f"parameter {name!r} is missing")
        return value


@dataclass
class Response:
    body: bytes = b""
    status: int = 200
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, default=_jsonable, separators=(",", ":")).encode(), status)


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def _jsonable(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


Handler = Callable[[Request], Response]


class WebServer:
    """Routes and static files behind one :class:`WebSecurity`, served by a thread (see the module docstring)."""

    def __init__(self, host: str | None = None, port: int = 8181, token: str | None = None,
                 certfile: str | None = None, keyfile: str | None = None, name: str = "dispy web server") -> None:
        if keyfile and not certfile:
            raise ValueError("keyfile needs certfile")
        if not isinstance(port, int) or not 0 <= port < 65536:
            raise ValueError(f"port must be an int in 0..65535, not {port!r}")
        self.host = bind_address(host)
        self.name = name
        self.tls: ssl.SSLContext | None = server_context(certfile, keyfile) if certfile else None
        self.security = WebSecurity(self.host, port, token, tls=self.tls is not None)
        self.routes: dict[tuple[str, str], Handler] = {}
        self.settings: dict[str, Any] = {}
        """What ``GET /session`` tells pages besides their CSRF token (poll interval, options)."""
        self._static: Path | None = None
        self._index = "index.html"
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = port
        self.get("/session", self._session_info)

    # ------------------------------------------------------------------ routes
    def get(self, path: str, handler: Handler) -> None:
        self.routes[("GET", path)] = handler

    def post(self, path: str, handler: Handler) -> None:
        self.routes[("POST", path)] = handler

    def static(self, directory: str | Path, index: str = "index.html") -> None:
        """Serve the files of ``directory`` (not below it), ``index`` at ``/``."""
        path = Path(directory)
        if not path.is_dir():
            raise ValueError(f"DocumentRoot {str(directory)!r} is not a directory")
        self._static, self._index = path.resolve(), index

    def _session_info(self, request: Request) -> Response:
        csrf = self.security.csrf_token(request.session) if request.session else None
        return json_response({"csrf": csrf, **self.settings})

    # ------------------------------------------------------------------ life
    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_class = type("_BoundServer", (_Server,), {"address_family": family})
        try:
            self._httpd = server_class((self.host, self.port), _RequestHandler, self)
        except OSError as exc:
            raise OSError(exc.errno, f"{self.name}: cannot listen at {self.host}:{self.port}: {exc.strerror}") \
                from exc
        self.port = self._httpd.server_address[1]
        self.security.set_port(self.port)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"{self.name} {self.port}", daemon=True)
        self._thread.start()
        log.info("%s serving at %s%s", self.name, self.url,
                 " (open it with the token printed on stderr)" if self.security.requires_token else "")
        self.security.announce(self.url)

    def shutdown(self, wait: bool = True) -> None:
        if self._httpd is None:
            return
        httpd, self._httpd = self._httpd, None
        httpd.shutdown()
        httpd.server_close()
        if wait and self._thread is not None:
            self._thread.join(5.0)

    # ------------------------------------------------------------------ one request
    def dispatch(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes,
                 client: str) -> Response:
        """Authenticate, check CSRF, route: the whole life of a request, without sockets (header names in
        lower case)."""
        if not self.security.host_allowed(headers.get("host")):
            return error_response(421, "this server answers only to loopback host names")
        url = urllib.parse.urlsplit(raw_path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        path = url.path or "/"
        handler = self.routes.get((method, path))
        other = self.routes.get(("POST" if method == "GET" else "GET", path))
        # pages (and /session, which a script asks first) open a session; JSON answers never do
        is_page = method == "GET" and ((handler is None and self._static is not None) or path == "/session")
        token = query.pop("token", [None])[0]
        auth = self.security.authenticate(headers, token, is_page)
        if not auth.allowed:
            return error_response(401, auth.reason)
        if auth.redirect:
            return self._redirect(path, query, auth)
        if handler is None and other is not None:
            return _with_headers(error_response(405, f"{path} takes {'POST' if method == 'GET' else 'GET'}"),
                                 {"Allow": "POST" if method == "GET" else "GET"})
        if method == "POST":
            refused = self._csrf_refusal(auth, headers, query)
            if refused:
                return error_response(403, refused)
        try:
            params = {**query, **_body_params(headers, body)} if method == "POST" else query
        except ValueError as exc:
            return error_response(400, str(exc))
        if handler is not None:
            response = self._call(handler, Request(method, path, params, headers, client, auth.session))
        elif method == "GET" and self._static is not None:
            response = self._file(path)
        else:
            response = error_response(404, f"no such page: {path}")
        if auth.new_cookie:
            response.headers["Set-Cookie"] = auth.new_cookie
        return response

    def _csrf_refusal(self, auth: AuthResult, headers: Mapping[str, str], query: dict[str, list[Any]]) -> str:
        if auth.bearer:
            return ""
        if not self.security.origin_allowed(headers.get("origin"), headers.get("host")):
            return "cross-origin request refused"
        candidate = headers.get("x-csrf-token") or (query.get("csrf") or [None])[0]
        if not self.security.csrf_ok(auth.session, candidate):
            return "missing or wrong CSRF token (X-CSRF-Token; GET /session gives it)"
        return ""

    def _redirect(self, path: str, query: dict[str, list[Any]], auth: AuthResult) -> Response:
        location = path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")
        response = Response(b"", 303, "text/plain", {"Location": location})
        if auth.new_cookie:
            response.headers["Set-Cookie"] = auth.new_cookie
        return response

    def _call(self, handler: Handler, request: Request) -> Response:
        try:
            return handler(request)
        except HTTPError as exc:
            return error_response(exc.status, exc.message)
        except Exception:
            log.exception("%s: %s %s failed", self.name, request.method, request.path)
            return error_response(500, "internal error (see the program's log)")

    def _file(self, path: str) -> Response:
        assert self._static is not None
        name = self._index if path == "/" else urllib.parse.unquote(path.lstrip("/"))
        target = (self._static / name).resolve()
        if (not target.is_relative_to(self._static) or target.suffix not in STATIC_TYPES
                or not target.is_file()):
            return error_response(404, f"no such page: {path}")
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith("javascript"):
            content_type += "; charset=utf-8"
        return Response(target.read_bytes(), 200, content_type)


def _with_headers(response: Response, headers: dict[str, str]) -> Response:
    response.headers.update(headers)
    return response


def _body_params(headers: Mapping[str, str], body: bytes) -> dict[str, list[Any]]:
    if not body:
        return {}
    kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind == "application/json":
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("the JSON body must be an object")
        return {str(k): v if isinstance(v, list) else [v] for k, v in data.items()}
    if kind in ("application/x-www-form-urlencoded", ""):
        try:
            return dict(urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
        except UnicodeDecodeError:
            raise ValueError("the form is not UTF-8") from None
    raise ValueError(f"unsupported Content-Type {kind!r}: send a form or JSON")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], web: WebServer) -> None:
        self.web = web
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """On the request's own thread: the TLS handshake, so a slow client holds up no one else."""
        request.settimeout(REQUEST_TIMEOUT)
        if self.web.tls is not None:
            try:
                request = self.web.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.debug("%s: TLS handshake with %s failed: %s", self.web.name, client_address[0], exc)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("%s: request from %s failed", self.web.name, client_address[0], exc_info=True)


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "dispy"
    sys_version = ""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._refuse()

    do_DELETE = do_PATCH = do_PUT

    def _refuse(self) -> None:
        self._send(_with_headers(error_response(405, "only GET and POST"), {"Allow": "GET, POST"}))

    def _serve(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self._send(error_response(413, f"the body must be at most {MAX_BODY} bytes"))
            return
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        response = self.server.web.dispatch(method, self.path, headers, body, self.client_address[0])
        self._send(response)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in {**SECURITY_HEADERS, **response.headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """The access log, at debug level, without query strings (a token may be in one)."""
        line = re.sub(r"\?\S*", "", format % args)
        log.debug("%s: %s %s", self.server.web.name, self.client_address[0], line)
