#!/usr/bin/env bash
# Sets up .venv with groupconv installed (editable); with --test, the test tools too.
#
# torch: a torch >= 2.4 that python3 already has is kept (the venv sees the system's packages).
# Otherwise torch==2.13.0 is installed by exact version: on a CPU machine that is the CPU build,
# whereas an unpinned torch would make pip resolve the newest release with GBs of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PIP_FLAGS=(--quiet --disable-pip-version-check)

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv --system-site-packages .venv
fi
if ! .venv/bin/python -c 'import sys, torch; sys.exit(tuple(map(int, torch.__version__.split(".")[:2])) < (2, 4))' 2>/dev/null; then
    echo "setup: installing torch==2.13.0"
    .venv/bin/pip install "${PIP_FLAGS[@]}" torch==2.13.0
fi
extras=""
if [ "${1:-}" = "--test" ]; then
    extras="[test]"
fi
.venv/bin/pip install "${PIP_FLAGS[@]}" -e ".${extras}"
# Build the native CPU kernels now (about a minute, cached by torch) rather than on the first conv call.
# A failed build is not fatal: groupconv then runs on torch's kernels and says why.
.venv/bin/python -c 'import sys; from groupconv.ops.backends.native import main; sys.exit(main())' \
    || echo "setup: continuing without the native kernels"
echo "setup: ready ($(.venv/bin/python -c 'import torch, groupconv; print("torch", torch.__version__, "/ groupconv", groupconv.__version__)'))"
