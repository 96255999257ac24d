"""The lock file and the newest releases (issue 30): what `make` installs is what was tested, and a newer
release of a library whose internals sftlab hooks is found by CI before users find it.

    python tools/lockfile.py check requirements/lock.txt
        every locked package is installed at its locked version (run by the Makefile after installing)
    python tools/lockfile.py latest requirements/lock.txt --venv .venv-latest [--strict]
        a second environment resolved without the lock (newest releases within pyproject.toml's ranges), the
        tests marked `hooks` run in it, and each failure is traced to the newer package that causes it by
        putting the locked versions back one package at a time. Prints "newer X breaks Y" lines and exits 0
        (CI must stay reproducible), 1 with --strict when anything broke.

Standard library only: it runs before and outside the project's environment.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The libraries whose internals sftlab hooks (fused ops, attention masks, chat templates, LoRA, TRL baselines)
# and those that ship with them; reported in this order.
WATCHED = ["transformers", "kernels", "peft", "tokenizers", "trl", "accelerate", "torch", "datasets",
           "sentence-transformers", "huggingface-hub", "safetensors"]
EXTRAS = "dev,embed,bench,qwen,benchmarks"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line of a pip / uv lock file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if m:
            pins[_norm(m.group(1))] = m.group(2)
    return pins


def torch_pin() -> str:
    text = (ROOT / "requirements" / "torch-cpu.txt").read_text(encoding="utf-8")
    return re.search(r"^torch==([0-9.]+)", text, re.M).group(1)


def installed_versions(python: str) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout
    return {_norm(k): v for k, v in json.loads(out).items()}


def check(lock: Path) -> int:
    """Exit 1 naming each locked package whose installed version differs (or that is missing)."""
    pins = read_lock(lock)
    have = installed_versions(sys.executable)
    wrong = [f"{n}: locked {v}, installed {have.get(n, 'nothing')}" for n, v in pins.items() if have.get(n) != v]
    torch = have.get("torch", "nothing").split("+")[0]
    if torch != torch_pin():
        wrong.append(f"torch: pinned {torch_pin()} (requirements/torch-cpu.txt), installed {torch}")
    if wrong:
        print(f"the environment differs from {lock}:\n  " + "\n  ".join(wrong), file=sys.stderr)
        return 1
    print(f"environment == {lock} ({len(pins)} packages + torch {torch_pin()})")
    return 0


# --------------------------------------------------------------------------------------------- latest


def _pip(python: str, *args: str, quiet: bool = True) -> subprocess.CompletedProcess:
    cmd = [python, "-m", "pip", *(["-q"] if quiet else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def _newest_on_index(python: str, name: str) -> str | None:
    out = _pip(python, "index", "versions", name, quiet=False).stdout
    m = re.search(rf"^{re.escape(name)} \(([^)]+)\)", out, re.M | re.I)
    return m.group(1) if m else None


CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _install_torch(python: str) -> str:
    """The newest torch this machine can have without a multi-GB CUDA download: PyPI's on a CUDA machine, else the
    newest CPU build pip finds on PyTorch's CPU index (where reachable) or in local wheel folders. `--isolated`
    keeps pip's configured extra indexes (which may offer CUDA builds) out of it."""
    if shutil.which("nvidia-smi"):
        _pip(python, "install", "-U", "torch")
        return installed_versions(python).get("torch", "?")
    links = [d for d in (os.environ.get("PIP_FIND_LINKS", "").split() + ["/opt/wheels"]) if Path(d).is_dir()]
    cpu_only = ["--isolated", "--index-url", CPU_INDEX, "--timeout", "10", "--retries", "0",
                *(arg for d in links for arg in ("--find-links", d))]
    if _pip(python, "install", "-U", "--no-deps", "torch", *cpu_only).returncode != 0 or _is_cuda_build(python):
        _pip(python, "install", "--no-deps", "--force-reinstall", f"torch=={torch_pin()}")
    return installed_versions(python).get("torch", "?")


def _is_cuda_build(python: str) -> bool:
    code = "import torch; print(torch.version.cuda or '')"
    return bool(subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip())


