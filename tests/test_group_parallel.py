"""Group parallelism (filter groups across processes, AlexNet's model parallelism, Krizhevsky et al. 2012) against one
process: the channel exchanges' permutations, the per-layer plan, and spawned gloo process groups on 127.0.0.1 in
float64 where the logits, and the whole state_dict after one SGD step, must equal the single-process model's.

Every spawned run has a deadline (groupconv.distributed.launch_ranks kills what is left) and a short process-group
timeout, so a hung collective fails the test instead of stalling the run.
"""

from __future__ import annotations

import copy
import os
import signal
import time

import pytest
import torch
import torch.nn.functional as F

from groupconv import models, ops
from groupconv.distributed import (
    GroupParallelError,
    channel_block,
    concat_exchange,
    explain_parallel,
    full_state_dict,
    launch_ranks,
    parallelize_groups,
    plan_exchange,
    plan_group_parallel,
    run_ranks,
    setup_group_parallel,
    shuffle_exchange,
)

RUN_TIMEOUT = 120.0  # seconds for one spawned run, start-up included
PROCESS_GROUP_TIMEOUT = 20.0
TOLERANCE = 1e-9


# -- the exchanges' permutations, simulated rank by rank without processes

def simulate_exchange(full: torch.Tensor, held, plans) -> list[torch.Tensor]:
    """What each rank holds after the all-to-alls of `plans`, starting from full[held[r]] on rank r."""
    parts = len(plans)
    outgoing = [full[held[rank]][list(plans[rank].send_order)].split(list(plans[rank].send_counts))
                for rank in range(parts)]
    result = []
    for rank in range(parts):
        buffer = torch.cat([outgoing[source][rank] for source in range(parts)])
        assert [len(outgoing[source][rank]) for source in range(parts)] == list(plans[rank].receive_counts)
        result.append(buffer[list(plans[rank].receive_order)])
    return result


@pytest.mark.parametrize("channels, groups, parts", [(96, 8, 4), (96, 8, 2), (24, 8, 4), (48, 8, 4), (36, 3, 3),
                                                     (24, 4, 2), (16, 2, 4)])
