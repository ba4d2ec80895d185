#!/usr/bin/env bash
# Third device call (issue 7): the committed backward fix (7253d19: the forward's use_backend scope is recorded
# in the autograd ctx and re-entered around the backward formula) on a GPU, with the tree as committed (no patch).
#   BUDGET=280 bash experiments/issue7-gpu-check/device_check3.sh
# 1. card and versions; 2. probe_backward.py (forced_backend() as seen on autograd's device thread);
# 3. tests/test_triton.py + tests/test_dispatch.py; 4. zoo_check.py (gradients now from triton's own backward);
# 5. bench_short.py with what time is left (last: stopped by timeout, its partial log kept, if time runs out).
# Logs go to $OUT (or /tmp/issue7-out), named *_run3.
set -o pipefail
cd "$(dirname "$0")/../.." || exit 1
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 GROUPCONV_NATIVE=0
OUT=${OUT:-/tmp/issue7-out}
mkdir -p "$OUT"
START=$(date +%s)
BUDGET=${BUDGET:-280}
left() { local l=$((BUDGET - ($(date +%s) - START) - ${1:-0})); [ "$l" -lt 20 ] && l=20; echo "$l"; }
stamp() { echo "== $1 (t=$(($(date +%s) - START))s)" | tee -a "$OUT/stamps_run3.txt"; }

stamp env
{
  git log -1 --oneline 2>/dev/null
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu \
    --format=csv
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0]); \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), \
torch.cuda.get_device_capability()); print('triton', triton.__version__)"
} 2>&1 | tee "$OUT/env_run3.txt"

stamp probe
GROUPCONV_TUNE=0 timeout 60 python3 experiments/issue7-gpu-check/probe_backward.py 2>&1 | tee "$OUT/probe_run3.log"
echo "probe rc=$?" | tee -a "$OUT/probe_run3.log"

stamp pytest
timeout "$(left 190)" python3 -m pytest -q -rA -p no:cacheprovider -n 8 --timeout 150 \
  tests/test_triton.py tests/test_dispatch.py 2>&1 | tee "$OUT/pytest_run3.log"
echo "pytest rc=$?" | tee -a "$OUT/pytest_run3.log"

stamp "zoo check"
timeout "$(left 120)" python3 experiments/issue7-gpu-check/zoo_check.py --workers 8 2>&1 | tee "$OUT/zoo_check_run3.log"
echo "zoo check rc=$?" | tee -a "$OUT/zoo_check_run3.log"

stamp bench
timeout "$(left)" python3 experiments/issue7-gpu-check/bench_short.py \
  --models resnext50_32x4d mobilenet_w1 shufflenet_g8_w1 shufflenet_g3_w1 resnext29_32x4d shufflenet_g1_w1 2>&1 \
  | tee "$OUT/bench_run3.log"
echo "bench rc=$? (124: stopped by timeout)" | tee -a "$OUT/bench_run3.log"
stamp done
