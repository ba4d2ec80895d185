"""`groupconv benchmark same-flops`: ShuffleNet g=8 trained with groupconv against stock torch's g=1 (same
multiply-adds), the train steps in alternation and the ratio taken round by round.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from .. import models
from ..ops.tuning.timing import seconds_interleaved
from .models import LAYOUTS, train_step
from .twins import to_torch_layers


@dataclass
class SameFlopsResult:
    """The headline comparison in one run: ShuffleNet g=8 trained with groupconv against stock torch's g=1 of the same
    width (the same multiply-adds), their train steps timed in alternation. The speedups are medians of the rounds'
    own ratios, so that the machine's drift between rounds cancels (the models benchmark times g=1 and g=8 minutes
    apart: its cross-model ratio carried that drift, 0.89x-1.04x across the runs of two stops)."""

    g1_model: str
    g8_model: str
    batch: int
    rounds: int
    torch_g1_images_per_second: float  # NCHW, as stock models run
    torch_g1_cl_images_per_second: float
    torch_g8_images_per_second: float  # NCHW: the broken promise
    groupconv_g8_images_per_second: float
    groupconv_g8_cl_images_per_second: float
    speedup: float  # groupconv g=8 (its faster layout) over stock g=1 NCHW: the median of the rounds' ratios
    speedup_low: float  # the rounds' ratios' quartiles
    speedup_high: float
    rounds_at_least_even: int  # rounds in which groupconv's g=8 step took no longer than stock g=1's
    speedup_over_best_torch: float  # over stock g=1 in its faster layout, median of the rounds' ratios


def same_flops_benchmark(g1: str = "shufflenet_g1_w1", g8: str = "shufflenet_g8_w1", batch: int = 32,
                         repeats: int = 11, image_size: int | None = None, progress=print) -> SameFlopsResult:
    """Train steps of stock g=1 (NCHW, channels_last), stock g=8 (NCHW) and groupconv g=8 (both layouts), in
    alternation over `repeats` rounds."""
    channels, height, width = models.model_entry(g8).input_size
    if image_size is not None:
        height = width = image_size
    x = torch.randn(batch, channels, height, width)
    steps = {}
    for key, name, stock in (("torch_g1", g1, True), ("torch_g1_cl", g1, True), ("torch_g8", g8, True),
                             ("groupconv_g8", g8, False), ("groupconv_g8_cl", g8, False)):
        torch.manual_seed(0)
        model = models.create_model(name)
        layout = LAYOUTS["_cl" if key.endswith("_cl") else ""]
        steps[key] = train_step((to_torch_layers(model) if stock else model).to(memory_format=layout),
                                 x.contiguous(memory_format=layout))
    seconds = seconds_interleaved(steps, repeats=repeats, warmup=2)
    median = {key: statistics.median(values) for key, values in seconds.items()}
    ours = min(("groupconv_g8", "groupconv_g8_cl"), key=median.get)
    best_g1 = min(("torch_g1", "torch_g1_cl"), key=median.get)
    ratios = [g1_seconds / our_seconds for g1_seconds, our_seconds in zip(seconds["torch_g1"], seconds[ours])]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    result = SameFlopsResult(
        g1, g8, batch, repeats, **{f"{key}_images_per_second": batch / value for key, value in median.items()},
        speedup=statistics.median(ratios), speedup_low=quartiles[0], speedup_high=quartiles[2],
        rounds_at_least_even=sum(ratio >= 1 for ratio in ratios),
        speedup_over_best_torch=statistics.median(g1_seconds / our_seconds for g1_seconds, our_seconds
                                                  in zip(seconds[best_g1], seconds[ours])))
    if progress:
        progress(format_same_flops(result))
    return result


def format_same_flops(r: SameFlopsResult) -> str:
    return (f"train img/s, {r.rounds} rounds in alternation, batch {r.batch}: stock {r.g1_model} "
            f"{r.torch_g1_images_per_second:.1f} (channels_last {r.torch_g1_cl_images_per_second:.1f}); stock "
            f"{r.g8_model} {r.torch_g8_images_per_second:.1f}; groupconv {r.g8_model} {r.groupconv_g8_images_per_second:.1f}"
            f" (channels_last {r.groupconv_g8_cl_images_per_second:.1f})\n"
            f"groupconv g=8 (its faster layout) / stock g=1 NCHW: {r.speedup:.2f}x, the rounds' ratios' quartiles "
            f"{r.speedup_low:.2f}x-{r.speedup_high:.2f}x, at least even in {r.rounds_at_least_even} of {r.rounds} "
            f"rounds; over stock g=1 in its faster layout: {r.speedup_over_best_torch:.2f}x; stock g=8 / stock g=1: "
            f"{r.torch_g8_images_per_second / r.torch_g1_images_per_second:.2f}x")


def same_flops_pair(names) -> tuple[str, str] | None:
    """The first ShuffleNet g=8 in `names` whose g=1 of the same width is there too, as (g1, g8)."""
    for name in names:
        if name.startswith("shufflenet_g8_") and (g1 := name.replace("_g8_", "_g1_")) in names:
            return g1, name
    return None
