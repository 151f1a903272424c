// Usage and spend: the ledger grouped by key, team, model or day, as a chart, a table and a CSV file.
import { barChart } from "./charts.js";
import { api, fmt, h, table } from "./dom.js";

const COLUMNS = ["requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd"];

function csv(groupBy, rows) {
  const quote = (v) => (/[",\n]/.test(String(v)) ? `"${String(v).replaceAll('"', '""')}"` : String(v ?? ""));
  return [[groupBy, ...COLUMNS], ...rows.map((r) => [r[groupBy], ...COLUMNS.map((c) => r[c])])]
    .map((line) => line.map(quote).join(",")).join("\n") + "\n";
}

export async function usagePage(main) {
  const groupBy = h("select", { id: "group-by" }, ["key", "team", "model", "day"].map((g) => h("option", { value: g }, g)));
  const days = h("select", { id: "days" }, [1, 7, 30, 90].map((d) => h("option", { value: d, selected: d === 30 }, `${d} days`)));
  const exportButton = h("button", { type: "button", id: "export-csv" }, "Export CSV");
  const refresh = h("button", { type: "button", class: "quiet", id: "refresh-usage" }, "Refresh");
  const chart = h("div", { class: "card" });
  const listing = h("div");
  let rows = [];

  async function load() {
    const since = Date.now() / 1000 - Number(days.value) * 86400;
    rows = (await api(`/admin/usage?group_by=${groupBy.value}&since=${since}`)).data;
    const by = groupBy.value;
    // the ledger names keys by id: show their names beside (a revoked key keeps its name)
    const names = by === "key" ? new Map((await api("/admin/keys")).data.map((k) => [k.id, k.name])) : new Map();
    const label = (r) => (names.get(r[by]) ? `${names.get(r[by])} (${r[by]})` : r[by] ?? "(none)");
    const plotted = by === "day" ? rows : [...rows].sort((a, b) => b.cost_usd - a.cost_usd).slice(0, 15);
    chart.replaceChildren(h("h2", {}, `Spend by ${by}`), rows.length
      ? barChart(plotted.map((r) => [names.get(r[by]) || (r[by] ?? "(none)"), r.cost_usd]), { format: fmt.usd, describe: `Spend by ${by}` })
      : h("p", { class: "muted" }, "No usage in this window."));
    listing.replaceChildren(table(`Usage by ${by}, last ${days.value} days`, [
      { label: by, value: label },
      { label: "Requests", value: (r) => fmt.int(r.requests), num: true },
      { label: "Prompt tokens", value: (r) => fmt.int(r.prompt_tokens), num: true },
      { label: "Completion tokens", value: (r) => fmt.int(r.completion_tokens), num: true },
      { label: "Cached tokens", value: (r) => fmt.int(r.cached_tokens), num: true },
      { label: "Spend", value: (r) => fmt.usd(r.cost_usd), num: true },
    ], rows, "No usage in this window."));
  }

  exportButton.addEventListener("click", () => {
    const link = h("a", { href: URL.createObjectURL(new Blob([csv(groupBy.value, rows)], { type: "text/csv" })),
      download: `tokenway-usage-by-${groupBy.value}.csv` });
    link.click();
    URL.revokeObjectURL(link.href);
  });
  groupBy.addEventListener("change", load);
  days.addEventListener("change", load);
  refresh.addEventListener("click", load);
  main.append(h("h1", {}, "Usage & spend"),
    h("div", { class: "toolbar" }, h("label", { for: "group-by" }, "Group by", groupBy),
      h("label", { for: "days" }, "Window", days), refresh, exportButton),
    chart, listing);
  await load();
}
