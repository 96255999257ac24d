"""General-ability check through EleutherAI's lm-evaluation-harness (`benchmarks:` in an eval config).

SFT, above all knowledge-heavy SFT, can cost general ability. The harness is the field's standard engine, so sftlab
does not score benchmarks itself: it runs the harness's own model types (`hf` on a model dir, `local-chat-completions`
on a served endpoint) for the fine-tuned model and, when `base` is given, for the model before fine-tuning, then
reports per benchmark and metric the values with the harness's stderr, the delta, and an alarm when the fine-tuned
model is worse by more than the stderr of that delta. Results are kept in OUT/benchmarks/<label>.json and reused
while the model, tasks and settings are the same (a rerun does not evaluate twice).
"""

from __future__ import annotations

import functools
import gc
import hashlib
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

from sftlab.errors import UserError
from sftlab.eval.config import BenchmarksConfig
from sftlab.io import write_text

INSTALL_LINE = "pip install 'sftlab[benchmarks]'  (EleutherAI's lm-evaluation-harness, `lm-eval`)"


def require_harness() -> None:
    """Refuse the `benchmarks:` section, with the install line, when lm-eval is not installed."""
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError(f"benchmarks: needs the lm-evaluation-harness, which is not installed: {INSTALL_LINE}")


def resolve_tasks(cfg: BenchmarksConfig) -> tuple[list[str], tuple[tuple[str, ...], bool]]:
    """(task names, the task_manager key that finds them): a name is the harness's own; a path (a task YAML or a directory of them, with
    local data files) is indexed by the harness and stands for every task and group defined in it."""
    paths = [Path(t).resolve() for t in cfg.tasks if Path(t).exists()]
    include = sorted({str(p.parent if p.is_file() else p) for p in paths})
    key = (tuple(include), len(paths) < len(cfg.tasks))
    manager = task_manager(*key)
    names: list[str] = []
    for entry in cfg.tasks:
        p = Path(entry)
        if p.exists():
            own = sorted(n for n, info in manager.task_index.items() if _defined_in(info, p))
            if not own:
                raise UserError(f"benchmarks.tasks: {entry}: no harness task is defined there (a task YAML needs "
                                "`task:`, and its data files)")
            names += own
        elif entry in manager.all_tasks:
            names.append(entry)
        else:
            raise UserError(f"benchmarks.tasks: {entry!r} is neither a harness task nor an existing path (list the "
                            "harness's tasks with `lm-eval ls tasks`)")
    return list(dict.fromkeys(names)), key


@functools.lru_cache(maxsize=4)
def task_manager(include: tuple[str, ...], with_builtin: bool) -> Any:
    """The harness's task index over the include paths; its thousands of built-in tasks only when a task is named
    (indexing them takes seconds), and built once per process."""
    from lm_eval.tasks import TaskManager  # lazy: optional extra, slow import

    return TaskManager(include_path=list(include) or None, include_defaults=with_builtin)


def _defined_in(info: Any, entry: Path) -> bool:
    """Whether a task index entry (an Entry, or a dict in older harness releases) comes from the path `entry`."""
    yaml_path = info.get("yaml_path") if isinstance(info, dict) else getattr(info, "yaml_path", None)
    if not isinstance(yaml_path, (str, os.PathLike)):
        return False
    y, e = Path(yaml_path).resolve(), entry.resolve()
    return y == e if e.is_file() else e in y.parents


def check_benchmarks(cfg: BenchmarksConfig, model: str | dict[str, Any]) -> None:
    """Everything that can be refused before an hour of generation: the harness missing, an unknown task, a model
    the harness cannot load."""
    require_harness()
    resolve_tasks(cfg)
    harness_model(model, cfg)
    if cfg.base is not None:
        harness_model(cfg.base, cfg)


def harness_model(model: str | dict[str, Any], cfg: BenchmarksConfig) -> tuple[str, dict[str, Any], bool]:
    """(harness model type, its model_args, apply_chat_template) for a model dir or an OpenAI-compatible endpoint."""
    if isinstance(model, dict):
        if not model.get("base_url") or not model.get("model"):
            raise UserError("benchmarks: an endpoint model needs base_url and model")
        key_env = model.get("api_key_env")
        if key_env and not os.environ.get(key_env):
            raise UserError(f"benchmarks: environment variable {key_env} (api_key_env) is not set")
        args = {"model": model["model"], "base_url": model["base_url"].rstrip("/") + "/chat/completions",
                "tokenized_requests": False, "num_concurrent": int(model.get("concurrency", 1)), **cfg.model_args}
        chat = True if cfg.apply_chat_template is None else cfg.apply_chat_template
        return "local-chat-completions", args, chat
    path = Path(model)
    if (path / "final").is_dir() and not (path / "config.json").exists():
        path = path / "final"  # a run dir: its final model
    if (path / "config.json").exists():
        pretrained = str(path.resolve())
    elif not path.exists() and len(model.split("/")) == 2:
        pretrained = model  # a hub id such as Qwen/Qwen2.5-0.5B-Instruct: the harness loads it
    else:
        raise UserError(f"benchmarks: {model}: not a model dir (no config.json), a run dir with final/ or a hub id")
    return "hf", {"pretrained": pretrained, **cfg.model_args}, bool(cfg.apply_chat_template)


