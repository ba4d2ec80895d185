"""The model's own code between layers, run on channel-sharded tensors.

Most of it works on shards as it is: a residual sum adds two tensors sharded the same way, ReLU and pooling act per
channel, flattening an (N, C, H, W) block gives a block of the flattened features. Two things do not: a
concatenation along the channels (ResNeXt's form (b) concatenates its paths, Xie et al. 2017) puts each rank's block
of every part side by side, which is not the rank's block of the concatenation; and indexing channels (x[:, :16],
split, chunk, narrow along dim 1) would pick channels of the shard, not of the tensor. While a group-parallel model's
forward runs, `ModelCodeOnShards` (a torch TorchFunctionMode) turns such a concatenation into the local one followed by
one all-to-all into the block layout, and refuses channel indexing with an error that says so. Code inside the
layers (whose hooks bring tensors to the layout they need) is left alone: the layers count themselves in and out.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from .collectives import exchange_channels
from .exchange import concat_exchange

CONCATENATIONS = {torch.cat, torch.concat, torch.concatenate}
CHANNEL_INDEXING = {torch.split, torch.Tensor.split, torch.chunk, torch.Tensor.chunk, torch.narrow,
                    torch.Tensor.narrow, torch.tensor_split, torch.Tensor.tensor_split, torch.unbind,
                    torch.Tensor.unbind, torch.index_select, torch.Tensor.index_select}


def _dimension(args: tuple, kwargs: dict, position: int, default: int = 0) -> int:
    value = args[position] if len(args) > position else kwargs.get("dim", kwargs.get("axis", default))
    return value if isinstance(value, int) else default


def _indexes_channels(index) -> bool:
    """Whether tensor[index] selects some channels (dim 1) rather than all of them."""
    if not isinstance(index, tuple) or len(index) < 2 or index[0] != slice(None):
        return False
    return not (index[1] is None or index[1] is Ellipsis or index[1] == slice(None))


class ModelCodeOnShards(TorchFunctionMode):
    """Active during a group-parallel model's forward; `state` is the model's GroupParallelState."""

    def __init__(self, state):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.state.context.layer_depth == 0:
            if func in CONCATENATIONS:
                return self._concatenate(func, args, kwargs)
            if func in CHANNEL_INDEXING or func is torch.Tensor.__getitem__:
                self._refuse_channel_indexing(func, args, kwargs)
        return func(*args, **kwargs)

    def _sharded(self, tensor) -> bool:
        return isinstance(tensor, torch.Tensor) and tensor.dim() >= 2 and not self.state.context.is_replicated(tensor)

    def _concatenate(self, func, args, kwargs):
        tensors = args[0] if args else kwargs.get("tensors")
        result = func(*args, **kwargs)
        tensors = list(tensors)
        if len(tensors) < 2 or result.dim() < 2 or _dimension(args, kwargs, 1) % result.dim() != 1:
            return result
        sharded = [self._sharded(tensor) for tensor in tensors]
        if not any(sharded):
            self.state.context.replicated.append(result)
            return result
        if not all(sharded):
            raise RuntimeError("group parallelism: the model concatenates channel-sharded and replicated tensors; "
                               "the replicated one must go through a layer first")
        parts = self.state.parts
        exchange = concat_exchange([tensor.shape[1] * parts for tensor in tensors], parts, self.state.rank)
        return exchange_channels(result, self.state.mesh, exchange, "torch.cat in the model's code")

    def _refuse_channel_indexing(self, func, args, kwargs):
        tensor = args[0] if args else None
        if not self._sharded(tensor):
            return
        if func is torch.Tensor.__getitem__:
            selects = len(args) > 1 and _indexes_channels(args[1])
        else:
            position = 1 if func in (torch.index_select, torch.Tensor.index_select, torch.unbind,
                                     torch.Tensor.unbind, torch.narrow, torch.Tensor.narrow) else 2
            selects = _dimension(args, kwargs, position) % tensor.dim() == 1
        if selects:
            raise RuntimeError(f"group parallelism: the model's code indexes channels ({func.__name__} along dim 1) "
                               f"of a channel-sharded tensor of shape {tuple(tensor.shape)}, which holds 1/"
                               f"{self.state.parts} of them: put that code in a layer, or run without group "
                               f"parallelism")
