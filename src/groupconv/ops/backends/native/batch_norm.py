"""Which batch-norm calls the native fused kernel (csrc/batch_norm.cpp) runs, beyond its devices and dtypes.

The kernel runs CPU float32/float64 tensors, contiguous or channels_last, with a residual of the input's shape;
below NATIVE_MIN_VALUES values, or in channels_last with nothing to fuse, torch's ops are as fast or faster.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from ...dispatch import BatchNormProblem, get_backend

# Below this many values torch's ops win: the fused op's fixed cost (~80 us forward, ~130 us forward and backward
# in eager mode, against torch's ~50 / ~100 for its BN and ReLU) outweighs the passes it saves. Measured with
# benchmarks/bench_batch_norm.py --min-values 0 and on smaller shapes alike: at 32K values (8x64x8x8) the fused op
# is 0.9x torch forward+backward, at 128K (32x64x8x8) 1.0-1.2x, at 256K 1.1-1.4x, at 1M and up 1.2-2.7x.
NATIVE_MIN_VALUES = 1 << 17


def problem_reasons(problem: BatchNormProblem) -> list[str]:
    reasons = []
    fuses = problem.has_residual or problem.relu or problem.has_concat
    if not fuses and problem.layout == "channels_last":
        # Nothing to fuse, and torch's channels_last BN is as fast as the kernel (0.86-0.98x, bench_batch_norm.py);
        # in NCHW the kernel is 1.3-1.4x faster than torch's BN alone.
        reasons.append("channels_last with no ReLU, residual or concatenation to fuse: torch's batch norm is as fast")
    values = 1
    for size in problem.shape:
        values *= size
    if values < NATIVE_MIN_VALUES:
        reasons.append(f"{values} values, fewer than {NATIVE_MIN_VALUES}: torch's ops are faster there")
    if problem.has_residual and not problem.residual_matches:
        reasons.append("a residual not of the input's shape, dtype and device")
    if problem.has_concat and not problem.concat_matches:
        reasons.append("a concatenated tensor not of the input's dtype")
    return reasons


def native_unsupported_reasons(input: Tensor, residual: Optional[Tensor] = None, relu: bool = False,
                               concat: Optional[Tensor] = None, training: bool = True) -> list[str]:
    """Why the native backend does not run this batch-norm call (empty: it does)."""
    return get_backend("native").not_supported_reasons(
        BatchNormProblem.build(input, training, residual, relu, concat))
