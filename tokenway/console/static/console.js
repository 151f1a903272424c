// The console's shell: one page per hash (#overview, #keys, ...), each rendered into <main>.
// A page is a function (main) -> optional cleanup, called when the reader leaves it (timers stop).
import { api } from "./dom.js";

// Each page's module is fetched when first opened: a first visit loads only the page it shows.
const PAGES = {
  overview: async () => (await import("./overview.js")).overviewPage,
  keys: async () => (await import("./keys.js")).keysPage,
  usage: async () => (await import("./usage.js")).usagePage,
  deployments: async () => (await import("./deployments.js")).deploymentsPage,
  jobs: async () => (await import("./jobs.js")).jobsPage,
  playground: async () => (await import("./playground.js")).playgroundPage,
};
const main = document.getElementById("main");
const status = document.getElementById("status");
let leave = null;
let turn = 0; // which navigation is current: a page whose module arrives after the next click is not shown

async function show() {
  const mine = ++turn;
  const name = location.hash.slice(1) in PAGES ? location.hash.slice(1) : "overview";
  if (leave) leave();
  leave = null;
  status.textContent = "";
  for (const link of document.querySelectorAll("header nav a")) {
    if (link.getAttribute("href") === "#" + name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  main.replaceChildren();
  document.title = `${document.querySelector(`header nav a[href="#${name}"]`).textContent} · tokenway console`;
  try {
    const page = await PAGES[name]();
    if (mine !== turn) return;
    leave = (await page(main)) || null;
  } catch (error) {
    status.textContent = error.message;
  }
}

// A page's own failures (a refused form, a lost connection) end up here, once, readable by screen readers.
window.addEventListener("unhandledrejection", (event) => {
  event.preventDefault();
  status.textContent = event.reason?.message || String(event.reason);
});

document.getElementById("logout").addEventListener("click", async () => {
  await api("/ui/session", { method: "DELETE" });
  location.assign("/ui/login");
});
window.addEventListener("hashchange", () => { show(); main.focus(); });
show();
