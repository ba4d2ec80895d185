"""Triton kernels for grouped 2-D convolution: forward, gradient of the input, gradient of the weight.

Each op comes in two forms, and the wrapper (backend.py) picks one per call:

- implicit GEMM, for wide groups: per group, the conv is a matrix product whose reduction runs over
  (input channel, kernel tap) pairs. A program owns a [pixels x channels] tile of its result and
  accumulates `tl.dot`s of gathered tiles (the im2col matrix is never built in memory), in float32.
- direct, for narrow groups and depthwise convs, where a 16-wide dot tile would be mostly padding:
  a program owns a block of pixels of one (sample, channel) pair (or, for the weight gradient, a
  block of one output channel's taps) and multiplies-and-sums gathered tiles on the vector units.

Every tensor is addressed through its strides, so NCHW, channels_last and any strided view are
read in place. The fused channel shuffle is an index map on the input channel (`_source_channel`):
the forward and weight-gradient kernels read through it and the input-gradient kernels write
through it, so the shuffled tensor never exists. A 1-D conv arrives here as a 2-D conv of height 1.

The three gather helpers are shared: `_input_patches` (the im2col tile: pixels x (in channel, tap))
serves the forward and the weight gradient in both forms; `_output_gradient_patches` (the
transposed-conv gather: input pixels x (out channel, tap)) serves the input gradient in both forms.
Index arithmetic is 32-bit; the backend refuses tensors of 2**31 elements or more.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _source_channel(channel, channels, SHUFFLE_GROUPS: tl.constexpr):
    """Channel of the stored input that channel `channel` of channel_shuffle(input, SHUFFLE_GROUPS) holds.

    reference.channel_shuffle: output channel j * g + i holds input channel i * (C / g) + j.
    """
    if SHUFFLE_GROUPS > 1:
        return (channel % SHUFFLE_GROUPS) * (channels // SHUFFLE_GROUPS) + channel // SHUFFLE_GROUPS
    else:
        return channel


@triton.jit
def _input_patches(x_ptr, n, in_h0, in_w0, pixel_mask, cols, col_mask, group,
                   C, H, W, in_per_group, sxn, sxc, sxh, sxw, dil_h, dil_w,
                   KH: tl.constexpr, KW: tl.constexpr, SHUFFLE_GROUPS: tl.constexpr):
    """The im2col tile [pixels, cols]: cols index (in channel of the group, kh, kw) like a contiguous weight.

    n, in_h0, in_w0: per-pixel sample and top-left input position (output position * stride - padding).
    Zero outside the input (padding) and outside the masks.
    """
    in_channel = cols // (KH * KW)
    tap = cols % (KH * KW)
    kh = tap // KW
    kw = tap % KW
    channel = _source_channel(group * in_per_group + in_channel, C, SHUFFLE_GROUPS)
    ih = in_h0[:, None] + kh[None, :] * dil_h
    iw = in_w0[:, None] + kw[None, :] * dil_w
    mask = pixel_mask[:, None] & col_mask[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    offsets = n[:, None] * sxn + channel[None, :] * sxc + ih * sxh + iw * sxw
    return tl.load(x_ptr + offsets, mask=mask, other=0.0)


@triton.jit
def _output_gradient_patches(go_ptr, n, ih, iw, pixel_mask, cols, col_mask, group,
                             OH, OW, out_per_group, sgn, sgc, sgh, sgw,
                             stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                             KH: tl.constexpr, KW: tl.constexpr):
    """The transposed-conv gather [input pixels, cols]: cols index (out channel of the group, kh, kw).

    Input pixel (ih, iw) meets tap (kh, kw) of output pixel (oh, ow) when ih + pad = oh * stride + kh * dil;
    the tile holds grad_output there, and zero where no output pixel meets that tap.
    """
    out_channel = cols // (KH * KW)
    tap = cols % (KH * KW)
    kh = tap // KW
    kw = tap % KW
    th = ih[:, None] + pad_h - kh[None, :] * dil_h
    tw = iw[:, None] + pad_w - kw[None, :] * dil_w
    oh = th // stride_h
    ow = tw // stride_w
    mask = (pixel_mask[:, None] & col_mask[None, :] & (th >= 0) & (tw >= 0) & (th % stride_h == 0)
            & (tw % stride_w == 0) & (oh < OH) & (ow < OW))
    offsets = n[:, None] * sgn + (group * out_per_group + out_channel)[None, :] * sgc + oh * sgh + ow * sgw
    return tl.load(go_ptr + offsets, mask=mask, other=0.0)


@triton.jit
def _dot(a, b, acc, DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """acc + a @ b in float32. DOT_IN_FP32 upcasts the operands first (Triton's interpreter mis-multiplies bf16)."""
    if DOT_IN_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=DOT_PRECISION)
    else:
        return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


