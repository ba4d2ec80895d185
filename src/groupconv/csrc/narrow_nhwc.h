// Grouped convolution with narrow groups on channels_last tensors for CPU: see narrow_nhwc.cpp.
#pragma once

#include <torch/extension.h>

#include <memory>

// What the kernels run (native.py checks it before calling): float32 or float64; C channels in and out, a multiple
// of one vector register's lanes (16 floats, 8 doubles), but for a depthwise forward (any C); C/groups input channels
// per group, a power of two up to the lanes (1: depthwise); kernel width 3; row stride 1 or 2; dilation 1.

// (N, C, OH, OW) channels_last output of the conv of a channels_last input.
at::Tensor narrow_forward_nhwc(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                               at::IntArrayRef stride, at::IntArrayRef padding);

// The input gradient of a conv of stride 1 (padding at most kernel size - 1) or 2 (both ways), channels_last.
at::Tensor narrow_backward_input_nhwc(const at::Tensor& grad_output, const at::Tensor& weight,
                                      at::IntArrayRef input_shape, at::IntArrayRef stride, at::IntArrayRef padding);

// The weight gradient, from channels_last operands.
at::Tensor narrow_backward_weight_nhwc(const at::Tensor& grad_output, const at::Tensor& input,
                                       at::IntArrayRef weight_shape, at::IntArrayRef stride,
                                       at::IntArrayRef padding);

// narrow_forward_nhwc's forward with its filters packed once, for a conv whose weights do not change (inference), and
// the ReLU applied as the output is written where `relu`: kernel(input) = relu(conv(input)). Packing costs about what
// the conv itself does on a small input (a 7x7 one at batch 1).
struct PackedNarrowFilters;
class NarrowKernel {
 public:
  NarrowKernel(const at::Tensor& weight, const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
               at::IntArrayRef padding, bool relu);
  at::Tensor operator()(const at::Tensor& input) const;

 private:
  std::shared_ptr<const PackedNarrowFilters> packed_;
};
