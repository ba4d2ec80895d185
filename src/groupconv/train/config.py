"""The training configuration: one dataclass that is the CLI's options, the saved config.json and the replay.

Precedence, lowest first: the defaults below, the model's default recipe (its registry entry's
`recipe`: e.g. AlexNet's SGD at lr 0.01, Krizhevsky et al. 2012), a `--config FILE` (a saved
config.json), the options given on the command line. Each field's help text is the CLI's --help.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..models import is_model, model_entry


class ConfigError(ValueError):
    """A user mistake in the options or the config file: reported as `error: ...`."""


# Keys of a saved config.json that record what the data made of the options, not options themselves.
DERIVED_KEYS = ("num_classes", "in_chans", "input_shape")


def option(default, help: str, choices=None):
    metadata = {"help": help, "choices": choices}
    if isinstance(default, (dict, list)):  # a mutable default must be built afresh for each config
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    # what to train
    model: str = option("shufflenet_g3_wd4", "model: a name from the model zoo (`groupconv models`), or "
                                             "cnn1d_mnist1d, grouped_cnn1d_mnist1d (1-D) or shufflenet_compact")
    model_kwargs: dict = option({}, 'extra model arguments as JSON, e.g. \'{"shuffle": false}\'')
    dataset: str = option("digits", "dataset: digits, mnist1d, cifar10, cifar100 or folder")
    data_dir: str | None = option(None, "where cifar10/cifar100 archives or an ImageFolder tree live "
                                        "(default: data/ for CIFAR)")
    download: bool = option(False, "download a missing CIFAR archive from its official source")
    image_size: int | None = option(None, "resize images to this height and width; default: 16 for digits "
                                          "(8x8 upsampled), the dataset's own size otherwise; ignored for 1-D data")
    small_input: bool | None = option(None, "build the model's small-input (CIFAR-size) variant; default: "
                                            "when it has one and the images are smaller than 64 pixels")
    # how long and how
    epochs: int = option(12, "training epochs")
    batch_size: int = option(64, "global batch size (split across processes under torchrun)")
    optimizer: str = option("sgd", "optimizer", choices=("sgd", "adamw"))
    lr: float = option(0.1, "peak learning rate (after warm-up)")
    momentum: float = option(0.9, "SGD momentum (Nesterov)")
    weight_decay: float = option(5e-4, "weight decay; not applied to biases and normalisation parameters")
    schedule: str = option("cosine", "learning-rate schedule after warm-up", choices=("cosine", "step", "constant"))
    warmup_epochs: float = option(2.0, "epochs of linear warm-up from lr/100 to lr")
    step_epochs: int = option(30, "step schedule: multiply the lr by --step-gamma every this many epochs")
    step_gamma: float = option(0.1, "step schedule: the factor")
    label_smoothing: float = option(0.1, "label smoothing of the cross-entropy loss")
    zero_init_residual: bool = option(True, "start every residual block as its shortcut: zero scale on the last "
                                            "normalisation (or layer scale) of its branch, where the model has "
                                            "zero_init_last (Goyal et al. 2017; deep ShuffleNets and ResNeXts on small "
                                            "images otherwise blow up in the first epochs)")
    clip_grad: float = option(0.0, "clip the global gradient norm to this value (0: no clipping)")
    augment: str = option("shift", "training augmentation: shift (random translation by up to 1/8 of the size, "
                                    "padded with the border), flip (shift plus horizontal flips) or none",
                          choices=("shift", "flip", "none"))
    # reproducibility and speed
    seed: int = option(0, "seed of the weights, the data order and the augmentation")
    deterministic: bool = option(False, "use only deterministic kernels (torch.use_deterministic_algorithms)")
    device: str = option("auto", "cpu, cuda, cuda:N or auto (cuda when available)")
    bf16: bool = option(False, "bfloat16 autocast (meant for GPUs); checked at the start: a model whose ops "
                                   "cannot run under autocast is an error naming the reason")
    channels_last: bool = option(False, "channels_last memory format for 2-D models")
    compile: bool = option(False, "torch.compile the model")
    workers: int = option(0, "DataLoader worker processes (in-memory datasets need none)")
    keep_memory: bool = option(True, "keep freed CPU memory for reuse instead of returning it to the system after "
                                     "every large tensor (groupconv.ops.allocator: no page faults at every step; the "
                                     "process keeps its peak footprint)")
    group_parallel: int = option(1, "split every layer's filters over this many processes (AlexNet's model "
                                    "parallelism, Krizhevsky et al. 2012); under torchrun the processes are data "
                                    "parallel across groups of this many")
    threads: int = option(0, "CPU threads per process for torch; 0: one per idle core (the cores this process "
                             "may use minus the 1-minute load average, at least 1; divided among torchrun's processes)")
    # where results go
    output: str | None = option(None, "run directory (default: runs/<model>-<dataset>-<timestamp>)")
    overwrite: bool = option(False, "write into an existing run directory, replacing its files")
    progress: bool = option(True, "show a progress bar per epoch")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"


def _base_type(annotation):
    """`int | None` -> int; `bool` -> bool."""
    hint = eval(annotation, vars(typing)) if isinstance(annotation, str) else annotation  # noqa: S307 (our own code)
    if isinstance(hint, types.UnionType):
        return next(t for t in typing.get_args(hint) if t is not type(None))
    return hint


def _parse_json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"shuffle\": false}'")
    return value


def add_config_arguments(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One option per TrainConfig field; unset options stay absent (SUPPRESS) so a --config file can fill them."""
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(f.type)
        default = getattr(defaults, f.name)
        help_text = f"{f.metadata['help']} (default: {json.dumps(default)})"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        elif kind is dict:
            parser.add_argument(flag, type=_parse_json_dict, default=argparse.SUPPRESS, metavar="JSON",
                                help=help_text)
        else:
            parser.add_argument(flag, type=kind, choices=f.metadata["choices"], default=argparse.SUPPRESS,
                                metavar=None if f.metadata["choices"] else f.name.upper(), help=help_text)


