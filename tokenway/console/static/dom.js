// What every page uses: building elements, calling the admin API, formatting numbers.

export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  element.append(...children.flat().filter((c) => c !== null && c !== undefined).map(
    (c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
  return element;
}

export function cookie(name) {
  const found = document.cookie.split("; ").find((part) => part.startsWith(name + "="));
  return found ? decodeURIComponent(found.slice(name.length + 1)) : "";
}

export class ApiError extends Error {}

// The admin API with the session cookie; a state-changing call carries the CSRF token as a header.
export async function api(path, { method = "GET", body } = {}) {
  const headers = { accept: "application/json" };
  if (method !== "GET") headers["x-tokenway-csrf"] = cookie("tokenway_csrf");
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401) {
    location.assign("/ui/login");
    throw new ApiError("The session has ended; log in again.");
  }
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(data?.error?.message || `${method} ${path}: HTTP ${response.status}`);
  return data;
}

export const fmt = {
  int: (n) => (n === null || n === undefined ? "–" : String(Math.round(n)).replace(/\B(?=(\d{3})+$)/g, ",")),
  num: (n, digits = 2) => (n === null || n === undefined || Number.isNaN(n) ? "–" : n.toFixed(digits)),
  usd: (n) => (n === null || n === undefined ? "–" : "$" + (n < 0.01 && n > 0 ? n.toFixed(6) : n.toFixed(2))),
  pct: (n) => (n === null || n === undefined || Number.isNaN(n) ? "–" : (100 * n).toFixed(1) + "%"),
  ms: (s) => (s === null || s === undefined ? "–" : Math.round(s * 1000) + " ms"),
  time: (t) => (t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "–"),
};

// A table from rows and columns [{label, value(row) -> text|Node, num?}].
export function table(caption, columns, rows, empty = "Nothing yet.") {
  return h("table", {},
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label)))),
    h("tbody", {}, rows.length ? rows.map((row) => h("tr", {}, columns.map(
      (c) => h("td", { class: c.num ? "num" : null }, c.value(row))))) :
      h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, empty))));
}

export function stat(label, value, id) {
  return h("div", { class: "card stat" }, h("div", { class: "label", id: id + "-label" }, label),
    h("div", { class: "value", id, "aria-labelledby": id + "-label " + id }, value));
}

export function bar(fraction, label) {
  const inner = h("span");
  inner.style.width = `${Math.max(0, Math.min(1, fraction || 0)) * 100}%`;
  return h("div", { class: "bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": 1,
    "aria-valuenow": (fraction || 0).toFixed(3), "aria-label": label }, inner);
}
