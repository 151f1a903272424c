// Keys: list and search, create (the secret shown once), edit limits, budgets and models, revoke; teams.
import { api, fmt, h, table } from "./dom.js";

const PERIODS = ["day", "month", "total"];

function list(text) {
  return text.split(",").map((s) => s.trim()).filter(Boolean);
}

function positive(value) {
  return value === "" ? null : Number(value);
}

// The form's fields as the admin API's key fields (null clears a setting on edit).
function fields(form) {
  const amount = form.budget_amount.value;
  return {
    name: form.key_name.value || null, owner: form.owner.value || null, team: form.team.value || null,
    models: list(form.models.value), rpm: positive(form.rpm.value), tpm: positive(form.tpm.value),
    budget: amount === "" ? null : { amount: Number(amount), period: form.budget_period.value },
  };
}

function keyForm(id, key, submitLabel, onSubmit) {
  const input = (name, label, value, attrs = {}) => h("label", { for: `${id}-${name}` }, label,
    h("input", { id: `${id}-${name}`, name, value: value ?? "", ...attrs }));
  const form = h("form", { class: "row card", id, "aria-label": submitLabel },
    input("key_name", "Name", key?.name),
    input("owner", "Owner", key?.owner),
    input("team", "Team", key?.team),
    input("models", "Allowed models (comma-separated; empty: all)", (key?.models || []).join(", ")),
    input("rpm", "Requests/min", key?.rpm, { type: "number", min: 1 }),
    input("tpm", "Tokens/min", key?.tpm, { type: "number", min: 1 }),
    input("budget_amount", "Budget (USD)", key?.budget?.amount, { type: "number", min: 0, step: "any" }),
    h("label", { for: `${id}-budget_period` }, "Budget period",
      h("select", { id: `${id}-budget_period`, name: "budget_period" },
        PERIODS.map((p) => h("option", { value: p, selected: key?.budget?.period === p }, p)))),
    h("button", { type: "submit" }, submitLabel));
  form.addEventListener("submit", (event) => { event.preventDefault(); onSubmit(fields(form)); });
  return form;
}

function state(key) {
  if (key.revoked) return h("span", { class: "pill error" }, "revoked");
  if (key.expires_at && key.expires_at * 1000 < Date.now()) return h("span", { class: "pill warn" }, "expired");
  return h("span", { class: "pill good" }, "active");
}

export async function keysPage(main) {
  const search = h("input", { id: "key-search", type: "search", placeholder: "name, id, owner, team" });
  const teamFilter = h("select", { id: "team-filter" });
  const created = h("div", { id: "created", "aria-live": "polite" });
  const editor = h("div", { id: "editor" });
  const listing = h("div");
  const teams = h("div");
  let keys = [];

  const createForm = keyForm("create-key", null, "Create key", async (values) => {
    const key = await api("/admin/keys", { method: "POST", body: values });
    createForm.reset();
    created.replaceChildren(h("div", { class: "card" },
      h("h2", {}, `Key “${key.name || key.id}” created`),
      h("p", {}, "Copy the secret now: it is shown only this once."),
      h("p", { class: "secret", id: "new-secret", tabindex: 0 }, key.key),
      h("button", { type: "button", class: "small", onclick: () => navigator.clipboard?.writeText(key.key) }, "Copy")));
    await load();
  });

  function edit(key) {
    editor.replaceChildren(h("h2", {}, `Edit ${key.name || key.id}`), keyForm("edit-key", key, "Save changes", async (values) => {
      await api(`/admin/keys/${key.id}`, { method: "PATCH", body: values });
      editor.replaceChildren(h("p", { class: "good", role: "status" }, `Saved ${key.name || key.id}.`));
      await load();
    }));
    editor.querySelector("input").focus();
  }

  async function revoke(key) {
    if (!confirm(`Revoke ${key.name || key.id}? Calls with it are refused within a second.`)) return;
    await api(`/admin/keys/${key.id}`, { method: "DELETE" });
    await load();
  }

  function draw() {
    const words = search.value.trim().toLowerCase();
    const team = teamFilter.value;
    const shown = keys.filter((k) => (!team || k.team === team) &&
      (!words || [k.name, k.id, k.owner, k.team].some((v) => (v || "").toLowerCase().includes(words))));
    listing.replaceChildren(table(`Keys (${shown.length} of ${keys.length})`, [
      { label: "Name", value: (k) => k.name || "–" },
      { label: "Id", value: (k) => h("code", {}, k.id) },
      { label: "Team", value: (k) => k.team || "–" },
      { label: "Models", value: (k) => (k.models?.length ? k.models.join(", ") : "all") },
      { label: "Limits", value: (k) => [k.rpm && `${k.rpm} rpm`, k.tpm && `${k.tpm} tpm`].filter(Boolean).join(", ") || "–" },
      { label: "Budget", value: (k) => (k.budget ? `${fmt.usd(k.budget.amount)} / ${k.budget.period}` : "–") },
      { label: "State", value: state },
      { label: "Actions", value: (k) => h("span", {},
        h("button", { type: "button", class: "small quiet", onclick: () => edit(k), "aria-label": `Edit ${k.name || k.id}` }, "Edit"), " ",
        k.revoked ? null : h("button", { type: "button", class: "small danger", onclick: () => revoke(k),
          "aria-label": `Revoke ${k.name || k.id}` }, "Revoke")) },
    ], shown, "No keys match."));
  }

  async function load() {
    keys = (await api("/admin/keys")).data;
    const names = [...new Set(keys.map((k) => k.team).filter(Boolean))].sort();
    const chosen = teamFilter.value;
    teamFilter.replaceChildren(h("option", { value: "" }, "All teams"),
      names.map((t) => h("option", { value: t, selected: t === chosen }, t)));
    const spend = (await api("/admin/usage?group_by=team")).data;
    teams.replaceChildren(table("Teams", [
      { label: "Team", value: (r) => r.team },
      { label: "Keys", value: (r) => fmt.int(r.keys), num: true },
      { label: "Requests (30 days)", value: (r) => fmt.int(r.requests), num: true },
      { label: "Spend (30 days)", value: (r) => fmt.usd(r.cost_usd), num: true },
    ], names.map((team) => ({ team, keys: keys.filter((k) => k.team === team).length,
      ...(spend.find((row) => row.team === team) || { requests: 0, cost_usd: 0 }) })), "No key has a team yet."));
    draw();
  }

  search.addEventListener("input", draw);
  teamFilter.addEventListener("change", draw);
  main.append(h("h1", {}, "Keys"),
    h("h2", {}, "Create a key"), createForm, created, editor,
    h("div", { class: "toolbar", role: "search" },
      h("label", { for: "key-search" }, "Search keys", search),
      h("label", { for: "team-filter" }, "Team", teamFilter)),
    listing, teams);
  await load();
}
