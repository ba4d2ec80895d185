"""`groupconv benchmark triton`: the Triton backend against torch (cuDNN) on the model zoo's grouped, depthwise and
pointwise-grouped layers.

Every distinct grouped conv of the zoo's models (shapes taken from the models by
groupconv.benchmarks.shapes.zoo_layer_shapes, not typed by hand) is timed forward and forward+backward:
torch.nn.Conv2d in NCHW and channels_last (a ChannelShuffle module first where the layer reads its
input shuffled, as stock implementations build it) against groupconv's layer forced onto the triton
backend, NCHW and channels_last, in one run. Next to the times: the speedup over torch's faster
layout, and the fraction of the memory-bandwidth floor reached (the layer's compulsory traffic,
input + output + weight once per pass, over the bandwidth of a device-to-device copy measured in
the same run; 100% is the most a memory-bound layer can get).

Times are triton.testing.do_bench's (CUDA events, after warm-up). Needs a CUDA device; elsewhere it
says so and exits 0.

    groupconv benchmark triton [--batch 32] [--dtype float32] [--forward-only] [--models ...]
"""

from __future__ import annotations

import torch

from .. import ops
from .results import geometric_mean
from .shapes import BYTES_PER_ELEMENT, ZOO_MODELS, LayerShape, zoo_layer_shapes

BATCH = 32  # this benchmark's default
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def device_bandwidth_gbs(megabytes: int = 256) -> float:
    """GB/s of a device-to-device copy, bytes read plus bytes written (the convention of LayerShape.traffic_bytes)."""
    from triton.testing import do_bench

    source = torch.empty(megabytes * 2**20 // 4, device="cuda")
    destination = torch.empty_like(source)
    milliseconds = do_bench(lambda: destination.copy_(source))
    return 2 * source.nbytes / (milliseconds * 1e-3) / 1e9


def time_ms(layer: torch.nn.Module, x: torch.Tensor, backward: bool, backend: str | None = None) -> float:
    """do_bench milliseconds of layer(x), or of layer(x) and its backward pass to input and weight."""
    from triton.testing import do_bench

    x = x.detach().requires_grad_(backward)
    with ops.use_backend(backend), torch.no_grad():
        grad = torch.randn_like(layer(x))

    def forward():
        with ops.use_backend(backend), torch.no_grad():
            layer(x)

    def forward_backward():
        x.grad = None
        layer.zero_grad(set_to_none=True)
        with ops.use_backend(backend):
            layer(x).backward(grad)

    return do_bench(forward_backward if backward else forward)


def bandwidth_floor_ms(shape: LayerShape, batch: int, dtype: torch.dtype, bandwidth_gbs: float, backward: bool) -> float:
    passes = 3 if backward else 1  # backward-input and backward-weight each move about what the forward moves
    traffic = shape.traffic_bytes(batch) * dtype.itemsize / BYTES_PER_ELEMENT
    return 1e3 * passes * traffic / (bandwidth_gbs * 1e9)


def triton_benchmark(names=ZOO_MODELS, batch: int = BATCH, dtype_name: str = "float32",
                     forward_only: bool = False) -> None:
    """Print the table of the zoo's layers, cuDNN against triton; without a CUDA device, say so and return."""
    if not torch.cuda.is_available():
        print("benchmark triton: the Triton backend runs on CUDA devices and this machine has none; nothing to time.")
        return
    reasons = ops.get_backend("triton").not_supported_reasons(
        ops.conv_problem(torch.empty(1, 8, 4, 4, device="cuda"), torch.empty(8, 1, 3, 3, device="cuda"), groups=8))
    if reasons:
        print(f"benchmark triton: the triton backend cannot run here: {'; '.join(reasons)}")
        return

    dtype = DTYPES[dtype_name]
    bandwidth = device_bandwidth_gbs()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {dtype_name}, batch {batch}, "
          f"TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'} (torch.backends.cudnn.allow_tf32, both sides); "
          f"copy bandwidth {bandwidth:.0f} GB/s measured now")
    header = (f"{'layer':52} {'pass':>4} {'cuDNN':>8} {'cuDNN CL':>8} {'triton':>8} {'triton CL':>9} "
              f"{'vs best':>7} {'%floor':>6}")
    print(header + "\n" + "-" * len(header))
    speedups = {"f": [], "fb": []}
    for shape in zoo_layer_shapes(names):
        torch.manual_seed(0)
        ours = shape.groupconv_layer().to("cuda", dtype)
        theirs = shape.torch_layer(ours).to("cuda", dtype)
        x = torch.randn(batch, shape.in_channels, shape.height, shape.width, device="cuda", dtype=dtype)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        for backward in (False,) if forward_only else (False, True):
            triton_nchw = time_ms(ours, x, backward, "triton")
            triton_cl = time_ms(ours, x_cl, backward, "triton")
            cudnn_nchw, cudnn_cl = time_ms(theirs, x, backward), time_ms(theirs, x_cl, backward)
            best_torch, best_triton = min(cudnn_nchw, cudnn_cl), min(triton_nchw, triton_cl)
            floor = bandwidth_floor_ms(shape, batch, dtype, bandwidth, backward)
            passes = "fb" if backward else "f"
            speedups[passes].append(best_torch / best_triton)
            print(f"{shape.label():52} {passes:>4} {cudnn_nchw:8.3f} {cudnn_cl:8.3f} {triton_nchw:8.3f} {triton_cl:9.3f} "
                  f"{best_torch / best_triton:6.2f}x {100 * floor / best_triton:5.0f}%")
    for passes, values in speedups.items():
        if values:
            print(f"{'forward' if passes == 'f' else 'forward+backward':>16}: triton vs torch's faster layout, "
                  f"geometric mean {geometric_mean(values):.2f}x, slowest {min(values):.2f}x")
