/* The blind review page: name asked once, one item at a time, keyboard votes, progress and resume.
   A vote counts as saved only when the server answered (it is on disk then); votes the server did not
   acknowledge wait in localStorage and are sent again, so closing the tab or a server restart loses none. */
"use strict";

function startReview(sid, review) {
  const pairwise = review.mode === "pairwise", dims = review.dimensions;
  const choices = pairwise ? [["A", "A"], ["B", "B"], ["C", "tie"]] : Array.from({length: 10}, (_, i) => [String(i + 1), String(i + 1)]);
  const pendingKey = `sftlab.review.${sid}.pending`;
  const $ = id => document.getElementById(id);
  let who = localStorage.getItem("sftlab.annotator"), item = null, progress = null, retrying = false;

  const pending = () => JSON.parse(localStorage.getItem(pendingKey) || "[]");
  const setPending = list => localStorage.setItem(pendingKey, JSON.stringify(list));

  function askName() {
    $("who-box").hidden = false; $("review-box").hidden = true; $("who").value = who || ""; $("who").focus();
  }
  $("who-form").addEventListener("submit", ev => {
    ev.preventDefault();
    who = $("who").value.trim();
    if (!who) return;
    localStorage.setItem("sftlab.annotator", who);
    begin();
  });
  $("change-who").addEventListener("click", ev => { ev.preventDefault(); askName(); });

  function begin() {
    $("who-box").hidden = true; $("review-box").hidden = false; $("annotator").textContent = who;
    if (document.activeElement) document.activeElement.blur();  // the keys are votes now, not typing
    flush().then(() => load(null));
  }

  async function load(index) {
    const q = `/api/review/${sid}/state?annotator=${encodeURIComponent(who)}` + (index === null ? "" : `&index=${index}`);
    let st;
    try { st = await api(q); } catch (e) {
      if (!/cannot be reached/.test(e.message)) { setStatus($("status"), e.message, "bad"); return; }
      offline(e);
      setTimeout(() => load(index), 2000);  // until the server is back
      return;
    }
    showProgress(st.progress);
    item = st.item;
    $("finished").hidden = item !== null; $("item").hidden = item === null;
    if (item) render();
  }

  function showProgress(p) {
    progress = p;
    $("done").textContent = `${p.done}/${p.total}`;
    $("bar").style.width = `${100 * p.done / Math.max(1, p.total)}%`;
  }

  function currentDim() { return dims.find(d => !(d in item.votes)) || null; }

  function render() {
    $("pos").textContent = `${item.index + 1} of ${progress.total}`;
    $("prompt").innerHTML = item.prompt.map(m => `<div class="msg"><div class="role">${escapeHtml(m.role)}</div><div class="text">${escapeHtml(m.content || "")}</div></div>`).join("");
    const labels = pairwise ? ["A", "B"] : ["Answer"];
    $("answers").className = "answers" + (pairwise ? "" : " single");
    $("answers").innerHTML = item.answers.map((a, i) => `<div class="answer" id="answer-${labels[i]}"><h3>${labels[i]}</h3><div class="text">${escapeHtml(a)}</div></div>`).join("");
    const cur = currentDim();
    $("dims").innerHTML = dims.map(d => `<div class="dim${d === cur ? " current" : ""}" data-dim="${escapeHtml(d)}"><span class="name">${escapeHtml(d)}</span>` +
      choices.map(([v, label]) => `<button type="button" class="vote${item.votes[d] === v ? " chosen" : ""}" data-value="${v}">${label}</button>`).join("") + "</div>").join("");
    for (const b of $("dims").querySelectorAll("button.vote")) b.onclick = () => vote(b.closest(".dim").dataset.dim, b.dataset.value);
    const form = $("fix-form");
    form.dataset.id = item.item;
    form.querySelector("textarea").value = item.answers[0];
    setStatus(form.querySelector(".fix-result"), "", "muted");
  }

  async function vote(dim, value) {
    item.votes[dim] = value;
    const list = pending(); list.push({annotator: who, item: item.item, dimension: dim, value}); setPending(list);
    render();
    await flush();
    if (!currentDim()) {
      const next = pending().length ? item.index + 1 : null;  // offline: walk on in order
      if (next !== null && next >= progress.total) { $("item").hidden = true; $("finished").hidden = false; return; }
      load(next);
    }
  }

  function offline(e) {
    const n = pending().length;
    setStatus($("status"), (n ? `${n} vote(s) not saved yet: ` : "") + `${e.message}; retrying…`, "warn");
  }

  let chain = Promise.resolve();
  function flush() {
    /* votes go out one at a time, in order; a caller awaits the send that includes its own vote */
    chain = chain.then(sendWaiting);
    return chain;
  }

  async function sendWaiting() {
    let list = pending();
    while (list.length) {
      try {
        const r = await api(`/api/review/${sid}/vote`, list[0]);
        showProgress(r.progress);
        setStatus($("status"), "saved", "ok");
      } catch (e) {
        if (/cannot be reached|HTTP 5\d\d/.test(e.message)) {
          offline(e);
          if (!retrying) { retrying = true; setTimeout(() => { retrying = false; flush(); }, 2000); }
          return;
        }
        setStatus($("status"), `vote refused: ${e.message}`, "bad");  // a bad vote is dropped, not retried forever
      }
      list = pending(); list.shift(); setPending(list);
    }
  }

  document.addEventListener("keydown", ev => {
    if (!item || ev.target.closest("input, textarea, select") || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const k = ev.key.toUpperCase();
    if (ev.key === "ArrowLeft" && item.index > 0) { load(item.index - 1); return; }
    if (ev.key === "ArrowRight" && item.index + 1 < progress.total) { load(item.index + 1); return; }
    const dim = currentDim() || dims[dims.length - 1];
    if (pairwise && (k === "A" || k === "B" || k === "T")) vote(dim, k === "T" ? "C" : k);
    else if (!pairwise && /^[0-9]$/.test(k)) vote(dim, k === "0" ? "10" : k);
    else return;
    ev.preventDefault();
  });

  if (who) begin(); else askName();
}
