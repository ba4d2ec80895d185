// Pointwise (1x1) grouped convolution on channels_last tensors for CPU: see pointwise.cpp.
#pragma once

#include <torch/extension.h>

#include <memory>
#include <vector>

// (N, M, H, W) channels_last output of a 1x1, stride-1, unpadded conv with `groups` groups of a channels_last input.
// With an inference-time epilogue: relu(conv(channel_shuffle(input, shuffle_groups)) + residual), `residual` (of the
// output's shape) added and the ReLU applied as the output is written, the shuffle made by the reads of the input.
at::Tensor pointwise_forward_nhwc(const at::Tensor& input, const at::Tensor& weight,
                                  const c10::optional<at::Tensor>& bias, int64_t groups,
                                  const c10::optional<at::Tensor>& residual = c10::nullopt, bool relu = false,
                                  int64_t shuffle_groups = 1);

// The input gradient of that conv, channels_last, from a channels_last output gradient; plus `accumulate` (a tensor
// of the input's shape) where given, added as the gradient is written.
at::Tensor pointwise_backward_input_nhwc(const at::Tensor& grad_output, const at::Tensor& weight, int64_t groups,
                                         const c10::optional<at::Tensor>& accumulate);

// The weight gradient of that conv (weight_shape: (M, C/groups, 1, 1)), from channels_last operands.
at::Tensor pointwise_backward_weight_nhwc(const at::Tensor& grad_output, const at::Tensor& input,
                                         at::IntArrayRef weight_shape, int64_t groups);

// Both gradients {grad_input, grad_weight} in one pass over grad_output (`accumulate` as above).
std::vector<at::Tensor> pointwise_backward_nhwc(const at::Tensor& grad_output, const at::Tensor& input,
                                               const at::Tensor& weight, int64_t groups,
                                               const c10::optional<at::Tensor>& accumulate);

// pointwise_forward_nhwc's forward with its weights packed once, for a conv whose weights do not change (inference):
// packing costs about what the conv itself does on a small input (a 7x7 one at batch 1). kernel(input, residual)
// computes relu(conv(channel_shuffle(input, shuffle_groups)) + residual), with relu and the residual as given.
struct PackedPointwiseWeights;
class PointwiseKernel {
 public:
  PointwiseKernel(const at::Tensor& weight, const c10::optional<at::Tensor>& bias, int64_t groups, bool relu,
                  int64_t shuffle_groups);
  at::Tensor operator()(const at::Tensor& input, const c10::optional<at::Tensor>& residual) const;

 private:
  std::shared_ptr<const PackedPointwiseWeights> packed_;
};
