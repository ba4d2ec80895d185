"""Cost model (parameters, multiply-adds); profiling and drawings build on it."""

from .cost import conv_multiply_adds, count_multiply_adds, count_parameters

__all__ = ["conv_multiply_adds", "count_multiply_adds", "count_parameters"]
