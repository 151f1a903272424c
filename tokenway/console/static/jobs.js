// Jobs and batches: every tenant's, with progress; cancel; download a batch's results and errors.
import { api, bar, fmt, h, table } from "./dom.js";

const POLL_MS = 3000;
const OPEN = new Set(["queued", "running", "validating", "in_progress", "finalizing"]);

function download(fileId, label) {
  return fileId ? h("a", { href: `/admin/files/${fileId}/content`, download: "" , "aria-label": `${label} ${fileId}` }, label) : null;
}

export function jobsPage(main) {
  const counts = h("div", { class: "grid" });
  const batches = h("div");
  const jobs = h("div");
  main.append(h("h1", {}, "Jobs & batches"), counts, h("h2", {}, "Batches"), batches, h("h2", {}, "Jobs"), jobs);

  async function cancel(kind, id) {
    await api(`/admin/${kind}/${id}/cancel`, { method: "POST" });
    await poll();
  }

  async function poll() {
    const state = await api("/admin/jobs?limit=100");
    counts.replaceChildren(...Object.entries(state.counts).map(([status, n]) =>
      h("div", { class: "card stat" }, h("div", { class: "label" }, status), h("div", { class: "value" }, fmt.int(n)))));
    batches.replaceChildren(table("Latest batches", [
      { label: "Batch", value: (b) => h("code", {}, b.id) },
      { label: "Owner", value: (b) => b.owner },
      { label: "Status", value: (b) => b.status },
      { label: "Progress", value: (b) => {
        const c = b.request_counts || { total: 0, completed: 0, failed: 0 };
        const done = (c.completed + c.failed) / (c.total || 1);
        return h("span", {}, bar(done, `Progress of ${b.id}`), `${c.completed} done, ${c.failed} failed of ${c.total}`);
      } },
      { label: "Created", value: (b) => fmt.time(b.created_at) },
      { label: "Results", value: (b) => h("span", {}, download(b.output_file_id, "results"), " ", download(b.error_file_id, "errors")) },
      { label: "Actions", value: (b) => (OPEN.has(b.status)
        ? h("button", { type: "button", class: "small danger", onclick: () => cancel("batches", b.id), "aria-label": `Cancel batch ${b.id}` }, "Cancel") : "") },
    ], state.batches, "No batches."));
    jobs.replaceChildren(table("Latest jobs", [
      { label: "Job", value: (j) => h("code", {}, j.id) },
      { label: "Owner", value: (j) => j.owner },
      { label: "Model", value: (j) => j.model || "–" },
      { label: "Status", value: (j) => j.status },
      { label: "Attempts", value: (j) => fmt.int(j.attempts), num: true },
      { label: "Created", value: (j) => fmt.time(j.created_at) },
      { label: "Queued / ran", value: (j) => `${fmt.num(j.timings?.queued_s, 1)} s / ${fmt.num(j.timings?.run_s, 1)} s` },
      { label: "Actions", value: (j) => (OPEN.has(j.status) && !j.batch_id
        ? h("button", { type: "button", class: "small danger", onclick: () => cancel("jobs", j.id), "aria-label": `Cancel job ${j.id}` }, "Cancel") : "") },
    ], state.jobs.data, "No jobs."));
  }

  let timer = null;
  const tick = () => poll().finally(() => { if (timer !== false) timer = setTimeout(tick, POLL_MS); });
  tick();
  return () => { clearTimeout(timer); timer = false; };
}
