#!/usr/bin/env bash
# `make bench`: every benchmark script in this folder, one after the other, each printing its own table.
#   benchmarks/run_all.sh            # the full runs (tens of minutes on a quiet 2-core machine)
#   QUICK=1 benchmarks/run_all.sh    # a few minutes: small sizes, one round (numbers are indicative only)
# Other benchmark scripts (bench_*.py) run with their defaults (or --quick under QUICK=1 when they accept it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
run() { echo; echo "=== $*"; "$PY" "$@"; }
known="bench_batching.py bench_dedup.py bench_loss_memory.py"
if [[ -n "${QUICK:-}" ]]; then
  run benchmarks/bench_batching.py --groups tiny:longtail --rounds 1 --steps 2
  run benchmarks/bench_dedup.py --n 5000 --quality-n 2000 --skip-datasketch
  run benchmarks/bench_loss_memory.py --vocab 8000 --length 512 --rows 2
else
  run benchmarks/bench_batching.py
  run benchmarks/bench_dedup.py
  run benchmarks/bench_loss_memory.py
fi
for script in benchmarks/bench_*.py; do  # scripts added later by other work
  name=$(basename "$script")
  [[ " $known " == *" $name "* ]] && continue
  if [[ -n "${QUICK:-}" ]] && grep -q -- '"--quick"' "$script"; then run "$script" --quick; else run "$script"; fi
done
