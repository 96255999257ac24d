"""Runs: every run with its state, live curves per task type, overlays of several runs, configs and their diff."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from sftlab.ui.runs import configs_diff, read_config, read_data_summary, run_status
from sftlab.ui.templating import page
from sftlab.ui.workspace import Workspace

router = APIRouter()


def display(path: Path) -> str:
    """A path as the user typed it, more or less: relative to the working directory when inside it."""
    try:
        return os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    except ValueError:
        return str(path)


def _status(ws: Workspace, rid: str, path: Path) -> dict[str, Any]:
    st = run_status(path, ws.index(path))
    return {"id": rid, "name": display(path), **dataclasses.asdict(st)}


@router.get("/runs", response_class=HTMLResponse)
def runs_page(request: Request) -> HTMLResponse:
    ws: Workspace = request.app.state.ws
    ws.scan()
    rows = [_status(ws, rid, p) for rid, p in sorted(ws.runs.items(), key=lambda kv: str(kv[1]))]
    return page(request, "runs.html", title="Runs", nav="runs", runs=rows)


@router.get("/api/runs")
def runs_api(request: Request) -> list[dict[str, Any]]:
    ws: Workspace = request.app.state.ws
    ws.scan()
    return [_status(ws, rid, p) for rid, p in sorted(ws.runs.items(), key=lambda kv: str(kv[1]))]


@router.get("/runs/{rid}", response_class=HTMLResponse)
def run_page(request: Request, rid: str) -> HTMLResponse:
    ws: Workspace = request.app.state.ws
    path = ws.run_dir(rid)
    status = _status(ws, rid, path)
    _, config_text, _ = read_config(path)
    summary, notes = read_data_summary(path)
    datasets = [(did, display(d.path), d.origin.split(" data of run ")[0]) for did, d in ws.datasets.items()
                if d.origin.endswith(f" data of run {path}")]
    alarms = list(ws.index(path).alarms)
    return page(request, "run.html", title=status["name"], nav="runs", run=status, config=config_text,
                data_summary=summary, notes=status["notes"] + notes, alarms=alarms, datasets=datasets)


@router.get("/api/runs/{rid}")
def run_api(request: Request, rid: str) -> dict[str, Any]:
    ws: Workspace = request.app.state.ws
    return _status(ws, rid, ws.run_dir(rid))


@router.get("/api/runs/{rid}/curves")
def curves_api(request: Request, rid: str) -> Response:
    """Thinned curves; serialised directly (FastAPI's encoder walks every one of the ~30k numbers in Python)."""
    ws: Workspace = request.app.state.ws
    body = json.dumps(ws.index(ws.run_dir(rid)).curves(), separators=(",", ":"))
    return Response(body, media_type="application/json")


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, ids: list[str] = Query(default=[])) -> HTMLResponse:
    """Overlay of several runs' curves and the settings in which their configs differ."""
    ws: Workspace = request.app.state.ws
    runs = [(rid, ws.run_dir(rid)) for rid in dict.fromkeys(ids)]
    configs = [read_config(p)[0] for _, p in runs]
    return page(request, "compare.html", title="Compare runs", nav="runs",
                runs=[{"id": rid, "name": display(p)} for rid, p in runs],
                diff=configs_diff(configs) if len(configs) >= 2 else [],
                missing=[display(p) for (_, p), c in zip(runs, configs, strict=True) if c is None])

