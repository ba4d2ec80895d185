"""`groupconv benchmark models`: train-step and inference images/s of a model built from groupconv layers
and of the same model rebuilt from plain torch.nn layers (twins.to_torch_layers).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch

from .. import models
from ..ops.tuning.timing import median_seconds_interleaved
from .twins import to_torch_layers


@dataclass
class ModelResult:
    """Images per second of one model: torch.nn's twin and groupconv's, each in NCHW and channels_last."""

    model: str
    input_size: tuple[int, ...]
    batch: int
    torch_train_images_per_second: float
    torch_cl_train_images_per_second: float
    groupconv_train_images_per_second: float
    groupconv_cl_train_images_per_second: float
    torch_infer_images_per_second: float
    torch_cl_infer_images_per_second: float
    groupconv_infer_images_per_second: float
    groupconv_cl_infer_images_per_second: float

    def best(self, who: str, mode: str) -> float:
        """The faster layout's images/s of `who` (torch, groupconv) in `mode` (train, infer)."""
        return max(getattr(self, f"{who}_{mode}_images_per_second"), getattr(self, f"{who}_cl_{mode}_images_per_second"))

    @property
    def train_speedup(self) -> float:
        """groupconv (its faster layout) over stock torch as most models run it: NCHW."""
        return self.best("groupconv", "train") / self.torch_train_images_per_second

    @property
    def train_speedup_over_best_torch(self) -> float:
        return self.best("groupconv", "train") / self.best("torch", "train")

    @property
    def infer_speedup(self) -> float:
        return self.best("groupconv", "infer") / self.torch_infer_images_per_second

    def record(self) -> dict:
        return {**asdict(self), "train_speedup": round(self.train_speedup, 3),
                "train_speedup_over_best_torch": round(self.train_speedup_over_best_torch, 3),
                "infer_speedup": round(self.infer_speedup, 3)}


def train_step(model: torch.nn.Module, x: torch.Tensor):
    labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        optimizer.step()

    return step


def inference(model: torch.nn.Module, x: torch.Tensor):
    model.eval()

    def run():
        with torch.no_grad():
            model(x)

    return run


# The models of the training-speed targets (ResNeXt-50 is left out: a minute per step on 2 cores).
MODEL_BENCHMARK_DEFAULTS = ("shufflenet_g1_w1", "shufflenet_g3_w1", "shufflenet_g8_w1", "resnext29_32x4d",
                            "mobilenet_w1")
LAYOUTS = {"": torch.contiguous_format, "_cl": torch.channels_last}


def model_benchmark(names=MODEL_BENCHMARK_DEFAULTS, batch: int = 32, repeats: int = 3, image_size: int | None = None,
                    progress=print, device: str | torch.device = "cpu") -> list[ModelResult]:
    """Train-step (SGD, cross-entropy) and inference images/s of groupconv's model and its torch.nn twin, NCHW and
    channels_last; the four contenders of a mode are timed in alternation, so they see the same machine load.
    On a CUDA device each step is timed to its end (the timer synchronises), and torch's side runs cuDNN."""
    results = []
    for name in names:
        torch.manual_seed(0)
        ours = models.create_model(name).to(device)
        theirs = to_torch_layers(ours)
        channels, height, width = models.model_entry(name).input_size
        if image_size is not None:
            height = width = image_size
        x = torch.randn(batch, channels, height, width, device=device)
        images_per_second = {}
        for mode, make in (("train", train_step), ("infer", inference)):
            contenders = {}
            for who, model in (("torch", theirs), ("groupconv", ours)):
                for suffix, layout in LAYOUTS.items():
                    contenders[f"{who}{suffix}_{mode}_images_per_second"] = make(
                        copy.deepcopy(model).to(memory_format=layout), x.contiguous(memory_format=layout))
            seconds = median_seconds_interleaved(contenders, repeats=repeats, warmup=2)
            images_per_second.update({key: batch / value for key, value in seconds.items()})
        result = ModelResult(name, (channels, height, width), batch, **images_per_second)
        results.append(result)
        if progress:
            progress(format_model_row(result))
    return results


MODEL_HEADER = (f"{'model':18} {'input':>8} | {'train img/s: torch':>18} {'torch CL':>8} {'ours':>6} {'ours CL':>7} "
                f"{'vs NCHW':>7} {'vs best':>7} | {'infer img/s: torch':>18} {'torch CL':>8} {'ours':>6} "
                f"{'ours CL':>7} {'vs NCHW':>7}")


def format_model_row(r: ModelResult) -> str:
    size = "x".join(map(str, r.input_size[1:]))
    return (f"{r.model:18} {size:>8} | {r.torch_train_images_per_second:18.1f} {r.torch_cl_train_images_per_second:8.1f} "
            f"{r.groupconv_train_images_per_second:6.1f} {r.groupconv_cl_train_images_per_second:7.1f} "
            f"{r.train_speedup:6.2f}x {r.train_speedup_over_best_torch:6.2f}x | "
            f"{r.torch_infer_images_per_second:18.1f} {r.torch_cl_infer_images_per_second:8.1f} "
            f"{r.groupconv_infer_images_per_second:6.1f} {r.groupconv_cl_infer_images_per_second:7.1f} "
            f"{r.infer_speedup:6.2f}x")
