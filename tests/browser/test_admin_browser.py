"""dispyadmin's page in a real headless Chromium: the node is listed, and its CPU form changes the node's CPUs."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from playwright.sync_api import expect

from dispy_core.admin.client import NodeAddress
from dispy_core.admin.nodes import AdminNodes
from dispy_core.admin.web import AdminWeb
from dispy_core.config import load_config
from dispy_core.testing.nodes import NodeProcess

ADMIN = "admin-secret-b4"
CPUS = os.cpu_count() or 1


def test_admin_page_sets_cpus(node_factory: Callable[..., NodeProcess], page: Any) -> None:
    node = node_factory("--cpus", "1", "--admin_secret", ADMIN, "--name", "pagenode")
    address = NodeAddress("127.0.0.1", node.port)
    nodes = AdminNodes(load_config("client"), ADMIN, [address])
    nodes.start()
    web = AdminWeb(nodes, port=0, poll_sec=1)
    web.start()
    try:
        page.goto(f"{web.url}/")
        row = page.locator(f'tr[data-node="{address}"]')
        expect(row.locator("td.name")).to_have_text("pagenode")
        expect(row.locator("td.cpus")).to_have_text(f"1 of {CPUS}")

        row.locator("input[name=cpus]").fill("0")  # 0: all the machine's CPUs
        row.get_by_role("button", name="Set CPUs").click()
        expect(page.locator("#message")).to_have_text(f"{address} /set_cpus: done")
        expect(row.locator("td.cpus")).to_have_text(f"{CPUS} of {CPUS}")
        assert nodes.operate(address, "info")["cpus"] == CPUS  # asked of the node itself
        node.wait_log(f"set CPUs to {CPUS}")

        refused = page.request.post(f"{web.url}/set_cpus", form={"node": str(address), "cpus": "1"})
        assert refused.status == 403 and "CSRF" in refused.json()["error"]  # the session alone is not enough
        assert nodes.operate(address, "info")["cpus"] == CPUS
        assert ADMIN not in page.content()
    finally:
        web.shutdown()
        nodes.close()
