"""Filter groups across processes: AlexNet's model parallelism (Krizhevsky et al. 2012) on torch.distributed.

AlexNet's two GPUs each held half of every layer's filters; its grouped layers (conv2, conv4, conv5) read only the
maps on their own GPU, so they needed no communication, and the dense ones (conv3, the FC layers) read both.
`parallelize_groups` does that to any model of the zoo, in place, over the P ranks of a 1-D DeviceMesh: every
activation between layers is sharded along its channels (rank r holds the r-th contiguous block), and each leaf
layer gets one of these strategies (`plan_group_parallel` says which, and why; `explain_parallel` prints it):

- local: a conv whose groups divide by P runs groups / P groups on its own channels (groups rescaled on the shard);
  batch norm is per channel, and every rank sees the whole batch, so its statistics are exact;
- all-to-all then local: a channel shuffle, or a conv that reads through one (ShuffleNet's fused
  ShuffledGroupedConv2d), first reorders channels across ranks (exchange.shuffle_exchange);
- column parallel: a dense conv or linear layer all-gathers its input channels and computes its own block of
  output channels;
- channel window: local response normalisation mixes neighbouring channels, so an all-to-all brings each rank the
  few channels its window reaches beyond its block's edges;
- pass-through: ReLU, pooling, dropout, flatten work on any channels as they are;
- replicated: anything else (groups not divisible by P, an unknown module) runs whole on every rank on the
  gathered input, and keeps its own block of the output when the output's channels divide by P.

The model's code between layers keeps working on sharded tensors: residual sums add two tensors sharded the same
way, flatten of an (N, C, H, W) block is a block of the flattened features, and a concatenation of sharded tensors
is reordered by one all-to-all into the block layout, whether BatchNormAct2d writes it (`concat=`, the shortcut of
ShuffleNet's downsampling unit) or the model's code calls torch.cat (ResNeXt's form (b); model_code.py). The logits
are gathered at the end, whole on every rank.

Parameters keep their names; sharded ones hold their rank's block along dim 0. `full_state_dict` gathers the
single-process state_dict on every rank, `load_full_state_dict` shards one back;
`full_optimizer_state_dict` / `local_optimizer_state_dict` do the same for the optimizer's per-parameter buffers, so
a checkpoint is the single-process run's whatever the number of ranks.

What the layout cannot follow: model code that indexes channels itself (x[:, :16], torch.split along channels) is
refused with an error (model_code.py); such code belongs in a layer. Dropout draws its mask per rank, so in
training it differs from one process's (it is still dropout with the same rate).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard

from .. import nn as gnn
from ..models.common import check_positive_int
from ..ops import channel_shuffle
from .collectives import exchange_channels, gather_channels, keep_own_channels, replicated_for_partial_use
from .exchange import channel_block, concat_exchange, shuffle_exchange, window_exchange
from .model_code import ModelCodeOnShards

LOCAL = "local"
SHUFFLE = "all-to-all then local"
COLUMN = "column parallel"
WINDOW = "channel window"
PASS_THROUGH = "pass-through"
REPLICATED = "replicated"

# Layers that compute each channel (or each element) from that channel alone, and own no parameters.
PASS_THROUGH_TYPES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
    nn.Hardsigmoid, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
    nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d,
)
SHUFFLE_TYPES = (nn.ChannelShuffle, gnn.ChannelShuffle)


@dataclass(frozen=True)
class LayerPlan:
    """What group parallelism does with one layer, and why."""

    name: str
    layer_type: str
    strategy: str
    reason: str


def _has_own_state(module: nn.Module) -> bool:
    return bool(module._parameters) or any(buffer is not None for buffer in module._buffers.values())


def _plan_conv(module: nn.Conv2d, parts: int) -> tuple[str, str]:
    groups, shuffle_groups = module.groups, getattr(module, "shuffle_groups", 1)
    if groups % parts == 0:
        if shuffle_groups > 1:
            return SHUFFLE, (f"groups={groups}: {groups // parts} per rank, after an all-to-all for its channel "
                             f"shuffle (shuffle_groups={shuffle_groups})")
        return LOCAL, f"groups={groups}: {groups // parts} per rank, no communication"
    if groups == 1 and module.out_channels % parts == 0:
        return COLUMN, (f"dense: all-gathers its {module.in_channels} input channels, computes "
                        f"{module.out_channels // parts} of its {module.out_channels} output channels")
    if groups > 1:
        return REPLICATED, f"groups={groups} is not divisible by {parts} ranks"
    return REPLICATED, f"out_channels={module.out_channels} is not divisible by {parts} ranks"


def plan_layer(module: nn.Module, parts: int) -> tuple[str, str]:
    """(strategy, reason) for one leaf module over `parts` ranks."""
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return _plan_conv(module, parts)
    if isinstance(module, nn.Linear):
        if module.out_features % parts == 0:
            return COLUMN, (f"all-gathers its {module.in_features} input features, computes "
                            f"{module.out_features // parts} of its {module.out_features} outputs")
        return REPLICATED, f"out_features={module.out_features} is not divisible by {parts} ranks"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.num_features % parts == 0:
            return LOCAL, "per channel; every rank sees the whole batch, so its statistics are exact"
        return REPLICATED, f"num_features={module.num_features} is not divisible by {parts} ranks"
    if isinstance(module, nn.LocalResponseNorm):
        return WINDOW, (f"mixes {module.size} neighbouring channels: an all-to-all brings the {module.size - 1} "
                         f"its window reaches across the block's edges")
    if isinstance(module, SHUFFLE_TYPES):
        return SHUFFLE, f"channel shuffle with groups={module.groups}: one all-to-all"
    if isinstance(module, nn.Flatten):
        if module.start_dim == 1:
            return PASS_THROUGH, "flattening a channel block gives a block of the flattened features"
        return REPLICATED, f"flattens from dim {module.start_dim}, not from the channels"
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return PASS_THROUGH, "each rank draws the mask of its own channels (in training not one process's mask)"
    if isinstance(module, PASS_THROUGH_TYPES):
        return PASS_THROUGH, "per channel, no parameters"
    if isinstance(module, nn.Sequential):
        return PASS_THROUGH, "an empty Sequential: the identity"
    return REPLICATED, f"{type(module).__name__} is not a layer group parallelism knows: runs on the gathered input"


def plan_group_parallel(model: nn.Module, group_parallel: int) -> list[LayerPlan]:
    """The strategy of every leaf layer of `model` over `group_parallel` ranks (no process group needed)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_positive_int(group_parallel, "group_parallel")
    plan = []
    for name, module in model.named_modules():
        children = next(module.children(), None) is not None
        if children and _has_own_state(module):
            names = ", ".join([*module._parameters, *module._buffers])
            raise ValueError(f"group parallelism cannot shard {name or 'the model'} ({type(module).__name__}): it "
                             f"holds parameters or buffers ({names}) and runs children in its own code")
        if not children:
            plan.append(LayerPlan(name, type(module).__name__, *plan_layer(module, group_parallel)))
    return plan


