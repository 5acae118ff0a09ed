#!/usr/bin/env bash
# One entry point for a fresh machine:
#   bash dev.sh demo    set up, then run the demo: the synthetic set generated (cached in
#                       data/synthetic-demo), Pyramid, PCB and a global baseline trained and
#                       compared (runs/demo; arguments go to `reidfast demo`, e.g. --seeds 0 1 2)
#   bash dev.sh bench   set up, then run the benchmark suite and print the comparison table
#   bash dev.sh test    set up, then build the CMake library and run the test suite (the CPU
#                       kernels with AVX2 variants also on their generic build: REIDFAST_CPU_ISA)
# Setup is idempotent: a virtual environment in .venv with the pinned torch, the test and
# benchmark tools, and reidfast installed in editable mode (its extension rebuilt when a source
# under csrc/ changed). Environment: TORCH_SPEC overrides the torch pin; CUDA_HOME points at a
# CUDA toolkit (default /usr/local/cuda when it exists); FORCE_CUDA=1 / REIDFAST_NO_CUDA=1 as in
# setup.py.
set -euo pipefail
cd "$(dirname "$0")"

TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
VENV=.venv
PYTHON=$VENV/bin/python
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [[ -z "${CUDA_HOME:-}" && -d /usr/local/cuda ]]; then export CUDA_HOME=/usr/local/cuda; fi

setup() {
  [[ -x $PYTHON ]] || python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$PYTHON" -m pip install --quiet $TORCH_SPEC
  "$PYTHON" -m pip install --quiet setuptools wheel ninja
  local stamp=$VENV/.reidfast-built
  if [[ ! -f $stamp ]] || [[ -n "$(find csrc setup.py pyproject.toml -newer "$stamp" -print -quit)" ]]; then
    "$PYTHON" -m pip install --quiet --no-build-isolation -e ".[test]"
    touch "$stamp"
  fi
}

build_cmake() {
  local prefix
  prefix=$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')
  local cuda_args=()
  if [[ -n "${CUDA_HOME:-}" ]]; then cuda_args=(-DCUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME"); fi
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"} \
    cmake -S . -B build/cmake -DCMAKE_PREFIX_PATH="$prefix" "${cuda_args[@]}" >/dev/null
  cmake --build build/cmake -j "$MAX_JOBS" >/dev/null
}

case "${1:-}" in
  demo)
    setup
    shift
    "$PYTHON" -m reidfast demo "$@"
    ;;
  bench)
    setup
    # The suites also time the toolkits users switch from: pytorch-metric-learning, and
    # fast-reid's Cython evaluation (built from its source package by bench/fastreid_baseline.py).
    "$PYTHON" -m pip install --quiet pytorch-metric-learning cython
    shift
    "$PYTHON" -m pytest bench --benchmark-only -q "$@"
    "$PYTHON" bench/report.py
    ;;
  test)
    setup
    build_cmake
    shift
    REIDFAST_REQUIRE_CMAKE=1 "$PYTHON" -m pytest tests -q "$@"
    # The CPU kernels with instruction-set variants, once more on their generic compilation.
    REIDFAST_CPU_ISA=generic "$PYTHON" -m pytest tests/test_pyramid_pool.py tests/test_nan_policy.py \
      -k "pyramid_pool" -q -p no:cacheprovider "$@"
    ;;
  *)
    echo "usage: bash dev.sh {demo|bench|test} [arguments]" >&2
    exit 2
    ;;
esac
