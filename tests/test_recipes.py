"""Default training recipes: every registered model learns with its own, and explicit options win over it.

The overfit check (the standard first test of a training setup): on one fixed small batch of the
default data, a few dozen optimizer steps of the model's default recipe (its optimizer, learning
rate, weight decay, clipping, warm-up and schedule, the schedule squeezed into those steps) must at
least halve the training loss. A model that cannot do this will not learn under `groupconv train`.

It runs on one thread: the loss after 40 steps depends on the order of floating-point sums, which
depends on the thread count (30 steps of mobilenet_v2_050 at lr 0.1 ended at 1.38 on 2 threads, 1.71 on 1),
so the verdict must not depend on the machine's cores; and steps on a batch of 16 small images are
dominated by per-call costs, which extra threads do not share but a busy machine multiplies (the
same 30 steps of mobilenet_v2_050 took 29 s on 2 threads and 2.4 s on 1 while other processes ran).
The kernels are chosen by priority order, not measured (tests/conftest.py turns tuning off): the
check is about the recipe, not the kernels.

Cost on 2 shared CPU cores, 2026-12-07: the default suite below (24 models, one or more of every
family) ran this module in 2 min 58 s (2 min 56 s of CPU); ResNeXt-50, the smallest ImageNet
ResNeXt, is the largest part of it (about 55 s of CPU). The rest run with -m slow: each ResNeXt-101
takes minutes (80 to 210 s for 30 steps on one loaded core), ResNeXt-29 8x64d and 16x64d 60 and
125 s of CPU, RegNet from 400MF up, the wider
ShuffleNets and MobileNets, ConvNeXt-Nano and -Tiny 3 to 25 s each, and AlexNet with 1 and 4 groups
about 10 s each (the same network as the default suite's 2 groups); the whole registry takes over
15 minutes.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from groupconv.ops.allocator import keep_freed_memory
from groupconv.data import load_dataset
from groupconv.models import Recipe, create_model, list_models, model_entry, register_model
from groupconv.train import resolve_config
from groupconv.train.builders import build_model, build_optimizer, build_scheduler
from groupconv.train.config import TrainConfig, recipe_applied

STEPS = 40
BATCH = 16
IMAGE_SIZE = 16  # groupconv train's digits size

# One or more members of every family, chosen for cost (see the module's docstring): the smallest of each, and the
# grouping ablations that are cheap (ShuffleNet at every group count, NiN and its roots, the 1-D networks with and
# without groups).
DEFAULT_SUITE_MODELS = {
    "alexnet", "cnn1d_mnist1d", "grouped_cnn1d_mnist1d", "convnext_atto", "mobilenet_wd4", "mobilenet_wd2",
    "mobilenet_v2_050", "nin_cifar", "nin_root2", "nin_root4", "nin_root8", "nin_root16", "regnetx_002",
    "regnety_002", "resnext50_32x4d", "resnext29_32x4d", "shufflenet_compact",
    "shufflenet_g1_wd4", "shufflenet_g2_wd4", "shufflenet_g3_wd4", "shufflenet_g4_wd4", "shufflenet_g8_wd4",
    "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torch on one thread for this module's tests (see the module's docstring), the setting restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batches():
    """One fixed batch per dataset: BATCH images of digits at groupconv train's 16x16 (or signals of MNIST-1D), the
    classes interleaved."""
    def first_batch(data):
        inputs, labels = data.train.tensors
        per_class = [torch.nonzero(labels == c).flatten()[:BATCH // data.num_classes + 1]
                     for c in range(data.num_classes)]
        chosen = torch.stack(per_class, dim=1).flatten()[:BATCH]
        return data, inputs[chosen], labels[chosen]

    return {"digits": first_batch(load_dataset("digits", image_size=IMAGE_SIZE)), "mnist1d": first_batch(
        load_dataset("mnist1d"))}


def model_for_batch(name: str, batches):
    """The model as groupconv train builds it on the default data (its recipe, its small-input variant)."""
    dataset = "mnist1d" if "1d" in model_entry(name).tags else "digits"
    config = resolve_config({"model": name, "dataset": dataset})
    data, inputs, labels = batches[dataset]
    return config, build_model(config, data.num_classes, data.in_chans, data.input_shape), inputs, labels


def registry_cases():
    return [pytest.param(name, marks=[] if name in DEFAULT_SUITE_MODELS else [pytest.mark.slow])
            for name in list_models()]


def test_default_suite_covers_every_family():
    assert DEFAULT_SUITE_MODELS <= set(list_models())
    families = {model_entry(name).family for name in list_models()}
    assert families == {model_entry(name).family for name in DEFAULT_SUITE_MODELS}


@pytest.mark.parametrize("name", registry_cases())
def test_default_recipe_halves_the_loss_on_one_batch(name, batches):
    keep_freed_memory()  # as groupconv train: AlexNet's 57M-parameter steps otherwise pay their page faults
    torch.manual_seed(0)
    config, model, inputs, labels = model_for_batch(name, batches)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, steps_per_epoch=STEPS / config.epochs)
    losses = []
    for _ in range(STEPS):
        loss = F.cross_entropy(model(inputs), labels, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    final = sum(losses[-3:]) / 3  # dropout makes single steps noisy
    assert final <= losses[0] / 2, f"{name}: loss {losses[0]:.3f} -> {final:.3f} in {STEPS} steps: {losses}"


@pytest.mark.parametrize("name", [n for n in list_models() if model_entry(n).recipe.options])
def test_recipe_options_are_training_options(name):
    recipe = model_entry(name).recipe
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(recipe.options) <= fields - {"model"}, f"{name}: unknown options {set(recipe.options) - fields}"
    assert recipe.source, f"{name}: the recipe must say where it comes from"
    config = resolve_config({"model": name})
    assert {key: getattr(config, key) for key in recipe.options} == dict(recipe.options)


def test_explicit_options_win_over_the_recipe():
    recipe = model_entry("alexnet").recipe.options
    assert resolve_config({"model": "alexnet"}).lr == recipe["lr"]
    assert resolve_config({"model": "alexnet"}, {"lr": 0.003}).lr == 0.003
    # a config file's values (a replay) win too, and a later layer may change the model
    assert resolve_config({"model": "alexnet", "lr": 0.2}).lr == 0.2
    assert resolve_config({"model": "alexnet"}, {"model": "shufflenet_compact"}).lr == TrainConfig().lr
    assert "lr" not in recipe_applied({"model": "alexnet"}, {"lr": 0.003})
    assert recipe_applied({"model": "alexnet"})["lr"] == recipe["lr"]
    assert recipe_applied({"model": "shufflenet_compact"}) == {}


def test_recipe_model_kwargs_are_a_base_under_the_given_ones():
    assert resolve_config({"model": "alexnet"}).model_kwargs == {"init": "kaiming"}
    given = resolve_config({"model": "alexnet"}, {"model_kwargs": {"dropout": 0.3}})
    assert given.model_kwargs == {"init": "kaiming", "dropout": 0.3}
    assert resolve_config({"model": "alexnet", "model_kwargs": {"init": "paper"}}).model_kwargs == {"init": "paper"}
    assert "model_kwargs" not in recipe_applied({"model": "nin_cifar", "model_kwargs": {"init": "caffe"}})
    with pytest.raises(TypeError):
        model_entry("alexnet").recipe.options["model_kwargs"]["init"] = "paper"


@pytest.mark.parametrize("name, layers", [("alexnet", ("features.conv2", "classifier.fc6")),
                                          ("nin_cifar", ("features.conv1", "features.cccp3"))])
def test_initialisations(name, layers):
    torch.manual_seed(0)
    paper = create_model(name, num_classes=10, **({"small_input": True} if name == "alexnet" else {}))
    kaiming = create_model(name, num_classes=10, init="kaiming", **({"small_input": True} if name == "alexnet" else {}))
    for layer in layers:
        weight = dict(kaiming.named_modules())[layer].weight
        fan_in = weight[0].numel()
        assert weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05)
        assert torch.count_nonzero(dict(kaiming.named_modules())[layer].bias) == 0
        assert dict(paper.named_modules())[layer].weight.std().item() == pytest.approx(
            0.01 if name == "alexnet" else 0.05, rel=0.05)
    if name == "alexnet":  # the paper's biases of 1; the last layer keeps the paper's small start in both
        assert torch.all(paper.features.conv2.bias == 1)
        assert kaiming.classifier.fc8.weight.std().item() == pytest.approx(0.01, rel=0.1)
    else:  # the class maps start inside the final ReLU's linear range
        assert torch.all(kaiming.features.cccp6.bias == 1)
    with pytest.raises(ValueError, match="init='he'"):
        create_model(name, num_classes=10, init="he")


def test_recipe_is_read_only_and_checked():
    with pytest.raises(TypeError):
        model_entry("alexnet").recipe.options["lr"] = 1.0
    with pytest.raises(TypeError, match="recipe must be a Recipe"):
        register_model(lambda **kwargs: None, name="not_registered_recipe", recipe={"lr": 0.1})
    assert Recipe({"lr": 0.1}, "x") == Recipe({"lr": 0.1}, "x")
