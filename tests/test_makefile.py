"""The Makefile's targets run what exists: `make bench` names scripts that are there, with flags they take."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def test_make_bench_points_at_existing_scripts():
    root = Path(__file__).resolve().parents[1]
    makefile = (root / "Makefile").read_text(encoding="utf-8")
    bench = makefile.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    paths = re.findall(r"benchmarks/[\w./-]+", bench)
    assert paths and all((root / p).exists() for p in paths), paths
    script = (root / "benchmarks" / "run_all.sh").read_text(encoding="utf-8")
    for name in set(re.findall(r"benchmarks/(bench_\w+\.py)", script)):
        text = (root / "benchmarks" / name).read_text(encoding="utf-8")
        flags = re.findall(rf"benchmarks/{name} ([^\n]*)", script)
        for flag in {f for line in flags for f in re.findall(r"--[\w-]+", line)}:
            assert f'"{flag}"' in text, (name, flag)
    subprocess.run(["bash", "-n", str(root / "benchmarks" / "run_all.sh")], check=True)


def _lockfile_tool():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tools" / "lockfile.py"
    spec = importlib.util.spec_from_file_location("lockfile_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_pins_everything_make_installs_and_the_environment_matches_it():
    """requirements/lock.txt pins (with hashes) every package of the extras make installs, torch apart (its CPU
    build is pinned in requirements/torch-cpu.txt); this environment is exactly the lock."""
    tool = _lockfile_tool()
    root = Path(__file__).resolve().parents[1]
    lock_text = (root / "requirements" / "lock.txt").read_text(encoding="utf-8")
    pins = tool.read_lock(root / "requirements" / "lock.txt")
    assert {"transformers", "peft", "tokenizers", "trl", "lm-eval", "schemathesis", "playwright",
            "import-linter"} <= set(pins)
    assert "torch" not in pins and "nvidia-nccl-cu13" not in pins  # no CUDA build sneaks in through a dependency
    assert lock_text.count("--hash=sha256:") >= len(pins)
    assert re.search(r"^torch==[0-9.]+\+cpu$", (root / "requirements" / "torch-cpu.txt").read_text(), re.M)
    makefile = (root / "Makefile").read_text(encoding="utf-8")
    assert "--require-hashes -r $(LOCK)" in makefile and "--no-deps" in makefile
    assert tool.check(root / "requirements" / "lock.txt") == 0


def test_test_latest_blames_the_newer_package_that_breaks_a_test(monkeypatch):
    """`make test-latest` traces each failing hook test to the one newer release that breaks it (the test passes
    again with that package back at its locked version); what no single package explains is blamed on them all."""
    tool = _lockfile_tool()
    installed = {"transformers": "5.26.0", "peft": "0.22.0"}
    pins = {"transformers": "5.25.0", "peft": "0.21.2"}

    def pip(python, *args, quiet=True):
        name, version = args[-1].split("==")
        installed[name] = version
        return subprocess.CompletedProcess(args, 0, "", "")

    def run_tests(python, nodes, junit):
        broken_by_transformers = installed["transformers"] != pins["transformers"]
        failing = {"t/test_fused_ops.py::test_rotary"} if broken_by_transformers else set()
        failing |= {"t/test_x.py::test_both"}  # fails whatever is put back
        return [n for n in nodes if n in failing], ""

    monkeypatch.setattr(tool, "_pip", pip)
    monkeypatch.setattr(tool, "_run_hook_tests", run_tests)
    blame = tool._blame("python", ["t/test_fused_ops.py::test_rotary", "t/test_x.py::test_both"],
                        {"transformers": "5.26.0", "peft": "0.22.0"}, pins, Path("/tmp"))
    assert blame == {"transformers 5.26.0 (lock 5.25.0)": ["t/test_fused_ops.py::test_rotary"],
                     "releases together (transformers 5.26.0, peft 0.22.0)": ["t/test_x.py::test_both"]}
    assert installed == {"transformers": "5.26.0", "peft": "0.22.0"}  # the newest releases are put back
