"""The web base the monitor and dispyadmin share (dispy_core/monitor/web.py, websecurity.py), over real sockets."""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path

import pytest

from dispy_core.monitor.web import WebServer, json_response
from dispy_core.monitor.websecurity import bind_address, is_loopback
from dispy_core.testing.certs import make_self_signed

TOKEN = "s3cret-token-for-tests"


def request(server: WebServer, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes | None = None, context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


def make_server(tmp_path: Path, **kwargs: object) -> WebServer:
    (tmp_path / "index.html").write_text("<h1>index</h1>")
    server = WebServer("127.0.0.1", 0, **kwargs)  # type: ignore[arg-type]
    server.get("/data", lambda r: json_response({"value": 42}))
    server.post("/change", lambda r: json_response({"changed": r.param("what")}))
    server.static(tmp_path)
    server.start()
    return server


def cookie_of(headers: dict[str, str]) -> str:
    return headers["set-cookie"].split(";", 1)[0]


def test_loopback_by_default_and_exposed_addresses() -> None:
    assert bind_address("") == "127.0.0.1" and bind_address(None) == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")


def test_loopback_server_csrf(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    try:
        status, headers, body = request(server, "GET", "/")
        assert status == 200 and body == b"<h1>index</h1>"
        cookie = cookie_of(headers)
        assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
        _, _, body = request(server, "GET", "/session", {"Cookie": cookie})
        csrf = json.loads(body)["csrf"]
        form = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}
        assert request(server, "POST", "/change", form, b"what=x")[0] == 403  # no CSRF token
        assert request(server, "POST", "/change", {**form, "X-CSRF-Token": "0" * 64}, b"what=x")[0] == 403
        assert request(server, "POST", "/change", {**form, "X-CSRF-Token": csrf, "Origin": "http://evil.example"},
                       b"what=x")[0] == 403
        status, _, body = request(server, "POST", "/change", {**form, "X-CSRF-Token": csrf}, b"what=x")
        assert status == 200 and json.loads(body) == {"changed": "x"}
        assert request(server, "GET", "/change", {"Cookie": cookie})[0] == 405  # an action is never a GET
        assert request(server, "GET", "/data", {"Host": "evil.example:80"})[0] == 421  # DNS rebinding
        assert request(server, "GET", "/../etc/passwd")[0] == 404
        assert request(server, "POST", "/change", {**form, "X-CSRF-Token": csrf}, b"x" * (70 * 1024))[0] == 413
    finally:
        server.shutdown()


def test_token_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = make_server(tmp_path, token=TOKEN)
    try:
        assert TOKEN in capsys.readouterr().err  # told once, on stderr
        assert request(server, "GET", "/")[0] == 401
        assert request(server, "GET", "/data")[0] == 401
        assert request(server, "GET", "/?token=wrong-token")[0] == 401
        assert request(server, "GET", "/data", {"Authorization": "Bearer wrong"})[0] == 401
        status, _, body = request(server, "GET", "/data", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and json.loads(body) == {"value": 42}
        status, headers, body = request(server, "GET", f"/?token={TOKEN}")
        assert status == 303 and headers["location"] == "/" and TOKEN not in headers["set-cookie"]
        cookie = cookie_of(headers)
        status, _, body = request(server, "GET", "/", {"Cookie": cookie})
        assert status == 200 and TOKEN.encode() not in body
        # Bearer scripts need no CSRF token (a browser never adds that header by itself)
        status, _, _ = request(server, "POST", "/change", {"Authorization": f"Bearer {TOKEN}",
                                                           "Content-Type": "application/json"}, b'{"what": 1}')
        assert status == 200
    finally:
        server.shutdown()


def test_tls(tmp_path: Path) -> None:
    cert, key = make_self_signed(tmp_path / "certs")
    server = make_server(tmp_path, certfile=str(cert), keyfile=str(key))
    try:
        assert server.url.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        status, headers, body = request(server, "GET", "/data", context=context)
        assert status == 200 and json.loads(body) == {"value": 42}
        _, headers, _ = request(server, "GET", "/", context=context)
        assert "Secure" in headers["set-cookie"]
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            request(server, "GET", "/data")  # plain HTTP to a TLS server gets nothing
    finally:
        server.shutdown()


def test_access_log_has_no_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="dispy.web")
    server = make_server(tmp_path, token=TOKEN)
    try:
        request(server, "GET", f"/?token={TOKEN}")
        request(server, "GET", "/?token=other-guess")
    finally:
        server.shutdown()
    assert "GET /" in caplog.text and TOKEN not in caplog.text and "other-guess" not in caplog.text
