"""Correctness of the Triton backend on every grouped conv of the model zoo, on a GPU, at the benchmark's batch.

For each layer of groupconv.benchmark.zoo_layer_shapes() and each layout (NCHW, channels_last): forward,
gradient of input and gradient of weight through groupconv's layer forced onto the triton backend, against
torch's layer (ChannelShuffle + Conv2d) in float64 on the same device, as ||ours - ref|| / ||ref||.
TF32 stays at torch's default (on), as benchmarks/bench_triton.py runs it, so the same kernel
specialisations are compiled here (in parallel processes) and the benchmark afterwards finds them in
Triton's cache. Expected: direct kernels (full float32) ~1e-7, implicit GEMM in TF32 ~3e-4.

    PYTHONPATH=src python3 experiments/issue7-gpu-check/zoo_check.py [--workers 8] [--batch 32]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
import traceback

LIMIT = 2e-3  # over this (or NaN) a row is marked BAD


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def work(job):
    index, workers, batch = job
    import torch

    from groupconv import ops
    from groupconv.benchmark import zoo_layer_shapes
    from groupconv.ops.backends.triton import backend as triton_backend

    rows = []
    for i, shape in enumerate(zoo_layer_shapes()):
        if i % workers != index:
            continue
        for layout in ("nchw", "cl"):
            row = dict(i=i, label=shape.label(), layout=layout)
            try:
                torch.manual_seed(i)
                ours = shape.groupconv_layer().to("cuda")
                ref = shape.torch_layer(ours).to("cuda", torch.float64)
                ref_conv = ref if isinstance(ref, torch.nn.Conv2d) else ref[1]
                x = torch.randn(batch, shape.in_channels, shape.height, shape.width, device="cuda")
                if layout == "cl":
                    x = x.contiguous(memory_format=torch.channels_last)
                row["form"] = ("gemm" if triton_backend.uses_implicit_gemm(
                    shape.in_channels // shape.groups, shape.out_channels // shape.groups) else "direct")
                start = time.perf_counter()
                with ops.use_backend("triton"), torch.no_grad():  # the benchmark's forward call
                    ours(x)
                xg = x.detach().requires_grad_()
                with ops.use_backend("triton"):
                    y = ours(xg)
                grad = torch.randn_like(y)
                with ops.use_backend("triton"):
                    y.backward(grad)
                torch.cuda.synchronize()
                row["first_s"] = time.perf_counter() - start  # compile (or cache load) + run
                xr = x.detach().double().requires_grad_()
                yr = ref(xr)
                yr.backward(grad.double())
                row["fwd"] = _rel(y, yr)
                row["dx"] = _rel(xg.grad, xr.grad)
                row["dw"] = _rel(ours.weight.grad, ref_conv.weight.grad)
                row["cl_out"] = y.is_contiguous(memory_format=torch.channels_last) if layout == "cl" else None
                worst = max(row["fwd"], row["dx"], row["dw"])
                row["ok"] = worst == worst and worst <= LIMIT and row["cl_out"] is not False
            except Exception as error:  # a compile error: keep going, report it
                row["error"] = f"{type(error).__name__}: {str(error)[:1500]}"
                row["trace"] = traceback.format_exc()[-3000:]
                row["ok"] = False
            print(_format(row), flush=True)
            rows.append(row)
    return rows


def _format(row) -> str:
    head = f"{row['i']:3d} {row['label']:48} {row['layout']:4} {row.get('form', '?'):6}"
    if "error" in row:
        return f"{head} ERROR {row['error'][:300]}"
    flag = "ok " if row["ok"] else "BAD"
    return (f"{head} {flag} fwd {row['fwd']:.1e} dx {row['dx']:.1e} dw {row['dw']:.1e} "
            f"first {row['first_s']:5.1f}s" + ("" if row["cl_out"] is None else f" cl_out {row['cl_out']}"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(args.workers) as pool:
        results = pool.map(work, [(k, args.workers, args.batch) for k in range(args.workers)])
    rows = sorted((row for rows in results for row in rows), key=lambda r: (r["i"], r["layout"] != "nchw"))
    print(f"\n=== zoo check, sorted ({time.perf_counter() - start:.0f}s, {args.workers} processes)")
    for row in rows:
        print(_format(row))
    bad = [row for row in rows if not row["ok"]]
    for row in bad:
        if "trace" in row:
            print(f"\n--- {row['label']} {row['layout']}\n{row['trace']}")
    print(f"\nzoo check: {len(rows) - len(bad)}/{len(rows)} ok (limit {LIMIT:g} relative L2, TF32 default on)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
