"""groupconv's custom ops in ONNX, as standard ONNX operators only (no custom domain), for both of torch's exporters.

What each op becomes (the patterns ONNX Runtime, OpenVINO and XNNPACK recognise and fuse):
  groupconv::conv_forward        Conv with group=; reading through a shuffle: the shuffle below, then Conv
  groupconv::channel_shuffle     Reshape (N, g, C/g, -1), Transpose (0, 2, 1, 3), Reshape back to the input's shape
  groupconv::batch_norm_forward  BatchNormalization, then Add (residual), Relu, Concat as the call fuses them;
                                 eval mode only (an exported model runs inference on its running statistics)
  groupconv::local_response_norm LRN (the same formula for the odd window sizes the op takes)
The backward ops have no translation: an exported graph is an inference graph.

torch.onnx.export(..., dynamo=False) traces the model with torch.jit: the symbolic functions here are registered
with torch.onnx.register_custom_op_symbolic when groupconv is imported. torch.onnx.export(..., dynamo=True), the
default, looks the ops up in a table built from torch's torchlib registry: onnx_script.py holds the same
translations as onnxscript functions; they join that registry when torch imports it (onnxscript costs about two
seconds to import, so `import groupconv` does not import it), and `onnx_translation_table()` returns them for
`custom_translation_table=`.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

import torch
from torch.onnx import symbolic_helper

from ..arguments import output_size

# The ONNX opset the legacy exporter's symbolic functions are registered for (and every later one): Reshape's
# shape input and BatchNormalization without its spatial attribute need opset 9.
LEGACY_OPSET = 9
# torch's module whose list of translations builds the dynamo exporter's default table, and the package of torch's
# own translations, which the exporter imports (once the registry module is complete) to fill that list.
TORCHLIB_REGISTRY = "torch.onnx._internal.exporter._torchlib._torchlib_registry"
TORCHLIB_OPS = "torch.onnx._internal.exporter._torchlib.ops"


def shuffle_shape(channels: int | None, groups: int) -> list[int]:
    """Reshape's target that splits the channels into (groups, channels // groups), the spatial size flattened:
    0 keeps the batch size as it comes (dynamic batch), -1 takes the rest. Unknown channels: -1 in their place."""
    return [0, groups, -1 if channels is None else channels // groups, -1]


def onnx_padding(padding) -> list[int]:
    """ONNX Conv's pads: every spatial dimension's start, then every end (the ops pad both ends alike)."""
    return [*padding, *padding]


# ---------------------------------------------------------------- torch.onnx.export(..., dynamo=False)


def _typed(output, like, sizes):
    """`output` with `like`'s type and these sizes (None: unknown, such as a dynamic batch): the exporter's later
    symbolics (adaptive pooling, flatten) read the sizes, and it infers none for values a custom symbolic makes."""
    if sizes is not None:
        output.setType(like.type().with_sizes(list(sizes)))
    return output


def _legacy_shuffle(g, x, groups: int):
    channels = symbolic_helper._get_tensor_dim_size(x, 1)
    if channels is not None:
        shape = g.op("Constant", value_t=torch.tensor(shuffle_shape(channels, groups), dtype=torch.int64))
    else:  # (after a concatenation of dynamic-batch tensors, say): the channel count read from the input's shape
        channels = g.op("Gather", g.op("Shape", x), g.op("Constant", value_t=torch.tensor([1])), axis_i=0)
        per_group = g.op("Div", channels, g.op("Constant", value_t=torch.tensor([groups])))
        shape = g.op("Concat", g.op("Constant", value_t=torch.tensor([0, groups])), per_group,
                     g.op("Constant", value_t=torch.tensor([-1])), axis_i=0)
    grouped = g.op("Reshape", x, shape)
    swapped = g.op("Transpose", grouped, perm_i=[0, 2, 1, 3])
    return _typed(g.op("Reshape", swapped, g.op("Shape", x)), x, symbolic_helper._get_tensor_sizes(x))


@symbolic_helper.parse_args("v", "i")
def _legacy_channel_shuffle(g, x, groups):
    return _legacy_shuffle(g, x, groups)


@symbolic_helper.parse_args("v", "v", "v", "is", "is", "is", "i", "i")
def _legacy_conv_forward(g, input, weight, bias, stride, padding, dilation, groups, shuffle_groups):
    if shuffle_groups > 1:
        input = _legacy_shuffle(g, input, shuffle_groups)
    kernel = symbolic_helper._get_tensor_sizes(weight)
    inputs = [input, weight] if symbolic_helper._is_none(bias) else [input, weight, bias]
    attributes = dict(strides_i=list(stride), pads_i=onnx_padding(padding), dilations_i=list(dilation),
                      group_i=groups)
    sizes = symbolic_helper._get_tensor_sizes(input)
    if kernel is None or any(size is None for size in kernel) or sizes is None:
        return g.op("Conv", *inputs, **attributes)
    attributes["kernel_shape_i"] = list(kernel[2:])
    spatial = sizes[2:]
    if all(size is not None for size in spatial):
        spatial = output_size(spatial, kernel[2:], stride, padding, padding, dilation)
    else:
        spatial = [None] * len(spatial)
    return _typed(g.op("Conv", *inputs, **attributes), input, [sizes[0], kernel[0], *spatial])


def _legacy_constant_like(g, running_mean, value: float):
    """A tensor of `value` shaped and typed as `running_mean` (BatchNormalization needs scale and bias)."""
    return g.op("Add", g.op("Mul", running_mean, g.op("Constant", value_t=torch.tensor(0.0))),
                g.op("Constant", value_t=torch.tensor(value)))


@symbolic_helper.parse_args("v", "v", "v", "v", "v", "v", "b", "f", "b", "v")
def _legacy_batch_norm_forward(g, input, weight, bias, residual, running_mean, running_var, training, eps, relu,
                               concat):
    if training:
        raise torch.onnx.errors.SymbolicValueError(
            "batch_norm: export a model in eval mode (model.eval()); training-mode batch norm has no ONNX form here",
            input)
    if symbolic_helper._is_none(weight):
        weight = _legacy_constant_like(g, running_mean, 1.0)
    if symbolic_helper._is_none(bias):
        bias = _legacy_constant_like(g, running_mean, 0.0)
    sizes = symbolic_helper._get_tensor_sizes(input)
    output = _typed(g.op("BatchNormalization", input, weight, bias, running_mean, running_var, epsilon_f=eps), input,
                    sizes)
    if not symbolic_helper._is_none(residual):
        output = _typed(g.op("Add", output, residual), input, sizes)
    if relu:
        output = _typed(g.op("Relu", output), input, sizes)
    if not symbolic_helper._is_none(concat):
        concat_sizes = symbolic_helper._get_tensor_sizes(concat)
        joined = None
        if sizes is not None and concat_sizes is not None and None not in (sizes[1], concat_sizes[1]):
            joined = [sizes[0], sizes[1] + concat_sizes[1], *sizes[2:]]
        output = _typed(g.op("Concat", output, concat, axis_i=1), input, joined)
    # The op's other outputs, as the kernel returns them in eval mode: the running statistics and 1/sqrt(var + eps).
    invstd = g.op("Reciprocal", g.op("Sqrt", g.op("Add", running_var, g.op("Constant", value_t=torch.tensor(eps)))))
    return output, running_mean, invstd, running_var


@symbolic_helper.parse_args("v", "i", "f", "f", "f")
def _legacy_local_response_norm(g, x, size, alpha, beta, k):
    return _typed(g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k), x,
                  symbolic_helper._get_tensor_sizes(x))


LEGACY_SYMBOLICS = {
    "groupconv::conv_forward": _legacy_conv_forward,
    "groupconv::channel_shuffle": _legacy_channel_shuffle,
    "groupconv::batch_norm_forward": _legacy_batch_norm_forward,
    "groupconv::local_response_norm": _legacy_local_response_norm,
}


def register_legacy_symbolics() -> None:
    for name, symbolic in LEGACY_SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, symbolic, LEGACY_OPSET)


# ---------------------------------------------------------------- torch.onnx.export(..., dynamo=True)


def onnxscript_installed() -> bool:
    return importlib.util.find_spec("onnxscript") is not None


def onnx_translation_table() -> dict:
    """{custom op overload: onnxscript function} for torch.onnx.export(..., custom_translation_table=...): the same
    translations torch's default table holds once groupconv is imported. Needs onnxscript."""
    if not onnxscript_installed():
        raise ModuleNotFoundError("onnx_translation_table needs onnxscript: pip install onnxscript "
                                  "(or groupconv[export])")
    from . import onnx_script  # (imports onnxscript, an optional dependency, about two seconds)

    return onnx_script.translation_table()


def _add_to_torchlib_registry() -> None:
    from . import onnx_script  # (imports onnxscript, as torch's registry module itself has just done)

    onnx_impl = sys.modules[TORCHLIB_REGISTRY].onnx_impl
    for target, function in onnx_script.translation_table().items():
        onnx_impl(target, trace_only=True)(function)


class _AfterTorchlibImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Adds groupconv's translations to torch's torchlib registry right after torch imports its own translations (the
    first dynamo export does), so `import groupconv` never pays for onnxscript. Finds the module once, then leaves."""

    def find_spec(self, name, path, target=None):
        if name != TORCHLIB_OPS:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        self.loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        _add_to_torchlib_registry()


def register_dynamo_translations() -> None:
    """Adds the translations to torch's torchlib registry now if torch has imported it, else as soon as it does."""
    if not onnxscript_installed():
        return
    if TORCHLIB_OPS in sys.modules:
        _add_to_torchlib_registry()
    elif not any(isinstance(finder, _AfterTorchlibImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterTorchlibImport())


def register_translations() -> None:
    register_legacy_symbolics()
    register_dynamo_translations()
