#!/usr/bin/env bash
# Everything that needs a GPU, in one run (a lent GPU machine's time is short):
#   1. the CUDA tests (pytest -m cuda: tests/operators/test_operators_cuda.py, tests/linalg/test_linalg_cuda.py);
#   2. benchmarks/products.py, spectral_density.py and ggn_diagonal.py with --device cuda;
#   3. the whole test suite under the machine's own torch (a compatibility check).
# Usage: benchmarks/gpu_checks.sh OUTPUT_DIR         (STEPS="cuda_tests all_tests" ... runs a subset)
# curvkit is used from the checkout (PYTHONPATH), so nothing is installed. If the folder .whl holds
# wheels of curvlinops-for-pytorch and what it needs beyond the machine's packages, they are
# installed into a separate folder and products.py measures curvlinops beside curvkit.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/gpu_checks.sh OUTPUT_DIR}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MPLBACKEND=Agg
status=0

steps=" ${STEPS:-cuda_tests products spectral_density ggn_diagonal all_tests} "
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.txt, remember failures
    local name=$1 seconds=$2
    shift 2
    [[ $steps == *" $name "* ]] || return 0
    echo "== $name: $*"
    timeout "$seconds" "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc"
    [ "$rc" -eq 0 ] || status=1
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
} | tee "$out/device.txt"

compare=()
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/curvlinops-site .whl/*.whl
    printf '#!/bin/sh\nPYTHONPATH=/tmp/curvlinops-site:$PYTHONPATH exec python3 "$@"\n' >/tmp/curvlinops-python
    chmod +x /tmp/curvlinops-python
    compare=(--curvlinops-python /tmp/curvlinops-python)
fi

step cuda_tests 120 python3 -m pytest -m cuda -q -p no:cacheprovider -n 4
step products 150 python3 benchmarks/products.py --device cuda --processes 1 "${compare[@]}" \
    --output "$out/products_cuda.md"
step spectral_density 50 python3 benchmarks/spectral_density.py --device cuda --repeats 3
step ggn_diagonal 50 python3 benchmarks/ggn_diagonal.py --device cuda
step all_tests 330 python3 -m pytest -q -p no:cacheprovider -n 12
exit $status
