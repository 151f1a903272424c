// Overview: live requests/s, error rate, TTFT p50/p95, tokens/s, spend today and cache hit rate, per model.
// /admin/overview gives cumulative counters; two snapshots make a rate, bucket differences make quantiles.
import { barChart, lineChart } from "./charts.js";
import { api, fmt, h, stat, table } from "./dom.js";

const POLL_MS = 2000;
const KEEP = 90; // snapshots kept for the charts (3 minutes)

// The q-quantile of a cumulative histogram [[le, count]...] (Prometheus' histogram_quantile).
export function quantile(q, buckets) {
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!total) return null;
  let previousLe = 0, previousCount = 0;
  for (const [le, count] of buckets) {
    if (count >= q * total) {
      if (le === null) return previousLe;
      return previousLe + ((le - previousLe) * (q * total - previousCount)) / Math.max(count - previousCount, 1e-9);
    }
    previousLe = le ?? previousLe;
    previousCount = count;
  }
  return previousLe;
}

function minus(a, b) {
  return a.map(([le, n], i) => [le, n - (b?.[i]?.[1] ?? 0)]);
}

// What happened between two snapshots of one model's counters.
function between(now, before, seconds) {
  const requests = now.requests - (before?.requests ?? 0);
  // A bypass (no-store, or caching off for the model) is no lookup: it neither hits nor misses.
  const lookups = Object.entries(now.cache).filter(([verdict]) => verdict !== "bypass").reduce((a, [, n]) => a + n, 0);
  const recent = before && before.ttft_buckets.length === now.ttft_buckets.length
    ? minus(now.ttft_buckets, before.ttft_buckets) : now.ttft_buckets;
  const window = recent.length && recent[recent.length - 1][1] ? recent : now.ttft_buckets;
  return {
    rps: before ? requests / seconds : null,
    errorRate: requests > 0 ? (now.errors - (before?.errors ?? 0)) / requests : (now.requests ? now.errors / now.requests : null),
    tps: before ? (now.completion_tokens - before.completion_tokens) / seconds : null,
    p50: quantile(0.5, window), p95: quantile(0.95, window),
    cacheHit: lookups ? (now.cache.hit || 0) / lookups : null,
  };
}

export function overviewPage(main) {
  const history = [];
  const cards = h("div", { class: "grid" });
  const charts = h("div", { class: "charts" });
  const models = h("div");
  main.append(h("h1", {}, "Overview"),
    h("p", { class: "hint" }, `Live from the gateway's own counters, every ${POLL_MS / 1000} s. Rates are over the last ${POLL_MS / 1000} s; TTFT over streams answered in the last 30 s (or since start).`),
    cards, charts, models);

  async function poll() {
    const snapshot = await api("/admin/overview");
    history.push(snapshot);
    if (history.length > KEEP) history.shift();
    draw();
  }

  function draw() {
    const now = history[history.length - 1];
    const previous = history[history.length - 2];
    const older = history[Math.max(0, history.length - 16)];
    const seconds = previous ? now.time - previous.time : 1;
    const all = between(now.models["*"], previous?.models["*"], seconds);
    const ttft = between(now.models["*"], older === now ? null : older.models["*"], 1);
    cards.replaceChildren(
      stat("Requests/s", fmt.num(all.rps), "stat-rps"),
      stat("Error rate (5xx)", fmt.pct(all.errorRate), "stat-errors"),
      stat("TTFT p50", fmt.ms(ttft.p50), "stat-p50"),
      stat("TTFT p95", fmt.ms(ttft.p95), "stat-p95"),
      stat("Tokens/s (completion)", fmt.num(all.tps, 1), "stat-tps"),
      stat("Spend today (UTC)", fmt.usd(now.spend_today.usd), "stat-spend"),
      stat("Cache hit rate", fmt.pct(all.cacheHit), "stat-cache"),
      stat("In flight", fmt.int(now.in_flight), "stat-inflight"),
      stat("Deployments healthy", `${now.deployments.healthy} / ${now.deployments.total}`, "stat-healthy"),
    );
    const series = (pick) => history.slice(1).map((snap, i) => [snap.time,
      pick(between(snap.models["*"], history[i].models["*"], snap.time - history[i].time)) ?? 0]);
    const byModel = (model, pick) => history.slice(1).flatMap((snap, i) => {
      const after = snap.models[model], before = history[i].models[model];
      return after && before ? [[snap.time, pick(between(after, before, snap.time - history[i].time)) ?? 0]] : [];
    });
    const busiest = Object.keys(now.models).filter((m) => m !== "*")
      .sort((a, b) => now.models[b].requests - now.models[a].requests).slice(0, 4);
    const spend = Object.entries(now.spend_today.by_model).sort((a, b) => b[1] - a[1]);
    charts.replaceChildren(
      h("div", { class: "card" }, h("h2", {}, "Requests/s"),
        lineChart([{ name: "requests/s", points: series((d) => d.rps) }], { describe: `Requests per second, now ${fmt.num(all.rps)}` })),
      h("div", { class: "card" }, h("h2", {}, "Completion tokens/s"),
        lineChart([{ name: "tokens/s", points: series((d) => d.tps) }], { describe: `Tokens per second, now ${fmt.num(all.tps, 1)}` })),
      h("div", { class: "card" }, h("h2", {}, "Error rate"),
        lineChart([{ name: "5xx share", points: series((d) => (d.rps ? d.errorRate : 0)) }], { describe: `Error rate, now ${fmt.pct(all.errorRate)}` })),
      h("div", { class: "card" }, h("h2", {}, "Requests/s by model"),
        lineChart(busiest.map((model) => ({ name: model, points: byModel(model, (d) => d.rps) })),
          { describe: `Requests per second of the ${busiest.length} busiest models` })),
      h("div", { class: "card" }, h("h2", {}, "Spend today by model"),
        spend.length ? barChart(spend, { format: fmt.usd, describe: "Spend today by model" }) : h("p", { class: "muted" }, "No spend today yet.")),
    );
    const names = Object.keys(now.models).filter((m) => m !== "*");
    const rows = names.map((name) => ({ name, ...between(now.models[name], previous?.models[name], seconds),
      requests: now.models[name].requests, spend: now.spend_today.by_model[name] ?? 0 }));
    models.replaceChildren(table("Per model", [
      { label: "Model", value: (r) => r.name },
      { label: "Requests", value: (r) => fmt.int(r.requests), num: true },
      { label: "Requests/s", value: (r) => fmt.num(r.rps), num: true },
      { label: "Error rate", value: (r) => fmt.pct(r.errorRate), num: true },
      { label: "TTFT p50", value: (r) => fmt.ms(r.p50), num: true },
      { label: "TTFT p95", value: (r) => fmt.ms(r.p95), num: true },
      { label: "Tokens/s", value: (r) => fmt.num(r.tps, 1), num: true },
      { label: "Cache hits", value: (r) => fmt.pct(r.cacheHit), num: true },
      { label: "Spend today", value: (r) => fmt.usd(r.spend), num: true },
    ], rows, "No requests yet."));
  }

  let timer = null;
  const tick = () => poll().finally(() => { if (timer !== false) timer = setTimeout(tick, POLL_MS); });
  tick();
  return () => { clearTimeout(timer); timer = false; };
}
