"""groupconv.signal.convolve against numpy.convolve and scipy.signal.convolve2d."""

import numpy as np
import pytest
import scipy.signal
import torch
from hypothesis import given
from hypothesis import strategies as st

from groupconv.signal import convolve

lengths = st.integers(1, 12)


@given(m=lengths, n=lengths, seed=st.integers(0, 2**16))
def test_1d_matches_numpy_in_every_mode(m, n, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(m), rng.standard_normal(n)
    np.testing.assert_allclose(convolve(a, b, "full"), np.convolve(a, b, "full"), atol=1e-12)
    np.testing.assert_allclose(convolve(a, b, "full"), convolve(b, a, "full"), atol=1e-12)  # commutative
    if m >= n:  # numpy swaps the arguments when b is longer; groupconv's (and MATLAB's) valid does not
        np.testing.assert_allclose(convolve(a, b, "valid"), np.convolve(a, b, "valid"), atol=1e-12)
        np.testing.assert_allclose(convolve(a, b, "same"), np.convolve(a, b, "same"), atol=1e-12)
    np.testing.assert_allclose(convolve(a, b, "same"), scipy.signal.convolve(a, b, "same"), atol=1e-12)
    assert convolve(a, b, "full").shape == (m + n - 1,)
    assert convolve(a, b, "valid").shape == (max(m - n + 1, 0),)


@given(shape_a=st.tuples(st.integers(1, 7), st.integers(1, 7)), shape_b=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       seed=st.integers(0, 2**16))
def test_2d_matches_scipy_in_every_mode(shape_a, shape_b, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
    for mode in ("full", "same"):
        np.testing.assert_allclose(convolve(a, b, mode), scipy.signal.convolve2d(a, b, mode), atol=1e-12)
    if all(x >= y for x, y in zip(shape_a, shape_b)):
        np.testing.assert_allclose(convolve(a, b, "valid"), scipy.signal.convolve2d(a, b, "valid"), atol=1e-12)
    np.testing.assert_allclose(convolve(a, b, "full"), convolve(b, a, "full"), atol=1e-12)


def test_valid_is_not_commutative():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, -1.0])
    np.testing.assert_allclose(convolve(a, b, "valid"), [1.0, 1.0, 1.0])
    assert convolve(b, a, "valid").shape == (0,)


def test_seed_example_by_hand():
    # (1, 2, 3) * (0, 1, 0.5): full = [0, 1, 2.5, 4, 1.5]
    np.testing.assert_allclose(convolve([1, 2, 3], [0, 1, 0.5]), [0, 1, 2.5, 4, 1.5])


def test_integer_inputs_keep_an_integer_result():
    out = convolve(np.array([1, 2, 3]), np.array([4, 5]))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, np.convolve([1, 2, 3], [4, 5]))


def test_tensors_in_tensors_out_and_differentiable():
    a = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    out = convolve(a, b, "full")
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.detach().numpy(), np.convolve(a.detach().numpy(), b.detach().numpy()))
    assert torch.autograd.gradcheck(lambda a, b: convolve(a, b, "same"), (a, b))


@pytest.mark.parametrize(
    "a, b, mode, exception, pattern",
    [
        ([1.0, 2.0], [1.0], "circular", ValueError, r"mode='circular' must be one of"),
        (np.ones((2, 2, 2)), np.ones(2), "full", ValueError, r"a must be 1-D or 2-D, got a.ndim=3"),
        (np.ones(3), np.ones((2, 2)), "full", ValueError, r"a.ndim=1 and b.ndim=2"),
        (np.ones(0), np.ones(2), "full", ValueError, r"a is empty"),
        (np.ones(3, dtype=complex), np.ones(2), "full", TypeError, r"a.dtype=torch.complex128 is not supported"),
    ],
)
def test_bad_input(a, b, mode, exception, pattern):
    with pytest.raises(exception, match=pattern):
        convolve(a, b, mode)
