"""Training with filter groups across processes (--group-parallel P; AlexNet's model parallelism, Krizhevsky et al.
2012): check the option against the processes, shard the model, and read and write its checkpoint state unsharded.

Every process builds the same model from the same seed (and, resuming, loads the same checkpoint into it); `shard`
then splits it over groups of P consecutive ranks (groupconv.distributed's ("data", "group") mesh), before the
optimizer is made over its blocks. The processes of one group take the same batch; the groups are data parallel.
A checkpoint holds the single-process model's weights and optimizer state, gathered from the blocks
(`checkpoint_states` is a collective: every process calls it), so `groupconv eval` reads it in one process and
--resume cuts it back into blocks.
"""

from __future__ import annotations

import dataclasses

import torch

from ..distributed import (GroupParallelSetup, full_optimizer_state_dict, full_state_dict,
                           local_optimizer_state_dict, plan_group_parallel, setup_group_parallel)
from ..distributed.sharding import PASS_THROUGH, REPLICATED
from .config import ConfigError, TrainConfig
from .distributed import Distributed


def check_group_parallel(config: TrainConfig, context: Distributed) -> None:
    """ConfigError unless --group-parallel fits the processes this run has."""
    parts = config.group_parallel
    if parts == 1:
        return
    if not context.enabled:
        raise ConfigError(f"--group-parallel={parts} splits the model over {parts} processes, but this is a single "
                          f"process: start it with torchrun --nproc-per-node {parts} -m groupconv train ...")
    if context.world_size % parts:
        raise ConfigError(f"--group-parallel={parts} does not divide the number of processes "
                          f"({context.world_size}): the processes form groups of {parts}")
    if config.compile:
        raise ConfigError(f"--compile is not supported with --group-parallel={parts}")


def nothing_to_shard(model: torch.nn.Module, parts: int) -> bool:
    """Whether no layer of `model` would be split over `parts` processes (all replicated or pass-through)."""
    return all(entry.strategy in (REPLICATED, PASS_THROUGH) for entry in plan_group_parallel(model, parts))


def shard(model: torch.nn.Module, config: TrainConfig, context: Distributed
          ) -> tuple[GroupParallelSetup, Distributed]:
    """Split `model` in place over groups of --group-parallel processes; the context then knows its data-parallel
    peers (the processes at the same place in the other groups)."""
    setup = setup_group_parallel(model, config.group_parallel, context.device.type)
    context = dataclasses.replace(context, group_parallel=config.group_parallel,
                                  data_group=setup.mesh["data"].get_group())
    if (setup.data_rank, setup.data_size) != (context.data_rank, context.data_size):
        raise RuntimeError(f"the mesh places rank {context.rank} at data-parallel replica {setup.data_rank} of "
                           f"{setup.data_size}, the training loop at {context.data_rank} of {context.data_size}")
    return setup, context


def checkpoint_states(model: torch.nn.Module, optimizer: torch.optim.Optimizer, context: Distributed
                      ) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights and optimizer state of the single-process model; a collective under group parallelism."""
    if context.group_parallel == 1:
        return model.state_dict(), optimizer.state_dict()
    return full_state_dict(model), full_optimizer_state_dict(model, optimizer)


def local_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict,
                          context: Distributed) -> dict:
    """A checkpoint's (single-process) optimizer state, cut to this process's blocks."""
    if context.group_parallel == 1:
        return saved
    return local_optimizer_state_dict(model, optimizer, saved)
