// Fused batch normalisation (+ residual add + ReLU) for CPU: see batch_norm.cpp.
#pragma once

#include <torch/extension.h>

#include <vector>

// {output, mean, invstd, biased variance}; in eval mode the statistics are the running ones. With `concat` (the
// input's batch and spatial size), the output is cat((the result, concat), 1), the result written into it directly.
std::vector<at::Tensor> batch_norm_forward(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                                           const c10::optional<at::Tensor>& bias,
                                           const c10::optional<at::Tensor>& residual,
                                           const c10::optional<at::Tensor>& running_mean,
                                           const c10::optional<at::Tensor>& running_var, bool training, double eps,
                                           bool relu, const c10::optional<at::Tensor>& concat);

// {grad_input, grad_weight, grad_bias, grad_residual}: the weight and bias gradients always (as if
// weight were ones and bias zeros when absent), the residual's (the ReLU-masked grad_output) only with
// residual_grad, else an empty tensor.
std::vector<at::Tensor> batch_norm_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                            const c10::optional<at::Tensor>& weight,
                                            const c10::optional<at::Tensor>& bias,
                                            const c10::optional<at::Tensor>& residual, const at::Tensor& mean,
                                            const at::Tensor& invstd, bool training, bool relu, bool residual_grad);
