// Small inference-time ops for CPU where torch's own kernels run far from the memory floor on a forward's shapes:
// see inference_ops.cpp.
#pragma once

#include <torch/extension.h>

// Max pooling of a channels_last (N, C, H, W) input (no dilation), the output channels_last: torch's
// max_pool2d(input, kernel_size, stride, padding, 1, ceil_mode) without the indices. A window holding a NaN gives
// NaN, as torch's does.
at::Tensor max_pool2d_nhwc(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool ceil_mode);

// input (M, K) @ weight (N, K)^T + bias, for a small M (a classifier's batch): each row of the weight read once, the
// rows split between the threads.
at::Tensor linear_small_batch(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);
