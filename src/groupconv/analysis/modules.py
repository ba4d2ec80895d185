"""What every analysis needs to know about a model's modules: its leaves, their kinds, their names, and how to
run a forward so that a failure says which model and input caused it.

A leaf module is one without children (a conv, a BatchNorm, a ReLU, a ChannelShuffle...). Each
piece of a model's work happens either inside exactly one leaf or in a functional call between
leaves (a residual `+`, a `torch.cat`), so per-leaf hooks plus one "outside the leaves" remainder
account for the whole forward pass.
"""

from __future__ import annotations

import contextlib
import difflib
from typing import Iterator

import torch
from torch.nn.modules.conv import _ConvNd

from ..nn import ChannelShuffle


def leaf_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every module without children, in model.named_modules() order."""
    return [(name, module) for name, module in model.named_modules() if next(module.children(), None) is None]


def tensors_in(value) -> list[torch.Tensor]:
    """The tensors in a module's arguments or outputs (nested tuples, lists and dicts), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [t for item in value for t in tensors_in(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors_in(item)]
    return []


def is_conv(module: torch.nn.Module) -> bool:
    """Any convolution, torch's or groupconv's (they subclass torch's), 1-D, 2-D or 3-D, including transposed."""
    return isinstance(module, _ConvNd)


def conv_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The model's (non-transposed) convolution layers by name, in model.named_modules() order."""
    return {name: module for name, module in model.named_modules() if is_conv(module) and not module.transposed}


_KINDS = (
    (_ConvNd, "conv"),
    (torch.nn.Linear, "linear"),
    ((torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.LocalResponseNorm),
     "norm"),
    ((torch.nn.modules.pooling._MaxPoolNd, torch.nn.modules.pooling._AvgPoolNd,
      torch.nn.modules.pooling._AdaptiveAvgPoolNd, torch.nn.modules.pooling._AdaptiveMaxPoolNd), "pool"),
    ((torch.nn.ReLU, torch.nn.ReLU6, torch.nn.LeakyReLU, torch.nn.PReLU, torch.nn.ELU, torch.nn.GELU, torch.nn.SiLU,
      torch.nn.Sigmoid, torch.nn.Tanh, torch.nn.Hardswish, torch.nn.Hardsigmoid, torch.nn.Mish), "activation"),
    (torch.nn.modules.dropout._DropoutNd, "dropout"),
    (torch.nn.ChannelShuffle, "shuffle"),
)


def layer_kind(module: torch.nn.Module) -> str:
    """Coarse kind of a leaf: conv, linear, norm, pool, activation, dropout, shuffle or other."""
    if isinstance(module, ChannelShuffle):
        return "shuffle"
    for types, kind in _KINDS:
        if isinstance(module, types):
            return kind
    return "other"


def conv_family(module: torch.nn.Module) -> str:
    """Which member of the grouped-convolution family a conv is.

    'dense' (groups=1), 'grouped' (1 < groups < in_channels), 'depthwise' (groups = in_channels),
    with 'pointwise ' in front for 1x1 kernels and ' shuffled' after when the layer reads its input
    through a channel shuffle (groupconv's shuffle_groups).
    """
    if module.groups == 1:
        family = "dense"
    elif module.groups == module.in_channels:
        family = "depthwise"
    else:
        family = "grouped"
    if all(k == 1 for k in module.kernel_size) and family != "depthwise":
        family = f"pointwise {family}"
    if getattr(module, "shuffle_groups", 1) > 1:
        family += " shuffled"
    return family


def find_layer(model: torch.nn.Module, name: str, argument: str = "layer") -> torch.nn.Module:
    """The conv layer called `name` (as in model.named_modules()); a ValueError naming the valid conv layers if not.

    With many conv layers, the error names the closest ones (difflib) before the full list.
    """
    layers = conv_layers(model)
    if name in layers:
        return layers[name]
    modules = dict(model.named_modules())
    if name in modules:
        raise ValueError(f"{argument}={name!r} is a {type(modules[name]).__name__}, not a convolution; "
                         f"{_describe_names(name, layers)}")
    raise ValueError(f"{argument}={name!r} is not a layer of {type(model).__name__}; {_describe_names(name, layers)}")


def _describe_names(name: str, layers: dict[str, torch.nn.Module]) -> str:
    """The valid conv layer names, all of them, with the closest to `name` first when there are many."""
    names = list(layers)
    if not names:
        return "the model has no convolution layers"
    if len(names) <= 20:
        return f"its conv layers are: {', '.join(names)}"
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"closest: {', '.join(close)}; " if close else ""
    return f"{hint}its {len(names)} conv layers are: {', '.join(names)}"


def describe_input(input) -> str:
    shape = tuple(input.shape) if isinstance(input, torch.Tensor) else tuple(input)
    return "x".join(str(s) for s in shape)


@contextlib.contextmanager
def explained_forward_failure(model_name: str, input_shape, hint: str = "") -> Iterator[None]:
    """Turn an error inside a model's forward into a ValueError that names the model and the input size.

    The typical cause is an input too small for the model (AlexNet's stride-4 conv and three
    max-pools leave nothing of a 32x32 image); the message carries `hint` to say what to try.
    """
    try:
        yield
    except (RuntimeError, ValueError, IndexError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        suggestion = hint or "try a larger input or the size the model was designed for"
        raise ValueError(f"model {model_name} cannot run on an input of size {describe_input(input_shape)} "
                         f"(its forward failed: {first_line}); {suggestion}") from error
