"""dispyadmin's web page: the nodes and a form per operation, on the monitor's secure web base.

``dispy_core/monitor/web.py`` does the HTTP(S), the token, the sessions and the CSRF check of every POST;
this module adds the admin routes. Reads are GETs, every operation a POST naming one of the nodes dispyadmin
knows (any other address is refused: the page cannot make dispyadmin connect elsewhere). The admin secret
stays in :class:`AdminNodes`; no page and no answer carries it.

Routes: ``GET /nodes`` (every node's state), ``POST /set_cpus`` (node, cpus), ``POST /set_service`` (node,
start, stop, end), ``POST /serve`` (node, computations), ``POST /shutdown`` (node, wait), ``POST /discover``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dispy_core.admin.nodes import AdminNodes
from dispy_core.monitor.web import HTTPError, Request, Response, WebServer, json_response

STATIC = Path(__file__).with_name("static")


class AdminWeb:
    """The admin page's server (``start()``, ``url``, ``shutdown()``)."""

    def __init__(self, nodes: AdminNodes, host: str | None = "127.0.0.1", port: int = 8182,
                 token: str | None = None, certfile: str | None = None, keyfile: str | None = None,
                 poll_sec: float = 5.0) -> None:
        self.nodes = nodes
        self.server = WebServer(host, port, token=token, certfile=certfile, keyfile=keyfile, name="dispyadmin")
        self.server.settings.update({"poll_sec": poll_sec, "title": "dispyadmin"})
        self.server.static(STATIC, index="admin.html")
        self.server.get("/nodes", self._nodes)
        self.server.post("/set_cpus", self._set_cpus)
        self.server.post("/set_service", self._set_service)
        self.server.post("/serve", self._serve)
        self.server.post("/shutdown", self._shutdown)
        self.server.post("/discover", self._discover)

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.server.start()

    def shutdown(self, wait: bool = True) -> None:
        self.server.shutdown(wait)

    # ------------------------------------------------------------------ routes
    def _nodes(self, request: Request) -> Response:
        return json_response({"nodes": self.nodes.info_all(), "discovering": self.nodes.discover})

    def _set_cpus(self, request: Request) -> Response:
        return self._operate(request, "set_cpus", cpus=request.int_param("cpus"))

    def _set_service(self, request: Request) -> Response:
        times = {name: str(request.param(name) or "").strip() for name in ("start", "stop", "end")}
        return self._operate(request, "set_service", **times)

    def _serve(self, request: Request) -> Response:
        computations = request.int_param("computations")
        if computations < 0:
            raise HTTPError(400, f"computations must be >= 0 (0 = no limit), not {computations}")
        return self._operate(request, "serve", computations=computations)

    def _shutdown(self, request: Request) -> Response:
        wait = str(request.param("wait", "1")).lower() not in ("0", "false", "no", "")
        return self._operate(request, "shutdown", wait=wait)

    def _discover(self, request: Request) -> Response:
        if not self.nodes.discover:
            raise HTTPError(400, "dispyadmin was given its nodes (-n): it does not discover others")
        self.nodes.ping()
        return json_response({"ok": True})

    def _operate(self, request: Request, operation: str, **kwargs: Any) -> Response:
        try:
            node = self.nodes.known(str(request.required("node")))
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        entry = self.nodes.operate(node, operation, **kwargs)
        return json_response(entry, 502 if "error" in entry else 200)
