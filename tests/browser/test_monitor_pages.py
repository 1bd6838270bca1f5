"""The web monitor's pages in a real headless Chromium, against a real dispynode: the nodes table renders (DOM
and screenshot), updates arrive without a reload, and a job cancelled from the node page is cancelled."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

import dispy
from dispy.httpd import DispyHTTPServer
from dispy_core.testing.nodes import NodeProcess, start_node

SECRET = "browser-test-secret"


def compute(seconds: float, label: str = "") -> float:
    import time

    time.sleep(seconds)
    return seconds


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, dispy.JobCluster,
                                                                           DispyHTTPServer]]:
    node = start_node(["-c", "2"], secret=SECRET, prefix=tmp_path_factory.mktemp("browser-node"))
    cluster = dispy.JobCluster(compute, nodes=["127.0.0.1"], dispy_port=node.base_port, secret=SECRET,
                               pulse_interval=1)
    monitor = DispyHTTPServer(cluster, port=0, poll_sec=1)
    try:
        yield node, cluster, monitor
    finally:
        monitor.shutdown(wait=False)
        cluster.close(timeout=10, terminate=True)
        node.stop()


def test_nodes_table_renders_and_updates_live(page: Any, png_colours: Any,
                                              monitored: tuple[NodeProcess, dispy.JobCluster, DispyHTTPServer]) -> None:
    node, cluster, monitor = monitored
    first = cluster.submit(0.05)
    assert first is not None and first(timeout=30) == 0.05
    key = f"127.0.0.1:{node.port}"
    page.goto(monitor.url + "/")
    row = page.locator(f'#nodes tbody tr[data-node="{key}"]')
    row.wait_for()
    cells = row.locator("td").all_inner_texts()
    assert cells[0] == "compute" and cells[1] == key and cells[3] == "2"  # cluster, node, CPUs
    expect(row.locator("td.avail_memory")).not_to_have_text("", timeout=20_000)  # a pulse's availability
    done_before = int(row.locator("td.jobs_done").inner_text())
    assert done_before >= 1
    overview = page.locator("#overview tbody tr").first.locator("td").all_inner_texts()
    assert overview[0] == "compute" and overview[1] == "1" and overview[2] == "2"
    # the screenshot shows a table: the region of the table is not blank, and its header colour is there
    shot = page.locator("#nodes").screenshot()
    assert png_colours(shot) > 10, "the nodes table's screenshot is (nearly) blank"
    assert png_colours(page.locator("#plot").screenshot()) > 2  # axes and a line drawn

    # live: a job finishing changes the page without a reload
    page.evaluate("window.__not_reloaded = true")
    job = cluster.submit(0.05)
    assert job is not None and job(timeout=30) == 0.05
    expect(row.locator("td.jobs_done")).to_have_text(str(done_before + 1), timeout=20_000)
    assert page.evaluate("window.__not_reloaded") is True
    expect(page.locator("#plot polyline")).to_have_count(1)


def test_cancel_a_job_from_the_node_page(page: Any,
                                         monitored: tuple[NodeProcess, dispy.JobCluster, DispyHTTPServer]) -> None:
    node, cluster, monitor = monitored
    job = cluster.submit(60, label="cancel-me")
    assert job is not None
    key = f"127.0.0.1:{node.port}"
    page.goto(f"{monitor.url}/node.html?node={key}")
    row = page.locator(f'#jobs tbody tr[data-job="1:{job._uid}"]')
    row.wait_for(timeout=20_000)
    assert "label='cancel-me'" in row.inner_text() and "60" in row.inner_text()
    row.locator("button.cancel").click()
    assert job.wait(30), "the job was not cancelled"
    assert job.status in (dispy.DispyJob.Cancelled, dispy.DispyJob.Terminated)
    row.wait_for(state="detached", timeout=20_000)  # gone from the running jobs
    assert page.locator("#error").inner_text() == ""
