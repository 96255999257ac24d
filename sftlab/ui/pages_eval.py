"""Eval: eval output dirs with their score table, judge-bias panel, bad cases, paginated predictions, two dirs side by
side — and Fix → data from any of them (POST /api/fix)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from sftlab.errors import UserError
from sftlab.ui.evals import filter_rows, judge_panel, paginate, primary, rationale, scores, side_by_side
from sftlab.ui.fixes import append_fix
from sftlab.ui.pages_runs import display
from sftlab.ui.review import find_reviews
from sftlab.ui.templating import page
from sftlab.ui.wire import FixIn
from sftlab.ui.workspace import Workspace

router = APIRouter()
MAX_BAD = 100  # bad-case cards on the page (unjudged items can be many: the filters narrow them)


def _card(row: dict[str, Any]) -> dict[str, Any]:
    """What a case card shows of a prediction row."""
    prompt = row.get("prompt")
    return {"id": row["id"], "task_type": row.get("task_type", "default"), "reply": row.get("reply") or "",
            "baseline_reply": row.get("baseline_reply"), "reference": row.get("reference"),
            "prompt": [{"role": "user", "content": prompt}] if isinstance(prompt, str) else (prompt or []),
            "score": primary(row), "bad_reason": row.get("bad_reason"), "scores": row.get("scores") or {},
            "judge_scores": row.get("judge_scores") or {}, "rationale": rationale(row)}


@router.get("/evals", response_class=HTMLResponse)
def evals_page(request: Request) -> HTMLResponse:
    ws: Workspace = request.app.state.ws
    ws.scan()
    rows = []
    for eid, path in sorted(ws.evals.items(), key=lambda kv: str(kv[1])):
        view = ws.eval_view(eid)
        s = view.summary
        overall = s.get("overall") if isinstance(s.get("overall"), dict) else {}
        rows.append({"id": eid, "name": display(path), "model": s.get("model"), "n": s.get("n", len(view.predictions)),
                     "overall": overall.get("mean"), "mode": (s.get("judge") or {}).get("mode"),
                     "notes": view.notes, "reviews": len(find_reviews(path))})
    return page(request, "evals.html", title="Evaluations", nav="eval", evals=rows)


@router.get("/evals/{eid}", response_class=HTMLResponse)
def eval_page(request: Request, eid: str, task: str = "", reason: str = "", q: str = "", pt: str = "",
              pq: str = "", order: str = "", p: int = 1) -> HTMLResponse:
    ws: Workspace = request.app.state.ws
    view = ws.eval_view(eid)
    header, table = scores(view)
    bad_rows = filter_rows(view.bad, task, reason, q)
    bad = [_card(r) for r in bad_rows[:MAX_BAD]]
    preds, number, pages = paginate(filter_rows(view.predictions, pt, "", pq, order), p)
    return page(request, "eval.html", title=display(view.path), nav="eval", eid=eid, view=view,
                name=display(view.path), header=header, table=table, judge=judge_panel(view.summary),
                bad=bad, n_bad=len(bad_rows), reasons=sorted({str(r.get("bad_reason")) for r in view.bad}), task_types=view.task_types(),
                preds=[_card(r) for r in preds], page_no=number, pages=pages, n_preds=len(view.predictions),
                filters={"task": task, "reason": reason, "q": q, "pt": pt, "pq": pq, "order": order},
                others=[(i, display(pth)) for i, pth in sorted(ws.evals.items(), key=lambda kv: str(kv[1]))
                        if i != eid])


@router.get("/evals/{a}/vs/{b}", response_class=HTMLResponse)
def side_by_side_page(request: Request, a: str, b: str, task: str = "", q: str = "", p: int = 1) -> HTMLResponse:
    ws: Workspace = request.app.state.ws
    va, vb = ws.eval_view(a), ws.eval_view(b)
    pairs = side_by_side(va, vb)
    keep = {r["id"] for r in filter_rows([ra for ra, _ in pairs], task, "", q)}
    rows, number, pages = paginate([(_card(ra), _card(rb)) for ra, rb in pairs if ra["id"] in keep], p)
    return page(request, "sidebyside.html", title="Side by side", nav="eval", a=a, b=b, name_a=display(va.path),
                name_b=display(vb.path), rows=rows, page_no=number, pages=pages, n_shared=len(pairs),
                notes=va.notes + vb.notes, task_types=va.task_types(), filters={"task": task, "q": q})


def _fix_source(ws: Workspace, body: FixIn) -> dict[str, Any]:
    """prompt, the two candidate replies (A = the one fixed by default) and provenance of the item a fix is about."""
    if body.review:
        review = ws.review(body.review)
        item = next((it for it in review.items if it["item"] == body.id), None)
        if item is None:
            raise UserError(f"review {review.info['name']} has no item {body.id!r}")
        entry = review.key["items"][body.id]
        prov = {"source": "review", "review": str(review.path), "item": body.id, "record_id": entry["id"],
                **({"model_is": entry["model_is"]} if "model_is" in entry else {})}  # which side was the model
        return {"prompt": item["prompt"], "replies": item["answers"], "task_type": entry["task_type"], "prov": prov}
    if not body.eval:
        raise UserError("field 'eval': give the eval dir id (or 'review')")
    view = ws.eval_view(body.eval)
    row = view.by_id().get(body.id)
    if row is None:
        raise UserError(f"{display(view.path)} has no prediction {body.id!r}")
    card = _card(row)
    replies = [card["reply"]]
    if body.other:
        other = ws.eval_view(body.other).by_id().get(body.id)
        if other is None:
            raise UserError(f"the other eval dir has no prediction {body.id!r}")
        replies.append(other.get("reply") or "")
    elif card["baseline_reply"] is not None:
        replies.append(card["baseline_reply"])
    prov = {"source": "eval", "eval_dir": str(view.path), "item_id": body.id, "record_id": row.get("record_id"),
            "set": row.get("set"), "model": view.summary.get("model"), "bad_reason": row.get("bad_reason"),
            "score": primary(row), **({"other_eval_dir": str(ws.eval_dir(body.other))} if body.other else {})}
    return {"prompt": card["prompt"], "replies": replies, "task_type": card["task_type"], "prov": prov}


@router.post("/api/fix")
def fix_api(request: Request, body: FixIn) -> dict[str, Any]:
    """Append the fix as an SFT record and a preference pair to the fixes dir."""
    ws: Workspace = request.app.state.ws
    src = _fix_source(ws, body)
    replies = src["replies"]
    if body.keep is not None:
        if len(replies) < 2:
            raise UserError("field 'keep': this item has one reply; edit it instead")
        k = 0 if body.keep == "A" else 1
        fixed, original = replies[k], replies[1 - k]
        kind = f"kept {body.keep} of two"
    elif body.reply is not None:
        fixed, original, kind = body.reply, replies[0], "edited"
    else:
        raise UserError("give 'reply' (the corrected reply) or 'keep' (A or B)")
    prov = {**src["prov"], "kind": kind, **({"annotator": body.annotator} if body.annotator else {})}
    out = append_fix(ws.fixes_dir, prompt=src["prompt"], original=original, fixed=fixed,
                     task_type=src["task_type"], provenance=prov)
    ws.scan(force=True)  # the fixes file is a dataset on the Data page
    return {"id": out["record"]["id"], "sft_path": out["sft_path"], "pairs_path": out["pairs_path"]}
