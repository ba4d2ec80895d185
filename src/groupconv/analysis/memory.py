"""Peak memory of a CPU computation: the check behind "never allocate more in forward+backward than torch would".

torch has no CPU counterpart of torch.cuda.max_memory_allocated. Its profiler, with profile_memory, records every
allocation and free of torch's CPU allocator with its time: tensors, and oneDNN's reorder and scratch buffers, which
PyTorch hands to that allocator too. The running sum of those records, at its highest, is the peak of what `fn`
held beyond what existed before it. Memory a kernel takes from malloc directly is not seen; groupconv's kernels take
only small per-thread buffers that way.
"""

from __future__ import annotations

from typing import Callable

import torch


def peak_allocated_bytes(fn: Callable[[], object]) -> int:
    """The most bytes that tensors allocated while fn() runs held at one time (freed ones no longer count)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        fn()
    # The raw allocation records, with their addresses: the function events carry only per-op totals, and a free of
    # memory allocated before fn() (an earlier step's gradient, which the step drops first) must not count.
    records = sorted((node.start_time_ns, fields.ptr, fields.alloc_size)
                     for node in _walk(profiler.profiler.kineto_results.experimental_event_tree())
                     for kind, fields in [node.typed]
                     if kind == torch._C._profiler._EventType.Allocation and fields.device.type == "cpu")
    live: dict[int, int] = {}
    held = peak = 0
    for _, address, nbytes in records:
        if nbytes > 0:
            live[address] = nbytes
        elif address in live:
            nbytes = -live.pop(address)
        else:
            continue
        held += nbytes
        peak = max(peak, held)
    return peak


def _walk(events):
    for event in events:
        yield event
        yield from _walk(event.children)
