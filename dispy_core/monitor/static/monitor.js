// The monitor page: clusters, nodes (sortable) and the throughput plot, updated every poll_sec seconds.
"use strict";

(() => {
  const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
  let sortKey = "key";
  let sortDown = false;
  let lastNodes = [];

  function flatten(cluster, node) {
    const avail = node.avail || {};
    return Object.assign({cluster: cluster.name, cid: cluster.cid}, node, {
      avail_cpu: avail.cpu, avail_memory: avail.memory, avail_swap: avail.swap, avail_disk: avail.disk,
    });
  }

  function renderOverview(status) {
    const body = document.querySelector("#overview tbody");
    body.replaceChildren();
    for (const c of status.clusters) {
      const row = document.createElement("tr");
      row.dataset.cid = c.cid;
      for (const value of [c.name, c.nodes, c.cpus, c.busy, c.jobs.submitted, c.jobs.done, c.jobs.failed,
                           c.jobs.cancelled, c.jobs.running, c.jobs.pending]) {
        dispy.cell(row, value);
      }
      body.appendChild(row);
    }
  }

  function renderNodes() {
    const rows = lastNodes.slice().sort((a, b) => {
      const x = a[sortKey], y = b[sortKey];
      const order = (typeof x === "number" && typeof y === "number") ? x - y : String(x ?? "").localeCompare(String(y ?? ""));
      return sortDown ? -order : order;
    });
    const body = document.querySelector("#nodes tbody");
    body.replaceChildren();
    for (const n of rows) {
      const row = document.createElement("tr");
      row.dataset.node = n.key;
      dispy.cell(row, n.cluster);
      const link = document.createElement("a");
      link.href = "node.html?node=" + encodeURIComponent(n.key);
      link.textContent = n.key;
      dispy.cell(row, "").appendChild(link);
      dispy.cell(row, n.name);
      dispy.cell(row, n.cpus, "cpus");
      dispy.cell(row, n.busy, "busy");
      dispy.cell(row, n.jobs_done, "jobs_done");
      dispy.cell(row, n.sec_per_job.toFixed(3));
      dispy.cell(row, n.cpu_time.toFixed(3));
      dispy.cell(row, dispy.bytes(n.tx));
      dispy.cell(row, dispy.bytes(n.rx));
      dispy.cell(row, n.avail_cpu === undefined ? "" : n.avail_cpu.toFixed(1), "avail_cpu");
      dispy.cell(row, dispy.bytes(n.avail_memory), "avail_memory");
      dispy.cell(row, n.avail_swap === undefined ? "" : n.avail_swap.toFixed(1));
      dispy.cell(row, dispy.bytes(n.avail_disk));
      dispy.cell(row, dispy.time(n.update_time));
      dispy.cell(row, n.status);
      body.appendChild(row);
    }
  }

  function svg(name, attrs) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    return el;
  }

  function renderPlot(tp) {
    const plot = document.getElementById("plot");
    const W = 900, H = 260, left = 40, bottom = 24, top = 10, right = 10;
    const perNode = {};
    for (const c of tp.clusters) {
      for (const [key, counts] of Object.entries(c.nodes)) {
        const sum = perNode[key] || new Array(tp.buckets).fill(0);
        counts.forEach((v, i) => { sum[i] += v; });
        perNode[key] = sum;
      }
    }
    const keys = Object.keys(perNode).sort();
    const max = Math.max(1, ...keys.flatMap((k) => perNode[k]));
    plot.replaceChildren();
    plot.appendChild(svg("line", {x1: left, y1: H - bottom, x2: W - right, y2: H - bottom, stroke: "#333"}));
    plot.appendChild(svg("line", {x1: left, y1: top, x2: left, y2: H - bottom, stroke: "#333"}));
    const yLabel = svg("text", {x: 4, y: top + 10, "font-size": 11});
    yLabel.textContent = String(max);
    plot.appendChild(yLabel);
    const xLabel = svg("text", {x: W - 160, y: H - 6, "font-size": 11});
    xLabel.textContent = "last " + Math.round(tp.step * tp.buckets) + " s";
    plot.appendChild(xLabel);
    const legend = document.getElementById("legend");
    legend.replaceChildren();
    keys.forEach((key, index) => {
      const colour = COLOURS[index % COLOURS.length];
      const points = perNode[key].map((v, i) => {
        const x = left + (W - left - right) * (i / Math.max(1, tp.buckets - 1));
        const y = H - bottom - (H - bottom - top) * (v / max);
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      plot.appendChild(svg("polyline", {points: points.join(" "), fill: "none", stroke: colour,
                                        "stroke-width": 2, "data-node": key}));
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = colour;
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(key + ": " + perNode[key].reduce((a, b) => a + b, 0) + " jobs"));
      legend.appendChild(item);
    });
  }

  async function update() {
    const [status, nodes, tp] = await Promise.all([
      dispy.getJSON("/cluster_status"), dispy.getJSON("/nodes"), dispy.getJSON("/throughput")]);
    renderOverview(status);
    lastNodes = nodes.clusters.flatMap((c) => c.nodes.map((n) => flatten(c, n)));
    renderNodes();
    renderPlot(tp);
    document.getElementById("poll_sec").value = String(status.poll_sec);
    return status.poll_sec;
  }

  document.querySelectorAll("#nodes th").forEach((th) => {
    th.addEventListener("click", () => {
      sortDown = sortKey === th.dataset.key ? !sortDown : false;
      sortKey = th.dataset.key;
      renderNodes();
    });
  });
  document.getElementById("poll_sec").addEventListener("change", async (event) => {
    try {
      await dispy.post("/update", {poll_sec: event.target.value});
    } catch (err) {
      dispy.showError(err);
    }
  });
  dispy.every(update);
})();
