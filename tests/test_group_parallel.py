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
from groupconv.distributed.benchmark import MODES, benchmark_group_parallel, format_benchmark
from groupconv.distributed import (
    GroupParallelError,
    channel_block,
    concat_exchange,
    explain_parallel,
    full_optimizer_state_dict,
    full_state_dict,
    launch_ranks,
    load_full_state_dict,
    local_optimizer_state_dict,
    parallelize_groups,
    plan_exchange,
    plan_group_parallel,
    run_ranks,
    setup_group_parallel,
    shuffle_exchange,
    window_exchange,
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
        # Equal split: every rank sends C / P^2 channels to every rank (itself included): rank r, holding groups k in
        # [r g / P, (r + 1) g / P), sends rank q the channels k C / g + i with i in [q C / (g P), (q + 1) C / (g P)),
        # which rank q puts at (i - q C / (g P)) g + k.
        per_group = channels // groups
        share = per_group // parts
        for rank, plan in enumerate(plans):
            assert plan.send_counts == (channels // parts**2,) * parts
            assert plan.receive_counts == (channels // parts**2,) * parts
            sent = torch.tensor(plan.send_order).add(rank * channels // parts).split(list(plan.send_counts))
            for target in range(parts):
                expected = {(k * per_group + i, (i - target * share) * groups + k)
                            for k in range(rank * groups // parts, (rank + 1) * groups // parts)
                            for i in range(target * share, (target + 1) * share)}
                placed = {(channel, position) for position, channel in enumerate(
                    shuffled[channel_block(channels, parts, target).start:][:channels // parts].tolist())}
                assert set(sent[target].tolist()) == {channel for channel, _ in expected}
                assert expected <= placed


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


@pytest.mark.parametrize("channels, parts, before, after", [(96, 2, 2, 2), (96, 4, 2, 2), (256, 2, 2, 2), (12, 4, 3, 1),
                                                             (8, 2, 0, 0)])
def test_window_exchange_brings_only_the_neighbours_the_window_reaches(channels, parts, before, after):
    full = torch.arange(channels)
    plans = [window_exchange(channels, parts, rank, before, after) for rank in range(parts)]
    held = [list(channel_block(channels, parts, rank)) for rank in range(parts)]
    for rank, got in enumerate(simulate_exchange(full, held, plans)):
        block = channel_block(channels, parts, rank)
        assert got.tolist() == list(range(max(0, block.start - before), min(channels, block.stop + after)))
        from_others = sum(count for source, count in enumerate(plans[rank].receive_counts) if source != rank)
        assert from_others == (block.start > 0) * before + (block.stop < channels) * after


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

def run_checks(rank: int, world_size: int, checks: list[tuple]) -> list:
    """Each (function, arguments) of `checks` on this rank, in one process group."""
    return [function(rank, *arguments) for function, arguments in checks]


def compare_with_one_process(rank: int, model_name: str, model_options: dict, input_shape: tuple, batch_size: int,
                             group_parallel: int) -> dict:
    """One SGD step of a model over a (world / P) x P mesh; rank 0 also runs it in one process, as data parallelism
    defines it: each data-parallel replica's micro-batch through the model, gradients averaged."""
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
# g=3 over 2 ranks: its grouped convs, and layers of 15 channels, cannot be split and run replicated, between
# sharded ones.
SHUFFLENET_G3 = ("shufflenet_g3_wd4", dict(small_input=True, num_classes=10), (3, 16, 16), 4)
RESNEXT29_CONCATENATED = ("resnext29_32x4d", dict(widen_factor=1, num_classes=10, block_form="b"), (3, 16, 16), 4)


class ChannelSlicingModel(torch.nn.Module):
    """Indexes channels in its own code, which a channel shard cannot do."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.classifier = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.classifier(self.conv(x)[:, :4].mean((2, 3)))


def refuse_channel_indexing(rank: int) -> str:
    model = parallelize_groups(ChannelSlicingModel().double())
    try:
        model(torch.randn(2, 3, 8, 8, dtype=torch.float64))
    except RuntimeError as error:
        return str(error)
    return "no error"


def checkpoint_round_trip(rank: int) -> bool:
    """A single-process state_dict loaded into a sharded model comes back whole, equal, from full_state_dict."""
    torch.manual_seed(2)
    state = models.create_model("shufflenet_g8_wd4", small_input=True).double().state_dict()
    torch.manual_seed(3)
    model = parallelize_groups(models.create_model("shufflenet_g8_wd4", small_input=True).double())
    load_full_state_dict(model, state)
    returned = full_state_dict(model)
    return list(returned) == list(state) and all(torch.equal(returned[key], state[key]) for key in state)


def optimizer_state_round_trip(rank: int) -> dict:
    """After one SGD step with momentum: the gathered optimizer state is the single-process optimizer's, and cut back
    into blocks it is this rank's own."""
    torch.manual_seed(4)
    model = models.create_model("shufflenet_g8_wd4", small_input=True, num_classes=10).double()
    reference = copy.deepcopy(model)
    inputs, targets = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    parallelize_groups(model)
    results = {}
    for name, network in (("split", model), ("whole", reference)):
        optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
        F.cross_entropy(network(inputs), targets).backward()
        optimizer.step()
        results[name] = optimizer
    full = full_optimizer_state_dict(model, results["split"])
    expected = results["whole"].state_dict()["state"]
    own = results["split"].state_dict()
    local = local_optimizer_state_dict(model, results["split"], full)
    return {
        "full_error": max((full["state"][index]["momentum_buffer"] - buffers["momentum_buffer"]).abs().max().item()
                          for index, buffers in expected.items()),
        "same_shapes": all(full["state"][index]["momentum_buffer"].shape == buffers["momentum_buffer"].shape
                           for index, buffers in expected.items()),
        "some_sharded": any(full["state"][index]["momentum_buffer"].shape != buffers["momentum_buffer"].shape
                            for index, buffers in own["state"].items()),
        "local_is_own": all(torch.equal(local["state"][index]["momentum_buffer"], buffers["momentum_buffer"])
                            for index, buffers in own["state"].items()),
    }


def mesh_errors(rank: int) -> list[str]:
    """What a mesh that cannot be built, and a second parallelization, say."""
    messages = []
    model = models.create_model("shufflenet_g8_wd4", small_input=True)
    for attempt in (lambda: setup_group_parallel(model, 3), lambda: setup_group_parallel(model, 0),
                    lambda: parallelize_groups(parallelize_groups(model))):
        try:
            attempt()
            messages.append("no error")
        except ValueError as error:
            messages.append(str(error))
    return messages


TWO_RANK_CHECKS = {"alexnet": (compare_with_one_process, (*ALEXNET, 2)),
                   "shufflenet": (compare_with_one_process, (*SHUFFLENET_G8, 2)),
                   "resnext": (compare_with_one_process, (*RESNEXT29, 2)),
                   "resnext form b": (compare_with_one_process, (*RESNEXT29_CONCATENATED, 2)),
                   "shufflenet g3": (compare_with_one_process, (*SHUFFLENET_G3, 2)),
                   "channel indexing": (refuse_channel_indexing, ()),
                   "checkpoint": (checkpoint_round_trip, ()),
                   "optimizer state": (optimizer_state_round_trip, ()),
                   "mesh errors": (mesh_errors, ())}
# Four ranks: ShuffleNet over all four, and a 2 x 2 mesh (two data-parallel replicas of two group-parallel ranks).
FOUR_RANK_CHECKS = {"shufflenet": (compare_with_one_process, (*SHUFFLENET_G8, 4)),
                    "2 x 2 mesh": (compare_with_one_process, (*SHUFFLENET_G8, 2))}


def run_cases(world_size: int, checks: dict) -> dict[str, list]:
    """Every check's results from every rank, from one spawned process group."""
    per_rank = run_ranks(run_checks, world_size, (list(checks.values()),), timeout=RUN_TIMEOUT,
                         process_group_timeout=PROCESS_GROUP_TIMEOUT, threads=1)
    return {name: [rank_results[index] for rank_results in per_rank] for index, name in enumerate(checks)}


@pytest.fixture(scope="module")
def two_ranks():
    return run_cases(2, TWO_RANK_CHECKS)


@pytest.fixture(scope="module")
def four_ranks():
    return run_cases(4, FOUR_RANK_CHECKS)


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


def test_layers_that_cannot_be_split_run_replicated_between_sharded_ones(two_ranks):
    check_against_one_process(two_ranks["shufflenet g3"])


def test_channel_indexing_in_the_models_code_is_refused(two_ranks):
    for message in two_ranks["channel indexing"]:
        assert "indexes channels (__getitem__ along dim 1) of a channel-sharded tensor" in message, message


def test_a_single_process_checkpoint_loads_and_comes_back_whole(two_ranks):
    assert two_ranks["checkpoint"] == [True, True]


def test_the_optimizer_state_is_saved_whole_and_cut_back_into_blocks(two_ranks):
    for result in two_ranks["optimizer state"]:
        assert result["same_shapes"] and result["some_sharded"] and result["local_is_own"]
        assert result["full_error"] <= TOLERANCE


def test_meshes_that_cannot_be_built_are_named(two_ranks):
    for messages in two_ranks["mesh errors"]:
        assert messages == ["group_parallel=3 does not divide the world size 2",
                            "group_parallel=0 must be a positive integer",
                            "parallelize_groups: this model is already parallelized"]


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
    # Within the process group's timeout (gloo sees the closed connection at once: about a second here).
    assert float(survivor.value.split()[2]) < PROCESS_GROUP_TIMEOUT, survivor.value
    assert elapsed < RUN_TIMEOUT


def test_benchmark_measures_one_process_ddp_and_group_parallelism():
    measurements = benchmark_group_parallel("shufflenet_g8_wd4", 2, batch_size=4, input_size=(3, 16, 16),
                                            model_options=dict(small_input=True, num_classes=10), steps=1, warmup=0,
                                            timeout=RUN_TIMEOUT)
    by_mode = {mode: [m for m in measurements if m.mode == mode] for mode in MODES}
    assert [len(by_mode[mode]) for mode in MODES] == [1, 2, 2]
    (one,) = by_mode["one process"]
    assert one.collective_bytes == 0 and one.batch_size == 4
    for ddp in by_mode["DDP"]:
        assert ddp.parameter_bytes == one.parameter_bytes and ddp.batch_size == 2
        assert ddp.collective_bytes == one.parameter_bytes  # ring all-reduce: 2 (P - 1) / P of the gradients
    for sharded in by_mode["group parallel"]:
        assert sharded.parameter_bytes == one.parameter_bytes // 2  # (every layer splits in two, the classifier too)
        assert sharded.collectives["all-to-all"] > 0 and sharded.batch_size == 4
        assert 0 < sharded.activation_bytes < one.activation_bytes
    assert all(m.step_seconds > 0 for m in measurements)
    assert "group parallel" in format_benchmark(measurements)
