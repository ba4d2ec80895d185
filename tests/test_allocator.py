"""keep_freed_memory: a large tensor allocated again costs no page faults (glibc keeps the freed memory)."""

import json
import os
import subprocess
import sys

import pytest
import torch

import groupconv
from groupconv.inference import optimize_for_inference
from groupconv.ops import allocator
from groupconv.ops.tuning import disk_cache

FAULTS_OF_REPEATED_ALLOCATION = """
import json, resource, sys, torch, groupconv
from groupconv.ops.allocator import keep_freed_memory
applied = None
if sys.argv[1] == "keep":
    applied = keep_freed_memory()
elif sys.argv[1] == "accelerate":
    groupconv.accelerate(torch.nn.Conv2d(4, 4, 3, groups=2))
    applied = keep_freed_memory()  # (asked again: True where accelerate applied it)
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16, 1024, 1024)  # 64 MiB: above glibc's largest mmap threshold
    x.fill_(1.0)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def page_faults(mode: str, **environment) -> dict:
    # A subprocess: the setting is process-wide and would change every later test's memory behaviour.
    result = subprocess.run([sys.executable, "-c", FAULTS_OF_REPEATED_ALLOCATION, mode], capture_output=True,
                            text=True, check=True, timeout=60, env=os.environ | environment)
    return json.loads(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and ru_minflt are Linux facts")
def test_a_repeated_large_allocation_faults_its_pages_once():
    pages = 64 * 1024 * 1024 // 4096
    default = page_faults("default")
    assert min(default["faults"]) > pages // 2  # glibc's default: every allocation is a fresh mmap, faulted anew
    kept = page_faults("keep")
    assert kept["applied"] is True
    assert kept["faults"][-1] < pages // 20  # the freed memory is reused: (almost) no page is faulted again



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and ru_minflt are Linux facts")
def test_accelerate_keeps_freed_memory_unless_the_environment_says_not():
    pages = 64 * 1024 * 1024 // 4096
    accelerated = page_faults("accelerate")
    assert accelerated["applied"] is True and accelerated["faults"][-1] < pages // 20
    refused = page_faults("keep", GROUPCONV_KEEP_FREED_MEMORY="0")
    assert refused["applied"] is False and min(refused["faults"]) > pages // 2


def test_decisions_measured_with_freed_memory_kept_have_a_cache_file_of_their_own(monkeypatch):
    monkeypatch.setattr(allocator, "_kept", False)
    default_file = disk_cache.cache_path()
    monkeypatch.setattr(allocator, "_kept", True)
    kept_file = disk_cache.cache_path()
    assert kept_file != default_file and kept_file.parent == default_file.parent
    assert "freedmemorykept" in kept_file.name


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_keep_freed_memory_must_be_a_bool(value):
    model = torch.nn.Conv2d(4, 4, 3)
    with pytest.raises(TypeError, match=f"keep_freed_memory={value!r}"):
        groupconv.accelerate(model, keep_freed_memory=value)
    with pytest.raises(TypeError, match=f"keep_freed_memory={value!r}"):
        optimize_for_inference(model, torch.randn(1, 4, 8, 8), keep_freed_memory=value)


RESIDENT_AFTER_RELEASE = """
import json, torch
from pathlib import Path
from groupconv.ops.allocator import keep_freed_memory, release_free_memory
def resident_mib():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024
assert keep_freed_memory()
before = resident_mib()
x = torch.ones(32, 1024, 1024)  # 128 MiB, touched
del x
kept = resident_mib() - before
released = release_free_memory()
print(json.dumps({"kept": kept, "released": released, "after": resident_mib() - before}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim and /proc are Linux facts")
def test_release_free_memory_gives_kept_memory_back():
    result = json.loads(subprocess.run([sys.executable, "-c", RESIDENT_AFTER_RELEASE], capture_output=True, text=True,
                                       check=True, timeout=60).stdout)
    assert result["kept"] > 100  # freed, yet resident: kept for the next allocations
    assert result["released"] is True and result["after"] < 20
