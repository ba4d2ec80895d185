// Small inference-time ops for CPU where torch's own kernels run far from the memory floor on a forward's shapes:
// see inference_ops.cpp.
#pragma once

#include <torch/extension.h>

// Max pooling of a channels_last (N, C, H, W) input (no dilation), the output channels_last: torch's
// max_pool2d(input, kernel_size, stride, padding, 1, ceil_mode) without the indices. A window holding a NaN gives
// NaN, as torch's does.
at::Tensor max_pool2d_nhwc(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool ceil_mode);

// Average pooling of a channels_last (N, C, H, W) input, the output channels_last: torch's avg_pool2d(input,
// kernel_size, stride, padding, ceil_mode, count_include_pad) without a divisor override.
at::Tensor avg_pool2d_nhwc(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool ceil_mode, bool count_include_pad);

// input (M, K) @ weight (N, K)^T + bias, for a small M (a classifier's batch): each row of the weight read once, the
// rows split between the threads.
at::Tensor linear_small_batch(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias);

// relu(conv2d(input, weight, bias, stride, padding)) (the ReLU where `relu`) for an input of few channels (a
// network's first conv, on an image: 3 channels), read in whatever layout it comes (NCHW, as images arrive, or
// channels_last), the output channels_last. groups 1, dilation 1.
at::Tensor few_channels_conv_nhwc(const at::Tensor& input, const at::Tensor& weight,
                                  const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                  at::IntArrayRef padding, bool relu);
