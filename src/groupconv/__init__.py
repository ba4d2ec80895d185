"""groupconv: grouped, depthwise and shuffled-grouped convolution for PyTorch."""

from . import models, nn, ops, signal
from .nn import accelerate
from .ops import channel_shuffle, conv1d, conv2d, conv3d

__version__ = "0.1.0"

__all__ = ["accelerate", "channel_shuffle", "conv1d", "conv2d", "conv3d", "models", "nn", "ops", "signal", "__version__"]
