// The console's shell: one page per hash (#overview, #keys, ...), each rendered into <main>.
// A page is a function (main) -> optional cleanup, called when the reader leaves it (timers stop).
import { api } from "./dom.js";
import { deploymentsPage } from "./deployments.js";
import { jobsPage } from "./jobs.js";
import { keysPage } from "./keys.js";
import { overviewPage } from "./overview.js";
import { playgroundPage } from "./playground.js";
import { usagePage } from "./usage.js";

const PAGES = {
  overview: overviewPage, keys: keysPage, usage: usagePage, deployments: deploymentsPage,
  jobs: jobsPage, playground: playgroundPage,
};
const main = document.getElementById("main");
const status = document.getElementById("status");
let leave = null;

async function show() {
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
    leave = (await PAGES[name](main)) || null;
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
