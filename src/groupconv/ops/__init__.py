"""Functional ops, their reference semantics, and the dispatcher that picks an implementation.

Backends registered here, highest priority first:
  aten       torch's own convolution (the baseline the fast backends must beat)
  reference  the specification (slow, obviously correct)
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
from .functional import channel_shuffle, conv1d, conv2d, conv3d, explain_conv
from .reference import ReferenceBackend

register_backend(ReferenceBackend(), priority=0)
register_backend(AtenBackend(), priority=10)

__all__ = [
    "Backend", "ConvProblem", "ShuffleProblem", "channel_shuffle", "conv1d", "conv2d", "conv3d", "explain",
    "explain_conv", "forced_backend", "get_backend", "list_backends", "not_supported_reasons",
    "register_backend", "select_backend", "set_backend", "unregister_backend", "use_backend",
]


def _register_cost_formulas() -> None:
    from ..analysis.cost import _register_flop_formulas

    _register_flop_formulas()


_register_cost_formulas()
