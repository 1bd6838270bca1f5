// One node: its figures per cluster, its running jobs with a cancel button each, and node actions.
"use strict";

(() => {
  const node = new URLSearchParams(window.location.search).get("node") || "";
  document.getElementById("node_name").textContent = node;

  function button(text, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.addEventListener("click", async () => {
      b.disabled = true;
      try {
        await onClick();
        await update();
      } catch (err) {
        dispy.showError(err);
      } finally {
        b.disabled = false;
      }
    });
    return b;
  }

  function renderClusters(info) {
    const body = document.querySelector("#node_clusters tbody");
    body.replaceChildren();
    for (const c of info.clusters) {
      const avail = c.avail || {};
      const row = document.createElement("tr");
      for (const value of [c.cluster, c.cpus, c.busy, c.jobs_done, c.sec_per_job.toFixed(3), dispy.bytes(c.tx),
                           dispy.bytes(c.rx), avail.cpu === undefined ? "" : avail.cpu.toFixed(1),
                           dispy.bytes(avail.memory), avail.swap === undefined ? "" : avail.swap.toFixed(1),
                           dispy.bytes(avail.disk), c.status]) {
        dispy.cell(row, value);
      }
      const manage = dispy.cell(row, "");
      const cpus = document.createElement("input");
      cpus.type = "number";
      cpus.size = 3;
      cpus.value = c.cpus;
      cpus.className = "set_cpus";
      manage.appendChild(cpus);
      manage.appendChild(button("Set CPUs", () => dispy.post("/set_cpus", {node: c.key, cpus: cpus.value, cid: c.cid})));
      manage.appendChild(button("Deallocate", () => dispy.post("/deallocate_node", {node: c.key, cid: c.cid})));
      manage.appendChild(button("Allocate", () => dispy.post("/allocate_node", {node: c.key, cid: c.cid})));
      manage.appendChild(button("Close", () => dispy.post("/close_node", {node: c.key, cid: c.cid})));
      body.appendChild(row);
    }
  }

  function renderJobs(info) {
    const body = document.querySelector("#jobs tbody");
    body.replaceChildren();
    for (const job of info.jobs) {
      const row = document.createElement("tr");
      row.dataset.job = job.job;
      dispy.cell(row, job.cluster);
      dispy.cell(row, job.id, "job_id");
      dispy.cell(row, job.status);
      dispy.cell(row, info.show_job_args ? job.args : "(hidden)", "args");
      dispy.cell(row, info.show_job_args ? job.kwargs : "(hidden)", "args");
      dispy.cell(row, dispy.time(job.start_time));
      const cancel = button("Cancel", async () => {
        const reply = await dispy.post("/cancel_jobs", {job: job.job});
        if (!reply.cancelled.includes(job.job)) throw new Error("job " + job.id + " could not be cancelled");
      });
      cancel.className = "cancel";
      dispy.cell(row, "").appendChild(cancel);
      body.appendChild(row);
    }
    document.getElementById("no_jobs").hidden = info.jobs.length > 0;
  }

  async function update() {
    const info = await dispy.getJSON("/node_info?node=" + encodeURIComponent(node));
    renderClusters(info);
    renderJobs(info);
    return null;
  }

  dispy.every(update);
})();