def explain_parallel(model: nn.Module, group_parallel: int | None = None) -> str:
    """A table of every leaf layer's strategy and reason: the model's own plan once it is parallelized, else the
    plan it would get over `group_parallel` ranks."""
    if group_parallel is None:
        state = getattr(model, "group_parallel", None)
        if not isinstance(state, GroupParallelState):
            raise ValueError("explain_parallel: give group_parallel=P for a model that is not parallelized")
        plan, group_parallel = state.plan, state.parts
    else:
        plan = plan_group_parallel(model, group_parallel)
    name_width = max([len(entry.name) for entry in plan] + [5])
    type_width = max([len(entry.layer_type) for entry in plan] + [4])
    strategy_width = max(len(entry.strategy) for entry in plan)
    lines = [f"group parallelism over {group_parallel} ranks",
             f"{'layer':<{name_width}}  {'type':<{type_width}}  {'strategy':<{strategy_width}}  why"]
    lines += [f"{entry.name:<{name_width}}  {entry.layer_type:<{type_width}}  {entry.strategy:<{strategy_width}}  "
              f"{entry.reason}" for entry in plan]
    counts = {}
    for entry in plan:
        counts[entry.strategy] = counts.get(entry.strategy, 0) + 1
    lines.append(", ".join(f"{count} {strategy}" for strategy, count in counts.items()))
    return "\n".join(lines)


