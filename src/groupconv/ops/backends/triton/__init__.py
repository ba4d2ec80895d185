"""Triton kernels for CUDA devices (kernels.py) and the backend that launches them (backend.py).

Importing this package does not import triton: the kernels module is loaded on the backend's
first launch, so `import groupconv` stays fast and works without triton installed.
"""

from .backend import TritonBackend

__all__ = ["TritonBackend"]

