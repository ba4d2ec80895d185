"""Which backend runs the gradients of a conv forced onto triton by `with use_backend("triton")` around forward and
backward, on CUDA tensors (autograd runs a CUDA backward on a device thread), and torch's stashed-context API.

    PYTHONPATH=src GROUPCONV_TUNE=0 python3 experiments/issue7-gpu-check/probe_backward.py
"""

import inspect
import threading

import torch

import groupconv
from groupconv import ops

calls = []
for name in ops.list_backends():
    backend = ops.get_backend(name)
    for method in ("conv_forward", "conv_backward", "conv_backward_input", "conv_backward_weight"):
        original = getattr(backend, method)

        def spy(*args, _b=name, _m=method, _o=original):
            calls.append((_b, _m, threading.current_thread().name, ops.forced_backend(),
                          torch._C._current_graph_task_id()))
            return _o(*args)

        setattr(backend, method, spy)

print("torch", torch.__version__, "| _engine_run_backward stashes context:",
      "_stash_obj_in_tls(\"context\"" in inspect.getsource(torch.autograd.graph._engine_run_backward),
      "| removes it:", "_remove_obj_from_tls" in inspect.getsource(torch.autograd.graph._engine_run_backward))
for device in ("cuda", "cpu"):
    for label, (c, groups) in {"depthwise": (8, 8), "wide": (32, 2)}.items():
        if device == "cpu" and label == "wide":
            continue
        calls.clear()
        x = torch.randn(2, c, 6, 6, device=device, requires_grad=True)
        w = torch.randn(c, c // groups, 3, 3, device=device, requires_grad=True)
        backend = "triton" if device == "cuda" else "reference"
        with ops.use_backend(backend):
            out = groupconv.conv2d(x, w, padding=1, groups=groups)
        with ops.use_backend(backend):
            out.backward(torch.randn_like(out))
        print(f"{device} {label}, forced {backend!r} around forward and backward:")
        for call in calls:
            print("   backend %-10s %-22s thread %-12s forced_backend() %-10r graph task %d" % call)
