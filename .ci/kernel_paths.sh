#!/usr/bin/env bash
# The numerics tests under other CPU kernel paths than this machine's best (ATen's default and
# AVX2 kernels, MKL's SSE4.2 / AVX2 code, oneDNN capped at AVX2): a float32 tolerance tuned to one
# CPU's GEMM blocking fails here first. Run from anywhere: .ci/kernel_paths.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TESTS=(
    tests/envs/test_native_gelu.py
    tests/envs/test_native_mlp.py
    tests/envs/test_diffusion_scoring.py
    tests/envs/test_diffusion_policy.py
    tests/algorithms
)
status=0
run() {
    echo "== $*"
    env OMP_NUM_THREADS=2 "$@" "$PY" -m pytest -p no:cacheprovider "${TESTS[@]}" || status=1
}
run ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=AVX2
run ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
exit $status
