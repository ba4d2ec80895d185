"""Filter groups across processes (AlexNet's model parallelism, Krizhevsky et al. 2012) on torch.distributed:
shard every layer's channels over the ranks of a DeviceMesh, optionally with data parallelism on a second dimension.
"""

from .collectives import CollectiveRecord, GroupParallelError, record_collectives
from .launch import RankOutcome, launch_ranks, run_ranks
from .mesh import GroupParallelSetup, all_reduce_gradients, group_parallel_mesh, setup_group_parallel
from .exchange import (
    ChannelExchange,
    channel_block,
    concat_exchange,
    plan_exchange,
    shuffle_exchange,
    window_exchange,
)
from .sharding import (
    LayerPlan,
    explain_parallel,
    full_optimizer_state_dict,
    full_state_dict,
    load_full_state_dict,
    local_optimizer_state_dict,
    parallelize_groups,
    plan_group_parallel,
)

__all__ = [
    "ChannelExchange", "CollectiveRecord", "GroupParallelError", "GroupParallelSetup", "LayerPlan", "RankOutcome",
    "all_reduce_gradients", "channel_block", "concat_exchange", "explain_parallel", "full_optimizer_state_dict",
    "full_state_dict", "group_parallel_mesh", "launch_ranks", "load_full_state_dict", "local_optimizer_state_dict",
    "parallelize_groups", "plan_exchange", "plan_group_parallel", "record_collectives", "run_ranks",
    "setup_group_parallel", "shuffle_exchange", "window_exchange",
]
