"""Functional ops, their reference semantics, and the dispatcher that picks an implementation.

Layout: functional.py and normalization.py (the public ops, argument checks in arguments.py), reference.py (the
specification), custom_ops/ (the ops as torch custom ops, and their eager path), dispatch/ (problems, the Backend
base class, registry, selection, explain), tuning/ (measuring backends, timing, peak memory), backends/ (one module
or folder per implementation), cost.py (multiply-add and parameter counts), cache.py and environment.py.

Backends registered here, highest priority first (with tuning on, the fast ones are measured
against each other per problem and the fastest is kept; see tuning/tuner.py):
  native     C++ CPU kernels (csrc/): narrow-group, depthwise and pointwise convs, the shuffle fused or paid on
             the smaller side, batch norm fused with its residual add, ReLU and concatenation
  gemm       1x1 grouped convs as batched matrix multiplies
  triton     Triton kernels for CUDA tensors (implicit GEMM and direct), timed against cuDNN per problem
  aten       torch's own convolution, shuffle and batch norm (the baseline the fast backends must beat)
  reference  the specification (slow, obviously correct; never chosen by the tuner)
and two strategies, tuning contenders only: split (each gradient on its own best backend) and via_channels_last.
"""

from . import cost  # noqa: F401  (teaches torch.utils.flop_counter the conv ops)
from .backends.aten import AtenBackend
from .backends.gemm import GemmBackend
from .backends.native.backend import NativeBackend
from .backends.reference import ReferenceBackend
from .backends.split_gradients import SplitGradients
from .backends.triton import TritonBackend
from .backends.via_channels_last import VIA_CHANNELS_LAST
from .dispatch import (
    Backend,
    BatchNormProblem,
    ConvProblem,
    ShuffleProblem,
    clear_tuning_cache,
    explain,
    forced_backend,
    get_backend,
    list_backends,
    not_supported_reasons,
    register_backend,
    register_strategy,
    select_backend,
    set_backend,
    set_tuning,
    tuning_enabled,
    unregister_backend,
    use_backend,
)
from .functional import channel_shuffle, conv1d, conv2d, conv3d, conv_problem, conv_with_shortcut, explain_conv
from .normalization import batch_norm, batch_norm_problem, explain_batch_norm, local_response_norm
from .tuning import cache_path

register_backend(ReferenceBackend(), priority=0)
register_backend(AtenBackend(), priority=10)
# Above aten, so that on a GPU it is tried first (and timed against cuDNN when tuning); the CPU backends refuse CUDA.
register_backend(TritonBackend(), priority=15)
register_backend(GemmBackend(), priority=20)
register_backend(NativeBackend(), priority=30)
register_strategy(SplitGradients())
register_strategy(VIA_CHANNELS_LAST)

__all__ = [
    "Backend", "BatchNormProblem", "ConvProblem", "ShuffleProblem", "batch_norm", "batch_norm_problem", "cache_path",
    "channel_shuffle", "clear_tuning_cache", "conv1d", "conv2d", "conv_problem", "conv3d", "conv_with_shortcut",
    "explain", "explain_batch_norm", "explain_conv", "forced_backend", "get_backend", "list_backends",
    "local_response_norm",
    "not_supported_reasons", "register_backend", "register_strategy", "select_backend", "set_backend", "set_tuning",
    "tuning_enabled", "unregister_backend", "use_backend",
]
