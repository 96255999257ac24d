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
