"""The dispatcher: listing, explaining, forcing; a backend that refuses inputs is skipped, and says why."""

import dataclasses
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


def test_capabilities_are_declared_once_and_checked_by_the_base_class():
    """Devices, dtypes and layouts come from a backend's class attributes, with reasons that name what it takes."""
    like = torch.empty(2, 8, 5, 5, dtype=torch.float16)
    problem = ops.ConvProblem.build("conv_forward", (2, 8, 5, 5), (8, 8, 1, 1),
                                    ConvArguments((1, 1), (0, 0), (1, 1), 1), like)
    on_cuda = dataclasses.replace(problem, device_type="cuda", dtype=torch.float32)
    gemm = ops.get_backend("gemm")
    assert gemm.SUPPORTED_DEVICES == ("cpu",)
    assert gemm.not_supported_reasons(on_cuda) == ["device cuda is not supported: cpu only"]
    assert gemm.not_supported_reasons(problem) == [
        "dtype torch.float16 is not supported: torch.float32, torch.float64 only"]
    strided = ops.ShuffleProblem.build(torch.empty(2, 8, 5, 5).transpose(2, 3), 2)
    assert ops.get_backend("native").not_supported_reasons(strided)[0] == (
        "layout strided is not supported: contiguous, channels_last only")
    assert ops.get_backend("aten").not_supported_reasons(on_cuda) == []  # (no capability declared: anything)


def test_environment_flags_share_one_parser(monkeypatch):
    from groupconv import environment

    for value, expected in (("", True), ("0", False), (" Off ", False), ("yes", True)):
        monkeypatch.setenv("GROUPCONV_TUNE", value)
        assert environment.flag("GROUPCONV_TUNE", True) is expected
    monkeypatch.setenv("GROUPCONV_TUNE", "sometimes")
    with pytest.raises(ValueError, match="GROUPCONV_TUNE='sometimes' must be one of"):
        ops.tuning_enabled()


def test_per_signature_caches_stay_bounded_over_many_input_sizes(monkeypatch):
    """10,000 distinct input sizes: the argument checks, the eager calls, the dispatch choices and the settled calls
    each keep at most their bound of entries, and the memory they hold stops growing once they are full. (The bound
    is lowered to 1,024 here so that the caches are full, and their tables at their final size, early in the run.)"""
    import tracemalloc

    from groupconv.ops import arguments
    from groupconv.ops.backends import native
    from groupconv.ops.cache import DEFAULT_MAX_ENTRIES
    from groupconv.ops.custom_ops.eager_conv import EagerCall
    from groupconv.ops.dispatch import registry

    caches = {"argument checks": arguments._PASSED_CHECKS, "eager calls": EagerCall._calls,
              "dispatch choices": registry._choices}
    for cache in caches.values():
        assert cache.max_entries == DEFAULT_MAX_ENTRIES
        monkeypatch.setattr(cache, "max_entries", 1024)
    settled = native.load()  # the settled calls' table, in the compiled library (None without it)
    if settled is not None:
        assert settled.settled_conv_capacity() == DEFAULT_MAX_ENTRIES
        settled.set_settled_conv_capacity(1024)
    w = torch.randn(2, 1, 1, 1)

    def run(widths):
        for width in widths:
            groupconv.conv2d(torch.ones(1, 2, 1, width), w, groups=2)

    tracemalloc.start()  # (from the start: memory allocated before it and freed later would not count as freed)
    try:
        run(range(1, 3001))
        before = tracemalloc.get_traced_memory()[0]
        run(range(3001, 10_001))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        if settled is not None:
            count = settled.settled_conv_count()
            settled.set_settled_conv_capacity(DEFAULT_MAX_ENTRIES)
    if settled is not None:
        assert count == 1024, "settled calls"
    for name, cache in caches.items():
        assert len(cache) == 1024, name
    # (7,000 more signatures in unbounded caches would hold several MB)
    assert grown < 128 * 1024, f"{grown} bytes more after 7,000 new input sizes"


def test_the_argument_cache_is_left_alone_while_torch_compile_traces():
    """dynamo would guard on the cache's contents, and compile again when another call changed them."""
    from groupconv.ops import arguments

    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 2, 3, 3)
    arguments._PASSED_CHECKS.clear()
    compiled = torch.compile(lambda x: groupconv.conv2d(x, w, padding=1, groups=2), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), torch.nn.functional.conv2d(x, w, padding=1, groups=2))
    assert len(arguments._PASSED_CHECKS) == 0
