"""The run directory: where a run's config, metrics, plots and checkpoints live."""

from __future__ import annotations

import time
from pathlib import Path

from .config import ConfigError, TrainConfig

LAST_CHECKPOINT = "last.safetensors"
BEST_CHECKPOINT = "best.safetensors"
CONFIG_FILE = "config.json"


def default_run_directory(config: TrainConfig) -> Path:
    return Path("runs") / f"{config.model}-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_directory(config: TrainConfig, resuming: bool) -> Path:
    """The run directory, created; an existing one is an error unless resuming or --overwrite (nothing deleted)."""
    run_dir = Path(config.output) if config.output else default_run_directory(config)
    if resuming:
        if not (run_dir / LAST_CHECKPOINT).is_file():
            raise ConfigError(f"cannot resume: {run_dir / LAST_CHECKPOINT} does not exist")
        return run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} exists and is not a directory")
    if run_dir.exists() and any(run_dir.iterdir()) and not config.overwrite:
        raise ConfigError(f"run directory {run_dir} already exists: pass --resume {run_dir} to continue it, "
                          f"--overwrite to replace its files, or another --output")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create run directory {run_dir} ({error.strerror or error})") from None
    return run_dir
