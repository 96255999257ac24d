/* Runs list refresh, the run page's live curves, and the overlay of several runs. */
"use strict";

function channelDash(ch) { return ch.startsWith("@") ? "1 3" : (ch.includes("/") ? "5 3" : ""); }

/* The run page's charts: which series each chart draws, from the curves' keys. */
const GROUPS = {
  total: k => (k === "loss" || k === "loss_unweighted" || k === "eval_loss" || /^eval_[^/]+_loss$/.test(k)) ? k : null,
  train_tasks: k => (k.match(/^loss\/(.+)$/) || [])[1] || null,
  eval_tasks: k => { const m = k.match(/^eval_(?:(.+)_)?loss\/(.+)$/); return m ? (m[1] ? m[1] + ": " : "") + m[2] : null; },
  lr: k => k === "lr" ? "lr" : null,
  grad_norm: k => k === "grad_norm" ? "grad norm" : null,
  tokens_per_s: k => k === "tokens_per_s" ? "tokens/s" : null,
  padding_ratio: k => k === "padding_ratio" ? "padding ratio" : null,
};

function drawRunCharts(curves) {
  for (const el of document.querySelectorAll("#charts .chart")) {
    const pick = GROUPS[el.dataset.group], series = [];
    for (const [key, points] of Object.entries(curves.series)) {
      const name = pick(key);
      const perTask = el.dataset.group.endsWith("_tasks");
      if (name !== null) series.push({name, points, dash: perTask ? channelDash(name.split(": ").pop()) : ""});
    }
    series.sort((a, b) => (b.name === "loss") - (a.name === "loss"));  // the train loss first (the first colour)
    const evalOnly = el.dataset.group === "eval_tasks";
    lineChart(el, series, {logY: el.dataset.group === "grad_norm", markers: evalOnly});
    el.dataset.points = series.reduce((a, s) => a + s.points.length, 0);
  }
}

function showRunStatus(st) {
  const set = (id, v) => { const el = document.getElementById(id); if (el) el.textContent = v; };
  const badge = document.getElementById("run-state");
  badge.className = "badge " + st.state; badge.textContent = st.state;
  set("run-why", st.why); set("run-step", st.step ?? "-"); set("run-total", st.total_steps ?? "-");
  set("run-eta", st.eta_s == null ? "-" : fmtEta(st.eta_s)); set("run-alarms", `${st.alarms} alarm(s)`);
}

function fmtEta(s) {
  s = Math.round(s); const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), r = s % 60;
  return h ? `${h}:${String(m).padStart(2, "0")}:${String(r).padStart(2, "0")}` : `${m}:${String(r).padStart(2, "0")}`;
}

function watchRun(id) {
  let version = -1, state = null, partial = true;
  const status = document.getElementById("curve-status");
  async function tick() {
    try {
      const st = await api(`/api/runs/${id}`);
      showRunStatus(st); state = st.state;
      const c = await api(`/api/runs/${id}/curves`);
      partial = c.partial;
      status.textContent = c.partial ? `indexing metrics.jsonl: ${Math.round(100 * c.indexed / Math.max(1, c.size))} % — the rest is drawn from evenly spaced sample lines` : "";
      if (c.version !== version || c.partial) { version = c.version; drawRunCharts(c); }
      document.body.dataset.curveVersion = version;
    } catch (e) { status.textContent = e.message; }
    setTimeout(tick, state === "running" ? 1000 : partial ? 2000 : 15000);
  }
  tick();
}

function pollRunList() {
  const table = document.getElementById("runs");
  if (!table) return;
  setInterval(async () => {
    let runs;
    try { runs = await api("/api/runs"); } catch (e) { return; }
    if (runs.length !== table.tBodies[0].rows.length) { location.reload(); return; }
    for (const r of runs) {
      const tr = table.querySelector(`tr[data-id="${r.id}"]`);
      if (!tr) continue;
      tr.querySelector(".c-state").innerHTML = `<span class="badge ${r.state}" title="${escapeHtml(r.why)}">${r.state}</span>`;
      tr.querySelector(".c-step").textContent = (r.step ?? "-") + (r.total_steps ? ` / ${r.total_steps}` : "");
      tr.querySelector(".c-eta").textContent = r.eta_s == null ? "-" : fmtEta(r.eta_s);
      tr.querySelector(".c-loss").textContent = r.loss == null ? "-" : Number(r.loss.toPrecision(4));
      tr.querySelector(".c-eval").textContent = r.eval_loss == null ? "-" : Number(r.eval_loss.toPrecision(4));
      tr.querySelector(".c-alarms").textContent = r.alarms;
    }
  }, 3000);
}

async function overlayRuns(runs) {
  const curves = await Promise.all(runs.map(r => api(`/api/runs/${r.id}/curves`).catch(() => ({series: {}}))));
  const keys = [...new Set(curves.flatMap(c => Object.keys(c.series)))].sort((a, b) =>
    (a === "loss" ? -2 : a === "eval_loss" ? -1 : 0) - (b === "loss" ? -2 : b === "eval_loss" ? -1 : 0) || a.localeCompare(b));
  const select = document.getElementById("metric"), el = document.getElementById("overlay");
  select.innerHTML = keys.map(k => `<option>${escapeHtml(k)}</option>`).join("");
  const draw = () => {
    const k = select.value;
    document.getElementById("overlay-title").textContent = k;
    lineChart(el, runs.map((r, i) => ({name: r.name, points: curves[i].series[k] || []})), {logY: k === "grad_norm", markers: k.startsWith("eval")});
  };
  select.onchange = draw;
  if (keys.length) draw();
}
