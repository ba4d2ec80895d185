import os
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, settings

# The tuner times backends against each other on first sight of a problem: tests run in priority order
# (deterministic, and no timing runs per hypothesis example) and never write into the user's cache;
# tests/test_tuning.py turns it on explicitly.
os.environ.setdefault("GROUPCONV_TUNE", "0")
os.environ.setdefault("GROUPCONV_CACHE_DIR", tempfile.mkdtemp(prefix="groupconv-test-cache-"))

# Without a GPU, tests/test_triton.py runs the Triton kernels in Triton's interpreter. Triton reads
# TRITON_INTERPRET when it is imported (its own standard-library functions are decorated then) and
# `import groupconv` imports it (through torch.utils.flop_counter), so the variable is set here, before
# any test module is collected. It changes nothing else: CPU tensors never reach triton otherwise
# (inductor's CPU code is C++; tests/test_compile_export.py passes with it set), and the backend runs
# CPU tensors only under its own opt-in, GROUPCONV_TRITON_ON_CPU, which test_triton.py sets per test.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Hypothesis: no per-example deadline (first calls compile/allocate), a fixed budget, a CI profile that
# derandomises so a red CI run can be reproduced exactly.
settings.register_profile(
    "default",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

# Tolerances per dtype, relative to the largest magnitude of the float64 oracle: float32 and
# half types differ from it by rounding of inputs (bf16: 8 bits of mantissa, fp16: 11) and of the result.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.double(), expected.double()
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    error = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert error <= TOLERANCE[dtype] * scale, f"{what}: max error {error:.3g} > {TOLERANCE[dtype]:.1g} x {scale:.3g}"


def backends_supporting(problem) -> list[str]:
    """The registered backends that can run `problem` (an ops.ConvProblem or ops.ShuffleProblem)."""
    from groupconv import ops

    return [name for name in ops.list_backends() if not ops.get_backend(name).not_supported_reasons(problem)]


def skip_unless_supported(backend, problem) -> None:
    """Skip a test that forces `backend` on a problem the backend refuses (None: automatic, always runs)."""
    from groupconv import ops

    if backend is not None:
        reasons = ops.get_backend(backend).not_supported_reasons(problem)
        if reasons:
            pytest.skip(f"backend {backend!r} does not run this problem: {'; '.join(reasons)}")


def pytest_configure(config):
    config.addinivalue_line("markers", "native: needs groupconv's compiled CPU kernels (skipped where they are "
                                       "unavailable)")


@pytest.fixture(scope="session", autouse=True)
def native_kernels():
    """Build (or load) the native kernels once, when the first test runs: never while tests are collected."""
    from groupconv.ops.backends import native

    return native.load()


def pytest_runtest_setup(item):
    if item.get_closest_marker("native") is not None:
        from groupconv.ops.backends import native

        reason = native.unavailable_reason()
        if reason is not None:
            pytest.skip(f"native kernels unavailable: {reason}")


@pytest.fixture(autouse=True)
def _seed_and_automatic_dispatch():
    """A fixed seed, and automatic choices made afresh: a test that changes what a backend accepts (a size
    threshold, an unavailable library) does not inherit the choices another test made."""
    from groupconv import ops

    torch.manual_seed(0)
    ops.dispatch.forget_choices()
    yield


@pytest.fixture
def fused_kernel_on_small_inputs(monkeypatch):
    """The native batch norm, where it is built, on the tests' small activations too (it leaves those below a size
    to torch's ops)."""
    # (imported here: groupconv is imported only after the environment above is set)
    from groupconv.ops.backends.native import batch_norm as native_batch_norm
    from groupconv.ops.dispatch import forget_choices

    monkeypatch.setattr(native_batch_norm, "NATIVE_MIN_VALUES", 0)
    forget_choices()
    yield
    forget_choices()
