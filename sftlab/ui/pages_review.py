"""Review: blind single-grade and A/B review of an eval's replies by several annotators at once, with progress,
resume and results in the fields of `eval import-sheet`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from sftlab.eval.report import score_table
from sftlab.ui.pages_runs import display
from sftlab.ui.review import check_annotator, create_review
from sftlab.ui.templating import page
from sftlab.ui.wire import ReviewIn, VoteIn
from sftlab.ui.workspace import Workspace, path_id

router = APIRouter()


@router.get("/review", response_class=HTMLResponse)
def reviews_page(request: Request) -> HTMLResponse:
    ws: Workspace = request.app.state.ws
    rows = []
    for sid, path, eval_dir in ws.reviews():
        r = ws.review(sid)
        people = {who: sum(all(d in items.get(it["item"], {}) for d in r.dimensions) for it in r.items)
                  for who, items in r.votes().items()}
        rows.append({"id": sid, "name": path.name, "eval": display(eval_dir), "mode": r.mode,
                     "dimensions": r.dimensions, "n_items": len(r.items), "annotators": people})
    evals = [(eid, display(p)) for eid, p in sorted(ws.evals.items(), key=lambda kv: str(kv[1]))]
    return page(request, "reviews.html", title="Review", nav="review", reviews=rows, evals=evals)


@router.post("/api/review")
def create_api(request: Request, body: ReviewIn) -> dict[str, Any]:
    ws: Workspace = request.app.state.ws
    view = ws.eval_view(body.eval)
    baseline = ws.eval_view(body.baseline) if body.baseline else None
    path = create_review(view, dimensions=body.dimensions.split(","), seed=body.seed, limit=body.limit,
                         baseline=baseline, name=body.name or None, single=body.grading == "single")
    ws.scan(force=True)
    return {"id": path_id(path), "url": f"/review/{path_id(path)}"}


@router.get("/review/{sid}", response_class=HTMLResponse)
def review_page(request: Request, sid: str) -> HTMLResponse:
    ws: Workspace = request.app.state.ws
    r = ws.review(sid)
    return page(request, "review.html", title=f"Review {r.info['name']}", nav="review", sid=sid,
                review={"name": r.info["name"], "mode": r.mode, "dimensions": r.dimensions, "n_items": len(r.items)})


@router.get("/api/review/{sid}/state")
def state_api(request: Request, sid: str, annotator: str, index: int | None = None) -> dict[str, Any]:
    """The annotator's progress and an item: `index`, else the first one they have not finished (resume)."""
    ws: Workspace = request.app.state.ws
    r = ws.review(sid)
    who = check_annotator(annotator)
    progress = r.progress(who)
    at = index if index is not None else progress["next"]
    return {"mode": r.mode, "dimensions": r.dimensions, "progress": progress,
            "item": r.item(at, who) if at is not None else None}


@router.post("/api/review/{sid}/vote")
def vote_api(request: Request, sid: str, body: VoteIn) -> dict[str, Any]:
    """Store one vote; answered only once it is on disk."""
    ws: Workspace = request.app.state.ws
    r = ws.review(sid)
    r.vote(body.annotator, body.item, body.dimension, body.value)
    return {"saved": True, "progress": r.progress(check_annotator(body.annotator))}


@router.get("/review/{sid}/results", response_class=HTMLResponse)
def results_page(request: Request, sid: str) -> HTMLResponse:
    ws: Workspace = request.app.state.ws
    r = ws.review(sid)
    votes = r.votes()
    summary = r.summary() if votes else None
    table = score_table({"metrics": summary["human"]["scores"]}) if summary else ([], [])
    people = {who: r.progress(who) for who in votes}
    return page(request, "review_results.html", title=f"Results of {r.info['name']}", nav="review", sid=sid,
                info=r.info, summary=summary, header=table[0], table=table[1], people=people,
                summary_path=str(r.path / "summary.json"))


@router.get("/review/{sid}/summary.json")
def summary_json(request: Request, sid: str) -> JSONResponse:
    ws: Workspace = request.app.state.ws
    return JSONResponse(ws.review(sid).summary())