# ----------------------------------------------------------------------------------------------- forward
@triton.jit
def conv_forward_implicit_gemm_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    N, C, H, W, OH, OW, in_per_group, out_per_group,
    sxn, sxc, sxh, sxw, swm, swc, swh, sww, syn, syc, syh, syw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, SHUFFLE_GROUPS: tl.constexpr, HAS_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Grid (pixel blocks over N*OH*OW, out-channel blocks of a group, groups): y tile = patches @ weight^T."""
    group = tl.program_id(2)
    pixels = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    pixel_mask = pixels < N * OH * OW
    n = pixels // (OH * OW)
    oh = (pixels % (OH * OW)) // OW
    ow = pixels % OW
    outs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    out_mask = outs < out_per_group
    m = group * out_per_group + outs
    reduction = in_per_group * KH * KW
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, reduction, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < reduction
        a = _input_patches(x_ptr, n, oh * stride_h - pad_h, ow * stride_w - pad_w, pixel_mask, ks, k_mask, group,
                           C, H, W, in_per_group, sxn, sxc, sxh, sxw, dil_h, dil_w, KH, KW, SHUFFLE_GROUPS)
        tap = ks % (KH * KW)
        w_offsets = m[None, :] * swm + (ks // (KH * KW))[:, None] * swc + (tap // KW)[:, None] * swh \
            + (tap % KW)[:, None] * sww
        b = tl.load(w_ptr + w_offsets, mask=k_mask[:, None] & out_mask[None, :], other=0.0)
        acc = _dot(a, b, acc, DOT_PRECISION, DOT_IN_FP32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + m, mask=out_mask, other=0.0).to(tl.float32)[None, :]
    y_offsets = n[:, None] * syn + m[None, :] * syc + oh[:, None] * syh + ow[:, None] * syw
    tl.store(y_ptr + y_offsets, acc.to(y_ptr.dtype.element_ty), mask=pixel_mask[:, None] & out_mask[None, :])


@triton.jit
def conv_forward_direct_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    C, H, W, M, OH, OW, in_per_group, out_per_group,
    sxn, sxc, sxh, sxw, swm, swc, swh, sww, syn, syc, syh, syw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, SHUFFLE_GROUPS: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Grid (N*M, pixel blocks of OH*OW): one output channel of one sample, BLOCK_T (channel, tap) pairs at a time."""
    n = tl.program_id(0) // M
    m = tl.program_id(0) % M
    group = m // out_per_group
    pixels = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_mask = pixels < OH * OW
    oh = pixels // OW
    ow = pixels % OW
    samples = tl.zeros((BLOCK_P,), dtype=tl.int32) + n
    reduction = in_per_group * KH * KW
    acc = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for t0 in range(0, reduction, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        t_mask = ts < reduction
        patches = _input_patches(x_ptr, samples, oh * stride_h - pad_h, ow * stride_w - pad_w, pixel_mask, ts,
                                 t_mask, group, C, H, W, in_per_group, sxn, sxc, sxh, sxw, dil_h, dil_w, KH, KW,
                                 SHUFFLE_GROUPS)
        tap = ts % (KH * KW)
        weights = tl.load(w_ptr + m * swm + (ts // (KH * KW)) * swc + (tap // KW) * swh + (tap % KW) * sww,
                          mask=t_mask, other=0.0)
        acc += tl.sum(patches.to(tl.float32) * weights.to(tl.float32)[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + m).to(tl.float32)
    tl.store(y_ptr + n * syn + m * syc + oh * syh + ow * syw, acc.to(y_ptr.dtype.element_ty), mask=pixel_mask)


# ------------------------------------------------------------------------------------- gradient of input
@triton.jit
def conv_backward_input_implicit_gemm_kernel(
    go_ptr, w_ptr, gi_ptr,
    N, C, H, W, OH, OW, in_per_group, out_per_group,
    sgn, sgc, sgh, sgw, swm, swc, swh, sww, sin, sic, sih, siw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, SHUFFLE_GROUPS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Grid (input-pixel blocks over N*H*W, in-channel blocks of a group, groups): grad tile = gathered grad_output @ weight."""
    group = tl.program_id(2)
    pixels = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    pixel_mask = pixels < N * H * W
    n = pixels // (H * W)
    ih = (pixels % (H * W)) // W
    iw = pixels % W
    ins = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_mask = ins < in_per_group
    reduction = out_per_group * KH * KW
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, reduction, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < reduction
        a = _output_gradient_patches(go_ptr, n, ih, iw, pixel_mask, ks, k_mask, group, OH, OW, out_per_group,
                                     sgn, sgc, sgh, sgw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, KH, KW)
        tap = ks % (KH * KW)
        w_offsets = (group * out_per_group + ks // (KH * KW))[:, None] * swm + ins[None, :] * swc \
            + (tap // KW)[:, None] * swh + (tap % KW)[:, None] * sww
        b = tl.load(w_ptr + w_offsets, mask=k_mask[:, None] & in_mask[None, :], other=0.0)
        acc = _dot(a, b, acc, DOT_PRECISION, DOT_IN_FP32)
    # Channel c of the shuffled input the conv read is channel _source_channel(c) of the stored input.
    channel = _source_channel(group * in_per_group + ins, C, SHUFFLE_GROUPS)
    gi_offsets = n[:, None] * sin + channel[None, :] * sic + ih[:, None] * sih + iw[:, None] * siw
    tl.store(gi_ptr + gi_offsets, acc.to(gi_ptr.dtype.element_ty), mask=pixel_mask[:, None] & in_mask[None, :])


@triton.jit
def conv_backward_input_direct_kernel(
    go_ptr, w_ptr, gi_ptr,
    C, H, W, OH, OW, in_per_group, out_per_group,
    sgn, sgc, sgh, sgw, swm, swc, swh, sww, sin, sic, sih, siw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, SHUFFLE_GROUPS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Grid (N*C, pixel blocks of H*W): one (shuffled) input channel of one sample, BLOCK_T (out channel, tap) pairs at a time."""
    n = tl.program_id(0) // C
    c = tl.program_id(0) % C
    group = c // in_per_group
    in_channel = c % in_per_group
    pixels = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pixel_mask = pixels < H * W
    ih = pixels // W
    iw = pixels % W
    samples = tl.zeros((BLOCK_P,), dtype=tl.int32) + n
    reduction = out_per_group * KH * KW
    acc = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for t0 in range(0, reduction, BLOCK_T):
        ts = t0 + tl.arange(0, BLOCK_T)
        t_mask = ts < reduction
        patches = _output_gradient_patches(go_ptr, samples, ih, iw, pixel_mask, ts, t_mask, group, OH, OW,
                                           out_per_group, sgn, sgc, sgh, sgw, stride_h, stride_w, pad_h, pad_w,
                                           dil_h, dil_w, KH, KW)
        tap = ts % (KH * KW)
        weights = tl.load(w_ptr + (group * out_per_group + ts // (KH * KW)) * swm + in_channel * swc
                          + (tap // KW) * swh + (tap % KW) * sww, mask=t_mask, other=0.0)
        acc += tl.sum(patches.to(tl.float32) * weights.to(tl.float32)[None, :], axis=1)
    channel = _source_channel(c, C, SHUFFLE_GROUPS)
    tl.store(gi_ptr + n * sin + channel * sic + ih * sih + iw * siw, acc.to(gi_ptr.dtype.element_ty),
             mask=pixel_mask)


# ------------------------------------------------------------------------------------ gradient of weight
# Both forms reduce over every output pixel of every sample (N*OH*OW), which for a large batch is
# long and leaves few programs: the pixel range is split into SPLIT parts that write float32
# partial sums to partial[split, m, (in channel, kh, kw)]; the wrapper adds the parts
# (deterministic, unlike atomics).
@triton.jit
def conv_backward_weight_implicit_gemm_kernel(
    go_ptr, x_ptr, partial_ptr,
    N, C, H, W, OH, OW, M, in_per_group, out_per_group, pixels_per_split, splits,
    sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, SHUFFLE_GROUPS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Grid (out-channel blocks of a group, (in channel, tap) blocks, groups * splits): grad_output^T @ patches."""
    group = tl.program_id(2) // splits
    split = tl.program_id(2) % splits
    outs = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    out_mask = outs < out_per_group
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_count = in_per_group * KH * KW
    col_mask = cols < col_count
    total = N * OH * OW
    start = split * pixels_per_split
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for p0 in range(start, start + pixels_per_split, BLOCK_K):
        pixels = p0 + tl.arange(0, BLOCK_K)
        pixel_mask = pixels < total
        n = pixels // (OH * OW)
        oh = (pixels % (OH * OW)) // OW
        ow = pixels % OW
        go_offsets = (group * out_per_group + outs)[:, None] * sgc + (n * sgn + oh * sgh + ow * sgw)[None, :]
        a = tl.load(go_ptr + go_offsets, mask=out_mask[:, None] & pixel_mask[None, :], other=0.0)
        b = _input_patches(x_ptr, n, oh * stride_h - pad_h, ow * stride_w - pad_w, pixel_mask, cols, col_mask, group,
                           C, H, W, in_per_group, sxn, sxc, sxh, sxw, dil_h, dil_w, KH, KW, SHUFFLE_GROUPS)
        acc = _dot(a, b, acc, DOT_PRECISION, DOT_IN_FP32)
    m = group * out_per_group + outs
    offsets = split * M * col_count + m[:, None] * col_count + cols[None, :]
    tl.store(partial_ptr + offsets, acc, mask=out_mask[:, None] & col_mask[None, :])


@triton.jit
def conv_backward_weight_direct_kernel(
    go_ptr, x_ptr, partial_ptr,
    N, C, H, W, OH, OW, M, in_per_group, out_per_group, pixels_per_split,
    sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, SHUFFLE_GROUPS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Grid (M, (in channel, tap) blocks, splits): one output channel's taps, summed over a range of pixels."""
    m = tl.program_id(0)
    group = m // out_per_group
    cols = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    col_count = in_per_group * KH * KW
    col_mask = cols < col_count
    split = tl.program_id(2)
    total = N * OH * OW
    start = split * pixels_per_split
    acc = tl.zeros((BLOCK_P, BLOCK_T), dtype=tl.float32)
    for p0 in range(start, start + pixels_per_split, BLOCK_P):
        pixels = p0 + tl.arange(0, BLOCK_P)
        pixel_mask = pixels < total
        n = pixels // (OH * OW)
        oh = (pixels % (OH * OW)) // OW
        ow = pixels % OW
        grad = tl.load(go_ptr + n * sgn + m * sgc + oh * sgh + ow * sgw, mask=pixel_mask, other=0.0)
        patches = _input_patches(x_ptr, n, oh * stride_h - pad_h, ow * stride_w - pad_w, pixel_mask, cols, col_mask,
                                 group, C, H, W, in_per_group, sxn, sxc, sxh, sxw, dil_h, dil_w, KH, KW,
                                 SHUFFLE_GROUPS)
        acc += grad.to(tl.float32)[:, None] * patches.to(tl.float32)
    offsets = split * M * col_count + m * col_count + cols
    tl.store(partial_ptr + offsets, tl.sum(acc, axis=0), mask=col_mask)
