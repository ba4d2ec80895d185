"""The channel collectives of group parallelism, on torch.distributed (DTensor on a 1-D DeviceMesh, and torch's
autograd-aware functional all-to-all).

A tensor between two layers is either sharded (rank r of P holds the r-th contiguous block of its channels, dim 1)
or replicated (every rank holds all of it: the model's input, the logits). Moving between the two forward is
simple; what matters is the backward, which must give every rank the exact gradient of what it holds. The loss is
computed whole on every rank, so the gradient of a replicated tensor is the same on every rank, and a layer that
reads a gathered input and computes only its own output channels produces a partial gradient of that input, which
the ranks must sum. Hence two gathers:

- `gather_channels(x, mesh, partial_gradient=True)`: for a layer that computes its own slice from the whole input
  (column parallel): backward sums the ranks' partial gradients and keeps this rank's block (a reduce-scatter);
- `gather_channels(x, mesh, partial_gradient=False)`: for a layer that computes the whole output on every rank
  (replicated) or for the logits: backward keeps this rank's block of the (already whole) gradient, no traffic;

and their counterparts from a replicated tensor:

- `keep_own_channels(x, mesh)`: forward a slice; backward an all-gather (the replicated tensor's gradient is whole);
- `replicated_for_partial_use(x, mesh)`: forward nothing; backward an all-reduce (for a column-parallel layer
  reading a replicated tensor);

and `exchange_channels`, an all-to-all that moves channels across ranks (channel shuffle, concatenation, the
neighbours of a channel window); its backward is the reverse all-to-all (the gradients of a channel sent to two ranks
add up).

Every call can be recorded (`record_collectives`) with the bytes this rank receives, forward and backward, for the
benchmark; a failed collective (another rank stopped) becomes a GroupParallelError naming the layer.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed._functional_collectives as funcol
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

from .exchange import ChannelExchange


class GroupParallelError(RuntimeError):
    """A collective of group parallelism failed: another rank stopped, or the process group cannot reach it."""


@dataclass(frozen=True)
class CollectiveRecord:
    """One collective of one layer on this rank: what it is and the bytes this rank receives (forward, backward)."""

    layer: str
    kind: str
    forward_bytes: int
    backward_bytes: int


_records: contextvars.ContextVar[list[CollectiveRecord] | None] = contextvars.ContextVar(
    "groupconv_group_parallel_records", default=None)


@contextlib.contextmanager
def record_collectives() -> Iterator[list[CollectiveRecord]]:
    """Record every channel collective of this rank while the block runs (forward calls; their backward's bytes are
    known in advance and recorded with them)."""
    records: list[CollectiveRecord] = []
    token = _records.set(records)
    try:
        yield records
    finally:
        _records.reset(token)


def _record(layer: str, kind: str, forward_bytes: int, backward_bytes: int) -> None:
    records = _records.get()
    if records is not None:
        records.append(CollectiveRecord(layer, kind, int(forward_bytes), int(backward_bytes)))


def _waited(layer: str, kind: str, mesh: DeviceMesh, run) -> torch.Tensor:
    """run() and wait for its collective here, so that a rank that stopped is reported as such, with the layer."""
    try:
        return funcol.wait_tensor(run())
    except RuntimeError as error:
        raise GroupParallelError(
            f"group parallelism: the {kind} of layer {layer!r} failed on rank {mesh.get_local_rank()} of "
            f"{mesh.size()} (another rank stopped or cannot be reached): {error}") from error


def _bytes(x: torch.Tensor) -> int:
    return x.numel() * x.element_size()


def gather_channels(x: torch.Tensor, mesh: DeviceMesh, partial_gradient: bool, layer: str = "") -> torch.Tensor:
    """The whole tensor (all ranks' channel blocks, concatenated along dim 1) from this rank's block."""
    others = mesh.size() - 1

    def run():
        sharded = DTensor.from_local(x, mesh, [Shard(1)], run_check=False)
        return sharded.full_tensor(grad_placements=[Partial()] if partial_gradient else None)

    _record(layer, "all-gather" + (" (reduce-scatter back)" if partial_gradient else ""), others * _bytes(x),
            others * _bytes(x) if partial_gradient else 0)
    return _waited(layer, "all-gather", mesh, run)


def keep_own_channels(x: torch.Tensor, mesh: DeviceMesh, layer: str = "") -> torch.Tensor:
    """This rank's channel block of a replicated tensor."""
    def run():
        replicated = DTensor.from_local(x, mesh, [Replicate()], run_check=False)
        return replicated.redistribute(mesh, [Shard(1)]).to_local()

    _record(layer, "slice (all-gather back)", 0, _bytes(x) * (mesh.size() - 1) // mesh.size())
    return _waited(layer, "slice", mesh, run).contiguous()


def replicated_for_partial_use(x: torch.Tensor, mesh: DeviceMesh, layer: str = "") -> torch.Tensor:
    """x itself; its gradient is summed over the ranks (each contributes through its own output channels)."""
    if not x.requires_grad:
        return x
    parts = mesh.size()
    _record(layer, "identity (all-reduce back)", 0, 2 * (parts - 1) * _bytes(x) // parts)
    return DTensor.from_local(x, mesh, [Replicate()], run_check=False).to_local(grad_placements=[Partial()])


def exchange_channels(x: torch.Tensor, mesh: DeviceMesh, exchange: ChannelExchange, layer: str = "") -> torch.Tensor:
    """The all-to-all of `exchange` applied to x's channels (dim 1); differentiable (backward: the reverse one)."""
    rank = mesh.get_local_rank()
    send_order = torch.tensor(exchange.send_order, device=x.device)
    receive_order = torch.tensor(exchange.receive_order, device=x.device)
    # Channels first, so that each rank's share is one contiguous run of rows for all_to_all_single.
    outgoing = x.transpose(0, 1).index_select(0, send_order)
    channel_bytes = _bytes(x) // x.shape[1]
    received_from_others = sum(count for source, count in enumerate(exchange.receive_counts) if source != rank)
    sent_to_others = sum(count for target, count in enumerate(exchange.send_counts) if target != rank)
    _record(layer, "all-to-all", received_from_others * channel_bytes, sent_to_others * channel_bytes)
    incoming = _waited(layer, "all-to-all", mesh, lambda: funcol.all_to_all_single_autograd(
        outgoing, list(exchange.receive_counts), list(exchange.send_counts), mesh))
    return incoming.index_select(0, receive_order).transpose(0, 1).contiguous()
