#!/usr/bin/env bash
# Second device call (issue 7): is the backward of a conv forced onto triton run by triton on CUDA? Then the same
# checks as device_check.sh with fixes.patch applied to the device's copy of the tree (not to the repository).
#   BUDGET=300 bash experiments/issue7-gpu-check/device_check2.sh
set -o pipefail
cd "$(dirname "$0")/../.." || exit 1
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 GROUPCONV_NATIVE=0
OUT=${OUT:-/tmp/issue7-out}
mkdir -p "$OUT"
START=$(date +%s)
BUDGET=${BUDGET:-300}
left() { local l=$((BUDGET - ($(date +%s) - START) - ${1:-0})); [ "$l" -lt 20 ] && l=20; echo "$l"; }
stamp() { echo "== $1 (t=$(($(date +%s) - START))s)"; }

stamp "probe, unpatched"
GROUPCONV_TUNE=0 timeout 90 python3 experiments/issue7-gpu-check/probe_backward.py 2>&1 | tee "$OUT/probe.log"
stamp "apply fixes.patch"
{ git apply experiments/issue7-gpu-check/fixes.patch 2>&1 || patch -p1 < experiments/issue7-gpu-check/fixes.patch; } \
  | tee -a "$OUT/probe.log" || { echo "patch failed"; exit 1; }
stamp "probe, patched"
{ echo "== patched"; GROUPCONV_TUNE=0 timeout 90 python3 experiments/issue7-gpu-check/probe_backward.py; } 2>&1 \
  | tee -a "$OUT/probe.log"
stamp "pytest, patched"
timeout "$(left 200)" python3 -m pytest -q -p no:cacheprovider -n 8 --timeout 150 tests/test_triton.py 2>&1 \
  | tee "$OUT/pytest_patched.log"
echo "pytest rc=$?" | tee -a "$OUT/pytest_patched.log"
stamp "zoo check, patched"
timeout "$(left 110)" python3 experiments/issue7-gpu-check/zoo_check.py --workers 8 2>&1 | tee "$OUT/zoo_check_patched.log"
echo "zoo check rc=$?" | tee -a "$OUT/zoo_check_patched.log"
stamp "bench, patched"
timeout "$(left)" python3 experiments/issue7-gpu-check/bench_short.py \
  --models resnext50_32x4d mobilenet_w1 shufflenet_g8_w1 shufflenet_g3_w1 resnext29_32x4d shufflenet_g1_w1 2>&1 \
  | tee "$OUT/bench_patched.log"
echo "bench rc=$?" | tee -a "$OUT/bench_patched.log"
stamp done
