"""Training: `train(config)` runs the loop, `load_run(run_dir)` gives the trained model back; the
`groupconv train/eval/experiment` commands live in .cli.

Models made for training studies (the MNIST-1D CNNs of models1d, the compact ShuffleNet of
experiment) sit in TRAINING_MODELS beside the model zoo's registry; build_model looks in both.
"""

from . import experiment, models1d
from .checkpoint import CheckpointError
from .config import ConfigError, TrainConfig, resolve_config
from .evaluation import evaluate_checkpoint, load_run
from .loop import train
from .models1d import TRAINING_MODELS

__all__ = ["TRAINING_MODELS", "CheckpointError", "ConfigError", "TrainConfig", "evaluate_checkpoint", "experiment",
           "load_run", "models1d", "resolve_config", "train"]
