"""groupconv experiment: what each study builds (variants, their costs, the shared recipe) and end-to-end runs on tiny
data, seconds each."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from groupconv.analysis import count_multiply_adds
from groupconv.train import resolve_config
from groupconv.train.builders import build_model
from groupconv.train.experiment import STUDIES, closest_width, model_cost, shared_recipe, study_variants

from .test_data import write_image_folder
from .test_train import run_cli

EQUAL_MACS_TOLERANCE = 0.05  # v1-vs-v2: every variant's multiply-adds within 5% of ShuffleNet v1 g = 3's
V1_VS_V2 = [("v1-g3", "shufflenet_g3_wd2"), ("v1-g8", "shufflenet_g8_wd2"), ("v2", "shufflenet_v2_x0_5"),
            ("regnetx", "regnetx_002")]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """An ImageFolder tree of 3 classes, 8 train and 4 test 8x8 grey PNGs each (a bright bar marks the class)."""
    return write_image_folder(tmp_path_factory.mktemp("data") / "bars", train_per_class=8, test_per_class=4)


def trainer_multiply_adds(model: str, model_kwargs: dict, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds per image of the model `groupconv train` builds for data of this shape, counted on a real input."""
    config = resolve_config({"model": model, "model_kwargs": model_kwargs})
    network = build_model(config, num_classes=10, in_chans=input_shape[0], input_shape=input_shape).eval()
    return count_multiply_adds(network, torch.zeros(1, *input_shape))


# ---------------------------------------------------------------- the studies' variants

def test_equal_macs_widens_the_grouped_nets():
    variants = study_variants("equal-macs", (1, 16, 16), 10)
    costs = [model_cost(v.model, v.model_kwargs, (1, 16, 16), 10) for v in variants]
    widths = [v.model_kwargs["channels"][0] for v in variants]
    assert widths == sorted(widths) and widths[-1] > widths[0]
    assert all(abs(macs - costs[0][1]) / costs[0][1] < 0.15 for _, macs in costs)
    equal_width = [model_cost(v.model, v.model_kwargs, (1, 16, 16), 10)
                   for v in study_variants("groups", (1, 16, 16), 10)]
    assert [p for p, _ in equal_width] == sorted((p for p, _ in equal_width), reverse=True)


def test_alexnet_groups_study_costs_fall_with_the_groups():
    variants = study_variants("alexnet-groups", (1, 16, 16), 10)
    assert [v.model for v in variants] == ["alexnet_g1", "alexnet", "alexnet_g4"]
    costs = [model_cost(v.model, v.model_kwargs, (1, 16, 16), 10) for v in variants]
    assert [p for p, _ in costs] == sorted((p for p, _ in costs), reverse=True)
    assert [m for _, m in costs] == sorted((m for _, m in costs), reverse=True)
    # conv2, conv4 and conv5 lose (1 - 1/G) of their weights; nothing else changes
    assert costs[0][0] - costs[1][0] == (96 * 256 * 25 + 384 * 384 * 9 + 384 * 256 * 9) // 2


@pytest.mark.parametrize("input_shape", [(1, 16, 16), (3, 32, 32)])
def test_v1_vs_v2_variants_cost_the_same_multiply_adds(input_shape):
    variants = study_variants("v1-vs-v2", input_shape, 10)
    assert [(v.label, v.model) for v in variants] == V1_VS_V2
    assert [v.model_kwargs for v in variants[:2]] == [{}, {}]  # ShuffleNet v1 as published
    macs = [trainer_multiply_adds(v.model, v.model_kwargs, input_shape) for v in variants]
    assert [model_cost(v.model, v.model_kwargs, input_shape, 10)[1] for v in variants] == macs
    assert all(abs(m - macs[0]) <= EQUAL_MACS_TOLERANCE * macs[0] for m in macs), macs


@pytest.mark.parametrize("model", ["shufflenet_v2_x0_5", "regnetx_002"])
def test_the_width_search_finds_the_closest_width_of_a_grid(model):
    target = model_cost("shufflenet_g3_wd2", {}, (1, 16, 16), 10)[1]
    found = closest_width(model, target, (1, 16, 16), 10)
    gap = abs(model_cost(model, found, (1, 16, 16), 10)[1] - target)
    grid = [{}] + [{"width": w / 10} for w in range(3, 16)]  # the model as registered, and 0.3x to 1.5x
    assert all(abs(model_cost(model, kwargs, (1, 16, 16), 10)[1] - target) >= gap for kwargs in grid)
    # the registered model unless another width is strictly closer: at 16x16, ShuffleNet V2 0.5x itself
    assert (found == {}) == (model == "shufflenet_v2_x0_5")


