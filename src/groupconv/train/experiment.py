"""`groupconv experiment`: claims about grouped convolutions, measured with several seeds.

A study is a list of variants, each a zoo model and its arguments (`Variant`: model name, model kwargs), trained with
every seed. The table gives each variant's parameters and multiply-adds per image (counted as the trainer builds the
model for the data: at its input size, the small-input variant below 64 pixels) and its test accuracy after the last
epoch, mean ± std over the seeds. Every trial is an ordinary run directory (replay with
`groupconv train --config DIR/runs/NAME-seedK/config.json`).

Studies:
- groups:     compact ShuffleNet with G = 1, 2, 4, 8 at equal width: fewer parameters and multiply-adds as G grows;
              accuracy?
- equal-macs: compact ShuffleNet with G = 1, 2, 4, 8, each net's channels widened until its multiply-adds match
              G = 1's (what ShuffleNet's Table 1 does, Zhang et al. 2018): does the width that grouping buys pay off?
- shuffle:    compact ShuffleNet with G = 3 and 8, with and without channel shuffle (ShuffleNet's Table 3 ablation).
- v1-vs-v2 (run only when named): is a grouped design better than ShuffleNet V2's channel split at the same cost?
              ShuffleNet v1 0.5x with g = 3 and g = 8 (Zhang et al. 2018; the two are the paper's equal-complexity
              pair) against ShuffleNet V2 (Ma et al. 2018: no grouped 1x1 convs, half the channels pass each unit
              untouched) and RegNetX (Radosavovic et al. 2020: residual bottlenecks whose 3x3 convs are grouped with
              a fixed group width, here its 200MF design point), V2 and RegNetX at the width (`width=`) whose
              multiply-adds at the data's input size are the closest to ShuffleNet v1 g = 3's.
- alexnet-groups (run only when named: it trains the 57M-parameter AlexNet): AlexNet with 1, 2 and 4
              filter groups on conv2, conv4, conv5 (Krizhevsky et al. 2012, Sec. 3.5), with its default
              recipe. Besides accuracy it measures what the groups learn: the share of the squared
              correlation between conv4's and conv5's responses that falls in conv5's group-diagonal
              blocks (Deep Roots, Ioannou et al. 2017; the dense net is measured against 2 blocks, the
              paper's split), and draws conv1's filters group by group (on grey digits there is no
              colour for the two groups to specialise in, as Krizhevsky et al. saw on colour ImageNet).

Every study but alexnet-groups trains all its variants with one recipe: the library's defaults (SGD with Nesterov
momentum, cosine schedule after a linear warm-up, label smoothing, weight decay), with the study's epochs and peak
learning rate (--epochs and --lr replace them); a model's own default recipe is not applied, so that the variants
differ only in the network. The compact ShuffleNet (groupconv.models.shufflenet_compact: the ShuffleNet unit in a
short stack, 1, 2, 1 units per stage, with channels set directly) lets G = 1..8 share one width and trains on digits
in seconds.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import statistics
import time
from collections.abc import Callable
import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..analysis import count_multiply_adds, count_parameters, draw_filters, layer_correlation
from ..analysis.sample_data import dataset_batches
from ..data import load_dataset
from ..models import create_model, model_entry
from ..models.shufflenet_compact import EQUAL_WIDTH_CHANNELS, STEM_CHANNELS
from .builders import default_small_input
from .config import ConfigError, TrainConfig, model_recipe, resolve_config
from .evaluation import load_run
from .loop import idle_cores, train
from .plots import pyplot

# Deep Roots' measurement on AlexNet: conv5 (grouped) reads conv4 (grouped) at the same spatial size.
ALEXNET_LAYERS = ("features.conv4", "features.conv5")
ALEXNET_DENSE_BLOCKS = 2  # the dense net is measured against the paper's two groups
# v1-vs-v2: ShuffleNet v1 g = 3 at 0.5x sets the cost; g = 8 at 0.5x is the paper's design at that cost (Table 1).
V1_REFERENCE, V1_GROUPED = "shufflenet_g3_wd2", "shufflenet_g8_wd2"
WIDENED = (("v2", "shufflenet_v2_x0_5"), ("regnetx", "regnetx_002"))  # (label, model) matched to V1_REFERENCE
WIDTH_RANGE = (250, 4000)  # where the width search looks, in thousandths: 0.25x to 4x


@dataclass(frozen=True)
class Variant:
    """One network of a study: a zoo model and the arguments it is built with."""

    label: str
    model: str
    model_kwargs: dict = field(default_factory=dict)

    def describe(self) -> str:
        """The model and its arguments: `regnetx_002 width=0.8`, `shufflenet_compact groups=2 channels=96/192/384`."""
        arguments = (f"{key}={'/'.join(map(str, value)) if isinstance(value, list | tuple) else value}"
                     for key, value in self.model_kwargs.items())
        return " ".join((self.model, *arguments))


def model_cost(model: str, model_kwargs: dict, input_shape: tuple[int, ...], num_classes: int) -> tuple[int, int]:
    """(parameters, multiply-adds per image) of a zoo model as the trainer builds it, counted on the meta device."""
    return _model_cost(model, json.dumps(model_kwargs, sort_keys=True), tuple(input_shape), num_classes)


@functools.lru_cache(maxsize=None)  # the width search, the table and the tests ask for the same models again
def _model_cost(model: str, model_kwargs: str, input_shape: tuple[int, ...], num_classes: int) -> tuple[int, int]:
    small_input = {"small_input": True} if default_small_input(model_entry(model), input_shape) else {}
    with torch.device("meta"):
        network = create_model(model, num_classes=num_classes, in_chans=input_shape[0], **small_input,
                               **json.loads(model_kwargs))
        x = torch.zeros(1, *input_shape)
    return count_parameters(network), count_multiply_adds(network.eval(), x)


def closest_width(model: str, target_macs: int, input_shape: tuple[int, ...], num_classes: int) -> dict:
    """The model kwargs, {} or {"width": w} (w to 3 decimals, within WIDTH_RANGE), whose multiply-adds on
    `input_shape` are the closest to `target_macs`: the registered model as it is unless another width comes closer.

    Bisection: a wider model costs more, in steps (its channels are rounded), so the best width seen is kept.
    """
    best, best_gap = {}, abs(model_cost(model, {}, input_shape, num_classes)[1] - target_macs)
    low, high = WIDTH_RANGE
    while high - low > 1:
        middle = (low + high) // 2
        gap = model_cost(model, {"width": middle / 1000}, input_shape, num_classes)[1] - target_macs
        if abs(gap) < best_gap:
            best, best_gap = {"width": middle / 1000}, abs(gap)
        low, high = (middle, high) if gap < 0 else (low, middle)
    return best


def equal_macs_channels(groups: int, input_shape: tuple[int, ...], num_classes: int) -> tuple[int, int, int]:
    """Compact ShuffleNet stage channels (c, 2c, 4c) for `groups`, c a multiple of 4G, whose multiply-adds are closest
    to G = 1's at equal width."""
    def macs(groups, channels):
        return model_cost("shufflenet_compact", {"groups": groups, "channels": channels}, input_shape, num_classes)[1]

    target = macs(1, EQUAL_WIDTH_CHANNELS)
    step = 4 * groups
    first = range(step * (STEM_CHANNELS // step + 1), 4 * EQUAL_WIDTH_CHANNELS[0] + 1, step)  # wider than the stem
    return min(((c, 2 * c, 4 * c) for c in first), key=lambda channels: abs(macs(groups, channels) - target))


def compact_groups(input_shape, num_classes) -> list[Variant]:
    return [Variant(f"g{g}", "shufflenet_compact", {"groups": g, "channels": list(EQUAL_WIDTH_CHANNELS)})
            for g in (1, 2, 4, 8)]


def compact_equal_macs(input_shape, num_classes) -> list[Variant]:
    return [Variant(f"g{g}", "shufflenet_compact",
                    {"groups": g, "channels": list(equal_macs_channels(g, input_shape, num_classes))})
            for g in (1, 2, 4, 8)]


def compact_shuffle(input_shape, num_classes) -> list[Variant]:
    return [Variant(f"g{g}-{'shuffle' if s else 'noshuffle'}", "shufflenet_compact",
                    {"groups": g, "channels": list(EQUAL_WIDTH_CHANNELS), "shuffle": s})
            for g in (3, 8) for s in (True, False)]


def v1_against_v2(input_shape, num_classes) -> list[Variant]:
    target = model_cost(V1_REFERENCE, {}, input_shape, num_classes)[1]
    return [Variant("v1-g3", V1_REFERENCE), Variant("v1-g8", V1_GROUPED),
            *(Variant(label, model, closest_width(model, target, input_shape, num_classes))
              for label, model in WIDENED)]


def alexnet_groups(input_shape, num_classes) -> list[Variant]:
    return [Variant(f"g{g}", name) for g, name in ((1, "alexnet_g1"), (2, "alexnet"), (4, "alexnet_g4"))]


def alexnet_group_structure(run_dir: Path, output: Path, variant: Variant, seed: int) -> dict:
    """What a trained AlexNet's groups hold: conv4 -> conv5 correlation energy in the group blocks, conv1's filters.

    The correlation is over the test split's first 512 images (every pixel of conv5's maps one sample).
    The filters of seed 0 are drawn to filters/VARIANT.png, coloured by the conv2 group that reads them.
    """
    model, config = load_run(run_dir, which="last")
    batches, _ = dataset_batches(config.dataset, 128, 4, config.image_size, config.data_dir)
    groups = dict(model.named_modules())[ALEXNET_LAYERS[1]].groups
    correlation = layer_correlation(model, batches, *ALEXNET_LAYERS,
                                    blocks=ALEXNET_DENSE_BLOCKS if groups == 1 else None)
    if seed == 0:
        (output / "filters").mkdir(exist_ok=True)
        draw_filters(model, output / "filters" / f"{variant.label}.png", layer="features.conv1")
    return {"group_block_energy": correlation.block_energy, "unstructured_energy": correlation.unstructured_energy}


@dataclass(frozen=True)
class Study:
    """How a study's variants are made and trained."""

    variants: Callable[[tuple[int, ...], int], list[Variant]]  # (input shape, number of classes) -> variants
    recipe: dict | None  # epochs and lr every variant trains with; None: each model's own default recipe
    default: bool  # part of the default --studies
    # after a trial, measurements of the trained run: (run dir, output dir, variant, seed) -> table columns
    measure: Callable[..., dict] | None = None


COMPACT_RECIPE = {"epochs": 10, "lr": 0.05}  # the compact ShuffleNet's, in its three studies
STUDIES = {
    "groups": Study(compact_groups, COMPACT_RECIPE, default=True),
    "equal-macs": Study(compact_equal_macs, COMPACT_RECIPE, default=True),
    "shuffle": Study(compact_shuffle, COMPACT_RECIPE, default=True),
    "v1-vs-v2": Study(v1_against_v2, {"epochs": 30, "lr": 0.1}, default=False),
    "alexnet-groups": Study(alexnet_groups, None, default=False, measure=alexnet_group_structure),
}
DEFAULT_STUDIES = tuple(name for name, study in STUDIES.items() if study.default)


def study_variants(study: str, input_shape: tuple[int, ...], num_classes: int) -> list[Variant]:
    return STUDIES[study].variants(input_shape, num_classes)


def studies_default(option: str) -> str:
    """What each study with its own recipe sets `option` to, for --help: "groups 10, ..., v1-vs-v2 30"."""
    return ", ".join(f"{name} {study.recipe[option]}" for name, study in STUDIES.items() if study.recipe)


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--studies", default=",".join(DEFAULT_STUDIES),
                        help=f"comma-separated studies to run, of {', '.join(STUDIES)} (default: "
                             f"{','.join(DEFAULT_STUDIES)}; v1-vs-v2 trains four 0.24M-1.7M-parameter networks, "
                             f"about 2 to 7 s per epoch per trial on 2 CPU cores, 25 CPU-minutes at its defaults; "
                             f"alexnet-groups trains AlexNet, about 25 s per epoch per trial)")
    parser.add_argument("--dataset", default="digits", choices=("digits", "cifar10", "cifar100", "folder"),
                        help="image dataset to train on (default: digits, embedded)")
    parser.add_argument("--data-dir", default=None, help="where cifar10/cifar100/folder data live")
    parser.add_argument("--image-size", type=int, default=16, help="image height and width (default: 16)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"training epochs per trial (default: the study's, {studies_default('epochs')}; "
                             f"groupconv train's for alexnet-groups)")
    parser.add_argument("--seeds", type=int, default=3, help="trials per variant, seeds 0..N-1 (default: 3)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"peak SGD learning rate (default: the study's, {studies_default('lr')}; the "
                             f"model's recipe for alexnet-groups)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (default: 0, one per idle core, decided once for all trials)")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="where results go (default: runs/experiment-<timestamp>)")
    parser.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty DIR")


def _check_arguments(args: argparse.Namespace) -> list[str]:
    studies = [s.strip() for s in args.studies.split(",") if s.strip()]
    unknown = [s for s in studies if s not in STUDIES]
    if unknown or not studies:
        raise ConfigError(f"--studies={args.studies!r}: choose from {', '.join(STUDIES)}")
    for option in ("epochs", "seeds", "batch_size", "image_size"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            raise ConfigError(f"--{option.replace('_', '-')}={getattr(args, option)} must be at least 1")
    if args.threads < 0:
        raise ConfigError(f"--threads={args.threads} must not be negative")
    if args.lr is not None and not args.lr > 0:
        raise ConfigError(f"--lr={args.lr} must be positive")
    return studies


def shared_recipe(study: Study, model: str) -> dict:
    """The training options a study with one recipe for all its variants fixes for `model`: the study's epochs and lr,
    and the library's defaults for whatever the model's own default recipe would change (none for alexnet-groups,
    which trains each AlexNet with AlexNet's recipe)."""
    if study.recipe is None:
        return {}
    defaults = dataclasses.asdict(TrainConfig())
    # The recipe's model_kwargs (e.g. an initialisation) belong to the network, not to the training: they stay.
    own = {key: defaults[key] for key in model_recipe(model) if key != "model_kwargs"}
    return {**own, **study.recipe}


def summarise(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def run_experiments(args: argparse.Namespace) -> list[dict]:
    """Train every variant of the chosen studies with every seed; print and save the table (CSV, JSON, PNG)."""
    studies = _check_arguments(args)
    output = Path(args.output or f"runs/experiment-{time.strftime('%Y%m%d-%H%M%S')}")
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not args.overwrite:
        raise ConfigError(f"--output={output} already exists: pass --overwrite to write into it, or another "
                          f"--output")
    output.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.dataset, args.data_dir, args.image_size)  # fail early on bad data, and learn its shape
    threads = args.threads or idle_cores()  # decided once: train times are compared across trials
    input_shape = data.input_shape
    variants = [(name, v) for name in studies for v in study_variants(name, input_shape, data.num_classes)]
    print(f"groupconv experiment: {len(variants)} variants x {args.seeds} seeds on {args.dataset} {input_shape}; "
          f"results in {output}", flush=True)

    trials = []
    for study_name, variant in variants:
        study = STUDIES[study_name]
        parameters, macs = model_cost(variant.model, variant.model_kwargs, input_shape, data.num_classes)
        for seed in range(args.seeds):
            name = f"{study_name}-{variant.label}"
            run_dir = output / "runs" / f"{name}-seed{seed}"
            options = {"model": variant.model, "model_kwargs": copy.deepcopy(variant.model_kwargs),
                       "dataset": args.dataset, "data_dir": args.data_dir, "image_size": args.image_size,
                       "batch_size": args.batch_size, "seed": seed, "threads": threads, "output": str(run_dir),
                       "overwrite": True, "progress": False}
            given = {key: getattr(args, key) for key in ("epochs", "lr") if getattr(args, key) is not None}
            config = resolve_config({**options, **shared_recipe(study, variant.model), **given})
            summary = train(config, verbose=False)
            if summary["interrupted"]:  # Ctrl-C stopped this trial (its checkpoint is saved): stop the experiment
                raise KeyboardInterrupt
            history = summary["history"]
            trial = {"study": study_name, "variant": variant.label, "seed": seed, "model": variant.model,
                     "model_kwargs": json.dumps(variant.model_kwargs), "description": variant.describe(),
                     "parameters": parameters, "multiply_adds": macs, "epochs": config.epochs,
                     "test_accuracy": history[-1]["test_accuracy"],
                     "train_seconds": sum(row["seconds"] for row in history)}
            if study.measure:
                trial.update(study.measure(run_dir, output, variant, seed))
            trials.append(trial)
            print(f"  {name:28} seed {seed}: accuracy {trial['test_accuracy']:.2%}, "
                  f"{trial['train_seconds']:.1f} s", flush=True)

    return write_summary(output, trials, args.seeds)


def write_summary(output: Path, trials: list[dict], seeds: int) -> list[dict]:
    """trials.csv (one row per trial), summary.csv/.json/.md (per variant) and summary.png; prints the table."""
    rows = summary_rows(trials)
    write_csv(output / "trials.csv", trials)
    write_csv(output / "summary.csv", rows)
    (output / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    table = format_table(rows, seeds)
    print("\n" + table)
    (output / "summary.md").write_text(table + "\n")
    plot_summary(output / "summary.png", rows)
    print(f"\nwritten: {output / 'summary.csv'}, {output / 'trials.csv'}, {output / 'summary.png'}")
    return rows


def summary_rows(trials: list[dict]) -> list[dict]:
    rows = []
    for key in dict.fromkeys((t["study"], t["variant"]) for t in trials):
        group = [t for t in trials if (t["study"], t["variant"]) == key]
        accuracy, accuracy_std = summarise([t["test_accuracy"] for t in group])
        # The median: the first trial of a variant also pays the dispatcher's one-off tuning of its new shapes.
        seconds = statistics.median(t["train_seconds"] for t in group)
        row = {"study": key[0], "variant": key[1], "model": group[0]["model"], "model_kwargs": group[0]["model_kwargs"],
               "description": group[0]["description"], "parameters": group[0]["parameters"],
               "multiply_adds": group[0]["multiply_adds"], "epochs": group[0]["epochs"], "seeds": len(group), "accuracy_mean": accuracy,
               "accuracy_std": accuracy_std, "train_seconds_median": seconds}
        if "group_block_energy" in group[0]:
            energy, energy_std = summarise([t["group_block_energy"] for t in group])
            row.update(group_block_energy_mean=energy, group_block_energy_std=energy_std,
                       unstructured_energy=group[0]["unstructured_energy"])
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))  # studies may add columns
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def format_table(rows: list[dict], seeds: int) -> str:
    """Markdown table; the conv4 -> conv5 block-energy column appears when a study measured it."""
    energy = any("group_block_energy_mean" in row for row in rows)
    lines = [f"| study | variant | model (arguments) | params | MACs/img | epochs | "
             f"test accuracy (mean ± std, {seeds} seeds) | "
             + ("conv4→conv5 energy in group blocks (unstructured) | " if energy else "") + "train s (median) |",
             "|---|---|---|---:|---:|---:|---:|" + ("---:|" if energy else "") + "---:|"]
    for row in rows:
        line = (f"| {row['study']} | {row['variant']} | {row['description']} | {row['parameters']:,} | "
                f"{row['multiply_adds'] / 1e6:.2f}M | {row['epochs']} | "
                f"{row['accuracy_mean']:.2%} ± {row['accuracy_std']:.2%} | ")
        if energy:
            line += (f"{row['group_block_energy_mean']:.1%} ± {row['group_block_energy_std']:.1%} "
                     f"({row['unstructured_energy']:.0%}) | " if "group_block_energy_mean" in row else "– | ")
        lines.append(line + f"{row['train_seconds_median']:.1f} |")
    return "\n".join(lines)


def plot_summary(path: Path, rows: list[dict]) -> None:
    """One panel per study: accuracy (mean ± std error bars) per variant, annotated with params and MACs."""
    plt = pyplot()
    studies = list(dict.fromkeys(row["study"] for row in rows))
    figure, axes = plt.subplots(1, len(studies), figsize=(4.5 * len(studies), 3.8), squeeze=False)
    for axis, study in zip(axes[0], studies):
        group = [row for row in rows if row["study"] == study]
        positions = range(len(group))
        axis.errorbar(positions, [100 * r["accuracy_mean"] for r in group],
                      yerr=[100 * r["accuracy_std"] for r in group], fmt="o", capsize=4)
        axis.set_xticks(list(positions), [f"{r['variant']}\n{r['parameters'] / 1e3:.0f}k p\n"
                                          f"{r['multiply_adds'] / 1e6:.1f}M MAC" for r in group], fontsize=7)
        axis.set_title(study)
        axis.set_ylabel("test accuracy (%)")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
