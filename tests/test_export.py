"""Deployment: ONNX (both of torch's exporters, run in onnxruntime), TorchScript (trace and script), torch.export
(save and load), for every zoo model, every layer, a user's torch model through accelerate(), and `groupconv export`.

Cost rules (2 CPU cores): each model is exported once per exporter and every assertion reads that one file; zoo
models run their small-input variant at 16x16 (1-D models their own signal size); every model goes through the
TorchScript-based exporter and onnxruntime, one model of each family also through the dynamo exporter (the other
models' dynamo exports, and the largest ResNeXts, are marked slow).
"""

from __future__ import annotations


import functools
import io
import warnings

import numpy as np
import pytest
import torch

import groupconv
import groupconv.nn as gnn
from groupconv.cli import main as cli_main
from groupconv.export import compare, export_model, load_exported, onnx_translation_table
from groupconv.models import create_model, list_models, model_entry

from .test_train import FAST  # the train command's quick training options

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

STANDARD_DOMAINS = ("", "ai.onnx")
RELATIVE_TOLERANCE = 1e-4  # float32, relative to the largest output
HEAVY_MODELS = {"resnext101_32x4d", "resnext101_32x8d", "resnext101_64x4d", "resnext29_8x64d", "resnext29_16x64d"}
FAMILY_REPRESENTATIVES = {"alexnet_g4", "mobilenet_wd4", "nin_root4", "resnext29_32x4d", "shufflenet_g3_wd4",
                          "shufflenet_compact", "grouped_cnn1d_mnist1d"}


# torch's TorchScript-based exporter translates adaptive average pooling only where the output size divides the input
# size. AlexNet's small-input variant pools its 3x3 maps up to 6x6, so that exporter sees AlexNet at its own 227x227
# input, one model of the family in the default run (the classifier makes a 230 MB file).
FULL_SIZE_FOR_THE_TORCHSCRIPT_EXPORTER = {"alexnet"}


def zoo_params(dynamo: bool) -> list:
    """Every model through the TorchScript-based exporter (AlexNet's one model in the default run, the largest
    ResNeXts marked slow); one model of each family through the dynamo exporter, the others marked slow."""
    params = []
    for name in list_models():
        if dynamo:
            slow = name not in FAMILY_REPRESENTATIVES
        elif model_entry(name).family in FULL_SIZE_FOR_THE_TORCHSCRIPT_EXPORTER:
            slow = name not in FAMILY_REPRESENTATIVES
        else:
            slow = name in HEAVY_MODELS
        params.append(pytest.param(name, marks=pytest.mark.slow) if slow else name)
    return params


