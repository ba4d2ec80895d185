"""keep_freed_memory: a large tensor allocated again costs no page faults (glibc keeps the freed memory)."""

import json
import subprocess
import sys

import pytest

FAULTS_OF_REPEATED_ALLOCATION = """
import json, resource, sys, torch
from groupconv.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16, 1024, 1024)  # 64 MiB: above glibc's largest mmap threshold
    x.fill_(1.0)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def page_faults(mode: str) -> dict:
    # A subprocess: the setting is process-wide and would change every later test's memory behaviour.
    result = subprocess.run([sys.executable, "-c", FAULTS_OF_REPEATED_ALLOCATION, mode], capture_output=True,
                            text=True, check=True, timeout=60)
    return json.loads(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and ru_minflt are Linux facts")
def test_a_repeated_large_allocation_faults_its_pages_once():
    pages = 64 * 1024 * 1024 // 4096
    default = page_faults("default")
    assert min(default["faults"]) > pages // 2  # glibc's default: every allocation is a fresh mmap, faulted anew
    kept = page_faults("keep")
    assert kept["applied"] is True
    assert kept["faults"][-1] < pages // 20  # the freed memory is reused: (almost) no page is faulted again

