"""Inference: a model prepared once for fast eval-mode forwards (batch norm folded into its conv, channels_last
throughout, each conv's, pool's and linear layer's kernel chosen once for the expected shapes). `optimize_for_inference(model,
example_inputs)`; docs/inference.md says what each step brings.
"""

from .layers import ConvEpilogue, PlannedConv, PlannedLinear, PlannedPool
from .optimize import InferenceModel, optimize_for_inference

__all__ = ["ConvEpilogue", "InferenceModel", "PlannedConv", "PlannedLinear", "PlannedPool",
           "optimize_for_inference"]