class UserModel(torch.nn.Module):
    """A model as a user writes it in plain torch: grouped, depthwise and shuffled convs, BN, a residual add."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1, bias=False), torch.nn.BatchNorm2d(12),
                                        torch.nn.ReLU())
        self.grouped = torch.nn.Conv2d(12, 12, 1, groups=3, bias=False)
        self.shuffle = torch.nn.ChannelShuffle(3)
        self.depthwise = torch.nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False)
        self.norm = torch.nn.BatchNorm2d(12)
        self.head = torch.nn.Linear(12, 5)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.depthwise(self.shuffle(self.grouped(x))))
        return self.head(torch.relu(x + y).mean((2, 3)))


def _randomise_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Running statistics away from (0, 1), so that a translation that ignores them fails."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model


@functools.lru_cache(maxsize=None)
def zoo_model(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """(model in eval mode, input shape without the batch): the small-input variant where there is one, at 16x16 (the
    smallest size every image model accepts); a 1-D model at its own signal size."""
    torch.manual_seed(0)
    entry = model_entry(name)
    if "1d" in entry.tags:
        return _randomise_statistics(create_model(name, num_classes=10)).eval(), entry.input_size
    options = dict(small_input=True) if entry.has_small_input else {}
    return _randomise_statistics(create_model(name, num_classes=10, **options)).eval(), (3, 16, 16)


@functools.lru_cache(maxsize=None)
def user_model() -> tuple[torch.nn.Module, torch.nn.Module, tuple[int, ...]]:
    """(the plain torch model, the same model through accelerate(), input shape)."""
    torch.manual_seed(0)
    original = _randomise_statistics(UserModel()).eval()
    accelerated = groupconv.accelerate(_randomise_statistics(UserModel()).eval())
    accelerated.load_state_dict(original.state_dict())
    return original, accelerated, (3, 8, 8)


def onnx_bytes(model: torch.nn.Module, input_shape, dynamo: bool, **options) -> bytes:
    """The model exported with a dynamic batch (traced on a batch of 2)."""
    example = torch.randn(2, *input_shape)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},),
                                        input_names=["input"], verbose=False, **options)
            return program.model_proto.SerializeToString()
        buffer = io.BytesIO()
        torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, **options)
        return buffer.getvalue()


def assert_runs_like_eager(model: torch.nn.Module, data: bytes, input_shape, batches=(1, 3)) -> None:
    """Only standard ONNX operators; onnxruntime equals the eager model at each batch size."""
    graph = onnx.load_from_string(data).graph
    domains = {(node.domain, node.op_type) for node in graph.node if node.domain not in STANDARD_DOMAINS}
    assert not domains, f"operators outside the standard ONNX domain: {sorted(domains)}"
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    for batch in batches:
        x = torch.randn(batch, *input_shape)
        with torch.no_grad():
            expected = model(x).numpy()
        actual = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert actual.shape == expected.shape
        error, scale = np.abs(actual - expected).max(), max(1.0, np.abs(expected).max())
        assert error <= RELATIVE_TOLERANCE * scale, f"batch {batch}: error {error:.3g} > {RELATIVE_TOLERANCE} x {scale:.3g}"


# ---------------------------------------------------------------- ONNX: the zoo, both exporters


@pytest.mark.parametrize("name", zoo_params(dynamo=False))
def test_zoo_model_exports_to_onnx_with_the_torchscript_exporter(name):
    if model_entry(name).family in FULL_SIZE_FOR_THE_TORCHSCRIPT_EXPORTER:
        torch.manual_seed(0)
        model, input_shape = _randomise_statistics(create_model(name, num_classes=10)).eval(), (3, 227, 227)
    else:
        model, input_shape = zoo_model(name)
    assert_runs_like_eager(model, onnx_bytes(model, input_shape, dynamo=False), input_shape)


@pytest.mark.parametrize("name", zoo_params(dynamo=True))
def test_zoo_model_exports_to_onnx_with_the_dynamo_exporter(name):
    model, input_shape = zoo_model(name)
    assert_runs_like_eager(model, onnx_bytes(model, input_shape, dynamo=True), input_shape)


# ---------------------------------------------------------------- ONNX: what each op becomes


def shuffle_patterns(graph) -> int:
    """How many Transposes read a Reshape and feed a Reshape: the shuffle's pattern; asserts there is no other."""
    producer = {output: node for node in graph.node for output in node.output}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    transposes = [node for node in graph.node if node.op_type == "Transpose"]
    for node in transposes:
        assert producer[node.input[0]].op_type == "Reshape"
        assert [c.op_type for c in consumers[node.output[0]]] == ["Reshape"]
        assert list(node.attribute[0].ints) == [0, 2, 1, 3]
    return len(transposes)


def test_ops_become_standard_operators_in_the_patterns_runtimes_fuse():
    model, input_shape = zoo_model("shufflenet_g3_wd4")
    shuffling_convs = sum(1 for m in model.modules() if getattr(m, "shuffle_groups", 1) > 1)
    for dynamo in (False, True):
        graph = onnx.load_from_string(onnx_bytes(model, input_shape, dynamo)).graph
        operators = {node.op_type for node in graph.node}
        assert "Conv" in operators
        assert shuffle_patterns(graph) == shuffling_convs > 0
        convs = [node for node in graph.node if node.op_type == "Conv"]
        assert {a.i for node in convs for a in node.attribute if a.name == "group"} >= {3}


