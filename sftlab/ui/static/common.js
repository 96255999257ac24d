/* Shared by the pages of sftlab ui: JSON calls that report errors, and the Fix -> data forms. */
"use strict";

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

async function api(path, body) {
  /* GET (no body) or POST JSON; resolves to the JSON answer, rejects with the server's error message. */
  const init = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  let resp;
  try { resp = await fetch(path, init); } catch (e) { throw new Error("the sftlab ui server cannot be reached (" + e.message + ")"); }
  let data = null;
  try { data = await resp.json(); } catch (e) { /* not JSON */ }
  if (!resp.ok) throw new Error((data && data.error) || `HTTP ${resp.status}`);
  return data;
}

function setStatus(el, text, cls) {
  el.textContent = text;
  el.className = (el.className.split(" ").filter(c => !["ok", "bad", "warn", "muted"].includes(c)).join(" ") + " " + (cls || "")).trim();
}

/* A fix form: <form class="fix" data-eval=.. data-other=.. data-review=.. data-id=..> with a textarea[name=reply]
   and buttons name=action value=edit|A|B. */
function initFixForms(root) {
  for (const form of (root || document).querySelectorAll("form.fix")) {
    form.addEventListener("submit", async ev => {
      ev.preventDefault();
      const action = (ev.submitter && ev.submitter.value) || "edit";
      const d = form.dataset, out = form.querySelector(".fix-result");
      const body = {id: d.id};
      for (const k of ["eval", "other", "review"]) if (d[k]) body[k] = d[k];
      if (action === "edit") body.reply = form.querySelector("textarea[name=reply]").value;
      else body.keep = action;
      const who = localStorage.getItem("sftlab.annotator");
      if (who) body.annotator = who;
      setStatus(out, "saving…", "muted");
      try {
        const r = await api("/api/fix", body);
        setStatus(out, `appended ${r.id} to ${r.sft_path} and its pair to ${r.pairs_path}`, "ok");
      } catch (e) { setStatus(out, e.message, "bad"); }
    });
  }
}
document.addEventListener("DOMContentLoaded", () => initFixForms(document));
