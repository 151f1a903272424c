// Small hand-written SVG charts: a line chart over time and a horizontal bar chart.

const NS = "http://www.w3.org/2000/svg";
const COLOURS = ["var(--series-1)", "var(--series-2)", "var(--series-3)", "var(--series-4)"];

function svg(tag, attrs = {}) {
  const element = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, value);
  return element;
}

function nice(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= value);
}

// series: [{name, points: [[t, v], ...]}]; describe: the chart's text for screen readers.
export function lineChart(series, { unit = "", describe = "" } = {}) {
  const width = 480, height = 180, left = 46, bottom = 20, top = 8;
  const all = series.flatMap((s) => s.points);
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": describe });
  const figure = document.createElement("figure");
  figure.style.margin = "0";
  const legend = document.createElement("div");
  legend.className = "legend";
  series.forEach((s, i) => {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = COLOURS[i % COLOURS.length];
    item.append(swatch, s.name);
    legend.append(item);
  });
  figure.append(root, legend);
  if (!all.length) {
    root.append(Object.assign(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }),
      { textContent: "waiting for data" }));
    return figure;
  }
  const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]), t0 + 1);
  const top_value = nice(Math.max(...all.map((p) => p[1]), 0));
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - 8);
  const y = (v) => top + (1 - v / top_value) * (height - top - bottom);
  for (const fraction of [0, 0.5, 1]) {
    const value = top_value * fraction;
    root.append(svg("line", { x1: left, x2: width - 8, y1: y(value), y2: y(value), stroke: "#d0d5dc" }));
    const label = svg("text", { x: left - 4, y: y(value) + 4, "text-anchor": "end" });
    label.textContent = `${+value.toPrecision(3)}${unit}`;
    root.append(label);
  }
  const span = svg("text", { x: width - 8, y: height - 4, "text-anchor": "end" });
  span.textContent = `last ${Math.round(t1 - t0)} s`;
  root.append(span);
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
    root.append(svg("path", { d, fill: "none", stroke: COLOURS[i % COLOURS.length], "stroke-width": 2 }));
  });
  return figure;
}

// rows: [[label, value]]; format: value -> text.
export function barChart(rows, { format = String, describe = "" } = {}) {
  const width = 480, row = 22, left = 150;
  const height = Math.max(1, rows.length) * row + 4;
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": describe,
    preserveAspectRatio: "xMinYMin meet" });
  root.style.height = `${height}px`;
  const most = Math.max(...rows.map((r) => r[1]), 0) || 1;
  rows.forEach(([label, value], i) => {
    const name = svg("text", { x: left - 6, y: i * row + 15, "text-anchor": "end" });
    name.textContent = String(label).length > 22 ? String(label).slice(0, 21) + "…" : label;
    const length = ((width - left - 90) * value) / most;
    root.append(name, svg("rect", { x: left, y: i * row + 4, width: Math.max(1, length), height: row - 8,
      fill: "var(--series-1)", rx: 2 }));
    const text = svg("text", { x: left + length + 6, y: i * row + 15 });
    text.textContent = format(value);
    root.append(text);
  });
  return root;
}