@pytest.mark.parametrize("dynamo", [False, True])
def test_fused_batch_norm_translation_covers_residual_relu_and_concatenation(dynamo):
    class Fused(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = gnn.BatchNormAct2d(4, affine=False)
            self.shuffle = gnn.ChannelShuffle(2)

        def forward(self, x):
            return self.shuffle(self.norm(x, x * 0.5, concat=x[:, :2]))

    model = _randomise_statistics(Fused()).eval()
    input_shape = (4, 128, 128)  # (the native kernel takes batches of 2 x 65536 values and more)
    with groupconv.ops.use_backend("native"):  # the fused op, not torch's batch norm
        data = onnx_bytes(model, input_shape, dynamo)
    graph = onnx.load_from_string(data).graph
    assert {"BatchNormalization", "Add", "Relu", "Concat"} <= {node.op_type for node in graph.node}
    assert_runs_like_eager(model, data, input_shape)


@pytest.mark.parametrize("dynamo", [False, True])
def test_local_response_norm_becomes_onnx_lrn(dynamo):
    # Alone (torch's own exports with the dynamo exporter too, decomposed) and before adaptive pooling, whose
    # translation needs the sizes torch's decomposition loses in the TorchScript-based exporter.
    model = torch.nn.Sequential(gnn.LocalResponseNorm(5, alpha=0.2, beta=0.75, k=2.0),
                                torch.nn.AdaptiveAvgPool2d((2, 2)))
    input_shape = (7, 6, 6)
    data = onnx_bytes(model, input_shape, dynamo)
    assert "LRN" in {node.op_type for node in onnx.load_from_string(data).graph.node}
    assert_runs_like_eager(model, data, input_shape)


def test_translation_table_is_public_and_passes_as_custom_translation_table():
    table = onnx_translation_table()
    assert set(table) == {torch.ops.groupconv.conv_forward.default, torch.ops.groupconv.channel_shuffle.default,
                          torch.ops.groupconv.batch_norm_forward.default,
                          torch.ops.groupconv.local_response_norm.default}
    _, accelerated, input_shape = user_model()
    data = onnx_bytes(accelerated, input_shape, dynamo=True, custom_translation_table=table)
    assert_runs_like_eager(accelerated, data, input_shape)


# ---------------------------------------------------------------- accelerate() takes nothing away


def test_accelerated_user_model_exports_where_the_original_cannot():
    original, accelerated, input_shape = user_model()
    assert isinstance(accelerated.shuffle, gnn.ChannelShuffle)
    with pytest.raises(Exception, match="channel_shuffle"):  # torch's own ChannelShuffle has no ONNX form
        onnx_bytes(original, input_shape, dynamo=False)
    for dynamo in (False, True):
        assert_runs_like_eager(original, onnx_bytes(accelerated, input_shape, dynamo), input_shape)


def test_accelerated_user_model_traces_scripts_and_exports():
    original, accelerated, input_shape = user_model()
    x, other = torch.randn(2, *input_shape), torch.randn(3, *input_shape)
    with torch.no_grad():
        traced = torch.jit.trace(accelerated, (x,))  # (torch's sanity check reruns it and compares)
        graph = str(traced.inlined_graph)
        assert "groupconv::conv_forward" in graph and "groupconv::channel_shuffle" in graph
        classes = [type(module) for module in accelerated.modules()]
        scripted = torch.jit.script(accelerated)
        # Scripting compiles torch's ops (the scripted model runs without groupconv) and leaves the model accelerated.
        assert "groupconv::" not in str(scripted.inlined_graph)
        assert [type(module) for module in accelerated.modules()] == classes
        for module in (traced, scripted):
            torch.testing.assert_close(module(other), original(other), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- TorchScript: every layer


def layers() -> dict[str, tuple[torch.nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    return {
        "Conv1d full padding": (gnn.Conv1d(4, 6, 3, groups=2, padding="full"), (2, 4, 9)),
        "Conv2d": (gnn.Conv2d(4, 6, 3, groups=2, padding=1, stride=2), (2, 4, 8, 8)),
        "Conv2d reflect": (gnn.Conv2d(4, 6, 3, groups=2, padding=1, padding_mode="reflect"), (2, 4, 8, 8)),
        "Conv3d": (gnn.Conv3d(4, 4, 3, groups=4, padding="same"), (2, 4, 5, 5, 5)),
        "ShuffledGroupedConv2d": (gnn.ShuffledGroupedConv2d(6, 6, 3, padding=1, groups=3), (2, 6, 8, 8)),
        "DepthwiseSeparableConv2d": (gnn.DepthwiseSeparableConv2d(4, 8, 3, padding="same"), (2, 4, 8, 8)),
        "FlattenedConv2d": (gnn.FlattenedConv2d(4, 8, 3, padding=1), (2, 4, 8, 8)),
        "SpatialSeparableConv2d": (gnn.SpatialSeparableConv2d(4, 8, 3, padding=1, groups=2), (2, 4, 8, 8)),
        "PointwiseGroupedConv2d": (gnn.PointwiseGroupedConv2d(4, 8, groups=2), (2, 4, 8, 8)),
        "DepthwiseConv2d": (gnn.DepthwiseConv2d(4, 3, padding=1, depth_multiplier=2), (2, 4, 8, 8)),
        "ChannelShuffle": (gnn.ChannelShuffle(2), (2, 4, 3, 3)),
        "BatchNormAct2d": (_randomise_statistics(gnn.BatchNormAct2d(4)).eval(), (2, 4, 8, 8)),
    }


@pytest.mark.parametrize("name", list(layers()))
def test_every_layer_traces_and_scripts_to_torchs_results(name):
    layer, shape = layers()[name]
    x, other = torch.randn(shape), torch.randn(3, *shape[1:])
    with torch.no_grad():
        traced = torch.jit.trace(layer, (x,))
        scripted = torch.jit.script(layer)
        assert "groupconv::" not in str(scripted.inlined_graph)
        for batch in (x, other):
            expected = layer(batch)
            torch.testing.assert_close(traced(batch), expected, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(scripted(batch), expected, atol=1e-5, rtol=1e-4)
    # The scripted layer shares the layer's parameters: training one trains the other.
    assert {id(p) for p in scripted.parameters()} <= {id(p) for p in layer.parameters()}
    assert len(list(scripted.parameters())) == len(list(layer.parameters()))


# ---------------------------------------------------------------- files: torch.export and TorchScript round trips


@pytest.mark.parametrize("format", ["exported-program", "torchscript", "onnx"])
def test_file_round_trip_with_a_dynamic_batch(format, tmp_path):
    _, model, input_shape = user_model()
    path = export_model(model, torch.randn(2, *input_shape), tmp_path / "model", format, dynamo=False)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    loaded = load_exported(path, format)
    for batch in (1, 3):
        difference, scale = compare(model, loaded, torch.randn(batch, *input_shape))
        assert difference <= RELATIVE_TOLERANCE * max(1.0, scale)


def test_failed_export_leaves_no_file(tmp_path):
    class Unexportable(torch.nn.Module):
        def forward(self, x):
            return x.numpy()  # not traceable

    with pytest.raises(Exception):
        export_model(Unexportable(), torch.randn(2, 3), tmp_path / "model.pt", "torchscript")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the command


def test_export_command_on_a_trained_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli_main(["train", "--dataset", "digits", "--epochs", "1", "--output", str(run), *FAST]) == 0
    capsys.readouterr()
    for format, options in (("onnx", ["--no-dynamo", "--batch-size", "3"]), ("exported-program", [])):
        output = tmp_path / f"model.{format}"
        assert cli_main(["export", str(run), "--format", format, "--output", str(output), *options]) == 0
        out = capsys.readouterr().out
        assert output.is_file() and "max |exported - eager|" in out
        difference = float(out.split("max |exported - eager| on a random batch of")[1].split(":")[1].split()[0])
        assert difference < 1e-4


@pytest.mark.parametrize("argv, message", [
    (["no_such_model", "--output", "x.onnx"], "neither a run directory"),
    (["shufflenet_g3_wd4", "--output", "x.onnx", "--batch-size", "0"], "--batch-size=0"),
    (["shufflenet_g3_wd4", "--output", "x.pt", "--format", "torchscript", "--opset", "17"], "--opset applies"),
    (["nin_cifar", "--small-input", "--output", "x.onnx"], "no small-input variant"),
])
def test_export_command_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["export", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
