"""Cost model, channel connectivity and timing; profiling and drawings build on these."""

from .connectivity import channel_connectivity, layer_connectivity, render_connectivity
from .cost import conv_multiply_adds, count_multiply_adds, count_parameters
from .timing import median_seconds

__all__ = [
    "channel_connectivity", "conv_multiply_adds", "count_multiply_adds", "count_parameters", "layer_connectivity",
    "median_seconds", "render_connectivity",
]
