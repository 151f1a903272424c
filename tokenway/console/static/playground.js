// Playground: chat with any model, streamed, with parameters; shows tokens, cost, latency, the cache's
// verdict and the deployment that answered. Calls go through /ui/playground/chat/completions, the
// ordinary chat endpoint for a console session (as the master key).
import { api, cookie, fmt, h } from "./dom.js";

// Yields each SSE event's data from a fetch response body.
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) yield data;
    }
  }
}

export async function playgroundPage(main) {
  const overview = await api("/admin/overview");
  const deployments = await api("/admin/deployments");
  const models = Object.keys(deployments.models);
  const field = (id, label, attrs) => h("label", { for: id }, label, h("input", { id, name: id, ...attrs }));
  const form = h("form", { class: "card", id: "playground-form", "aria-label": "Chat" },
    h("div", { class: "row toolbar" },
      h("label", { for: "pg-model" }, "Model", h("select", { id: "pg-model", name: "model" }, models.map((m) => h("option", { value: m }, m)))),
      field("pg-temperature", "Temperature", { type: "number", min: 0, max: 2, step: 0.1, value: 0.7 }),
      field("pg-max-tokens", "Max tokens", { type: "number", min: 1, value: 64 }),
      field("pg-top-p", "Top p", { type: "number", min: 0, max: 1, step: 0.05, value: 1 }),
      h("label", { for: "pg-stream" }, "Stream", h("input", { id: "pg-stream", type: "checkbox", checked: true }))),
    h("label", { for: "pg-system" }, "System prompt", h("textarea", { id: "pg-system", rows: 2 })),
    h("label", { for: "pg-prompt" }, "Message", h("textarea", { id: "pg-prompt", rows: 3, required: true })),
    h("div", { class: "toolbar" }, h("button", { type: "submit", id: "pg-send" }, "Send"),
      h("button", { type: "button", class: "quiet", id: "pg-clear" }, "Clear chat")));
  const chat = h("div", { class: "chat", id: "pg-chat", "aria-live": "polite" });
  const facts = h("dl", { class: "facts", id: "pg-facts" });
  main.append(h("h1", {}, "Playground"), h("div", { class: "split" },
    h("div", {}, form, chat), h("div", { class: "card" }, h("h2", {}, "Last answer"), facts)));

  const history = [];
  const show = (pairs) => facts.replaceChildren(...pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { "data-fact": k }, v)]));
  show([["Status", "ready"]]);

  form.querySelector("#pg-clear").addEventListener("click", () => { history.length = 0; chat.replaceChildren(); });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const prompt = form.querySelector("#pg-prompt");
    if (!prompt.value.trim()) { prompt.focus(); return; }
    const system = form.querySelector("#pg-system").value.trim();
    history.push({ role: "user", content: prompt.value });
    chat.append(h("div", { class: "msg user" }, h("span", { class: "role" }, "you"), prompt.value));
    prompt.value = "";
    const stream = form.querySelector("#pg-stream").checked;
    const body = {
      model: form.querySelector("#pg-model").value,
      messages: [...(system ? [{ role: "system", content: system }] : []), ...history],
      temperature: Number(form.querySelector("#pg-temperature").value),
      max_tokens: Number(form.querySelector("#pg-max-tokens").value),
      top_p: Number(form.querySelector("#pg-top-p").value),
      stream, ...(stream ? { stream_options: { include_usage: true } } : {}),
    };
    const text = h("span", { class: "text" });
    const reply = h("div", { class: "msg assistant", "aria-busy": "true" }, h("span", { class: "role" }, body.model), text);
    chat.append(reply);
    const send = form.querySelector("#pg-send");
    send.disabled = true;
    show([["Status", "waiting…"]]);
    const started = performance.now();
    let firstToken = null, usage = null;
    try {
      const response = await fetch("/ui/playground/chat/completions", {
        method: "POST", body: JSON.stringify(body),
        headers: { "content-type": "application/json", "x-tokenway-csrf": cookie("tokenway_csrf") },
      });
      if (!response.ok) {
        const error = await response.json().catch(() => ({}));
        throw new Error(error.error?.message || `HTTP ${response.status}`);
      }
      if (stream) {
        for await (const data of events(response)) {
          if (data === "[DONE]") break;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          const delta = chunk.choices?.[0]?.delta?.content;
          if (delta) {
            firstToken ??= performance.now();
            text.textContent += delta;
          }
          if (chunk.usage) usage = chunk.usage;
        }
      } else {
        const answer = await response.json();
        text.textContent = answer.choices[0].message.content ?? "";
        usage = answer.usage;
      }
      const total = performance.now() - started;
      const deployment = response.headers.get("x-tokenway-deployment");
      const price = overview.prices[deployment];
      const cost = usage && price ? (usage.prompt_tokens * price[0] + usage.completion_tokens * price[1]) / 1e6 : null;
      history.push({ role: "assistant", content: text.textContent });
      show([
        ["Status", "done"],
        ["Deployment", deployment || "none (answered from the cache)"],
        ["Cache", response.headers.get("x-cache") || "not cached for this model"],
        ["Prompt tokens", fmt.int(usage?.prompt_tokens)],
        ["Completion tokens", fmt.int(usage?.completion_tokens)],
        ["Cost", cost === null ? "–" : fmt.usd(cost)],
        ["Time to first token", firstToken === null ? "–" : `${Math.round(firstToken - started)} ms`],
        ["Total latency", `${Math.round(total)} ms`],
        ["Tokens/s", usage && firstToken !== null && total > firstToken - started
          ? fmt.num(usage.completion_tokens / ((total - (firstToken - started)) / 1000), 1) : "–"],
        ["Request id", response.headers.get("x-request-id") || "–"],
      ]);
    } catch (error) {
      reply.append(h("p", { class: "error", role: "alert" }, error.message));
      show([["Status", "failed"], ["Error", error.message]]);
    } finally {
      reply.removeAttribute("aria-busy");
      send.disabled = false;
    }
  });
}
