import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Hypothesis: no per-example deadline (first calls compile/allocate), a fixed budget, a CI profile that
# derandomises so a red CI run can be reproduced exactly.
settings.register_profile(
    "default", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
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


@pytest.fixture(autouse=True)
def _seed_and_automatic_dispatch():
    torch.manual_seed(0)
    yield
