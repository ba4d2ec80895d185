#!/usr/bin/env bash
# The Triton backend's first check on a real GPU, in one device call (issue 7). From the repository root:
#   BUDGET=380 bash experiments/issue7-gpu-check/device_check.sh
# 1. machine and versions; 2. tests/test_triton.py on the GPU (pytest-xdist, so kernels compile in
# parallel); 3. the same refusal tests with fixes.patch applied (to this copy of the tree only);
# 4. zoo_check.py: every zoo layer forward+backward vs float64 torch (also fills Triton's cache);
# 5. bench_short.py (bench_triton.py, shorter do_bench windows) with what time is left.
# Logs go to $OUT (or /tmp/issue7-out). Native CPU kernels are not built (GROUPCONV_NATIVE=0): CUDA only here.
set -o pipefail
cd "$(dirname "$0")/../.." || exit 1
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 GROUPCONV_NATIVE=0
OUT=${OUT:-/tmp/issue7-out}
mkdir -p "$OUT"
START=$(date +%s)
BUDGET=${BUDGET:-380}
left() { local l=$((BUDGET - ($(date +%s) - START) - ${1:-0})); [ "$l" -lt 20 ] && l=20; echo "$l"; }
stamp() { echo "== $1 (t=$(($(date +%s) - START))s)"; }

stamp env
{
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu \
    --format=csv
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0]); \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), \
torch.cuda.get_device_capability()); print('triton', triton.__version__); \
print('cudnn.allow_tf32 default', torch.backends.cudnn.allow_tf32)"
  python3 -m pytest --version
  python3 -c "import xdist, pytest_timeout; print('xdist', xdist.__version__)"
  nproc
} 2>&1 | tee "$OUT/env.txt"

stamp pytest
timeout "$(left 200)" python3 -m pytest -q -p no:cacheprovider -n 8 --timeout 150 tests/test_triton.py 2>&1 \
  | tee "$OUT/pytest.log"
echo "pytest rc=$?" | tee -a "$OUT/pytest.log"

stamp "pytest, refusal tests with fixes.patch"
if git apply experiments/issue7-gpu-check/fixes.patch 2>/dev/null || patch -p1 < experiments/issue7-gpu-check/fixes.patch; then
  timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_triton.py \
    -k "unsupported or missing_triton or refused or opt_in" 2>&1 | tee "$OUT/pytest_fixed.log"
  echo "pytest (patched) rc=$?" | tee -a "$OUT/pytest_fixed.log"
else
  echo "fixes.patch did not apply" | tee "$OUT/pytest_fixed.log"
fi

stamp "zoo check"
timeout "$(left 110)" python3 experiments/issue7-gpu-check/zoo_check.py --workers 8 2>&1 | tee "$OUT/zoo_check.log"
echo "zoo check rc=$?" | tee -a "$OUT/zoo_check.log"

stamp bench
timeout "$(left)" python3 experiments/issue7-gpu-check/bench_short.py \
  --models resnext50_32x4d mobilenet_w1 shufflenet_g8_w1 shufflenet_g3_w1 resnext29_32x4d shufflenet_g1_w1 2>&1 \
  | tee "$OUT/bench.log"
echo "bench rc=$?" | tee -a "$OUT/bench.log"
stamp done
