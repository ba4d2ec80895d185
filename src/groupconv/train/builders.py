"""What the training loop is built from: the model, optimizer, learning-rate schedule and augmentation."""

from __future__ import annotations

import copy
import json
import math
import os
import random

import numpy as np
import torch

from ..models import ModelEntry, model_entry
from .config import ConfigError, TrainConfig

SMALL_INPUT_THRESHOLD = 64  # images below this size get the small-input (stride-1 stem, no max-pool) variant


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's requirement for determinism
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def default_small_input(entry: ModelEntry, input_shape: tuple[int, ...]) -> bool:
    """Whether the small-input variant fits data of this shape when --small-input is not given."""
    return entry.has_small_input and len(input_shape) == 3 and input_shape[-1] < SMALL_INPUT_THRESHOLD


def build_model(config: TrainConfig, num_classes: int, in_chans: int, input_shape: tuple[int, ...]) -> torch.nn.Module:
    """The registry model for data of this shape; a model that cannot take it is a ConfigError naming the option."""
    try:
        entry = model_entry(config.model)
    except ValueError as error:
        raise ConfigError(f"--model={config.model}: {error}") from None
    kind = {2: "1-D signals", 3: "images"}
    if len(entry.input_size) != len(input_shape):
        raise ConfigError(f"--model={config.model} takes {kind.get(len(entry.input_size))} but --dataset="
                          f"{config.dataset} holds {kind.get(len(input_shape))}")
    kwargs = dict(config.model_kwargs)
    small_input = config.small_input
    if small_input is None:
        small_input = default_small_input(entry, input_shape)
    if small_input:
        if not entry.has_small_input:
            raise ConfigError(f"--model={config.model} has no small-input variant (--small-input)")
        kwargs["small_input"] = True
    try:
        model = entry.builder(num_classes=num_classes, in_chans=in_chans, **kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"cannot build --model={config.model} with --model-kwargs={json.dumps(config.model_kwargs)}"
                          f": {error}") from None
    try:  # a shape-only pass (meta device): an input too small for the model fails here, not mid-epoch
        with torch.no_grad():
            copy.deepcopy(model).to("meta").eval()(torch.zeros(2, *input_shape, device="meta"))
    except RuntimeError as error:
        raise ConfigError(f"--model={config.model} cannot take inputs of shape {tuple(input_shape)} "
                          f"(--image-size={config.image_size}): {str(error).splitlines()[0]}") from None
    if config.zero_init_residual and hasattr(model, "zero_init_last"):
        model.zero_init_last()  # the model's blocks know which of their layers is last (timm's convention)
    return model.train()


def build_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    # Weight decay on biases and normalisation scales only shrinks them towards zero for nothing.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr)


def lr_factor(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the peak lr at optimizer step `step`: linear warm-up, then cosine, step or constant."""
    epoch = step / steps_per_epoch
    if epoch < config.warmup_epochs:
        return 0.01 + 0.99 * epoch / config.warmup_epochs
    if config.schedule == "cosine":
        progress = (epoch - config.warmup_epochs) / max(config.epochs - config.warmup_epochs, 1e-9)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if config.schedule == "step":
        return config.step_gamma ** int(epoch // config.step_epochs)
    return 1.0


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """A per-step LambdaLR; its state is the step count, so it survives a checkpoint as plain numbers."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step, steps_per_epoch))


def augmentation_generator(seed: int, epoch: int, step: int, rank: int) -> torch.Generator:
    """A generator derived from where we are, not from history: a resumed run draws the same augmentation."""
    state = np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def augment(inputs: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to 1/8 of the size (border-replicated), plus horizontal flips for 'flip'."""
    if kind == "none":
        return inputs
    spatial = inputs.dim() - 2
    size = inputs.shape[-1]
    margin = max(size // 8, 1)
    padded = torch.nn.functional.pad(inputs, (margin, margin) * spatial, mode="replicate")
    offsets = torch.randint(0, 2 * margin + 1, (len(inputs), spatial), generator=generator).tolist()
    if spatial == 1:
        shifted = torch.stack([p[:, o[0]:o[0] + size] for p, o in zip(padded, offsets)])
    else:
        height = inputs.shape[-2]
        shifted = torch.stack([p[:, o[0]:o[0] + height, o[1]:o[1] + size] for p, o in zip(padded, offsets)])
    if kind == "flip":
        flip = torch.rand(len(inputs), generator=generator) < 0.5
        shifted = torch.where(flip.view(-1, *[1] * (inputs.dim() - 1)), shifted.flip(-1), shifted)
    return shifted
