// Deployments: health, breaker, in-flight calls, engine queue and KV-cache use; routing decisions.
import { barChart } from "./charts.js";
import { api, bar, fmt, h, table } from "./dom.js";

const POLL_MS = 2000;

function breaker(state) {
  const tone = { closed: "good", half_open: "warn", open: "error" }[state] || "muted";
  return h("span", { class: `pill ${tone}` }, state || "–");
}

export function deploymentsPage(main) {
  const models = h("div");
  const discovered = h("div");
  const decisions = h("div", { class: "card" });
  main.append(h("h1", {}, "Deployments"), h("p", { class: "hint" }, `This process's view, every ${POLL_MS / 1000} s.`),
    models, discovered, h("h2", {}, "Routing decisions"), decisions);

  async function poll() {
    const [state, routing] = await Promise.all([api("/admin/deployments"), api("/admin/routing")]);
    models.replaceChildren(...Object.entries(state.models).map(([model, group]) => table(`Model ${model}`, [
      { label: "Deployment", value: (d) => d.name },
      { label: "Health", value: (d) => h("span", { class: `pill ${d.healthy ? "good" : "error"}` }, d.healthy ? "healthy" : "unhealthy") },
      { label: "Breaker", value: (d) => breaker(d.breaker?.state) },
      { label: "In flight", value: (d) => `${d.in_flight}${d.max_concurrency ? " / " + d.max_concurrency : ""}`, num: true },
      { label: "TTFT (EWMA)", value: (d) => (d.ttft_ewma_ms === null ? "–" : `${Math.round(d.ttft_ewma_ms)} ms`), num: true },
      { label: "Engine queue", value: (d) => (d.engine ? `${d.engine.waiting} waiting, ${d.engine.running} running` : "–") },
      { label: "KV cache", value: (d) => (d.engine ? h("span", {}, bar(d.engine.kv_usage, `KV-cache use of ${d.name}`), fmt.pct(d.engine.kv_usage)) : "–") },
      { label: "Picks", value: (d) => fmt.int(d.picks), num: true },
      { label: "Failures", value: (d) => fmt.int(d.failures), num: true },
    ], group, "No deployment is serving this model now.")));
    // deployment entries with a discovery block: the workers found by DNS or Kubernetes
    const found = Object.entries(state.discovery).flatMap(([model, sources]) => sources.map((d) => ({ model, ...d })));
    discovered.replaceChildren(found.length ? table("Discovered workers", [
      { label: "Model", value: (d) => d.model },
      { label: "Source", value: (d) => d.source },
      { label: "Serving", value: (d) => d.workers.join(", ") || "none" },
      { label: "Waiting to join", value: (d) => Object.entries(d.waiting).map(([a, why]) => `${a}: ${why}`).join("; ") || "none" },
      { label: "Leaving", value: (d) => d.leaving.join(", ") || "none" },
    ], found) : "");
    const rows = Object.entries(routing.decisions);
    decisions.replaceChildren(rows.length
      ? barChart(rows, { format: fmt.int, describe: "Routing decisions by reason" })
      : h("p", { class: "muted" }, "No routing decisions yet."));
  }

  let timer = null;
  const tick = () => poll().finally(() => { if (timer !== false) timer = setTimeout(tick, POLL_MS); });
  tick();
  return () => { clearTimeout(timer); timer = false; };
}
