"""Which channels go from which rank to which when a channel-sharded tensor changes its channel order.

Group parallelism keeps every activation sharded along its channels: rank r of P holds the r-th of P
equal, contiguous blocks (`channel_block`), so that a grouped conv whose groups divide by P finds all
the channels of its own groups on its own rank. Three things in a network move channels across that
split, and each becomes one all-to-all whose plan is computed here, from channel indices alone (pure
Python, no process group, so it is tested directly):

- a channel shuffle (ShuffleNet, Zhang et al. 2018): output channel o = i * g + k reads input channel
  k * (C / g) + i (k < g the group, i < C / g the place in it). Rank q needs the inputs of its output
  block; when P divides both g and C / g every pair of ranks exchanges exactly C / P^2 channels
  (`shuffle_exchange`): rank r holds the groups k in [r g / P, (r + 1) g / P), and sends rank q the channels
  k * (C / g) + i of those groups with i in [q C / (g P), (q + 1) C / (g P)), which rank q puts at its local
  position (i - q C / (g P)) * g + k. Otherwise the splits are unequal but the plan is the same kind;
- a layer that mixes neighbouring channels (local response normalisation, AlexNet's) needs the few channels
  its window reaches beyond the block's edges (`window_exchange`);
- a concatenation of two sharded tensors (ShuffleNet's downsampling unit concatenates its branch and
  its pooled shortcut; ResNeXt's form (b) concatenates its paths): rank r's local concatenation holds
  block r of each part, which is not block r of the whole (`concat_exchange`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence


def check_divisible_channels(channels: int, parts: int, what: str) -> None:
    if channels % parts:
        raise ValueError(f"{what}: {channels} channels cannot be split into {parts} equal blocks")


def channel_block(channels: int, parts: int, index: int) -> range:
    """The channels rank `index` of `parts` holds of a `channels`-channel tensor: the index-th contiguous block."""
    check_divisible_channels(channels, parts, "channel_block")
    size = channels // parts
    return range(index * size, (index + 1) * size)


@dataclass(frozen=True)
class ChannelExchange:
    """One rank's part of an all-to-all over channels.

    send_order: local channel positions in the order they are sent (all for rank 0 first, then rank 1, ...);
    send_counts / receive_counts: channels sent to / received from each rank;
    receive_order: for each channel this rank holds afterwards, its position in the received buffer.
    """

    send_order: tuple[int, ...]
    send_counts: tuple[int, ...]
    receive_counts: tuple[int, ...]
    receive_order: tuple[int, ...]


def plan_exchange(held: Sequence[Sequence[int]], wanted: Sequence[Sequence[int]], rank: int) -> ChannelExchange:
    """The exchange that takes every rank from holding `held[r]` (full-tensor channel indices, in local order) to
    holding `wanted[r]` (in that order). Every wanted channel must be held by exactly one rank."""
    if len(held) != len(wanted):
        raise ValueError(f"held has {len(held)} ranks but wanted has {len(wanted)}")
    if not 0 <= rank < len(held):
        raise ValueError(f"rank={rank} is not one of the {len(held)} ranks")
    owner: dict[int, tuple[int, int]] = {}  # channel -> (rank holding it, its local position there)
    for source, channels in enumerate(held):
        for position, channel in enumerate(channels):
            if channel in owner:
                raise ValueError(f"channel {channel} is held by ranks {owner[channel][0]} and {source}")
            owner[channel] = (source, position)
    missing = sorted({channel for channels in wanted for channel in channels} - owner.keys())
    if missing:
        raise ValueError(f"channels {missing[:8]} are wanted but held by no rank")

    send_order, send_counts = [], []
    for channels in wanted:
        # Sent in the destination's wanted order, so that each received chunk is already in order.
        mine = [owner[channel][1] for channel in channels if owner[channel][0] == rank]
        send_order += mine
        send_counts.append(len(mine))
    chunks = [[channel for channel in wanted[rank] if owner[channel][0] == source] for source in range(len(held))]
    buffer_position = {channel: index for index, channel in enumerate(c for chunk in chunks for c in chunk)}
    return ChannelExchange(tuple(send_order), tuple(send_counts), tuple(len(chunk) for chunk in chunks),
                           tuple(buffer_position[channel] for channel in wanted[rank]))


def blocks(channels: int, parts: int) -> list[list[int]]:
    """Every rank's block of a `channels`-channel tensor."""
    return [list(channel_block(channels, parts, index)) for index in range(parts)]


def shuffled_channel(output_channel: int, channels: int, groups: int) -> int:
    """The input channel that a channel shuffle with `groups` groups puts at `output_channel`."""
    return (output_channel % groups) * (channels // groups) + output_channel // groups


# The plans are pure functions of a few integers, computed in Python in O(channels x ranks): each is made once.
@functools.lru_cache(maxsize=1024)
def shuffle_exchange(channels: int, groups: int, parts: int, rank: int) -> ChannelExchange:
    """From block r of x to block r of channel_shuffle(x, groups), on every rank r of `parts`."""
    check_divisible_channels(channels, groups, f"channel shuffle with groups={groups}")
    wanted = [[shuffled_channel(o, channels, groups) for o in block] for block in blocks(channels, parts)]
    return plan_exchange(blocks(channels, parts), wanted, rank)


@functools.lru_cache(maxsize=1024)
def window_exchange(channels: int, parts: int, rank: int, before: int, after: int) -> ChannelExchange:
    """From block r of x to block r widened by `before` channels below and `after` above (within the tensor): the
    neighbours a channel-mixing window (local response normalisation) reaches across the block's edges. A channel
    near an edge goes to two ranks; the all-to-all moves only those."""
    wanted = [list(range(max(0, block[0] - before), min(channels, block[-1] + 1 + after)))
              for block in blocks(channels, parts)]
    return plan_exchange(blocks(channels, parts), wanted, rank)


def concat_exchange(part_channels: Sequence[int], parts: int, rank: int) -> ChannelExchange:
    """From [block r of a, block r of b, ...] (each rank's local torch.cat) to block r of torch.cat((a, b, ...))."""
    return _concat_exchange(tuple(part_channels), parts, rank)


@functools.lru_cache(maxsize=1024)
def _concat_exchange(part_channels: tuple[int, ...], parts: int, rank: int) -> ChannelExchange:
    held = [[] for _ in range(parts)]
    offset = 0
    for channels in part_channels:
        for index, block in enumerate(blocks(channels, parts)):
            held[index] += [offset + channel for channel in block]
        offset += channels
    return plan_exchange(held, blocks(offset, parts), rank)
