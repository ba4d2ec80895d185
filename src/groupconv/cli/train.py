"""The `groupconv` subcommands of groupconv.train: train, eval, predict and experiment.

Every command's function takes the parsed arguments and returns an exit code. A user mistake
(ConfigError, DatasetError, CheckpointError: all ValueErrors) is printed as
`groupconv COMMAND: error: ...` with exit code 2 and no traceback; Ctrl-C during training saves a
checkpoint and exits with 130.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data import DATASETS, DatasetError
from ..train import CheckpointError, ConfigError, evaluate_checkpoint, train
from ..models import model_entry
from ..train.config import add_config_arguments, load_config_file, recipe_applied, resolve_config
from ..train.experiment import add_experiment_arguments, run_experiments
from ..train.prediction import format_predictions, predict_images, write_predictions
from ..train.run_directory import CONFIG_FILE
from .errors import EXIT_INTERRUPTED, reported

USER_ERRORS = (ConfigError, DatasetError, CheckpointError)

TRAIN_EPILOG = """examples:
  groupconv train                                          # ShuffleNet on the embedded digits, ~2 minutes on 2 cores
  groupconv train --model grouped_cnn1d_mnist1d --dataset mnist1d --epochs 30 --lr 0.05
  groupconv train --dataset cifar10 --data-dir data/ --model shufflenet_g3_wd2 --augment flip
  groupconv train --config runs/X/config.json --seed 1     # replay a run with another seed
  groupconv train --resume runs/X --epochs 30              # continue (or extend) a run
  torchrun --nproc-per-node 2 -m groupconv train ...       # distributed data parallel
  torchrun --nproc-per-node 2 -m groupconv train --model alexnet --group-parallel 2  # AlexNet's filters split
                                                           # over the 2 processes (Krizhevsky et al. 2012)

