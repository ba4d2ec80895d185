"""Distributed data parallel through torch.distributed: set up from torchrun's environment, or one process.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT; without them this is a single
process and nothing here touches torch.distributed. gloo on CPU, NCCL on GPU.

Under group parallelism (--group-parallel P) the world is D data-parallel replicas of P processes that split each
layer's channels; the P processes of a replica compute the same loss and metrics, so metrics are summed over the
data-parallel peers only (`data_group`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import ConfigError


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    group_parallel: int = 1  # consecutive ranks that split every layer's channels (groupconv.distributed's mesh)
    data_group: dist.ProcessGroup | None = None  # this rank's data-parallel peers, when group_parallel > 1

    @property
    def data_size(self) -> int:
        """Data-parallel replicas: each takes its own share of the data."""
        return self.world_size // self.group_parallel

    @property
    def data_rank(self) -> int:
        # The group dimension is the mesh's inner one: rank = data_rank * group_parallel + group_rank.
        return self.rank // self.group_parallel

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and writes the run directory; the others only compute."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def choose_device(option: str, local_rank: int) -> torch.device:
    if option == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(option)
    except RuntimeError:
        raise ConfigError(f"--device={option!r} is not a device: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device={option} but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def setup_distributed(device_option: str) -> Distributed:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(device_option, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return Distributed(rank, world_size, local_rank, device)


def cleanup_distributed(context: Distributed) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _all_reduce_sum(tensor: torch.Tensor, context: Distributed, group: dist.ProcessGroup | None) -> torch.Tensor:
    total = tensor.detach().clone().to(context.device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total.to(tensor.device)


def all_reduce_sum(tensor: torch.Tensor, context: Distributed) -> torch.Tensor:
    """Sum a tensor over all processes (a copy; the input is left as it was)."""
    return _all_reduce_sum(tensor, context, None) if context.enabled else tensor


def all_reduce_data_sum(tensor: torch.Tensor, context: Distributed) -> torch.Tensor:
    """Sum a tensor over the data-parallel replicas only (a copy): the processes of one group parallel replica
    computed the same values, from the same batch."""
    if context.data_size == 1:
        return tensor
    return _all_reduce_sum(tensor, context, context.data_group)


def broadcast_buffers(model: torch.nn.Module, context: Distributed) -> None:
    """Give every process the buffers (batch-norm running statistics) of data-parallel replica 0, in place.

    DDP keeps the parameters equal on all processes, but each process updates its buffers in its
    own forward passes, on its own shard of the data; only rank 0's are saved (under group parallelism, the
    blocks of the processes of replica 0, rank 0's group).
    """
    if context.data_size == 1:
        return
    source = 0 if context.data_group is None else dist.get_global_rank(context.data_group, 0)
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=source, group=context.data_group)


def barrier(context: Distributed) -> None:
    if context.enabled:
        dist.barrier()
