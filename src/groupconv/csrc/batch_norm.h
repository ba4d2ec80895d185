// Fused batch normalisation (+ residual add + ReLU) for CPU: see batch_norm.cpp.
#pragma once

#include <torch/extension.h>

#include <vector>

// {output, mean, invstd, biased variance}; in eval mode the statistics are the running ones.
std::vector<at::Tensor> batch_norm_forward(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                                           const c10::optional<at::Tensor>& bias,
                                           const c10::optional<at::Tensor>& residual,
                                           const c10::optional<at::Tensor>& running_mean,
                                           const c10::optional<at::Tensor>& running_var, bool training, double eps,
                                           bool relu);

// {grad_input, grad_weight, grad_bias, grad_residual}: the weight and bias gradients always (as if
// weight were ones and bias zeros when absent), the residual's (the ReLU-masked grad_output) only with
// residual_grad, else an empty tensor.
std::vector<at::Tensor> batch_norm_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                            const c10::optional<at::Tensor>& weight,
                                            const c10::optional<at::Tensor>& bias,
                                            const c10::optional<at::Tensor>& residual, const at::Tensor& mean,
                                            const at::Tensor& invstd, bool training, bool relu, bool residual_grad);