def run_harness(model: str | dict[str, Any], cfg: BenchmarksConfig, tasks: list[str],
                manager_key: tuple[tuple[str, ...], bool], cache: Path) -> dict[str, Any]:
    """One model through the harness: {task: {metric: {value, stderr, higher_is_better}}}, cached in `cache`."""
    model_type, args, chat = harness_model(model, cfg)
    import lm_eval  # lazy: optional extra

    settings = {"model_type": model_type, "model_args": args, "tasks": tasks, "include": manager_key[0],
                "chat": chat,                "num_fewshot": cfg.num_fewshot, "limit": cfg.limit, "seed": cfg.seed,
                "harness": getattr(lm_eval, "__version__", "?")}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    if cache.is_file():
        kept = json.loads(cache.read_text(encoding="utf-8"))
        if kept.get("key") == key:
            return kept["results"]
    if model_type == "hf":
        args.setdefault("device", cfg.device or _default_device())
    out = lm_eval.simple_evaluate(
        model=model_type, model_args=args, tasks=tasks, num_fewshot=cfg.num_fewshot, limit=cfg.limit,
        batch_size=cfg.batch_size, apply_chat_template=chat, task_manager=task_manager(*manager_key),
        random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed, fewshot_random_seed=cfg.seed,
        log_samples=False)
    results = _metrics(out)
    _free_memory()
    write_text(json.dumps({"key": key, "settings": settings, "results": results}, indent=2, default=str), cache)
    return results


def _metrics(out: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """The harness's results as {task: {"metric,filter": {value, stderr, higher_is_better}}} (numbers only)."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for task, res in out["results"].items():
        better = out.get("higher_is_better", {}).get(task, {})
        for key, value in res.items():
            if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
                continue
            metric, _, filt = key.partition(",")
            se = res.get(f"{metric}_stderr,{filt}")
            table.setdefault(task, {})[key] = {
                "value": float(value), "stderr": float(se) if isinstance(se, (int, float)) else None,
                "higher_is_better": better.get(metric, True), "n": out.get("n-samples", {}).get(task, {}).get(
                    "effective")}
    return table


def deltas(model: dict[str, Any], base: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Fine-tuned minus base per task and metric; an alarm when it is worse by more than the stderr of the delta
    (both harness stderrs combined, as for two independent estimates)."""
    rows, alarms = [], []
    for task in sorted(model):
        for metric, after in sorted(model[task].items()):
            before = base.get(task, {}).get(metric)
            if before is None:
                continue
            delta = after["value"] - before["value"]
            ses = [s for s in (after["stderr"], before["stderr"]) if s is not None and math.isfinite(s)]
            se = math.sqrt(sum(s * s for s in ses)) if len(ses) == 2 else None
            worse = -delta if after["higher_is_better"] else delta
            alarm = se is not None and worse > se
            rows.append({"task": task, "metric": metric, "base": before["value"], "base_stderr": before["stderr"],
                         "model": after["value"], "model_stderr": after["stderr"], "delta": delta,
                         "delta_stderr": se, "alarm": alarm})
            if alarm:
                alarms.append(f"ALARM {task} {metric}: {before['value']:.4g} -> {after['value']:.4g} "
                              f"({delta:+.4g}, beyond its stderr {se:.3g})")
    return rows, alarms


def run_benchmarks(cfg: BenchmarksConfig, model: str | dict[str, Any], out: Path) -> dict[str, Any]:
    """summary.json's `benchmarks` section for the fine-tuned model (and the base model when given)."""
    require_harness()
    import lm_eval  # lazy: optional extra

    tasks, key = resolve_tasks(cfg)
    result: dict[str, Any] = {
        "harness": {"package": "lm-eval", "version": getattr(lm_eval, "__version__", "?"),
                    "model_type": harness_model(model, cfg)[0]},
        "tasks": tasks,
        "meaning": "results.<model|base>.<task>.<metric,filter>.{value, stderr} as the harness reports them; "
                   "deltas: model - base, delta_stderr = sqrt(stderr_model^2 + stderr_base^2); alarm when the "
                   "model is worse than base by more than delta_stderr",
        "results": {"model": run_harness(model, cfg, tasks, key, out / "benchmarks" / "model.json")}}
    if cfg.base is not None:
        result["results"]["base"] = run_harness(cfg.base, cfg, tasks, key, out / "benchmarks" / "base.json")
        result["deltas"], result["alarms"] = deltas(result["results"]["model"], result["results"]["base"])
    return result


def _default_device() -> str:
    import torch  # lazy: heavy

    return "cuda" if torch.cuda.is_available() else "cpu"


def _free_memory() -> None:
    """The harness keeps no handle on its model after simple_evaluate; give its accelerator memory back before the
    next model loads."""
    import torch  # lazy: heavy

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