class _ForwardContext:
    """What the layers of one forward pass share: which tensors are replicated (the model's inputs, outputs of
    replicated layers whose channels cannot be split), and gathers already made (a tensor read by two column-parallel
    layers, as a residual block's input by its first conv and its projection shortcut, is gathered once)."""

    def __init__(self, inputs: list[torch.Tensor] | None = None):
        self.replicated: list[torch.Tensor] = list(inputs or [])
        self.gathered: list[tuple[torch.Tensor, int, bool, torch.Tensor]] = []
        self.layer_depth = 0  # > 0 while a layer (a leaf module) runs, 0 in the model's own code

    def is_replicated(self, x: torch.Tensor) -> bool:
        return any(x is tensor for tensor in self.replicated)

    def cached_gather(self, x: torch.Tensor, partial_gradient: bool) -> torch.Tensor | None:
        for tensor, version, partial, gathered in self.gathered:
            # (an in-place change of x since, e.g. a ReLU, makes the gathered copy stale)
            if tensor is x and version == x._version and partial == partial_gradient:
                return gathered
        return None


@dataclass
class GroupParallelState:
    """What parallelize_groups attaches to a model (as `model.group_parallel`)."""

    mesh: DeviceMesh
    plan: list[LayerPlan]
    sharded_keys: set[str] = field(default_factory=set)  # state_dict keys held as a block along dim 0
    context: _ForwardContext = field(default_factory=_ForwardContext)
    handles: list = field(default_factory=list)

    @property
    def parts(self) -> int:
        return self.mesh.size()

    @property
    def rank(self) -> int:
        return self.mesh.get_local_rank()


