"""Loading a finished run back (`load_run`) and scoring a checkpoint on a dataset (`groupconv eval`)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data import load_dataset
from .builders import build_model
from .checkpoint import CheckpointError, load_checkpoint, load_model_weights
from .config import ConfigError, TrainConfig, config_values, load_config_file, resolve_config
from .distributed import Distributed, choose_device
from .loop import evaluate
from .plots import format_confusion_matrix, plot_confusion_matrix
from .run_directory import BEST_CHECKPOINT, CONFIG_FILE, LAST_CHECKPOINT

CHECKPOINT_NAMES = {"best": BEST_CHECKPOINT, "last": LAST_CHECKPOINT}


def checkpoint_path(path: str | Path, which: str = "best") -> Path:
    """The checkpoint file of a run directory (`which`: best or last), or `path` itself if it is a file."""
    path = Path(path)
    if which not in CHECKPOINT_NAMES:
        raise ConfigError(f"--which={which!r} is not one of {', '.join(CHECKPOINT_NAMES)}")
    if path.is_dir():
        path = path / CHECKPOINT_NAMES[which]
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def _config_of(path: Path, info: dict) -> TrainConfig:
    """The run's config: config.json beside the checkpoint if there is one, else the copy in its header."""
    config_file = path.parent / CONFIG_FILE
    source = config_file if config_file.is_file() else f"the config saved in {path}"
    try:
        if config_file.is_file():
            return resolve_config(load_config_file(config_file))
        return resolve_config(config_values(info.get("config", {}), "it"))
    except ConfigError as error:
        raise CheckpointError(f"cannot rebuild the run from {source}: {error}") from None


def load_run(run_dir: str | Path, which: str = "best") -> tuple[torch.nn.Module, TrainConfig]:
    """The trained model of a run directory (or of one checkpoint file) in eval mode on the CPU, and its config.

    The model is rebuilt from the saved config (model name, model_kwargs, small_input) and the
    class count, channels and input shape recorded in the checkpoint, then its weights are loaded
    strictly. Nothing in the files can execute code (safetensors and JSON only).
    """
    model, config, _ = load_run_with_info(run_dir, which)
    return model, config


def load_run_with_info(run_dir: str | Path, which: str = "best") -> tuple[torch.nn.Module, TrainConfig, dict]:
    """load_run's model and config, and the checkpoint's info (classes, input shape, normalisation, ...)."""
    path = checkpoint_path(run_dir, which)
    model_state, _, info = load_checkpoint(path)
    config = _config_of(path, info)
    try:  # their types were checked by load_checkpoint
        num_classes, in_chans, input_shape = info["num_classes"], info["in_chans"], tuple(info["input_shape"])
    except KeyError:
        raise CheckpointError(f"{path} does not record the model's classes and input shape") from None
    model = build_model(config, num_classes, in_chans, input_shape)
    load_model_weights(model, model_state, info, path)
    return model.eval(), config, info


def evaluate_checkpoint(path: str | Path, which: str = "best", overrides: dict | None = None,
                        batch_size: int = 256, device: str = "auto", output: str | Path | None = None) -> dict:
    """Accuracy, loss and confusion matrix of a checkpoint on a test split; prints them and writes a PNG and JSON.

    `overrides` (dataset, data_dir, image_size, model, model_kwargs) replace the run's own values, e.g.
    to score on another copy of the data; a checkpoint that does not fit the model or the dataset's
    class count is a CheckpointError.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size={batch_size} must be a positive integer")
    path = checkpoint_path(path, which)
    model_state, _, info = load_checkpoint(path)
    config = _config_of(path, info)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if overrides.get("model", config.model) != config.model:
        overrides.setdefault("model_kwargs", {})  # the run's model arguments belong to its own model
    config = resolve_config(dataclasses.asdict(config), overrides)
    data = load_dataset(config.dataset, config.data_dir, config.image_size)
    made_for = info.get("num_classes")
    if made_for is not None and made_for != data.num_classes:
        raise CheckpointError(f"checkpoint {path} was made for {made_for} classes but --dataset={config.dataset} "
                              f"has {data.num_classes}")
    model = build_model(config, data.num_classes, data.in_chans, data.input_shape)
    load_model_weights(model, model_state, info, path)
    context = Distributed(0, 1, 0, choose_device(device, 0))
    model = model.to(context.device)
    loader = DataLoader(data.test, batch_size=batch_size)
    started = time.perf_counter()
    loss, accuracy, confusion = evaluate(model, loader, data.num_classes, context, config)
    seconds = time.perf_counter() - started

    output = Path(output) if output else path.parent / f"eval-{path.stem}"
    title = f"{config.model} on {config.dataset}: accuracy {accuracy:.2%}"
    result = {"checkpoint": str(path), "model": config.model, "dataset": config.dataset,
              "test_images": len(data.test), "test_loss": loss, "test_accuracy": accuracy,
              "seconds": seconds, "confusion_matrix": confusion.tolist(), "class_names": data.class_names}
    try:
        output.mkdir(parents=True, exist_ok=True)
        plot_confusion_matrix(output / "confusion.png", confusion, data.class_names, title)
        (output / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    except OSError as error:
        raise ConfigError(f"cannot write the results into {output} ({error.strerror or error})") from None
    print(f"{path}: {config.model} on {config.dataset} test split ({len(data.test)} samples)")
    print(f"accuracy {accuracy:.2%}  loss {loss:.4f}  ({seconds:.1f} s)")
    if data.num_classes <= 20:
        print(format_confusion_matrix(confusion, data.class_names))
    print(f"confusion matrix and results written to {output / 'confusion.png'} and {output / 'eval.json'}")
    return result
