"""Functional ops, their reference semantics, and the dispatcher that picks an implementation.

Backends registered here, highest priority first (with tuning on, the fast ones are measured
against each other per problem and the fastest is kept; see tuning.py):
  native     C++ CPU kernels (csrc/): narrow-group, depthwise and pointwise convs, the shuffle fused or paid on
             the smaller side
  gemm       1x1 grouped convs as batched matrix multiplies
  triton     Triton kernels for CUDA tensors (implicit GEMM and direct), timed against cuDNN per problem
  aten       torch's own convolution (the baseline the fast backends must beat)
  reference  the specification (slow, obviously correct; never chosen by the tuner)
"""

from .aten import AtenBackend
from .dispatch import (
    Backend,
    ConvProblem,
    ShuffleProblem,
    explain,
    forced_backend,
    get_backend,
    list_backends,
    not_supported_reasons,
    register_backend,
    select_backend,
    set_backend,
    unregister_backend,
    use_backend,
)
from .functional import channel_shuffle, conv1d, conv2d, conv3d, conv_problem, conv_with_shortcut, explain_conv
from .gemm import GemmBackend
from .native import NativeBackend
from .normalization import batch_norm
from .reference import ReferenceBackend
from .triton import TritonBackend
from .tuning import cache_path, clear_tuning_cache, set_tuning, tuning_enabled

register_backend(ReferenceBackend(), priority=0)
register_backend(AtenBackend(), priority=10)
# Above aten, so that on a GPU it is tried first (and timed against cuDNN when tuning); the CPU backends refuse CUDA.
register_backend(TritonBackend(), priority=15)
register_backend(GemmBackend(), priority=20)
register_backend(NativeBackend(), priority=30)

__all__ = [
    "Backend", "ConvProblem", "ShuffleProblem", "batch_norm", "cache_path", "channel_shuffle", "clear_tuning_cache", "conv1d",
    "conv2d", "conv_problem", "conv3d", "conv_with_shortcut", "explain", "explain_conv", "forced_backend", "get_backend", "list_backends",
    "not_supported_reasons", "register_backend", "select_backend", "set_backend", "set_tuning", "tuning_enabled",
    "unregister_backend", "use_backend",
]


def _register_cost_formulas() -> None:
    from ..analysis.cost import _register_flop_formulas

    _register_flop_formulas()


_register_cost_formulas()