def test_a_study_with_one_recipe_overrides_the_models_own():
    study = STUDIES["v1-vs-v2"]
    alexnet = resolve_config({"model": "alexnet", **shared_recipe(study, "alexnet")})
    shufflenet = resolve_config({"model": "shufflenet_g3_wd2", **shared_recipe(study, "shufflenet_g3_wd2")})
    differing = {f.name for f in dataclasses.fields(alexnet) if getattr(alexnet, f.name) != getattr(shufflenet, f.name)}
    assert differing == {"model", "model_kwargs"}  # AlexNet's initialisation stays with its network
    assert (alexnet.epochs, alexnet.lr) == (study.recipe["epochs"], study.recipe["lr"])
    assert shared_recipe(STUDIES["alexnet-groups"], "alexnet") == {}  # that study keeps AlexNet's recipe


# ---------------------------------------------------------------- end to end

def test_experiment_with_small_settings(tiny_folder, tmp_path, capsys):
    out_dir = tmp_path / "experiment"
    code, out, err = run_cli(["experiment", "--dataset", "folder", "--data-dir", tiny_folder, "--image-size", "8",
                              "--epochs", "1", "--seeds", "2", "--studies", "shuffle", "--batch-size", "12",
                              "--threads", "1", "--output", out_dir], capsys)
    assert code == 0, err
    rows = json.loads((out_dir / "summary.json").read_text())
    assert [r["variant"] for r in rows] == ["g3-shuffle", "g3-noshuffle", "g8-shuffle", "g8-noshuffle"]
    assert all(r["seeds"] == 2 and 0 <= r["accuracy_mean"] <= 1 for r in rows)
    assert rows[0]["parameters"] == rows[1]["parameters"] and rows[0]["multiply_adds"] == rows[1]["multiply_adds"]
    assert (out_dir / "summary.csv").is_file() and (out_dir / "summary.png").stat().st_size > 1000
    assert "| shuffle | g3-shuffle | shufflenet_compact groups=3 channels=96/192/384 shuffle=True |" in out
    assert "±" in out
    code, _, err = run_cli(["experiment", "--output", out_dir, "--studies", "shuffle"], capsys)
    assert code == 2 and "already exists" in err
    code, _, err = run_cli(["experiment", "--studies", "width", "--output", tmp_path / "x"], capsys)
    assert code == 2 and "--studies='width'" in err


def test_v1_vs_v2_study_end_to_end(tiny_folder, tmp_path, capsys):
    out_dir = tmp_path / "v1-vs-v2"
    code, out, err = run_cli(["experiment", "--studies", "v1-vs-v2", "--dataset", "folder", "--data-dir", tiny_folder,
                              "--image-size", "8", "--epochs", "1", "--seeds", "1", "--batch-size", "12",
                              "--threads", "1", "--output", out_dir], capsys)
    assert code == 0, err
    rows = json.loads((out_dir / "summary.json").read_text())
    variants = study_variants("v1-vs-v2", (1, 8, 8), 3)
    assert [(r["variant"], r["model"]) for r in rows] == V1_VS_V2
    for row, variant in zip(rows, variants):
        assert json.loads(row["model_kwargs"]) == variant.model_kwargs
        cost = model_cost(variant.model, variant.model_kwargs, (1, 8, 8), 3)
        assert (row["parameters"], row["multiply_adds"]) == cost
        assert row["epochs"] == 1 and row["seeds"] == 1 and 0 <= row["accuracy_mean"] <= 1
        assert f"| v1-vs-v2 | {row['variant']} | {variant.describe()} | {row['parameters']:,} |" in out
        config = json.loads((out_dir / "runs" / f"v1-vs-v2-{row['variant']}-seed0" / "config.json").read_text())
        assert (config["model"], config["model_kwargs"], config["lr"]) == (variant.model, variant.model_kwargs, 0.1)
    assert rows[3]["model_kwargs"] != "{}"  # RegNetX-200MF is narrowed to ShuffleNet's cost
