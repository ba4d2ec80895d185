"""groupconv: grouped, depthwise and shuffled-grouped convolution for PyTorch."""

from . import environment

environment.spin_openmp_workers()  # (before anything imports torch: environment.py says why)

from . import models, nn, ops, signal  # noqa: E402
from .nn import accelerate  # noqa: E402
from .ops import channel_shuffle, conv1d, conv2d, conv3d  # noqa: E402

__version__ = "0.1.0"

__all__ = ["accelerate", "channel_shuffle", "conv1d", "conv2d", "conv3d", "models", "nn", "ops", "signal", "__version__"]
