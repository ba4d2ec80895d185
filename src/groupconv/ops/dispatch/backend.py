"""The Backend base class: what an implementation of groupconv's ops provides, and the one place its declared
capabilities are checked.

A backend declares what it supports as data (class attributes, as xformers' operators do): the ops, devices,
dtypes and layouts. `not_supported_reasons` checks those here, for every backend alike, then asks the backend's
`problem_reasons` for what data cannot say (kernel sizes, group widths), then, if nothing else stands against the
problem, whether the backend is there at all (`unavailable_reason`: a library that did not build or import).
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..arguments import ConvArguments
from .problems import ALL_OPS, BATCH_NORM_OPS, CONV_OPS, SHUFFLE_OPS, Problem

# A capability is None (anything), a tuple, or a mapping from an op family ("conv", "channel_shuffle",
# "batch_norm") to None or a tuple, for a backend whose kernels differ by op.
Capability = tuple | Mapping[str, tuple | None] | None

_OP_FAMILIES = {**{op: "conv" for op in CONV_OPS}, **{op: op for op in SHUFFLE_OPS + BATCH_NORM_OPS}}
_FAMILY_WORDS = {"conv": "convolutions", "channel_shuffle": "channel shuffle", "batch_norm": "batch norm"}


def _names(values) -> str:
    return ", ".join(str(value) for value in values)


class Backend:
    """An implementation of some of groupconv's ops.

    Subclasses set `name` and `description`, the capabilities below, and implement their ops. The reasons must
    depend on the problem alone: the automatic choice is remembered per problem. Output memory format is
    normalised by the caller, so a backend may return any layout.
    """

    name: str = ""
    description: str = ""
    SUPPORTED_OPS: tuple[str, ...] = ALL_OPS
    SUPPORTED_DEVICES: Capability = None
    SUPPORTED_DTYPES: Capability = None
    SUPPORTED_LAYOUTS: Capability = None
    # Whether the tuner may time this backend against the others; the reference (a specification,
    # never the fastest) opts out.
    tunable: bool = True
    # torch's own kernels: the tuner keeps them unless another contender is clearly faster (tuning.choose).
    baseline: bool = False

    def not_supported_reasons(self, problem: Problem) -> list[str]:
        """Why this backend cannot run `problem` (empty: it can)."""
        if problem.op not in self.SUPPORTED_OPS:
            families = sorted({_FAMILY_WORDS[_OP_FAMILIES[op]] for op in self.SUPPORTED_OPS})
            return [f"{problem.op} is not supported: only {' and '.join(families)}"]
        reasons = []
        for what, value, capability in (("device", problem.device_type, self.SUPPORTED_DEVICES),
                                        ("dtype", problem.dtype, self.SUPPORTED_DTYPES),
                                        ("layout", problem.layout, self.SUPPORTED_LAYOUTS)):
            allowed = capability.get(_OP_FAMILIES[problem.op]) if isinstance(capability, Mapping) else capability
            if allowed is not None and value not in allowed:
                reasons.append(f"{what} {value} is not supported: {_names(allowed)} only")
        reasons.extend(self.problem_reasons(problem))
        if not reasons:
            unavailable = self.unavailable_reason()
            if unavailable:
                reasons.append(unavailable)
        return reasons

    def problem_reasons(self, problem: Problem) -> list[str]:
        """The reasons beyond the declared capabilities (shapes, arguments) why `problem` cannot run here."""
        return []

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run anything in this process (a library that did not build), or None."""
        return None

    def runs_untuned(self, problem: Problem) -> bool:
        """Whether to run `problem`, when tuning is off, as the first capable backend in priority order. A backend
        says False where measurements showed torch's kernels faster: the tuner would not pick it there either, and
        without tuning the next capable backend runs instead (forcing it still works)."""
        return True

    def conv_forward(self, input, weight, bias, args: ConvArguments) -> torch.Tensor:
        raise NotImplementedError

    def conv_backward_input(self, grad_output, weight, input_shape, args: ConvArguments,
                            input: torch.Tensor | None = None) -> torch.Tensor:
        """The input's gradient. `input` is the forward's input where the caller has it: a backend may read its
        shape and layout, never its values (torch's kernels take it as the template of the gradient, which saves
        allocating one of the input's size)."""
        raise NotImplementedError

    def conv_backward_weight(self, grad_output, input, weight_shape, args: ConvArguments) -> torch.Tensor:
        raise NotImplementedError

    def conv_backward(self, grad_output, input, weight, args: ConvArguments) -> tuple[torch.Tensor, torch.Tensor]:
        """Both gradients (input, weight). By default the two single ops; a backend that shares work overrides it."""
        return (self.conv_backward_input(grad_output, weight, input.shape, args, input),
                self.conv_backward_weight(grad_output, input, weight.shape, args))

    # A residual block's input feeds its first conv and its shortcut, and autograd sums the two gradients in a pass of
    # its own (2 reads and a write of the input's size). A backend whose kernel writes the input gradient can add the
    # shortcut's gradient (`accumulate`) as it writes instead: these return that sum, or None where the backend has
    # no such kernel for the call (the caller then adds).
    def conv_backward_input_accumulating(self, grad_output, weight, input_shape, args: ConvArguments,
                                         input: torch.Tensor | None, accumulate: torch.Tensor) -> torch.Tensor | None:
        return None

    def conv_backward_accumulating(self, grad_output, input, weight, args: ConvArguments,
                                   accumulate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None

    def channel_shuffle(self, x: torch.Tensor, groups: int) -> torch.Tensor:
        raise NotImplementedError

    def batch_norm(self, input, running_mean, running_var, weight, bias, training: bool, momentum: float,
                   eps: float, residual, relu: bool, concat) -> torch.Tensor:
        """groupconv.ops.batch_norm with autograd, running statistics updated in place in training (as
        torch.nn.functional.batch_norm does)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<groupconv backend {self.name!r}: {self.description}>"
