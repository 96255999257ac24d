"""`sftlab --help` and the command table start without the library: every command module imports what it calls
inside the command (`# lazy: start-up`), so no command pays for numpy, torch, transformers or pydantic of another."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("numpy", "torch", "transformers", "pydantic", "sklearn", "pyarrow", "datasets")
LIBRARY = ("sftlab.curate", "sftlab.data", "sftlab.train", "sftlab.eval", "sftlab.infer", "sftlab.synth",
           "sftlab.serve", "sftlab.ui", "sftlab.config", "sftlab.io")


def _modules_after(code: str) -> set[str]:
    """sys.modules of a fresh interpreter after `code` (a subprocess: this one has imported everything already)."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return [n for n in names if n in modules or any(m.startswith(n + ".") for m in modules)]


def test_import_of_the_cli_loads_no_library():
    modules = _modules_after("import sftlab.cli")
    assert _loaded(modules, HEAVY) == []
    assert _loaded(modules, LIBRARY) == []
    assert "rich.table" not in modules


def test_help_loads_no_library():
    modules = _modules_after("from sftlab.cli import main\n"
                             "try:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert _loaded(modules, HEAVY) == []
    assert _loaded(modules, LIBRARY) == []


def test_a_command_loads_only_what_it_calls(tmp_path):
    """`sftlab data convert` reads and writes records: no torch, transformers or scikit-learn, no config models,
    training or evaluation on the way. (pydantic may load: typer's own parameter adapters import it.)"""
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n", encoding="utf-8")
    modules = _modules_after("from sftlab.cli import main\n"
                             f"main(['data', 'convert', {str(src)!r}, '-o', {str(tmp_path / 'out.jsonl')!r}])")
    assert (tmp_path / "out.jsonl").exists()
    assert _loaded(modules, ("torch", "transformers", "sklearn")) == []
    assert _loaded(modules, ("sftlab.config", "sftlab.train", "sftlab.eval", "sftlab.synth")) == []
