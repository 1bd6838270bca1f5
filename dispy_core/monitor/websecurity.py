"""Who may use the project's small web servers (the monitor, ``dispyadmin``), and what a request may change.

The model, in the order a request meets it (``web.py`` applies it; this module only decides):

1. **Where it listens.** ``bind_address('')`` is ``127.0.0.1``: a server is on loopback unless told to listen
   elsewhere. :func:`is_loopback` says whether a bind address (name or address) stays on this machine.
2. **Host header.** A loopback server answers only requests whose ``Host`` names loopback (``127.0.0.1``,
   ``[::1]``, ``localhost``): a web page elsewhere cannot reach it through DNS rebinding.
3. **Access token.** A server bound anywhere else needs a token: the one given (a password) or one generated
   here. It is shown once, as a URL, by :meth:`WebSecurity.announce` on the program's stderr, never through
   ``logging`` and never in a page. A browser opens that URL once: the token is checked
   (``hmac.compare_digest``), the browser gets a session cookie (a fresh random id, ``HttpOnly``,
   ``SameSite=Strict``, ``Secure`` under TLS, its name carrying the port so two servers on one host do not
   clash) and is redirected to the same path without the token. Scripts and Prometheus send
   ``Authorization: Bearer <token>`` instead. A loopback server gives any page request a session without a
   token (pass ``token=`` to ask for one there too).
4. **CSRF.** Every request that changes something is a POST (a GET to it is refused) and carries the session's
   CSRF token in the ``X-CSRF-Token`` header (or a ``csrf`` form field): ``HMAC(server key, session id)``,
   which a page of another origin cannot read. An ``Origin`` header, when sent, must be this server's. A
   request authenticated by ``Authorization: Bearer`` needs no CSRF token: browsers never add that header
   by themselves.
5. **TLS.** :func:`server_context` builds the server's context from ``certfile``/``keyfile``.

Secrets (the access token, session ids, the HMAC key) are never logged; the CSRF token is the only value
derived from them a page sees, and it authorises nothing without the session cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket
import ssl
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import TextIO

__all__ = ["AuthResult", "WebSecurity", "bind_address", "is_loopback", "server_context"]

SESSION_TTL = 12 * 3600.0
"""Seconds a browser session lasts without use."""
MAX_SESSIONS = 1024
"""Sessions kept at most (the least recently used go first): a flood of requests cannot grow memory."""
LOOPBACK_NAMES = frozenset({"127.0.0.1", "::1", "[::1]", "localhost"})


def bind_address(host: str | None) -> str:
    """The address a server listens on: ``''``/None mean loopback here (the original meant every address)."""
    return "127.0.0.1" if not host else host


def is_loopback(host: str) -> bool:
    """True if ``host`` (address or name) is reachable only from this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0]).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]).is_loopback
                               for info in infos)


def server_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A TLS server context for ``certfile`` (with its key in ``keyfile``, or in ``certfile`` itself)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the TLS certificate {certfile!r} / key {keyfile!r}: {exc}") from exc
    return context


@dataclass(frozen=True)
class AuthResult:
    """What :meth:`WebSecurity.authenticate` decided about one request."""

    allowed: bool
    session: str | None = None
    """The session id (None for a Bearer request or a refusal)."""
    new_cookie: str | None = None
    """A ``Set-Cookie`` value to send: a session was just opened."""
    redirect: bool = False
    """The request carried the token in its URL: send the browser to the same path without it."""
    bearer: bool = False
    reason: str = ""