class _LayerCommunication:
    """The forward hooks of one sharded layer: bring inputs to the layout the layer needs, and its output to the
    sharded layout."""

    def __init__(self, state: GroupParallelState, name: str, strategy: str, full_channels: int | None):
        self.state, self.name, self.strategy, self.full_channels = state, name, strategy, full_channels

    def is_sharded(self, x: torch.Tensor) -> bool:
        """Whether x is a channel block or the whole tensor: from its channel count where the layer says how many it
        reads, else from the forward's bookkeeping (only the model's inputs and a few outputs are replicated)."""
        if self.full_channels is None:
            return not self.state.context.is_replicated(x)
        parts = self.state.parts
        if x.dim() < 2 or x.shape[1] not in (self.full_channels, self.full_channels // parts):
            raise RuntimeError(
                f"group parallelism: layer {self.name!r} expects {self.full_channels} channels (or "
                f"{self.full_channels // parts} on each of {parts} ranks), got input of shape {tuple(x.shape)}: the "
                f"model's code changes channel counts in a way the plan cannot follow")
        return x.shape[1] != self.full_channels

    def sharded(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.is_sharded(x) else keep_own_channels(x, self.state.mesh, self.name)

    def whole(self, x: torch.Tensor, partial_gradient: bool) -> torch.Tensor:
        if not self.is_sharded(x):
            return replicated_for_partial_use(x, self.state.mesh, self.name) if partial_gradient else x
        context = self.state.context
        gathered = context.cached_gather(x, partial_gradient)
        if gathered is None:
            gathered = gather_channels(x, self.state.mesh, partial_gradient, self.name)
            context.gathered.append((x, x._version, partial_gradient, gathered))
        return gathered

    def shard_output(self, output):
        """A replicated layer's output: its own block where the channels divide, else recorded as replicated."""
        if not isinstance(output, torch.Tensor):
            raise RuntimeError(f"group parallelism: replicated layer {self.name!r} returned "
                               f"{type(output).__name__}, not a tensor")
        if output.dim() >= 2 and output.shape[1] % self.state.parts == 0:
            return keep_own_channels(output, self.state.mesh, self.name)
        self.state.context.replicated.append(output)
        return output


class _ColumnParallel(_LayerCommunication):
    def before(self, module, args, kwargs):
        return (self.whole(args[0], partial_gradient=True), *args[1:]), kwargs


class _Local(_LayerCommunication):
    def before(self, module, args, kwargs):
        return (self.sharded(args[0]), *args[1:]), kwargs


class _LocalBatchNorm(_LayerCommunication):
    """A per-channel batch norm; groupconv's BatchNormAct2d may also take a residual (sharded alike) and a tensor to
    concatenate, after which the local concatenation is reordered into the block layout."""

    def before(self, module, args, kwargs):
        args = (self.sharded(args[0]), *(self.sharded(arg) for arg in args[1:2]), *args[2:])
        kwargs = dict(kwargs)
        if kwargs.get("residual") is not None:
            kwargs["residual"] = self.sharded(kwargs["residual"])
        concat = kwargs.get("concat")
        if concat is not None and self.state.context.is_replicated(concat):  # (its channel count is not known)
            kwargs["concat"] = keep_own_channels(concat, self.state.mesh, self.name)
        return args, kwargs

    def after(self, module, args, kwargs, output):
        concat = kwargs.get("concat")
        if concat is None:
            return output
        parts = self.state.parts
        exchange = concat_exchange((module.num_features * parts, concat.shape[1] * parts), parts, self.state.rank)
        return exchange_channels(output, self.state.mesh, exchange, self.name)


class _Shuffle(_LayerCommunication):
    """A channel shuffle across ranks: the all-to-all gives each rank its block of the shuffled tensor, and the layer
    itself (shuffle_groups or groups set to 1 on the shard) then shuffles nothing."""

    def __init__(self, state, name, strategy, full_channels, shuffle_groups: int):
        super().__init__(state, name, strategy, full_channels)
        self.shuffle_groups = shuffle_groups

    def before(self, module, args, kwargs):
        x = args[0]
        if not self.is_sharded(x):
            shuffled = channel_shuffle(x, self.shuffle_groups)
            return (keep_own_channels(shuffled, self.state.mesh, self.name), *args[1:]), kwargs
        exchange = shuffle_exchange(x.shape[1] * self.state.parts, self.shuffle_groups, self.state.parts,
                                    self.state.rank)
        return (exchange_channels(x, self.state.mesh, exchange, self.name), *args[1:]), kwargs


class _ChannelWindow(_LayerCommunication):
    """Local response normalisation of its own channels, computed on its block widened by the neighbours the window
    reaches (torch pads size // 2 channels before and (size - 1) // 2 after): an all-to-all brings those few channels
    from the neighbouring ranks."""

    def before(self, module, args, kwargs):
        x = args[0]
        before, after = module.size // 2, (module.size - 1) // 2
        parts, rank = self.state.parts, self.state.rank
        if self.is_sharded(x):
            channels = x.shape[1] * parts
            window = exchange_channels(x, self.state.mesh, window_exchange(channels, parts, rank, before, after),
                                       self.name)
        else:  # (each rank uses its own window of the whole tensor: the gradients add up over the ranks)
            channels = x.shape[1]
            own = channel_block(channels, parts, rank)
            start, stop = max(0, own.start - before), min(channels, own.stop + after)
            window = replicated_for_partial_use(x, self.state.mesh, self.name)[:, start:stop]
        own = channel_block(channels, parts, rank)
        self.offset, self.own_channels = own.start - max(0, own.start - before), len(own)
        return (window, *args[1:]), kwargs

    def after(self, module, args, kwargs, output):
        return output[:, self.offset:self.offset + self.own_channels].contiguous()


class _Replicated(_LayerCommunication):
    def before(self, module, args, kwargs):
        def whole(value):
            return self.whole(value, partial_gradient=False) if isinstance(value, torch.Tensor) else value
        return tuple(whole(arg) for arg in args), {key: whole(value) for key, value in kwargs.items()}

    def after(self, module, args, kwargs, output):
        return self.shard_output(output)


def _shard_parameter(module: nn.Module, name: str, parts: int, rank: int) -> None:
    """Keep this rank's block (dim 0) of a parameter or buffer, in place."""
    value = getattr(module, name)
    if value is None:
        return
    block = channel_block(value.shape[0], parts, rank)
    local = value.detach()[block.start:block.stop].clone()
    if isinstance(value, nn.Parameter):
        setattr(module, name, nn.Parameter(local, requires_grad=value.requires_grad))
    else:
        module._buffers[name] = local


def _input_channels(module: nn.Module) -> int | None:
    for attribute in ("in_channels", "in_features", "num_features"):
        if hasattr(module, attribute):
            return getattr(module, attribute)
    return None


def _apply_layer(state: GroupParallelState, name: str, module: nn.Module, strategy: str) -> None:
    parts, rank = state.parts, state.rank
    full_channels = _input_channels(module)
    prefix = f"{name}." if name else ""
    sharded_names = ()
    if strategy == PASS_THROUGH:
        return
    if strategy == REPLICATED:
        communication = _Replicated(state, name, strategy, full_channels)
    elif strategy == WINDOW:
        communication = _ChannelWindow(state, name, strategy, None)
    elif strategy == SHUFFLE and isinstance(module, SHUFFLE_TYPES):
        communication = _Shuffle(state, name, strategy, None, module.groups)
        module.groups = 1
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        communication = _LocalBatchNorm(state, name, strategy, full_channels)
        sharded_names = ("weight", "bias", "running_mean", "running_var")
        module.num_features //= parts
    elif isinstance(module, nn.Linear):
        communication = _ColumnParallel(state, name, strategy, full_channels)
        sharded_names = ("weight", "bias")
        module.out_features //= parts
    else:  # a conv: local, local after the shuffle's all-to-all, or column parallel
        sharded_names = ("weight", "bias")
        module.out_channels //= parts
        if strategy == COLUMN:
            communication = _ColumnParallel(state, name, strategy, full_channels)
        else:
            if strategy == SHUFFLE:
                communication = _Shuffle(state, name, strategy, full_channels, module.shuffle_groups)
                module.shuffle_groups = 1
            else:
                communication = _Local(state, name, strategy, full_channels)
            module.in_channels //= parts
            module.groups //= parts
    for parameter_name in sharded_names:
        if getattr(module, parameter_name, None) is not None:
            _shard_parameter(module, parameter_name, parts, rank)
            state.sharded_keys.add(prefix + parameter_name)
    state.handles.append(module.register_forward_pre_hook(communication.before, with_kwargs=True))
    if hasattr(communication, "after"):
        state.handles.append(module.register_forward_hook(communication.after, with_kwargs=True))


def _count_layer(state: GroupParallelState, module: nn.Module) -> None:
    """Tell the forward when this layer runs (its hooks and its own code are not the model's code between layers)."""
    def enter(module, args):
        state.context.layer_depth += 1

    def leave(module, args, output):
        state.context.layer_depth -= 1

    state.handles.append(module.register_forward_pre_hook(enter, prepend=True))
    state.handles.append(module.register_forward_hook(leave))  # (after the layer's own hooks: registered last)


def default_group_mesh() -> DeviceMesh:
    """A 1-D mesh of the whole world, on the CUDA device if the process group runs NCCL, else the CPU."""
    if not dist.is_initialized():
        raise RuntimeError("group parallelism needs an initialized process group (torch.distributed."
                           "init_process_group, or torchrun's environment through groupconv's training setup)")
    device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return init_device_mesh(device_type, (dist.get_world_size(),), mesh_dim_names=("group",))


def group_dimension(device_mesh: DeviceMesh) -> DeviceMesh:
    """The 1-D mesh the channels are split over: the mesh itself, or the dimension named "group" of a 2-D one."""
    if not isinstance(device_mesh, DeviceMesh):
        raise TypeError(f"device_mesh must be a torch.distributed DeviceMesh, got {type(device_mesh).__name__}")
    if device_mesh.ndim == 1:
        return device_mesh
    names = device_mesh.mesh_dim_names or ()
    if "group" not in names:
        raise ValueError(f"device_mesh has {device_mesh.ndim} dimensions named {names}: group parallelism needs a "
                         f"1-D mesh or one with a dimension named 'group'")
    return device_mesh["group"]


def parallelize_groups(model: nn.Module, device_mesh: DeviceMesh | None = None) -> nn.Module:
    """Shard `model` in place over the ranks of a 1-D mesh (default: the whole world; a 2-D mesh: its "group"
    dimension), AlexNet style: each rank holds 1/P of every layer's channels. Returns the model.

    Call it on every rank with the same model (same weights: build it from the same seed, or load the same
    checkpoint), before making the optimizer. Every rank then runs the whole batch; the logits are whole on every
    rank, so the loss and the optimizer step run as in one process.
    """
    mesh = default_group_mesh() if device_mesh is None else group_dimension(device_mesh)
    if isinstance(getattr(model, "group_parallel", None), GroupParallelState):
        raise ValueError("parallelize_groups: this model is already parallelized")
    plan = plan_group_parallel(model, mesh.size())
    state = GroupParallelState(mesh, plan)
    modules = dict(model.named_modules())
    for entry in plan:
        _apply_layer(state, entry.name, modules[entry.name], entry.strategy)
    for entry in plan:
        _count_layer(state, modules[entry.name])
    model.forward = _sharded_forward(state, model.forward)
    model.group_parallel = state
    return model


def _sharded_forward(state: GroupParallelState, forward):
    """The model's forward on shards: its inputs are replicated, its code between layers runs under
    ModelCodeOnShards, and its output (the logits) is gathered whole on every rank."""
    @functools.wraps(forward)
    def sharded_forward(*args, **kwargs):
        state.context = _ForwardContext([value for value in (*args, *kwargs.values())
                                         if isinstance(value, torch.Tensor)])
        try:
            with ModelCodeOnShards(state):
                output = forward(*args, **kwargs)
            if not isinstance(output, torch.Tensor):
                raise RuntimeError(f"group parallelism: the model returned {type(output).__name__}; it gathers a "
                                   f"single output tensor")
            if state.context.is_replicated(output):
                return output
            # The loss is computed whole on every rank, so the logits' gradient is whole too: no partial gradient.
            return gather_channels(output, state.mesh, partial_gradient=False, layer="output")
        finally:
            state.context = _ForwardContext()  # (the forward's tensors are not kept alive past it)

    return sharded_forward


def _state(model: nn.Module) -> GroupParallelState:
    state = getattr(model, "group_parallel", None)
    if not isinstance(state, GroupParallelState):
        raise ValueError("the model is not parallelized (call parallelize_groups first)")
    return state


def _gathered(state: GroupParallelState, block: torch.Tensor) -> torch.Tensor:
    """The whole tensor of which every rank holds its block along dim 0 (a collective)."""
    return DTensor.from_local(block.detach(), state.mesh, [Shard(0)], run_check=False).full_tensor()


def _own_block(state: GroupParallelState, whole: torch.Tensor) -> torch.Tensor:
    block = channel_block(whole.shape[0], state.parts, state.rank)
    return whole[block.start:block.stop]


def full_state_dict(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The single-process state_dict (same keys, shapes and values), gathered on every rank; a collective: every
    rank of the group must call it."""
    state = _state(model)
    full = OrderedDict()
    for key, value in model.state_dict().items():
        if key in state.sharded_keys:
            value = _gathered(state, value)
        full[key] = value.detach().clone()
    return full


def load_full_state_dict(model: nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Load a single-process state_dict (e.g. a checkpoint) into a parallelized model: each rank keeps its blocks."""
    state = _state(model)
    local = OrderedDict()
    for key, value in full.items():
        local[key] = _own_block(state, value) if key in state.sharded_keys else value
    model.load_state_dict(local, strict=True)


def _optimizer_parameter_keys(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The state_dict key of each parameter, in the order the optimizer's state_dict numbers them."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return [names.get(id(parameter), "") for group in optimizer.param_groups for parameter in group["params"]]


def _map_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, optimizer_state: dict, convert) -> dict:
    """optimizer_state with convert(state, buffer) applied to every per-parameter buffer of a sharded parameter
    (SGD's momentum, Adam's moments; not Adam's step count, a scalar); anything else is left as it is."""
    state = _state(model)
    keys = _optimizer_parameter_keys(model, optimizer)
    per_parameter = optimizer_state.get("state") if isinstance(optimizer_state, dict) else None
    if not isinstance(per_parameter, dict):
        return optimizer_state
    converted = {}
    for index, buffers in per_parameter.items():
        sharded = isinstance(index, int) and 0 <= index < len(keys) and keys[index] in state.sharded_keys
        if sharded and isinstance(buffers, dict):
            buffers = {name: convert(state, value) if isinstance(value, torch.Tensor) and value.dim() > 0 else value
                       for name, value in buffers.items()}
        converted[index] = buffers
    return {**optimizer_state, "state": converted}


def full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() as one process training the single-process model would have it: the buffers of
    sharded parameters gathered whole. A collective: every rank of the group must call it."""
    return _map_optimizer_state(model, optimizer, optimizer.state_dict(), _gathered)


def local_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, full: dict) -> dict:
    """A single-process optimizer state_dict (from full_optimizer_state_dict or a one-process checkpoint) cut to this
    rank's blocks, for optimizer.load_state_dict."""
    return _map_optimizer_state(model, optimizer, full, _own_block)
