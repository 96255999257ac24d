/* The chat playground: two panes, each an endpoint + model with its own conversation; feedback per reply. */
"use strict";

const panes = [...document.querySelectorAll(".pane")].map(el => ({el, history: []}));

function paneStatus(p, text, cls) { setStatus(p.el.querySelector(".status-line"), text, cls || "muted"); }

async function connect(p) {
  const endpoint = p.el.querySelector(".endpoint").value.trim(), select = p.el.querySelector(".model");
  if (!endpoint) { paneStatus(p, "give an endpoint URL", "warn"); return; }
  try {
    const r = await api(`/api/chat/models?endpoint=${encodeURIComponent(endpoint)}`);
    select.innerHTML = r.models.map(m => `<option>${escapeHtml(m)}</option>`).join("");
    paneStatus(p, `${r.models.length} model(s) at ${r.endpoint}`, "ok");
  } catch (e) { paneStatus(p, e.message, "bad"); }
}

function bubble(p, role, text) {
  const div = document.createElement("div");
  div.className = `bubble ${role}`;
  div.innerHTML = `<div class="content">${escapeHtml(text)}</div>`;
  p.el.querySelector(".log").appendChild(div);
  return div;
}

function addFeedback(p, div, endpoint, id) {
  const fb = document.createElement("div");
  fb.className = "fb";
  fb.innerHTML = '<button type="button" data-score="1" title="a good reply: score 1">Good</button> <button type="button" data-score="-1" title="a bad reply: score -1">Bad</button> <span class="fb-status muted"></span>';
  div.appendChild(fb);
  for (const b of fb.querySelectorAll("button")) {
    b.onclick = async () => {
      const out = fb.querySelector(".fb-status");
      try {
        await api("/api/chat/feedback", {endpoint, id, score: Number(b.dataset.score)});
        setStatus(out, `feedback "${b.dataset.score === "1" ? "good" : "bad"}" sent to the endpoint's log`, "ok");
        for (const x of fb.querySelectorAll("button")) x.disabled = true;
      } catch (e) { setStatus(out, e.message, "bad"); }
    };
  }
}

async function ask(p, text) {
  const endpoint = p.el.querySelector(".endpoint").value.trim(), model = p.el.querySelector(".model").value;
  if (!endpoint || !model) return;
  p.history.push({role: "user", content: text});
  bubble(p, "user", text);
  const div = bubble(p, "assistant", "…");
  try {
    const r = await api("/api/chat", {endpoint, model, messages: p.history,
      max_tokens: Number(document.getElementById("max-tokens").value || 128),
      temperature: Number(document.getElementById("temperature").value || 0)});
    div.querySelector(".content").textContent = r.content;
    div.dataset.id = r.id;
    p.history.push({role: "assistant", content: r.content});
    paneStatus(p, `${r.model} · ${r.latency_ms} ms · ${r.finish_reason}`);
    addFeedback(p, div, endpoint, r.id);
  } catch (e) {
    p.history.pop();
    div.querySelector(".content").textContent = e.message;
    div.classList.add("bad");
  }
}

function send() {
  const box = document.getElementById("message"), text = box.value.trim();
  if (!text) return;
  const ready = panes.filter(p => p.el.querySelector(".endpoint").value.trim() && p.el.querySelector(".model").value);
  if (!ready.length) { paneStatus(panes[0], "connect an endpoint and pick a model first", "warn"); return; }
  box.value = "";
  for (const p of ready) ask(p, text);
}

for (const p of panes) {
  p.el.querySelector(".connect").onclick = () => connect(p);
  if (p.el.querySelector(".endpoint").value) connect(p);
}
document.getElementById("send").onclick = send;
document.getElementById("message").addEventListener("keydown", ev => { if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) send(); });
document.getElementById("clear").onclick = () => { for (const p of panes) { p.history = []; p.el.querySelector(".log").innerHTML = ""; } };