class WebSecurity:
    """The access token, the sessions and the CSRF key of one web server (see the module docstring)."""

    def __init__(self, bind_host: str, port: int, token: str | None = None, tls: bool = False) -> None:
        if token is not None and (not isinstance(token, str) or len(token) < 8):
            raise ValueError("the web server's token must be a string of at least 8 characters")
        self.loopback = is_loopback(bind_host)
        self.requires_token = token is not None or not self.loopback
        self._token = token if token is not None else (secrets.token_urlsafe(24) if not self.loopback else None)
        self.tls = tls
        self.port = port
        self.cookie_name = f"dispy_session_{port}"
        self._key = secrets.token_bytes(32)
        self._sessions: dict[str, float] = {}
        self._lock = threading.Lock()

    def set_port(self, port: int) -> None:
        """The port once bound (port 0 picks one): the cookie's name follows it."""
        self.port = port
        self.cookie_name = f"dispy_session_{port}"

    # ------------------------------------------------------------------ the token
    def announce(self, url: str, stream: TextIO | None = None) -> None:
        """Tell the operator, once, how to open the server: the URL, with the token if one is needed."""
        out = stream if stream is not None else sys.stderr
        if self._token is not None:
            print(f"dispy web server: open {url}/?token={self._token} (the token is shown only here)", file=out,
                  flush=True)

    def check_token(self, candidate: str | None) -> bool:
        if self._token is None or not candidate:
            return False
        return hmac.compare_digest(candidate.encode(), self._token.encode())

    def is_secret(self, text: str) -> bool:
        """True if ``text`` contains the token or a session id (tests check pages with it)."""
        with self._lock:
            sessions = list(self._sessions)
        return any(s and s in text for s in [self._token or "", *sessions])

    # ------------------------------------------------------------------ host and origin
    def host_allowed(self, host_header: str | None) -> bool:
        """A loopback server answers only to loopback names (DNS rebinding); others to any ``Host``."""
        if not self.loopback:
            return True
        if not host_header:
            return False
        host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
        return host in LOOPBACK_NAMES

    def origin_allowed(self, origin: str | None, host_header: str | None) -> bool:
        """A browser's ``Origin`` (when it sends one) must be this server itself."""
        if origin is None:
            return True
        scheme = "https" if self.tls else "http"
        return bool(host_header) and origin == f"{scheme}://{host_header}"

    # ------------------------------------------------------------------ sessions
    def authenticate(self, headers: Mapping[str, str], query_token: str | None, is_page: bool,
                     now: float | None = None) -> AuthResult:
        """Who is asking: a session (by cookie), a Bearer token, the token in a page URL, or nobody (header names
        in lower case)."""
        now = time.time() if now is None else now
        auth = headers.get("authorization", "")
        if auth.startswith("Bearer "):
            if self.check_token(auth[7:].strip()):
                return AuthResult(True, bearer=True)
            return AuthResult(False, reason="the Bearer token is not this server's")
        session = self._session_from(headers.get("cookie"), now)
        if session is not None:
            return AuthResult(True, session=session, redirect=query_token is not None and is_page)
        if not self.requires_token:
            return self._open_session(now, redirect=query_token is not None) if is_page else AuthResult(True)
        if query_token is not None:
            if not is_page:
                return AuthResult(False, reason="a token in the URL opens pages only; scripts send "
                                                "'Authorization: Bearer <token>'")
            if self.check_token(query_token):
                return self._open_session(now, redirect=True)
            return AuthResult(False, reason="the token is not this server's")
        return AuthResult(False, reason="this server needs its token: open the URL the program printed, or send "
                                        "'Authorization: Bearer <token>'")

    def _session_from(self, cookie_header: str | None, now: float) -> str | None:
        if not cookie_header:
            return None
        try:
            cookie: SimpleCookie = SimpleCookie(cookie_header)
        except CookieError:
            return None
        morsel = cookie.get(self.cookie_name)
        if morsel is None:
            return None
        sid = morsel.value
        with self._lock:
            expiry = self._sessions.get(sid)
            if expiry is None or expiry < now:
                self._sessions.pop(sid, None)
                return None
            self._sessions.pop(sid)
            self._sessions[sid] = now + SESSION_TTL  # most recently used last
        return sid

    def _open_session(self, now: float, redirect: bool) -> AuthResult:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[sid] = now + SESSION_TTL
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
        flags = "; Secure" if self.tls else ""
        cookie = f"{self.cookie_name}={sid}; Path=/; HttpOnly; SameSite=Strict{flags}"
        return AuthResult(True, session=sid, new_cookie=cookie, redirect=redirect)

    # ------------------------------------------------------------------ CSRF
    def csrf_token(self, session: str) -> str:
        return hmac.new(self._key, b"csrf|" + session.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: str | None, candidate: str | None) -> bool:
        if session is None or not candidate:
            return False
        return hmac.compare_digest(candidate.encode(), self.csrf_token(session).encode())
