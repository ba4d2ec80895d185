"""Data parallel x group parallel: a 2-D DeviceMesh, and the entry point for training and the command line.

World = D x P ranks on a mesh with dimensions ("data", "group"). The P ranks of one row share a batch and split every
layer's channels (parallelize_groups on the "group" dimension); the D rows take different batches, and their
gradients are averaged over the "data" dimension, as data parallelism does. The group dimension is the inner
(fastest varying) one, so the ranks that exchange activations at every layer are consecutive ranks: on a machine of
several GPUs, the ones on the same node.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from ..models.common import check_positive_int
from .sharding import parallelize_groups


def group_parallel_mesh(group_parallel: int, device_type: str | None = None) -> DeviceMesh:
    """The ("data", "group") mesh of the whole world with `group_parallel` ranks per group (world = D x P)."""
    check_positive_int(group_parallel, "group_parallel")
    if not dist.is_initialized():
        raise RuntimeError("group parallelism needs an initialized process group (torch.distributed."
                           "init_process_group, or torchrun's environment through groupconv's training setup)")
    world_size = dist.get_world_size()
    if world_size % group_parallel:
        raise ValueError(f"group_parallel={group_parallel} does not divide the world size {world_size}")
    device_type = device_type or ("cuda" if dist.get_backend() == "nccl" else "cpu")
    return init_device_mesh(device_type, (world_size // group_parallel, group_parallel),
                            mesh_dim_names=("data", "group"))


def all_reduce_gradients(model: nn.Module, mesh: DeviceMesh) -> None:
    """Average every parameter's gradient over the mesh's "data" dimension (a no-op for one data-parallel rank), in
    one all-reduce of all gradients flattened together. Call it between backward and the optimizer step."""
    if "data" not in (mesh.mesh_dim_names or ()):
        raise ValueError(f"the mesh has no 'data' dimension (dimensions: {mesh.mesh_dim_names})")
    data = mesh["data"]
    if data.size() == 1:
        return
    gradients = [parameter.grad for parameter in model.parameters() if parameter.grad is not None]
    if not gradients:
        return
    flat = torch.cat([gradient.reshape(-1) for gradient in gradients])
    dist.all_reduce(flat, group=data.get_group())
    flat /= data.size()
    offset = 0
    for gradient in gradients:
        gradient.copy_(flat[offset:offset + gradient.numel()].view_as(gradient))
        offset += gradient.numel()


@dataclass(frozen=True)
class GroupParallelSetup:
    """A model parallelized over a ("data", "group") mesh, and this rank's place in it.

    For a training loop: feed every rank of a group the same batch (a data sampler over `data_size` replicas at
    `data_rank`), call `all_reduce_gradients()` after backward when `data_size` > 1, and save
    `groupconv.distributed.full_state_dict(model)` (a collective) from global rank 0.
    """

    model: nn.Module
    mesh: DeviceMesh

    @property
    def group_rank(self) -> int:
        return self.mesh["group"].get_local_rank()

    @property
    def group_size(self) -> int:
        return self.mesh["group"].size()

    @property
    def data_rank(self) -> int:
        return self.mesh["data"].get_local_rank()

    @property
    def data_size(self) -> int:
        return self.mesh["data"].size()

    def all_reduce_gradients(self) -> None:
        all_reduce_gradients(self.model, self.mesh)


def setup_group_parallel(model: nn.Module, group_parallel: int, device_type: str | None = None) -> GroupParallelSetup:
    """Shard `model` in place over groups of `group_parallel` ranks, data parallel across groups (world = D x P)."""
    mesh = group_parallel_mesh(group_parallel, device_type)
    return GroupParallelSetup(parallelize_groups(model, mesh), mesh)
