"""The code's shape as tests (the project's style rules, docs/DESIGN.md "Package map"): no function over 120 lines,
and every import inside a function of sftlab says why it is there (`# lazy: <reason>`)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 120


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _python_files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py"))


def test_no_function_is_over_120_lines():
    """Decorators and signature included: what a reader has to hold at once."""
    long = []
    for path in _python_files("sftlab", "tests", "benchmarks", "tools"):
        for fn in _functions(path):
            first = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
            if fn.end_lineno - first + 1 > MAX_FUNCTION_LINES:
                long.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name} ({fn.end_lineno - first + 1} lines)")
    assert not long, "functions over 120 lines:\n" + "\n".join(long)


def function_level_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, module, has a reason) of every import of an sftlab or third-party module inside a function.

    A reason is a `# lazy: ...` comment on the import's line(s) or the line just above it; an import on the line
    right after a covered import shares its reason (one comment for a block of imports)."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    found: list[ast.stmt] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(text), False)
    out: list[tuple[int, str, bool]] = []
    covered_until = -1  # the last line of the latest covered import
    for node in sorted(found, key=lambda n: n.lineno):
        module = node.names[0].name if isinstance(node, ast.Import) else ("." * node.level) + (node.module or "")
        top = module.lstrip(".").split(".")[0]
        stdlib = top in sys.stdlib_module_names and not module.startswith(".")
        said = any("# lazy:" in ln for ln in lines[max(0, node.lineno - 2):node.end_lineno])
        ok = said or covered_until == node.lineno - 1
        if ok:
            covered_until = node.end_lineno
        if not stdlib:
            out.append((node.lineno, module, ok))
    return out


def test_imports_inside_functions_say_why():
    """Imports belong at the top of a module; one inside a function only keeps start-up fast (torch, transformers,
    an optional extra, the CLI's commands) and says so: `# lazy: <reason>`."""
    silent = [f"{path.relative_to(ROOT)}:{line} {module}"
              for path in _python_files("sftlab") for line, module, ok in function_level_imports(path) if not ok]
    assert not silent, "imports inside functions without a `# lazy: <reason>` comment:\n" + "\n".join(silent)


def test_the_lazy_rule_sees_blocks_and_gaps(tmp_path):
    """The checker itself: a comment covers its block, a blank line ends the block, stdlib imports are free."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n"
                   "    import json\n"
                   "    # lazy: heavy\n"
                   "    import torch\n"
                   "    from transformers import (\n"
                   "        AutoModel,\n"
                   "    )\n"
                   "\n"
                   "    import numpy\n"
                   "    from sftlab.io import write_text  # lazy: start-up\n"
                   "import yaml\n", encoding="utf-8")
    assert function_level_imports(src) == [(4, "torch", True), (5, "transformers", True), (9, "numpy", False),
                                           (10, "sftlab.io", True)]


def test_no_import_inside_a_function_shadows_its_parameters():
    """A lazy import that reuses a parameter's name (`detect_pseudo`, the flag and the function) replaces the
    argument silently."""
    clashes = []
    for path in _python_files("sftlab"):
        for fn in _functions(path):
            params = {a.arg for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs)}
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    clashes += [f"{path.relative_to(ROOT)}:{node.lineno} {fn.name}: {a.asname or a.name}"
                                for a in node.names if (a.asname or a.name).split(".")[0] in params]
    assert not clashes, "imports that shadow a parameter:\n" + "\n".join(clashes)
