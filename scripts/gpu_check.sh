#!/usr/bin/env bash
# On a fresh GPU machine with PyTorch (and Triton) installed: builds reidfast against that torch,
# runs the whole test suite (GPU tests included), runs the benchmark suite, and writes the results
# to bench/results/<device>.json and BENCHMARKS.md. Output: pytest's summaries, then the tables.
#   PYTHON (default python3) picks the interpreter; TORCH_CUDA_ARCH_LIST defaults to this GPU's.
#   If OUT is set, the results and logs are copied there as well.
#   TEST_ARGS / BENCH_ARGS add pytest arguments (e.g. BENCH_ARGS="-k cuda" times only the GPU cases,
#   so that the run fits a time limit; the CPU cases are timed on the development machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LOGS=${OUT:-build/gpu-check}
mkdir -p "$LOGS"

if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
  TORCH_CUDA_ARCH_LIST=$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
  export TORCH_CUDA_ARCH_LIST
fi
export FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "on", torch.cuda.get_device_name())'

"$PYTHON" -m pip install --no-build-isolation --no-deps -e . >"$LOGS/build.log" 2>&1 \
  || { tail -40 "$LOGS/build.log"; exit 1; }
"$PYTHON" -c 'import reidfast; [print(f"  {s.name:9s} {s.available!s:5s} {s.reason}") for s in reidfast.available_backends().values()]'

status=0
"$PYTHON" -m pytest tests -q -p no:cacheprovider ${TEST_ARGS:-} >"$LOGS/tests.log" 2>&1 || status=$?
grep -E "^(FAILED|ERROR)" "$LOGS/tests.log" | head -30 || true
tail -1 "$LOGS/tests.log"

"$PYTHON" -m pytest bench --benchmark-only -q -p no:cacheprovider ${BENCH_ARGS:-} >"$LOGS/bench.log" 2>&1 || status=$?
tail -1 "$LOGS/bench.log"
"$PYTHON" bench/report.py
if [[ -n "${OUT:-}" ]]; then cp bench/results/*.json BENCHMARKS.md "$OUT"/; fi
exit $status
