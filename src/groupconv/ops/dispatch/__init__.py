"""Choosing an implementation per call (as xformers does): problems, the Backend base class, the registry of
backends, and the selection among them (forced, measured, or in priority order), with `explain` to show it."""

from .backend import Backend
from .problems import (ALL_OPS, CONV_OPS, BatchNormProblem, ConvProblem, Problem, ShuffleProblem,
                       layout_name)
from .registry import (ENV_BACKEND, backward_scope, choices_generation, forced_backend, forget_choices, get_backend,
                       list_backends, not_supported_reasons, register_backend, register_strategy, scoped_backend,
                       set_backend, unregister_backend, use_backend)
from .selection import (ENV_TUNE, clear_tuning_cache, explain, fresh_tuning_cache, remembered_choice, select_backend,
                        set_tuning, tuning_enabled)

__all__ = [
    "ALL_OPS", "Backend", "BatchNormProblem", "CONV_OPS", "ConvProblem", "ENV_BACKEND", "ENV_TUNE", "Problem",
    "ShuffleProblem", "backward_scope", "choices_generation", "clear_tuning_cache", "explain", "forced_backend",
    "forget_choices", "fresh_tuning_cache", "get_backend", "layout_name", "list_backends", "not_supported_reasons",
    "register_backend", "register_strategy", "remembered_choice", "scoped_backend", "select_backend", "set_backend",
    "set_tuning", "tuning_enabled", "unregister_backend", "use_backend",
]
