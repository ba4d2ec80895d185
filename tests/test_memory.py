"""ops.tuning.memory: the peak of what a computation holds, as the tuner and the layer benchmark measure it."""

import pytest
import torch
import torch.nn.functional as F

from groupconv.ops.tuning import memory

pytestmark = pytest.mark.native  # peak memory needs the native module (skipped without it: conftest.py)

MIB = 1 << 20


def test_the_peak_is_what_was_held_at_once_by_what_was_allocated_inside():
    before = torch.empty(5 * MIB, dtype=torch.uint8)

    def work():
        nonlocal before
        before = None  # freed inside, allocated outside: neither counts
        a = torch.empty(MIB, dtype=torch.uint8)
        b = torch.empty(2 * MIB, dtype=torch.uint8)
        del a, b
        torch.empty(MIB, dtype=torch.uint8)

    assert memory.peak_allocated_bytes(work) == 3 * MIB


def test_each_measurement_starts_from_nothing():
    kept = []
    assert memory.peak_allocated_bytes(lambda: kept.append(torch.empty(2 * MIB, dtype=torch.uint8))) == 2 * MIB
    # the block kept from the first measurement is freed inside the second: it does not lower the second's count
    assert memory.peak_allocated_bytes(lambda: (kept.clear(), torch.empty(MIB, dtype=torch.uint8))) == MIB
    assert memory.peak_allocated_bytes(lambda: None) == 0


def test_a_failing_computation_still_ends_the_measurement():
    with pytest.raises(ValueError, match="inside"):
        memory.peak_allocated_bytes(lambda: (torch.empty(MIB), (_ for _ in ()).throw(ValueError("inside"))))
    assert memory.peak_allocated_bytes(lambda: torch.empty(MIB, dtype=torch.uint8)) == MIB


def test_torchs_own_convolution_is_counted_with_its_buffers():
    """oneDNN's buffers come from torch's allocator: a channels_last conv of an NCHW input holds the output and more."""
    x, w = torch.randn(8, 64, 28, 28), torch.randn(64, 4, 3, 3)
    output_bytes = 8 * 64 * 28 * 28 * 4
    peak = memory.peak_allocated_bytes(lambda: F.conv2d(x, w, padding=1, groups=16))
    assert peak >= output_bytes
