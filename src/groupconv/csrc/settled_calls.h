// Settled conv calls in C++: a call signature whose path the dispatcher has decided runs it from one lookup, with no
// Python between the caller and torch's conv: see settled_calls.cpp, and ops/custom_ops/settled_calls.py for the
// Python side that decides what is settled.
#pragma once

#include <torch/extension.h>

#include <string>
#include <vector>

namespace py = pybind11;

// Each function takes a conv call as groupconv.conv1d/2d/3d receives it (the operands and the arguments as given:
// ints, strings, tuples or lists of ints), and reads the call's signature from it: the operands' shapes, strides,
// dtypes, devices and whether they need gradients; the arguments, exactly; torch's thread count. A call with
// anything else (a tensor subclass, a float or bool argument) has no signature and is never settled.

// The call's output by its settled path; None where the signature has none, or where the state of the thread could
// send the call elsewhere (torch.jit tracing, a torch.func transform, a dispatch mode, autocast).
py::object run_settled_conv(int64_t spatial_dims, py::handle input, py::handle weight, py::handle bias,
                            py::handle stride, py::handle padding, py::handle dilation, py::handle groups,
                            py::handle shuffle_groups);

// Settle the call's signature on torch's conv with these resolved arguments, its output in `memory_format`
// ("contiguous", "channels_last" or "channels_last_3d"). False (nothing kept) where the call has no signature or
// the state does not allow settled paths.
bool settle_conv_on_torch(int64_t spatial_dims, py::handle input, py::handle weight, py::handle bias,
                          py::handle stride, py::handle padding, py::handle dilation, py::handle groups,
                          py::handle shuffle_groups, std::vector<int64_t> resolved_stride,
                          std::vector<int64_t> resolved_padding, std::vector<int64_t> resolved_dilation,
                          int64_t resolved_groups, const std::string& memory_format);

// Settle the call's signature on `runner(input, weight, bias)`, a Python callable.
bool settle_conv_on_runner(int64_t spatial_dims, py::handle input, py::handle weight, py::handle bias,
                           py::handle stride, py::handle padding, py::handle dilation, py::handle groups,
                           py::handle shuffle_groups, py::object runner);

// The signature's settled path: None, "torch", or the runner.
py::object settled_conv_path(int64_t spatial_dims, py::handle input, py::handle weight, py::handle bias,
                             py::handle stride, py::handle padding, py::handle dilation, py::handle groups,
                             py::handle shuffle_groups);

void forget_settled_convs();
int64_t settled_conv_count();
// At most `capacity` signatures are kept, the least recently used dropped first.
void set_settled_conv_capacity(int64_t capacity);
int64_t settled_conv_capacity();
