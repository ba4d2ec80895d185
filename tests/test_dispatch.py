"""The dispatcher: listing, explaining, forcing; a backend that refuses inputs is skipped, and says why."""

import threading

import pytest
import torch

import groupconv
from groupconv import ops
from groupconv.ops.arguments import ConvArguments
from groupconv.ops.backends.reference import ReferenceBackend


class Float64OnlyBackend(ReferenceBackend):
    """A real backend (the reference arithmetic) that refuses everything but float64 2-D convs."""

    name = "float64-only"
    description = "test backend"

    def __init__(self):
        self.calls = 0

    def not_supported_reasons(self, problem):
        reasons = []
        if problem.dtype != torch.float64:
            reasons.append(f"dtype={problem.dtype} is not float64")
        if isinstance(problem, ops.ConvProblem) and len(problem.weight_shape) != 4:
            reasons.append("only 2-D convolutions")
        return reasons

    def conv_forward(self, *args):
        self.calls += 1
        return super().conv_forward(*args)


@pytest.fixture
def float64_only():
    backend = Float64OnlyBackend()
    ops.register_backend(backend, priority=100)
    yield backend
    ops.unregister_backend(backend.name)


def test_builtin_backends_are_listed_in_dispatch_order():
    assert ops.list_backends() == ["native", "gemm", "triton", "aten", "reference"]
    assert all(ops.get_backend(name).description for name in ops.list_backends())


def test_highest_priority_backend_that_can_run_is_chosen(float64_only):
    assert ops.list_backends()[0] == "float64-only"
    x64, w64 = torch.randn(1, 4, 5, 5, dtype=torch.float64), torch.randn(4, 2, 3, 3, dtype=torch.float64)
    groupconv.conv2d(x64, w64, groups=2)
    assert float64_only.calls == 1
    groupconv.conv2d(x64.float(), w64.float(), groups=2)  # refused: falls to aten
    groupconv.conv1d(x64[..., 0], w64[..., 0], groups=2)  # refused: 1-D
    assert float64_only.calls == 1


def test_explain_lists_each_backend_and_its_reasons(float64_only):
    # 20 input channels per group: too wide for the native kernels, so aten is the first that can run it
    text = ops.explain_conv(torch.randn(1, 40, 5, 5), torch.randn(4, 20, 3, 3), groups=2)
    assert "float64-only: dtype=torch.float32 is not float64" in text
    assert "native: 20 input channels per group" in text
    assert "-> aten: can run" in text and "gemm: kernel (3, 3) is not 1x1" in text
    one_d = ConvArguments(stride=(1,), padding=(0,), dilation=(1,), groups=2)
    like = torch.randn(1, dtype=torch.float64)
    reasons = ops.not_supported_reasons(ops.ConvProblem.build("conv_forward", (1, 4, 5), (4, 2, 3), one_d, like))
    assert reasons["float64-only"] == ["only 2-D convolutions"] and reasons["aten"] == reasons["reference"] == []


def test_forcing_a_backend_that_cannot_run_raises_with_reasons(float64_only):
    with ops.use_backend("float64-only"), pytest.raises(ValueError, match="float64-only.*is not float64"):
        groupconv.conv2d(torch.randn(1, 4, 5, 5), torch.randn(4, 2, 3, 3), groups=2)


def test_use_backend_is_scoped_and_set_backend_is_global(float64_only):
    x, w = torch.randn(1, 4, 5, 5, dtype=torch.float64), torch.randn(4, 2, 3, 3, dtype=torch.float64)
    with ops.use_backend("reference"):
        assert ops.forced_backend() == "reference"
        groupconv.conv2d(x, w, groups=2)
    assert float64_only.calls == 0
    assert ops.forced_backend() is None
    ops.set_backend("reference")
    try:
        assert ops.select_backend(ops.ShuffleProblem.build(x, 2)).name == "reference"
        with ops.use_backend(None):  # automatic choice inside the block
            assert ops.forced_backend() is None
    finally:
        ops.set_backend(None)


def test_environment_variable_forces_a_backend(monkeypatch):
    monkeypatch.setenv(ops.dispatch.ENV_BACKEND, "reference")
    assert ops.forced_backend() == "reference"
    x = torch.randn(1, 4, 5)
    assert ops.select_backend(ops.ShuffleProblem.build(x, 2)).name == "reference"


def test_unknown_backend_names_are_errors():
    with pytest.raises(ValueError, match="backend='cuda-magic' is not registered.*aten"):
        ops.set_backend("cuda-magic")
    with pytest.raises(ValueError, match="cuda-magic"):
        with ops.use_backend("cuda-magic"):
            pass


def test_backend_is_chosen_per_call_inside_a_compiled_graph(float64_only):
    """The choice happens at run time inside the custom op, so use_backend works on compiled code too."""
    model = torch.nn.Sequential(groupconv.nn.Conv2d(4, 4, 3, groups=2)).double()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    compiled(x)
    assert float64_only.calls == 1
    with ops.use_backend("reference"):
        compiled(x)
    assert float64_only.calls == 1


def test_gradients_follow_the_block_around_their_forward(monkeypatch):
    """Autograd runs a CUDA backward on a device thread, whose Python context does not see a use_backend block around
    backward(); the gradients of a conv called inside a block follow that block instead. A backward launched from
    another thread, outside any block, stands in for the device thread here (CPU backward runs on the caller's)."""
    reference = ops.get_backend("reference")
    calls = []
    for name in ("conv_backward_input", "conv_backward_weight"):
        method = getattr(reference, name)
        monkeypatch.setattr(reference, name, lambda *args, _name=name, _method=method: (calls.append(_name),
                                                                                       _method(*args))[1])
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    w = torch.randn(8, 2, 3, 3, requires_grad=True)
    with ops.use_backend("reference"):
        out = groupconv.conv2d(x, w, padding=1, groups=4)
    errors = []

    def backward():
        try:
            out.backward(torch.randn_like(out))
        except Exception as error:  # surfaced below
            errors.append(error)

    thread = threading.Thread(target=backward)
    thread.start()
    thread.join()
    assert not errors and sorted(calls) == ["conv_backward_input", "conv_backward_weight"]
    assert ops.forced_backend() is None  # the block's end is still its end
