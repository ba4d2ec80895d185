"""The implementations behind the dispatcher, one module (or folder) each: torch's kernels (aten), batched matrix
multiplies (gemm), the specification (reference), groupconv's compiled CPU kernels (native/), Triton kernels for
CUDA (triton/), and two strategies that combine the others (split_gradients, via_channels_last).

Nothing is imported here, so that importing one backend does not import the rest (groupconv.ops registers them).
"""
