#!/usr/bin/env bash
# One call on a lent GPU machine: the Triton backend's tests on CUDA, then the ShuffleNet same-FLOPs
# comparison (groupconv g=8 against cuDNN g=1, training), then the layer table against cuDNN.
# Runs from the repository root under the machine's own python3 (its torch and triton; nothing is
# installed there); logs and CSVs go to $OUT (or ./gpu-check-results). Each stage has its own time
# limit so that a slow one cannot take the others' time.
#
#     bash scripts/gpu_check.sh [TEST_SECONDS MODEL_SECONDS LAYER_SECONDS]
set -u
out=${OUT:-gpu-check-results}
mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 GROUPCONV_NATIVE=0 GROUPCONV_CACHE_DIR=/tmp/groupconv-cache
python=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
$python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
  | tee -a "$out/gpu.txt"

echo "== tests/test_triton.py on CUDA"
timeout "${1:-180}" $python -m pytest -q -p no:cacheprovider tests/test_triton.py 2>&1 | tee "$out/test_triton.log" | tail -25

echo "== ShuffleNet 1x g=1 and g=8, training and inference, groupconv (tuned: triton or cuDNN per conv) against torch.nn"
timeout "${2:-200}" $python -m groupconv benchmark models --device cuda --batch 128 --repeats 15 \
  --models shufflenet_g1_w1 shufflenet_g8_w1 --out "$out/models" 2>&1 | tee "$out/models.log" | grep -v Warning

echo "== layers of ShuffleNet g=8, ResNeXt-29 and MobileNet: triton against cuDNN"
timeout "${3:-150}" $python -m groupconv benchmark triton --batch 32 \
  --models shufflenet_g8_w1 resnext29_32x4d mobilenet_w1 2>&1 | tee "$out/bench_triton.log"
