"""Training: `train(config)` runs the loop, `load_run(run_dir)` gives the trained model back,
`report_run(run_dir)` writes a run's HTML report; the `groupconv train/eval/experiment/report`
commands live in groupconv.cli.

Every model comes from the model zoo's registry (groupconv.models), the study models included.
"""

from . import experiment
from .checkpoint import CheckpointError
from .config import ConfigError, TrainConfig, resolve_config
from .evaluation import evaluate_checkpoint, load_run
from .loop import train
from .report import load_run_with_data, report_run

__all__ = ["CheckpointError", "ConfigError", "TrainConfig", "evaluate_checkpoint", "experiment", "load_run",
           "load_run_with_data", "report_run", "resolve_config", "train"]
