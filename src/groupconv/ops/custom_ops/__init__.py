"""groupconv's ops as PyTorch custom ops (torch.library), so autograd, torch.compile and torch.export see them,
and the eager path that runs the same implementations without torch.library's per-call cost.

conv.py (the convolution ops and their gradient formula), double_backward.py (the backward ops' derivatives),
shuffle.py (the channel shuffle), batch_norm.py (the fused batch norm), local_response_norm.py (AlexNet's
normalisation), eager.py and eager_conv.py (plain eager calls), settled_calls.py (an eager call signature whose
path is decided, run after one lookup), outputs.py (an op's output contract), onnx.py and onnx_script.py (the ops in
standard ONNX, for both of torch's ONNX exporters). Importing this package registers every op, and its ONNX
translations, with torch.
"""

from . import double_backward
from .batch_norm import EagerBatchNorm, batch_norm_backward, batch_norm_forward, fused_batch_norm
from .conv import conv_backward, conv_backward_input, conv_backward_weight, conv_forward
from .eager import eager_function, profiled, runs_eagerly
from .local_response_norm import local_response_norm
from .eager_conv import EagerCall, EagerConv, EagerConvWithShortcut, convolution, convolution_with_shortcut
from . import settled_calls
from .onnx import onnx_translation_table, register_translations
from .shuffle import EagerShuffle, channel_shuffle, run_channel_shuffle, shuffle

register_translations()

__all__ = [
    "EagerBatchNorm", "EagerCall", "EagerConv", "EagerConvWithShortcut", "EagerShuffle", "batch_norm_backward",
    "batch_norm_forward", "channel_shuffle", "conv_backward", "conv_backward_input", "conv_backward_weight",
    "conv_forward", "convolution", "convolution_with_shortcut", "double_backward", "eager_function",
    "fused_batch_norm", "local_response_norm", "onnx_translation_table", "profiled", "run_channel_shuffle",
    "runs_eagerly", "settled_calls", "shuffle",
]
