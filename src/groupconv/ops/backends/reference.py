"""The specification (ops/reference.py) as a backend: slow, obviously correct, any shape, dtype and device.

Never chosen by the tuner; forced (`use_backend("reference")`) it checks the fast backends' results.
"""

from __future__ import annotations

from .. import reference
from ..dispatch import Backend


class ReferenceBackend(Backend):
    name = "reference"
    description = "the specification: per-group, per-kernel-tap contractions; slow, any shape, dtype and device"
    tunable = False

    def conv_forward(self, input, weight, bias, args):
        return reference.conv_forward(input, weight, bias, args)

    def conv_backward_input(self, grad_output, weight, input_shape, args, input=None):
        return reference.conv_backward_input(grad_output, weight, input_shape, args)

    def conv_backward_weight(self, grad_output, input, weight_shape, args):
        return reference.conv_backward_weight(grad_output, input, weight_shape, args)

    def channel_shuffle(self, x, groups):
        return reference.channel_shuffle(x, groups)

    def batch_norm(self, input, running_mean, running_var, weight, bias, training, momentum, eps, residual, relu,
                   concat):
        return reference.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
                                    residual, relu, concat)