A model may have a default recipe (AlexNet and NiN: their papers' settings, with the changes that let
them train from standardised inputs, see docs/training.md); it replaces the defaults below and is
printed at the start. Options given on the command line override those of
--config (or of the resumed run's config.json), which override the recipe.
Datasets: """ + "; ".join(f"{name}: {text}" for name, text in DATASETS.items())


def _reported(command: str, function):
    return reported(command, function, USER_ERRORS)


def given_options(args: argparse.Namespace, exclude: tuple[str, ...]) -> dict:
    """The TrainConfig options given on the command line (unset ones are absent: argparse.SUPPRESS)."""
    return {k: v for k, v in vars(args).items() if k not in exclude}


def run_train(args: argparse.Namespace) -> int:
    given = given_options(args, ("config", "resume", "run", "command"))
    layers = []
    if args.resume is not None:
        if args.config is not None:
            raise ConfigError("--resume continues a run with its own config.json; --config cannot be combined "
                              "with it (give single options to change them)")
        run_dir = Path(args.resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise ConfigError(f"--resume={run_dir}: {run_dir / CONFIG_FILE} does not exist, so it is not a "
                              f"groupconv run directory")
        if given.get("output") not in (None, str(run_dir)):
            raise ConfigError(f"--resume={run_dir} writes into that directory; --output={given['output']} "
                              f"cannot differ")
        layers += [load_config_file(run_dir / CONFIG_FILE), {"output": str(run_dir)}]
    elif args.config is not None:
        # A config replays the training, not its destination: the run gets its own directory (or --output).
        replay = load_config_file(args.config)
        replay.pop("output", None)
        replay.pop("overwrite", None)
        layers.append(replay)
    config = resolve_config(*layers, given)
    recipe = recipe_applied(*layers, given)
    if recipe:  # saved in config.json with every other option
        options = " ".join(f"--{key.replace('_', '-')}={json.dumps(value) if isinstance(value, dict) else value}"
                           for key, value in recipe.items())
        print(f"default recipe of {config.model} ({model_entry(config.model).recipe.source}): {options}", flush=True)
    summary = train(config, resume=args.resume is not None)
    return EXIT_INTERRUPTED if summary["interrupted"] else 0


def run_eval(args: argparse.Namespace) -> int:
    overrides = {"dataset": args.dataset, "data_dir": args.data_dir, "image_size": args.image_size,
                 "model": args.model}
    evaluate_checkpoint(args.checkpoint, args.which, overrides, args.batch_size, args.device, args.output)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    results = predict_images(args.run_dir, args.images, args.which, args.top, args.batch_size)
    print(format_predictions(results))
    if args.json:
        write_predictions(args.json, results)
    return 0


def run_experiment(args: argparse.Namespace) -> int:
    run_experiments(args)
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add train, eval, predict and experiment; each sets `run=` to a function(args) -> exit code."""
    training = commands.add_parser(
        "train", help="train a model from the zoo on a dataset (default: a small ShuffleNet on digits)",
        description="Train a model, writing a run directory: config.json, metrics.csv/json, loss.png, "
                    "accuracy.png, last.safetensors and best.safetensors. Ctrl-C saves a checkpoint and exits; "
                    "--resume continues it.",
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    training.add_argument("--config", metavar="FILE", default=None,
                          help="a JSON config (e.g. a run's config.json) whose values replace the defaults; its "
                               "output and overwrite are ignored, so a replay gets a new run directory")
    training.add_argument("--resume", metavar="RUN_DIR", default=None,
                          help="continue the run in RUN_DIR from its last.safetensors, with its config.json")
    add_config_arguments(training)
    training.set_defaults(run=_reported("train", run_train))

    evaluate = commands.add_parser(
        "eval", help="accuracy, loss and confusion matrix of a trained checkpoint on a test split",
        description="Score a checkpoint (a run directory or a .safetensors file) on its dataset's test split; "
                    "prints accuracy, loss and the confusion matrix and writes confusion.png and eval.json.")
    evaluate.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT",
                          help="a run directory of `groupconv train`, or one of its .safetensors checkpoints")
    evaluate.add_argument("--which", choices=("best", "last"), default="best",
                          help="which checkpoint of a run directory (default: best)")
    evaluate.add_argument("--dataset", choices=list(DATASETS), default=None,
                          help="score on this dataset instead of the run's (same number of classes)")
    evaluate.add_argument("--data-dir", default=None, help="where the dataset lives (default: the run's)")
    evaluate.add_argument("--image-size", type=int, default=None,
                          help="resize images to this size (default: the run's)")
    evaluate.add_argument("--model", default=None,
                          help="build this model instead of the run's (the checkpoint must fit it)")
    evaluate.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default: 256)")
    evaluate.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    evaluate.add_argument("--output", default=None, metavar="DIR",
                          help="where confusion.png and eval.json go (default: eval-<checkpoint>/ beside it)")
    evaluate.set_defaults(run=_reported("eval", run_eval))

    predict = commands.add_parser(
        "predict", help="classify image files with a trained run's model",
        description="Classify image files with a trained model: each file is read as the run's training images "
                    "were (grey or RGB, scaled, resized to the run's input size, normalised with its training "
                    "statistics) and its most probable classes are printed, one line per image.",
        epilog="example:\n  groupconv predict runs/shufflenet_compact-digits photos/*.png --top 3 --json out.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_argument("run_dir", metavar="RUN_DIR_OR_CHECKPOINT",
                         help="a run directory of `groupconv train`, or one of its .safetensors checkpoints")
    predict.add_argument("images", metavar="IMAGE", nargs="+",
                         help="image files (png, jpg, bmp, gif, webp), or directories of them")
    predict.add_argument("--which", choices=("best", "last"), default="best",
                         help="which checkpoint of a run directory (default: best)")
    predict.add_argument("--top", type=int, default=3, help="how many classes to print per image (default: 3)")
    predict.add_argument("--batch-size", type=int, default=64, help="images per forward (default: 64)")
    predict.add_argument("--json", metavar="FILE", default=None,
                         help="also write the predictions (every image's top classes and probabilities) as JSON")
    predict.set_defaults(run=_reported("predict", run_predict))

    experiment = commands.add_parser(
        "experiment", help="grouped-convolution claims on embedded data: groups, equal cost, shuffle, ShuffleNet v1 "
                           "against V2 and RegNetX; mean ± std over seeds",
        description="Train the variants of each study (a zoo model and its arguments) on a dataset with several "
                    "seeds and print a table of mean ± std (parameters, multiply-adds, accuracy, train time), saved "
                    "as CSV and PNG. Studies: groups (compact ShuffleNet, G = 1/2/4/8 at equal width), equal-macs "
                    "(G = 1/2/4/8, layers widened so multiply-adds match G=1), shuffle (with and without channel "
                    "shuffle at G = 3 and 8), v1-vs-v2 (ShuffleNet v1 0.5x with g = 3 and 8 against ShuffleNet V2 "
                    "and RegNetX at the width whose multiply-adds at the data's input size are closest; run only "
                    "when named), alexnet-groups (AlexNet with 1, 2, 4 filter groups; run only when named).")
    add_experiment_arguments(experiment)
    experiment.set_defaults(run=_reported("experiment", run_experiment))