def load_config_file(path: str | Path) -> dict:
    """The fields of a saved config.json; unknown keys are an error (a typo must not be silently ignored)."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read config file {path} ({error.strerror or error})") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"config file {path} is not valid JSON ({error})") from None
    return config_values(values, f"config file {path}")


def config_values(values, source: str) -> dict:
    """The options of a saved config (a config.json, or the copy in a checkpoint), without the derived keys.

    Unknown keys are an error (a typo must not be silently ignored); `source` names where they came from.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{source} must hold a JSON object")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {key: value for key, value in values.items() if key not in DERIVED_KEYS}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source} has unknown options {unknown}")
    return values


def model_recipe(model: str) -> dict:
    """The default training options of a registered `model` (none for an unknown name: building it fails later)."""
    if not isinstance(model, str) or not is_model(model):
        return {}
    return dict(model_entry(model).recipe.options)


def recipe_applied(*layers: dict) -> dict:
    """The options of the chosen model's recipe that no layer gives: those the recipe decides.

    The recipe's model_kwargs are a base under the given ones: `--model-kwargs '{"dropout": 0.3}'` keeps the
    recipe's initialisation, `--model-kwargs '{"init": "paper"}'` replaces it.
    """
    values = dataclasses.asdict(TrainConfig())
    for layer in layers:
        values.update(layer)
    given = set().union(*layers) if layers else set()
    applied = {}
    for key, value in model_recipe(values["model"]).items():
        if key == "model_kwargs":
            given_kwargs = values["model_kwargs"] if "model_kwargs" in given and isinstance(
                values["model_kwargs"], dict) else {}
            missing = {name: kwarg for name, kwarg in value.items() if name not in given_kwargs}  # a plain dict
            if missing:
                applied[key] = missing
        elif key not in given:
            applied[key] = value
    return applied


def resolve_config(*layers: dict) -> TrainConfig:
    """Defaults, then the model's recipe, then each layer of explicitly given values on top; values are checked."""
    values = dataclasses.asdict(TrainConfig())
    for layer in layers:
        values.update(layer)
    applied = recipe_applied(*layers)
    if "model_kwargs" in applied:
        applied["model_kwargs"] = {**applied["model_kwargs"], **values["model_kwargs"]}
    values.update(applied)
    config = TrainConfig(**values)
    check_config(config)
    return config


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a JSON object"}


def _check_types(config: TrainConfig) -> None:
    """Values from a config file can be anything JSON holds: each must have its option's type."""
    for f in dataclasses.fields(TrainConfig):
        value, kind = getattr(config, f.name), _base_type(f.type)
        optional = isinstance(eval(f.type, vars(typing)) if isinstance(f.type, str) else f.type, types.UnionType)
        if value is None and optional:
            continue
        accepted = (int, float) if kind is float else kind
        if (kind is not bool and isinstance(value, bool)) or not isinstance(value, accepted):
            raise ConfigError(f"{_flag(f.name)}={value!r} must be {_TYPE_NAMES[kind]}")


SEED_LIMIT = 2 ** 32  # numpy's seeds are below this


def check_config(config: TrainConfig) -> None:
    """ConfigError naming the option unless every value is usable."""
    _check_types(config)
    for f in dataclasses.fields(TrainConfig):  # float("nan") and float("inf") parse, and JSON holds NaN and Infinity
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{_flag(f.name)}={value} must be a finite number")
    for name in ("epochs", "batch_size", "group_parallel"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{_flag(name)}={getattr(config, name)} must be a positive integer")
    if config.lr <= 0:
        raise ConfigError(f"--lr={config.lr} must be positive")
    for name in ("weight_decay", "warmup_epochs", "momentum", "workers", "threads", "clip_grad"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{_flag(name)}={getattr(config, name)} must not be negative")
    if config.momentum >= 1:
        raise ConfigError(f"--momentum={config.momentum} must be below 1 (the fraction of the last update kept)")
    if not 0 <= config.seed < SEED_LIMIT:
        raise ConfigError(f"--seed={config.seed} must be an integer from 0 to {SEED_LIMIT - 1}")
    if config.step_epochs < 1 or config.step_gamma <= 0:
        raise ConfigError(f"--step-epochs={config.step_epochs} must be at least 1 and "
                          f"--step-gamma={config.step_gamma} positive")
    if not 0 <= config.label_smoothing < 1:
        raise ConfigError(f"--label-smoothing={config.label_smoothing} must be in [0, 1)")
    if config.image_size is not None and config.image_size < 1:
        raise ConfigError(f"--image-size={config.image_size} must be a positive integer")
    for name, f in TrainConfig.__dataclass_fields__.items():
        choices = f.metadata["choices"]
        if choices and getattr(config, name) not in choices:
            raise ConfigError(f"{_flag(name)}={getattr(config, name)!r} is not one of {', '.join(choices)}")