def _run_hook_tests(python: str, nodes: list[str], junit: Path) -> tuple[list[str], str]:
    """Failed node ids, and the counts of the run (from pytest's JUnit XML)."""
    cmd = [python, "-m", "pytest", "-p", "no:cacheprovider", "-o", "junit_family=xunit1", "--junitxml", str(junit)]
    cmd += nodes if nodes else ["-m", "hooks", "-n", "2", "tests"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if not junit.exists():
        return ["<pytest did not run>"], (proc.stdout + proc.stderr)[-2000:]
    failed, counts = [], {"passed": 0, "failed": 0, "skipped": 0}
    for case in ET.parse(junit).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(_node_id(case))
            counts["failed"] += 1
        else:
            counts["skipped" if case.find("skipped") is not None else "passed"] += 1
    return failed, ", ".join(f"{n} {k}" for k, n in counts.items())


def _node_id(case: ET.Element) -> str:
    """pytest's node id of a JUnit (xunit1) test case: file, then the class when there is one, then the name."""
    path = case.get("file") or case.get("classname", "").replace(".", "/") + ".py"
    module = path.removesuffix(".py").replace("/", ".")
    cls = case.get("classname", "").removeprefix(module).lstrip(".")
    return "::".join([path, *([cls] if cls else []), case.get("name", "")])


def latest(lock: Path, venv: Path, strict: bool) -> int:
    pins = read_lock(lock)
    python = str(venv / "bin" / "python")
    if not Path(python).exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    torch = _install_torch(python)
    with tempfile.TemporaryDirectory() as tmp:
        constraint = Path(tmp) / "torch.txt"
        constraint.write_text(f"torch=={torch}\n", encoding="utf-8")
        proc = _pip(python, "install", "-U", "--upgrade-strategy", "eager", "-e", f"{ROOT}[{EXTRAS}]",
                    "--constraint", str(constraint))
    if proc.returncode != 0:
        print("test-latest: could not resolve the newest releases (nothing tested):\n" + proc.stderr[-3000:])
        return 1 if strict else 0
    have = installed_versions(python)
    pins = {**pins, "torch": torch_pin()}
    have["torch"] = torch.split("+")[0]
    newer = {n: have[n] for n in WATCHED if n in have and n in pins and have[n] != pins[n]}
    print("== test-latest: newest releases vs", lock)
    for n in WATCHED:
        if n == "torch":
            pypi = _newest_on_index(python, "torch")
            note = f" (PyPI's newest: {pypi}; without a GPU only CPU builds are tried)" if pypi else ""
            print(f"  torch {torch_pin()} -> {torch}{'  (newer)' if 'torch' in newer else ''}{note}")
        elif n in have:
            print(f"  {n} {pins.get(n, 'not locked')} -> {have[n]}{'  (newer)' if n in newer else ''}")
    with tempfile.TemporaryDirectory() as tmp:
        failed, tail = _run_hook_tests(python, [], Path(tmp) / "all.xml")
        print(f"hook tests (-m hooks) on the newest releases: {tail}")
        if not failed:
            print("test-latest: nothing newer breaks the hook tests" if newer else
                  "test-latest: nothing newer than the lock")
            return 0
        blame = _blame(python, failed, newer, pins, Path(tmp))
    for pkg, tests in blame.items():
        for test in tests:
            print(f"test-latest: newer {pkg} breaks {test}")
    return 1 if strict else 0


def _blame(python: str, failed: list[str], newer: dict[str, str], pins: dict[str, str],
           tmp: Path) -> dict[str, list[str]]:
    """Put each newer package back to its locked version alone and rerun the failed tests: the ones that pass
    then are broken by that package. What no single package explains is blamed on them together."""
    blame: dict[str, list[str]] = {}
    left = list(failed)
    for pkg, version in newer.items():
        if not left:
            break
        _pip(python, "install", "--no-deps", f"{pkg}=={pins[pkg]}")
        still, _ = _run_hook_tests(python, left, tmp / f"{pkg}.xml")
        _pip(python, "install", "--no-deps", f"{pkg}=={version}")
        fixed = [t for t in left if t not in still]
        if fixed:
            blame[f"{pkg} {version} (lock {pins[pkg]})"] = fixed
            left = [t for t in left if t in still]
    if left:
        together = ", ".join(f"{p} {v}" for p, v in newer.items()) or "nothing (the tests fail on the lock too?)"
        blame[f"releases together ({together})"] = left
    return blame


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["check", "latest"])
    parser.add_argument("lock", type=Path)
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-latest")
    parser.add_argument("--strict", action="store_true", help="latest: exit 1 when a newer release breaks a test")
    args = parser.parse_args()
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    return check(args.lock) if args.command == "check" else latest(args.lock, args.venv, args.strict)


if __name__ == "__main__":
    sys.exit(main())
