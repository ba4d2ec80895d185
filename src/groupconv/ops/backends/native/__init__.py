"""groupconv's compiled CPU kernels: their build (build.py), the backend that runs them (backend.py), and which
batch-norm calls the fused kernel takes (batch_norm.py).

Only the build is imported here: the tuner's memory measurement needs the compiled module (its counting
allocator) without the backend.
"""

from .build import ENV_NATIVE, SOURCES, library_name, load, main, unavailable_reason

__all__ = ["ENV_NATIVE", "SOURCES", "library_name", "load", "main", "unavailable_reason"]
