"""BatchNormAct2d: torch.nn.BatchNorm2d with the residual add and ReLU of a conv block fused into it; and
LocalResponseNorm, torch's AlexNet normalisation as one op that exports to ONNX."""

from __future__ import annotations

from typing import Optional

import torch

from ..ops.normalization import batch_norm, local_response_norm


class BatchNormAct2d(torch.nn.BatchNorm2d):
    """relu(BatchNorm2d(x) + residual), computed in one fused op (groupconv.ops.batch_norm).

    Like timm's BatchNormAct2d: a torch.nn.BatchNorm2d subclass (same arguments, parameters, buffers
    and state_dict, so checkpoints of a BN + ReLU model load unchanged) whose forward also applies
    the activation, here ReLU, when `apply_act` (the default). `forward(x, residual)` adds a residual
    before the activation, as a ResNet or ShuffleNet unit does with its shortcut; `forward(x, concat=t)`
    returns torch.cat((result, t), 1), as a ShuffleNet downsampling unit concatenates its shortcut, with
    the result written into the concatenation directly.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, apply_act: bool = True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        if not isinstance(apply_act, bool):
            raise TypeError(f"apply_act={apply_act!r} must be a bool")
        self.apply_act = apply_act

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, apply_act={self.apply_act}"

    def forward(self, input: torch.Tensor, residual: Optional[torch.Tensor] = None,
                concat: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._check_input_dim(input)
        # torch.nn.BatchNorm2d's rules for the momentum, the step count and which statistics to use.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        batch_statistics = self.training or (self.running_mean is None and self.running_var is None)
        tracked = not self.training or self.track_running_stats
        running_mean = self.running_mean if tracked else None
        running_var = self.running_var if tracked else None
        if torch.jit.is_scripting():
            return self._torch_forward(input, running_mean, running_var, batch_statistics, factor, residual, concat)
        return batch_norm(input, running_mean, running_var, self.weight, self.bias, batch_statistics, factor,
                          self.eps, residual=residual, relu=self.apply_act, concat=concat)

    def _torch_forward(self, input: torch.Tensor, running_mean: Optional[torch.Tensor],
                       running_var: Optional[torch.Tensor], batch_statistics: bool, factor: float,
                       residual: Optional[torch.Tensor], concat: Optional[torch.Tensor]) -> torch.Tensor:
        """The same computation in torch's ops, which torch.jit.script compiles (a scripted model runs without
        groupconv's Python)."""
        out = torch.nn.functional.batch_norm(input, running_mean, running_var, self.weight, self.bias,
                                             batch_statistics, factor, self.eps)
        if residual is not None:
            out = out + residual
        if self.apply_act:
            out = torch.relu(out)
        if concat is not None:
            out = torch.cat((out, concat), 1)
        return out


class LocalResponseNorm(torch.nn.LocalResponseNorm):
    """torch.nn.LocalResponseNorm (same arguments and results) that also exports with torch's TorchScript-based ONNX
    exporter, as ONNX's LRN operator (groupconv.ops.local_response_norm). A subclass adding no state, so
    `accelerate()` swaps torch's layer for it."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # (a scripted model runs torch's function: it is meant to run without Python)
            return torch.nn.functional.local_response_norm(input, self.size, self.alpha, self.beta, self.k)
        return self._groupconv_forward(input)

    @torch.jit.unused
    def _groupconv_forward(self, input: torch.Tensor) -> torch.Tensor:
        return local_response_norm(input, self.size, self.alpha, self.beta, self.k)
