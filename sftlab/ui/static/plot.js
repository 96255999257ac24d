/* Small SVG charts for sftlab ui (no library): lineChart for curves, barChart for histograms. */
(function () {
  "use strict";
  const PALETTE = ["#2457c5", "#e8710a", "#1a7f37", "#b3261e", "#7b3fb5", "#8c564b", "#d6338a", "#5f6368",
                   "#0b8a8a", "#b8a100", "#3f51b5", "#ef6c00", "#00897b", "#6d4c41", "#c2185b", "#455a64"];
  const NS = "http://www.w3.org/2000/svg";

  const esc = window.escapeHtml;  // common.js

  function fmtNum(v) {
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e5 || a < 1e-3) return v.toExponential(1);
    return String(Number(v.toPrecision(4)));
  }

  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + (Math.abs(lo) || 1); lo = lo - (Math.abs(lo) || 1) * 0.0; }
    const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  }

  function logTicks(lo, hi) {  // log10 positions of 1, 2, 5 x 10^k inside [lo, hi] (fewer when the range is wide)
    const out = [], mults = hi - lo > 3 ? [1] : [1, 2, 5];
    for (let k = Math.floor(lo); k <= Math.ceil(hi); k++)
      for (const m of mults) { const v = k + Math.log10(m); if (v >= lo && v <= hi) out.push(v); }
    return out.length ? out : niceTicks(lo, hi, 4);
  }

  function nearest(points, x) {  // index of the point with the closest x (points sorted by x)
    let lo = 0, hi = points.length - 1;
    while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (points[mid][0] < x) lo = mid; else hi = mid; }
    return Math.abs(points[lo][0] - x) <= Math.abs(points[hi][0] - x) ? lo : hi;
  }

  /* series: [{name, points: [[x, y], ...], dash: "" | "4 3" | "1 3", color?}]
     opts: {logY, height, markers, xLabel} — hidden series survive redraws (legend click toggles) */
  function lineChart(el, series, opts) {
    opts = opts || {};
    el._off = el._off || new Set();
    for (const old of el.querySelectorAll(".plot, .legend, .tip, .empty")) old.remove();
    series.forEach((s, i) => { s.color = s.color || PALETTE[i % PALETTE.length]; });
    const shown = series.filter(s => !el._off.has(s.name) && s.points.length);
    if (!series.some(s => s.points.length)) {
      el.insertAdjacentHTML("beforeend", '<div class="empty muted">no data yet</div>');
      return;
    }
    const W = Math.max(360, Math.round(el.clientWidth || 640) - 22), H = opts.height || 250, L = 58, R = 12, T = 10, B = 30;
    const logY = opts.logY && shown.every(s => s.points.every(p => p[1] > 0));
    const fy = v => logY ? Math.log10(v) : v;
    let xs = [], ys = [];
    for (const s of shown) for (const p of s.points) { xs.push(p[0]); ys.push(fy(p[1])); }
    if (!xs.length) { xs = [0, 1]; ys = [0, 1]; }
    let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { const d = logY ? 0.5 : (y0 === 0 ? 1 : Math.abs(y0) * 0.5); y0 = y0 === 0 && !logY ? 0 : y0 - d; y1 += d; }
    else { const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad; }
    const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R), sy = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    let svg = `<svg class="plot" xmlns="${NS}" viewBox="0 0 ${W} ${H}" role="img">`;
    for (const t of logY ? logTicks(y0, y1) : niceTicks(y0, y1, 5)) {
      const y = sy(t);
      svg += `<line x1="${L}" x2="${W - R}" y1="${y}" y2="${y}" stroke="#ececf0"/>` +
             `<text x="${L - 6}" y="${y + 4}" font-size="11" text-anchor="end" fill="#6e6e73">${fmtNum(logY ? Math.pow(10, t) : t)}</text>`;
    }
    for (const t of niceTicks(x0, x1, 6)) {
      const x = sx(t);
      svg += `<line x1="${x}" x2="${x}" y1="${T}" y2="${H - B}" stroke="#f3f3f6"/>` +
             `<text x="${x}" y="${H - B + 15}" font-size="11" text-anchor="middle" fill="#6e6e73">${fmtNum(t)}</text>`;
    }
    svg += `<text x="${W - R}" y="${H - 2}" font-size="11" text-anchor="end" fill="#6e6e73">${esc(opts.xLabel || "step")}</text>`;
    svg += `<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#d2d2d7"/>`;
    for (const s of shown) {
      const pts = s.points.map(p => `${sx(p[0]).toFixed(1)},${sy(fy(p[1])).toFixed(1)}`).join(" ");
      svg += `<polyline fill="none" stroke="${s.color}" stroke-width="1.6" stroke-dasharray="${s.dash || ""}" points="${pts}"/>`;
      if (opts.markers || s.points.length < 3)
        for (const p of s.points) svg += `<circle cx="${sx(p[0]).toFixed(1)}" cy="${sy(fy(p[1])).toFixed(1)}" r="2.5" fill="${s.color}"/>`;
    }
    svg += `<line class="cursor" x1="0" x2="0" y1="${T}" y2="${H - B}" stroke="#999" stroke-dasharray="2 2" visibility="hidden"/>`;
    svg += `<rect class="hover" x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="transparent"/></svg>`;
    el.insertAdjacentHTML("beforeend", svg);
    const legend = series.map(s => `<span data-name="${esc(s.name)}" class="${el._off.has(s.name) ? "off" : ""}">` +
      `<i style="background:${s.color}"></i>${esc(s.name)}${s.points.length ? "" : " (none)"}</span>`).join("");
    el.insertAdjacentHTML("beforeend", `<div class="legend">${legend}</div><div class="tip"></div>`);
    for (const span of el.querySelectorAll(".legend span")) {
      span.onclick = () => {
        const n = span.dataset.name;
        if (el._off.has(n)) el._off.delete(n); else el._off.add(n);
        lineChart(el, series, opts);
      };
    }
    const svgEl = el.querySelector("svg.plot"), cursor = svgEl.querySelector(".cursor"), tip = el.querySelector(".tip");
    svgEl.querySelector(".hover").addEventListener("mousemove", ev => {
      const box = svgEl.getBoundingClientRect(), px = (ev.clientX - box.left) / box.width * W;
      const x = x0 + (px - L) / (W - L - R) * (x1 - x0);
      const parts = shown.map(s => { const p = s.points[nearest(s.points, x)]; return [p[0], `${esc(s.name)} ${fmtNum(p[1])}`]; });
      cursor.setAttribute("x1", px); cursor.setAttribute("x2", px); cursor.setAttribute("visibility", "visible");
      tip.innerHTML = parts.length ? `step ${fmtNum(parts[0][0])}: ` + parts.map(q => q[1]).slice(0, 12).join(" · ") : "";
    });
    svgEl.querySelector(".hover").addEventListener("mouseleave", () => cursor.setAttribute("visibility", "hidden"));
  }

  /* edges: n + 1 bin edges; groups: {name: [n counts]} drawn stacked */
  function barChart(el, edges, groups, opts) {
    opts = opts || {};
    for (const old of el.querySelectorAll(".plot, .legend")) old.remove();
    const names = Object.keys(groups), n = edges.length - 1;
    if (!names.length || n < 1) { el.insertAdjacentHTML("beforeend", '<div class="muted">no data</div>'); return; }
    const W = Math.max(360, Math.round(el.clientWidth || 640) - 22), H = opts.height || 230, L = 50, R = 10, T = 10, B = 30;
    const totals = Array.from({length: n}, (_, i) => names.reduce((a, k) => a + groups[k][i], 0));
    const top = Math.max(1, ...totals), bw = (W - L - R) / n;
    const sy = v => T + (1 - v / top) * (H - T - B);
    let svg = `<svg class="plot" xmlns="${NS}" viewBox="0 0 ${W} ${H}" role="img">`;
    for (const t of niceTicks(0, top, 4)) svg += `<line x1="${L}" x2="${W - R}" y1="${sy(t)}" y2="${sy(t)}" stroke="#ececf0"/>` +
      `<text x="${L - 6}" y="${sy(t) + 4}" font-size="11" text-anchor="end" fill="#6e6e73">${fmtNum(t)}</text>`;
    const base = new Array(n).fill(0);
    names.forEach((k, gi) => {
      for (let i = 0; i < n; i++) {
        const v = groups[k][i];
        if (!v) continue;
        const y = sy(base[i] + v), h = sy(base[i]) - y;
        svg += `<rect x="${(L + i * bw + 0.5).toFixed(1)}" y="${y.toFixed(1)}" width="${Math.max(1, bw - 1).toFixed(1)}" height="${h.toFixed(1)}" fill="${PALETTE[gi % PALETTE.length]}"><title>${esc(k)}: ${v} in [${edges[i]}, ${edges[i + 1]})</title></rect>`;
        base[i] += v;
      }
    });
    const step = Math.max(1, Math.ceil(n / 8));
    for (let i = 0; i <= n; i += step) svg += `<text x="${L + i * bw}" y="${H - B + 15}" font-size="11" text-anchor="middle" fill="#6e6e73">${edges[i]}</text>`;
    svg += `<text x="${W - R}" y="${H - 2}" font-size="11" text-anchor="end" fill="#6e6e73">${esc(opts.xLabel || "")}</text></svg>`;
    el.insertAdjacentHTML("beforeend", svg);
    el.insertAdjacentHTML("beforeend", '<div class="legend">' + names.map((k, gi) =>
      `<span><i style="background:${PALETTE[gi % PALETTE.length]}"></i>${esc(k)}</span>`).join("") + "</div>");
  }

  window.lineChart = lineChart;
  window.barChart = barChart;
})();
