"""`groupconv benchmark shuffle`: a ShuffleNet unit with and without its channel shuffle, groupconv and
torch: the fused shuffle should cost (nearly) nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.shufflenet import STAGE_CHANNELS, ShuffleUnit
from .layers import layer_step, time_layers
from .twins import to_torch_layers


@dataclass
class ShuffleCost:
    unit: str
    groupconv_shuffle_ms: float
    groupconv_plain_ms: float
    torch_shuffle_ms: float
    torch_plain_ms: float

    @property
    def groupconv_overhead(self) -> float:
        """Extra time of the shuffled unit over the plain one (0.05 = 5%)."""
        return self.groupconv_shuffle_ms / self.groupconv_plain_ms - 1

    @property
    def torch_overhead(self) -> float:
        return self.torch_shuffle_ms / self.torch_plain_ms - 1


def shuffle_cost(groups=(3, 8), batch: int = 32, repeats: int = 5, progress=print) -> list[ShuffleCost]:
    """Forward+backward of a stage-2 ShuffleNet 1x unit (28x28, not downsampling) with and without its shuffle."""
    results = []
    for g in groups:
        channels = STAGE_CHANNELS[g][0]
        steps = {}
        x = torch.randn(batch, channels, 28, 28)
        for shuffle in (True, False):
            torch.manual_seed(0)
            unit = ShuffleUnit(channels, channels, g, downsample=False, ignore_group=False, shuffle=shuffle)
            steps["groupconv", shuffle] = layer_step(unit, x, True)
            steps["torch", shuffle] = layer_step(to_torch_layers(unit), x, True)
        times = time_layers(steps, repeats)
        result = ShuffleCost(f"ShuffleNet 1x g={g} unit {channels}ch 28x28", times["groupconv", True],
                             times["groupconv", False], times["torch", True], times["torch", False])
        results.append(result)
        if progress:
            progress(f"{result.unit:36} groupconv {result.groupconv_shuffle_ms:8.2f} ms vs "
                     f"{result.groupconv_plain_ms:8.2f} without shuffle ({100 * result.groupconv_overhead:+.1f}%); torch {result.torch_shuffle_ms:8.2f} "
                     f"vs {result.torch_plain_ms:8.2f} ({100 * result.torch_overhead:+.1f}%)")
    return results
