"""Data: datasets (given on the command line, named by a run's config, the fixes file) with per-task counts, length
histograms and rejects, and the render view of one sample (the exact tokens it trains on)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from sftlab.ui.datasets import render_sample
from sftlab.ui.evals import paginate
from sftlab.ui.pages_runs import display
from sftlab.ui.templating import page
from sftlab.ui.workspace import Workspace

router = APIRouter()


def _first_user(rec: dict) -> str:
    return next((m.get("content") or "" for m in rec["messages"] if m.get("role") == "user"), "")[:160]


@router.get("/data", response_class=HTMLResponse)
def data_page(request: Request) -> HTMLResponse:
    ws: Workspace = request.app.state.ws
    ws.scan()
    rows = [{"id": did, "name": display(d.path), "origin": d.origin, "tokenizer": d.settings.tokenizer}
            for did, d in sorted(ws.datasets.items(), key=lambda kv: str(kv[1].path))]
    return page(request, "datasets.html", title="Data", nav="data", datasets=rows)


@router.get("/data/{did}", response_class=HTMLResponse)
def dataset_page(request: Request, did: str, p: int = 1) -> HTMLResponse:
    ws: Workspace = request.app.state.ws
    ds, view = ws.dataset(did)
    records, number, pages = paginate(list(enumerate(view.records)), p)
    samples = [{"index": i, "id": r["id"], "task_type": r["task_type"], "turns": len(r["messages"]),
                "text": _first_user(r)} for i, r in records]
    return page(request, "dataset.html", title=display(ds.path), nav="data", ds=ds, view=view,
                name=display(ds.path), did=did, stats=view.stats(), histogram=view.histogram(),
                samples=samples, page_no=number, pages=pages, rejects=view.rejects[:200])


@router.get("/data/{did}/sample/{index}", response_class=HTMLResponse)
def sample_page(request: Request, did: str, index: int) -> HTMLResponse:
    ws: Workspace = request.app.state.ws
    ds, view = ws.dataset(did)
    sample = render_sample(view, index)
    return page(request, "sample.html", title=f"{display(ds.path)} #{index}", nav="data", ds=ds, did=did,
                name=display(ds.path), sample=sample, total=len(view.records))