def test_shuffle_exchange_gives_each_rank_its_block_of_the_shuffled_channels(channels, groups, parts):
    full = torch.arange(channels)
    shuffled = ops.channel_shuffle(full.view(1, channels, 1).double(), groups).view(channels).long()
    plans = [shuffle_exchange(channels, groups, parts, rank) for rank in range(parts)]
    held = [list(channel_block(channels, parts, rank)) for rank in range(parts)]
    for rank, got in enumerate(simulate_exchange(full, held, plans)):
        block = channel_block(channels, parts, rank)
        assert got.tolist() == shuffled[block.start:block.stop].tolist()
    if groups % parts == 0 and (channels // groups) % parts == 0:
        # Equal split: every rank sends C / P^2 channels to every rank (itself included).
        for plan in plans:
            assert plan.send_counts == (channels // parts**2,) * parts
            assert plan.receive_counts == (channels // parts**2,) * parts


@pytest.mark.parametrize("part_channels, parts", [((88, 8), 4), ((96, 96), 2), ((180, 12), 2), ((6, 2), 2),
                                                   ((4, 4, 4, 4), 2), ((8, 4, 12), 4)])
def test_concat_exchange_reorders_local_concatenations_into_blocks(part_channels, parts):
    total = sum(part_channels)
    # What each rank's local torch.cat holds: its block of every part, one part after another.
    locals_ = [torch.cat([torch.arange(total).split(part_channels)[part][list(channel_block(c, parts, rank))]
                          for part, c in enumerate(part_channels)]) for rank in range(parts)]
    plans = [concat_exchange(part_channels, parts, rank) for rank in range(parts)]
    for rank, got in enumerate(simulate_exchange(torch.arange(total), [t.tolist() for t in locals_], plans)):
        assert got.tolist() == list(channel_block(total, parts, rank))


def test_plan_exchange_rejects_inconsistent_layouts():
    with pytest.raises(ValueError, match="channel 1 is held by ranks 0 and 1"):
        plan_exchange([[0, 1], [1, 2]], [[0, 1], [2]], 0)
    with pytest.raises(ValueError, match=r"channels \[3\] are wanted but held by no rank"):
        plan_exchange([[0, 1], [2]], [[0, 3], [1, 2]], 0)
    with pytest.raises(ValueError, match="rank=2"):
        plan_exchange([[0], [1]], [[0], [1]], 2)
    with pytest.raises(ValueError, match="7 channels cannot be split into 2"):
        channel_block(7, 2, 0)


# -- the plan, without processes

def strategies(model, parts) -> dict[str, str]:
    return {entry.name: entry.strategy for entry in plan_group_parallel(model, parts)}


def test_alexnet_plan_is_the_papers_split():
    plan = strategies(models.create_model("alexnet", small_input=True, num_classes=10), 2)
    # Krizhevsky et al. 2012, Fig. 2: conv2, conv4, conv5 see only their own GPU's maps; conv3 and the FC layers
    # read both; conv1 reads the image.
    assert [plan[f"features.conv{i}"] for i in (2, 4, 5)] == ["local"] * 3
    assert [plan[name] for name in ("features.conv1", "features.conv3", "classifier.fc6", "classifier.fc7",
                                    "classifier.fc8")] == ["column parallel"] * 5
    assert plan["features.norm1"] == "channel window"
    assert plan["features.relu1"] == plan["features.pool1"] == "pass-through"


def test_plan_says_which_layers_run_replicated_and_why():
    shufflenet = models.create_model("shufflenet_g8_wd4", small_input=True, num_classes=10)
    text = explain_parallel(shufflenet, 4)
    assert "out_features=10 is not divisible by 4 ranks" in text.splitlines()[-2]
    assert strategies(shufflenet, 4)["features.stage2.unit1.dw_conv2"] == "all-to-all then local"
    g3 = strategies(models.create_model("shufflenet_g3_wd4", small_input=True), 2)
    assert g3["features.stage1.unit2.compress_conv1"] == "replicated"
    reasons = {entry.name: entry.reason for entry in plan_group_parallel(
        models.create_model("shufflenet_g3_wd4", small_input=True), 2)}
    assert reasons["features.stage1.unit2.compress_conv1"] == "groups=3 is not divisible by 2 ranks"
    unknown = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Softmax2d())
    assert plan_group_parallel(unknown, 2)[1].reason.startswith("Softmax2d is not a layer group parallelism knows")


def test_bad_arguments_are_named():
    model = models.create_model("alexnet", small_input=True)
    with pytest.raises(ValueError, match="group_parallel=0"):
        plan_group_parallel(model, 0)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        plan_group_parallel("alexnet", 2)
    with pytest.raises(RuntimeError, match="initialized process group"):
        parallelize_groups(model)
    with pytest.raises(ValueError, match="not parallelized"):
        full_state_dict(model)
    with pytest.raises(ValueError, match="give group_parallel"):
        explain_parallel(model)


# -- spawned runs against one process

def compare_with_one_process(rank: int, world_size: int, cases: list[tuple]) -> list[dict]:
    """For each case, one SGD step of a model over a (world / P) x P mesh; rank 0 also runs it in one process, as data
    parallelism defines it: each data-parallel replica's micro-batch through the model, gradients averaged."""
    return [compare_one_case(rank, *case) for case in cases]


def compare_one_case(rank: int, model_name: str, model_options: dict, input_shape: tuple, batch_size: int,
                     group_parallel: int) -> dict:
    torch.manual_seed(0)
    model = models.create_model(model_name, **model_options).double()
    reference = copy.deepcopy(model) if rank == 0 else None
    full_parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    torch.manual_seed(1)
    inputs = torch.randn(batch_size, *input_shape, dtype=torch.float64)
    targets = torch.randint(0, model_options["num_classes"], (batch_size,))

    setup = setup_group_parallel(model, group_parallel)
    micro_inputs, micro_targets = inputs.chunk(setup.data_size), targets.chunk(setup.data_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logits = model(micro_inputs[setup.data_rank])
    F.cross_entropy(logits, micro_targets[setup.data_rank]).backward()
    setup.all_reduce_gradients()
    optimizer.step()
    state = full_state_dict(model)
    result = {"logits": logits.detach(), "data_rank": setup.data_rank,
              "parameter_fraction": sum(p.numel() * p.element_size() for p in model.parameters())
              / full_parameter_bytes}
    if rank == 0:
        reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
        reference_logits = [reference(x) for x in micro_inputs]
        loss = sum(F.cross_entropy(y, t) for y, t in zip(reference_logits, micro_targets)) / setup.data_size
        loss.backward()
        largest_update = 0.1 * max(p.grad.abs().max().item() for p in reference.parameters())
        reference_optimizer.step()
        expected = reference.state_dict()
        parameters = {name for name, _ in reference.named_parameters()}
        # With several replicas each keeps the batch-norm running statistics of its own micro-batch, as DDP without
        # buffer broadcasting does; one process has seen them all. Parameters are compared then.
        compared = expected.keys() if setup.data_size == 1 else parameters
        result.update(
            reference_logits=[y.detach() for y in reference_logits],
            same_keys=list(state.keys()) == list(expected.keys()),
            same_shapes=all(state[key].shape == expected[key].shape for key in expected),
            state_error=max((state[key].double() - expected[key].double()).abs().max().item() for key in compared),
            largest_update=largest_update,
        )
    return result


def check_against_one_process(results: list[dict]) -> None:
    """`results`: one case's result from every rank."""
    reference = results[0]
    assert reference["same_keys"] and reference["same_shapes"]
    assert reference["largest_update"] > 1e-4  # (the step did something, so equal states mean something)
    assert reference["state_error"] <= TOLERANCE, f"state_dict after one step differs by {reference['state_error']}"
    for rank, result in enumerate(results):
        expected = reference["reference_logits"][result["data_rank"]]
        error = (result["logits"] - expected).abs().max().item()
        assert error <= TOLERANCE * max(1.0, expected.abs().max().item()), f"rank {rank}: logits differ by {error}"


# Dropout off in AlexNet: each rank draws its own mask. Small inputs: 32x32 AlexNet (the registry's small-input
# variant), 16x16 for the others; ResNeXt-29 32x4d at widen factor 1 (stages of 64, 128, 256 channels).
ALEXNET = ("alexnet", dict(small_input=True, num_classes=10, dropout=0.0), (3, 32, 32), 2)
SHUFFLENET_G8 = ("shufflenet_g8_wd4", dict(small_input=True, num_classes=10), (3, 16, 16), 4)
RESNEXT29 = ("resnext29_32x4d", dict(widen_factor=1, num_classes=10), (3, 16, 16), 4)
RESNEXT29_CONCATENATED = ("resnext29_32x4d", dict(widen_factor=1, num_classes=10, block_form="b"), (3, 16, 16), 4)
TWO_RANK_CASES = {"alexnet": (*ALEXNET, 2), "shufflenet": (*SHUFFLENET_G8, 2), "resnext": (*RESNEXT29, 2),
                  "resnext form b": (*RESNEXT29_CONCATENATED, 2)}
# Four ranks: ShuffleNet over all four, and a 2 x 2 mesh (two data-parallel replicas of two group-parallel ranks).
FOUR_RANK_CASES = {"shufflenet": (*SHUFFLENET_G8, 4), "2 x 2 mesh": (*SHUFFLENET_G8, 2)}


def run_cases(world_size: int, cases: dict) -> dict[str, list[dict]]:
    """Every case's results from every rank, from one spawned process group."""
    per_rank = run_ranks(compare_with_one_process, world_size, (list(cases.values()),), timeout=RUN_TIMEOUT,
                         process_group_timeout=PROCESS_GROUP_TIMEOUT, threads=1)
    return {name: [rank_results[index] for rank_results in per_rank] for index, name in enumerate(cases)}


@pytest.fixture(scope="module")
def two_ranks():
    return run_cases(2, TWO_RANK_CASES)


@pytest.fixture(scope="module")
def four_ranks():
    return run_cases(4, FOUR_RANK_CASES)


def test_alexnet_over_two_ranks_equals_one_process(two_ranks):
    check_against_one_process(two_ranks["alexnet"])
    fractions = [result["parameter_fraction"] for result in two_ranks["alexnet"]]
    assert all(fraction <= 0.6 for fraction in fractions), fractions


def test_shufflenet_g8_over_two_ranks_equals_one_process(two_ranks):
    check_against_one_process(two_ranks["shufflenet"])


def test_shufflenet_g8_over_four_ranks_equals_one_process(four_ranks):
    check_against_one_process(four_ranks["shufflenet"])


def test_resnext29_over_two_ranks_equals_one_process(two_ranks):
    check_against_one_process(two_ranks["resnext"])


def test_resnext29_concatenating_its_paths_equals_one_process(two_ranks):
    # Form (b) concatenates its paths with torch.cat in the model's code, on channel-sharded tensors.
    check_against_one_process(two_ranks["resnext form b"])


def test_two_by_two_mesh_equals_one_process(four_ranks):
    results = four_ranks["2 x 2 mesh"]
    assert sorted(result["data_rank"] for result in results) == [0, 0, 1, 1]
    check_against_one_process(results)


def die_in_the_middle_of_a_step(rank: int, world_size: int) -> str:
    """Rank 1 is killed (SIGKILL, as by the out-of-memory killer) halfway through the forward pass."""
    torch.manual_seed(0)
    model = models.create_model("shufflenet_g8_wd4", small_input=True, num_classes=10).double()
    parallelize_groups(model)
    if rank == 1:
        model.features.stage2.register_forward_pre_hook(lambda module, args: os.kill(os.getpid(), signal.SIGKILL))
    start = time.monotonic()
    try:
        model(torch.randn(2, 3, 16, 16, dtype=torch.float64)).sum().backward()
    except GroupParallelError as error:
        return f"GroupParallelError after {time.monotonic() - start:.1f} s: {error}"
    return "finished the step"


def test_a_killed_rank_makes_the_others_fail_clearly_and_quickly():
    start = time.monotonic()
    outcomes = launch_ranks(die_in_the_middle_of_a_step, 2, timeout=RUN_TIMEOUT,
                            process_group_timeout=PROCESS_GROUP_TIMEOUT, threads=1)
    elapsed = time.monotonic() - start
    assert outcomes[1].exitcode == -signal.SIGKILL
    survivor = outcomes[0]
    assert survivor.exitcode is not None, "rank 0 hung and was killed at the deadline"
    assert survivor.value is not None and survivor.value.startswith("GroupParallelError"), survivor
    assert "another rank stopped or cannot be reached" in survivor.value
    assert elapsed < RUN_TIMEOUT
