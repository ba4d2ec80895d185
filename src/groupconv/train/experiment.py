"""`groupconv experiment`: claims about grouped convolutions, measured with several seeds.

Studies (each a list of variants of one compact ShuffleNet, trained with the same recipe):
- groups:     G = 1, 2, 4, 8 at equal width: fewer parameters and multiply-adds as G grows; accuracy?
- equal-macs: G = 1, 2, 4, 8 with each net's channels widened until its multiply-adds match G = 1's
              (what ShuffleNet's Table 1 does): does the width that grouping buys pay off?
- shuffle:    G = 3 and 8, with and without channel shuffle (ShuffleNet's Table 3 ablation).
- alexnet-groups (run only when named: it trains the 57M-parameter AlexNet): AlexNet with 1, 2 and 4
              filter groups on conv2, conv4, conv5 (Krizhevsky et al. 2012, Sec. 3.5), with its default
              recipe. Besides accuracy it measures what the groups learn: the share of the squared
              correlation between conv4's and conv5's responses that falls in conv5's group-diagonal
              blocks (Deep Roots, Ioannou et al. 2017; the dense net is measured against 2 blocks, the
              paper's split), and draws conv1's filters group by group (on grey digits there is no
              colour for the two groups to specialise in, as Krizhevsky et al. saw on colour ImageNet).

The ShuffleNet studies use the zoo's compact ShuffleNet (groupconv.models.shufflenet_compact: the ShuffleNet unit
in a short stack, 1, 2, 1 units per stage, with channels set directly), so that G = 1..8 share one
width; it is small enough that a variant trains on digits in seconds. Every trial is an ordinary
run directory (replay with `groupconv train --config DIR/runs/NAME-seedK/config.json`).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..analysis import count_multiply_adds, count_parameters, draw_filters, layer_correlation
from ..analysis.sample_data import dataset_batches
from ..data import load_dataset
from ..models import create_model, model_entry
from ..models.shufflenet_compact import EQUAL_WIDTH_CHANNELS, STEM_CHANNELS
from .builders import default_small_input
from .config import ConfigError, resolve_config
from .evaluation import load_run
from .loop import idle_cores, train
from .plots import pyplot

SHUFFLENET_STUDIES = ("groups", "equal-macs", "shuffle")
STUDIES = SHUFFLENET_STUDIES + ("alexnet-groups",)
SHUFFLENET_LR = 0.05  # the compact ShuffleNet's peak learning rate in these studies
# Deep Roots' measurement on AlexNet: conv5 (grouped) reads conv4 (grouped) at the same spatial size.
ALEXNET_LAYERS = ("features.conv4", "features.conv5")
ALEXNET_DENSE_BLOCKS = 2  # the dense net is measured against the paper's two groups


@dataclass(frozen=True)
class Variant:
    study: str
    label: str
    model_kwargs: dict
    model: str = "shufflenet_compact"

    @property
    def name(self) -> str:
        return f"{self.study}-{self.label}"


def model_cost(model_kwargs: dict, input_shape: tuple[int, ...], num_classes: int,
               model: str = "shufflenet_compact") -> tuple[int, int]:
    """(parameters, multiply-adds per image) of a zoo model as the trainer builds it, counted on the meta device."""
    small_input = {"small_input": True} if default_small_input(model_entry(model), input_shape) else {}
    with torch.device("meta"):
        network = create_model(model, num_classes=num_classes, in_chans=input_shape[0], **small_input, **model_kwargs)
        x = torch.zeros(1, *input_shape)
    return count_parameters(network), count_multiply_adds(network.eval(), x)


def equal_macs_channels(groups: int, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Stage channels (c, 2c, 4c) for `groups`, c a multiple of 4G, whose multiply-adds are closest to G = 1's."""
    target = model_cost({"groups": 1, "channels": EQUAL_WIDTH_CHANNELS}, input_shape, 10)[1]
    step = 4 * groups
    first = range(step * (STEM_CHANNELS // step + 1), 4 * EQUAL_WIDTH_CHANNELS[0] + 1, step)  # wider than the stem
    candidates = [(c, 2 * c, 4 * c) for c in first]
    def distance(channels):
        return abs(model_cost({"groups": groups, "channels": channels}, input_shape, 10)[1] - target)

    return min(candidates, key=distance)


def study_variants(study: str, input_shape: tuple[int, ...]) -> list[Variant]:
    width = list(EQUAL_WIDTH_CHANNELS)
    if study == "groups":
        return [Variant(study, f"g{g}", {"groups": g, "channels": width}) for g in (1, 2, 4, 8)]
    if study == "equal-macs":
        return [Variant(study, f"g{g}", {"groups": g, "channels": list(equal_macs_channels(g, input_shape))})
                for g in (1, 2, 4, 8)]
    if study == "alexnet-groups":
        return [Variant(study, f"g{g}", {}, name) for g, name in ((1, "alexnet_g1"), (2, "alexnet"), (4, "alexnet_g4"))]
    return [Variant(study, f"g{g}-{'shuffle' if s else 'noshuffle'}", {"groups": g, "channels": width, "shuffle": s})
            for g in (3, 8) for s in (True, False)]


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--studies", default=",".join(SHUFFLENET_STUDIES),
                        help=f"comma-separated studies to run, of {', '.join(STUDIES)} (default: "
                             f"{','.join(SHUFFLENET_STUDIES)}; alexnet-groups trains AlexNet, about 25 s per epoch "
                             f"per trial on 2 CPU cores)")
    parser.add_argument("--dataset", default="digits", choices=("digits", "cifar10", "cifar100", "folder"),
                        help="image dataset to train on (default: digits, embedded)")
    parser.add_argument("--data-dir", default=None, help="where cifar10/cifar100/folder data live")
    parser.add_argument("--image-size", type=int, default=16, help="image height and width (default: 16)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs per trial (default: 10 for the ShuffleNet studies, groupconv train's "
                             "default for alexnet-groups)")
    parser.add_argument("--seeds", type=int, default=3, help="trials per variant, seeds 0..N-1 (default: 3)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"peak SGD learning rate (default: {SHUFFLENET_LR} for the ShuffleNet studies, the "
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
    variants = [v for study in studies for v in study_variants(study, input_shape)]
    print(f"groupconv experiment: {len(variants)} variants x {args.seeds} seeds on {args.dataset} {input_shape}; "
          f"results in {output}", flush=True)

    trials = []
    for variant in variants:
        parameters, macs = model_cost(variant.model_kwargs, input_shape, data.num_classes, variant.model)
        for seed in range(args.seeds):
            run_dir = output / "runs" / f"{variant.name}-seed{seed}"
            options = {"model": variant.model, "model_kwargs": copy.deepcopy(variant.model_kwargs),
                       "dataset": args.dataset, "data_dir": args.data_dir, "image_size": args.image_size,
                       "batch_size": args.batch_size, "seed": seed, "threads": threads, "output": str(run_dir),
                       "overwrite": True, "progress": False}
            # The ShuffleNet studies share one recipe; AlexNet keeps its own unless the user gives one.
            fixed = {"epochs": 10, "lr": SHUFFLENET_LR} if variant.model == "shufflenet_compact" else {}
            given = {key: getattr(args, key) for key in ("epochs", "lr") if getattr(args, key) is not None}
            config = resolve_config({**options, **fixed, **given})
            summary = train(config, verbose=False)
            if summary["interrupted"]:  # Ctrl-C stopped this trial (its checkpoint is saved): stop the experiment
                raise KeyboardInterrupt
            history = summary["history"]
            trial = {"study": variant.study, "variant": variant.label, "seed": seed, "model": variant.model,
                     "model_kwargs": json.dumps(variant.model_kwargs), "parameters": parameters,
                     "multiply_adds": macs, "epochs": config.epochs, "test_accuracy": history[-1]["test_accuracy"],
                     "train_seconds": sum(row["seconds"] for row in history)}
            if variant.study == "alexnet-groups":
                trial.update(alexnet_group_structure(run_dir, output, variant, seed, args))
            trials.append(trial)
            print(f"  {variant.name:28} seed {seed}: accuracy {trial['test_accuracy']:.2%}, "
                  f"{trial['train_seconds']:.1f} s", flush=True)

    return write_summary(output, trials, args.seeds)


def alexnet_group_structure(run_dir: Path, output: Path, variant: Variant, seed: int,
                            args: argparse.Namespace) -> dict:
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
               "parameters": group[0]["parameters"], "multiply_adds": group[0]["multiply_adds"],
               "epochs": group[0]["epochs"], "seeds": len(group), "accuracy_mean": accuracy,
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
    lines = [f"| study | variant | channels (or model) | params | MACs/img | epochs | "
             f"test accuracy (mean ± std, {seeds} seeds) | "
             + ("conv4→conv5 energy in group blocks (unstructured) | " if energy else "") + "train s (median) |",
             "|---|---|---|---:|---:|---:|---:|" + ("---:|" if energy else "") + "---:|"]
    for row in rows:
        channels = "/".join(map(str, json.loads(row["model_kwargs"]).get("channels", []))) or row["model"]
        line = (f"| {row['study']} | {row['variant']} | {channels} | {row['parameters']:,} | "
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
