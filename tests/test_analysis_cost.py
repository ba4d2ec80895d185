"""The per-layer cost table (groupconv.analysis.layers): hand-computed costs for every layer type, totals against
torch.utils.flop_counter and the reference table, CSV/JSON output, and `groupconv analyze`."""

import csv
import json

import pytest
import torch

import groupconv.nn as gnn
from groupconv.analysis import MachineCeilings, analyze_layers, analyze_model, count_multiply_adds
from groupconv.cli import main

# Fixed ceilings: tests never depend on how fast this machine happens to be right now.
CEILINGS = MachineCeilings(500.0, 50.0, "test ceilings")
FLOAT = 4  # bytes per float32 element


def single_row(layer, input_shape):
    table = analyze_layers(torch.nn.Sequential(layer), input_shape, CEILINGS)
    assert len(table.layers) == 1, [row.name for row in table.layers]
    return table.layers[0]


# (layer, input shape, output shape, parameters, MACs): each MACs value is N * out elements * (C/G) * prod(K),
# written out by hand.
CASES = {
    "grouped conv1d": (gnn.Conv1d(8, 12, 5, groups=4, padding=2, bias=False), (2, 8, 40), (2, 12, 40),
                       12 * 2 * 5, 2 * 40 * 12 * 2 * 5),
    "grouped conv2d, stride 2": (gnn.Conv2d(12, 24, 3, stride=2, padding=1, groups=3), (1, 12, 16, 16),
                                 (1, 24, 8, 8), 24 * 4 * 9 + 24, 8 * 8 * 24 * 4 * 9),
    "grouped conv3d": (gnn.Conv3d(6, 4, 3, groups=2, bias=False), (1, 6, 5, 6, 7), (1, 4, 3, 4, 5),
                       4 * 3 * 27, 3 * 4 * 5 * 4 * 3 * 27),
    "depthwise": (gnn.DepthwiseConv2d(16, 3, padding=1, bias=False), (1, 16, 10, 10), (1, 16, 10, 10),
                  16 * 9, 10 * 10 * 16 * 9),
    "pointwise grouped": (gnn.PointwiseGroupedConv2d(24, 48, groups=8, bias=False), (1, 24, 7, 7), (1, 48, 7, 7),
                          48 * 3, 7 * 7 * 48 * 3),
    "shuffled grouped": (gnn.ShuffledGroupedConv2d(24, 24, 1, groups=3, bias=False), (1, 24, 7, 7), (1, 24, 7, 7),
                         24 * 8, 7 * 7 * 24 * 8),
    "torch grouped conv2d": (torch.nn.Conv2d(8, 8, 3, groups=2, bias=False), (3, 8, 6, 6), (3, 8, 4, 4),
                             8 * 4 * 9, 3 * 4 * 4 * 8 * 4 * 9),
    "linear": (torch.nn.Linear(20, 7), (5, 20), (5, 7), 20 * 7 + 7, 5 * 20 * 7),
    "batch norm": (torch.nn.BatchNorm2d(6), (2, 6, 4, 4), (2, 6, 4, 4), 12, 0),
    "max pool": (torch.nn.MaxPool2d(2), (1, 3, 8, 8), (1, 3, 4, 4), 0, 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_layer_type_costs_its_hand_computed_values(case):
    layer, input_shape, output_shape, parameters, multiply_adds = CASES[case]
    row = single_row(layer, input_shape)
    assert row.input_shape == input_shape and row.output_shape == output_shape
    assert (row.parameters, row.multiply_adds) == (parameters, multiply_adds)
    # ShuffleNet V2's memory access cost: every input, output and weight element read or written once.
    elements = torch.Size(input_shape).numel() + torch.Size(output_shape).numel() + parameters
    assert row.traffic_bytes == elements * FLOAT
    flops = 2 * multiply_adds
    assert row.arithmetic_intensity == pytest.approx(flops / (elements * FLOAT))
    expected_seconds = max(flops / 500e9, elements * FLOAT / 50e9)
    assert row.roofline_seconds == pytest.approx(expected_seconds)
    assert row.bound == ("compute" if flops / 500e9 >= elements * FLOAT / 50e9 else "memory")


def test_layer_rows_agree_with_the_layers_own_cost_reports():
    layer = gnn.ShuffledGroupedConv2d(24, 48, 3, padding=1, groups=4, bias=False)
    row = single_row(layer, (1, 24, 14, 14))
    assert row.multiply_adds == layer.multiply_adds(14)
    assert row.parameters == layer.parameter_count()
    assert (row.groups, row.shuffle_groups, row.family) == (4, 4, "grouped shuffled")


def test_separable_layers_are_split_into_their_stages():
    layer = gnn.DepthwiseSeparableConv2d(16, 32, 3, padding=1, bias=False)
    table = analyze_layers(layer, (1, 16, 12, 12), CEILINGS)
    assert [row.name for row in table.layers] == ["depthwise", "pointwise"]
    assert [row.multiply_adds for row in table.layers] == [12 * 12 * 16 * 9, 12 * 12 * 32 * 16]
    assert [row.family for row in table.layers] == ["depthwise", "pointwise dense"]
    # MobileNet's formula: D_K^2 M D_F^2 + M N D_F^2.
    assert table.total_multiply_adds == 9 * 16 * 144 + 16 * 32 * 144 == layer.multiply_adds(12)
    flattened = gnn.FlattenedConv2d(8, 16, 3, padding=1, bias=False)
    table = analyze_layers(flattened, (1, 8, 10, 10), CEILINGS)
    assert table.total_multiply_adds == 100 * (8 * 16 + 16 * 3 + 16 * 3) == flattened.multiply_adds(10)
    assert table.total_parameters == 8 * 16 + 2 * 3 * 16


class Residual(torch.nn.Module):
    """Functional work between leaves (the `+`, a matmul) must land in the outside-leaves row."""

    def __init__(self):
        super().__init__()
        self.conv = gnn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.projection = torch.nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        y = self.conv(x) + x
        return y.flatten(2).transpose(1, 2) @ self.projection


def test_totals_agree_with_torch_flop_counter_and_count_the_outside_work():
    model = Residual()
    x = torch.randn(2, 8, 6, 6)
    table = analyze_layers(model, x, CEILINGS)
    assert table.total_multiply_adds == count_multiply_adds(model, x)
    assert table.total_parameters == 8 * 4 * 9 + 64
    outside = table.rows[-1]
    assert outside.name == "(outside leaf modules)"
    assert outside.multiply_adds == 2 * 36 * 8 * 8  # the matmul
    assert outside.parameters == 64  # the parameter no leaf owns
    assert outside.traffic_bytes > 0  # the residual add moved data
    assert sum(row.multiply_adds for row in table.rows) == table.total_multiply_adds


def test_registered_model_totals_equal_a_real_forward_under_the_flop_counter():
    from groupconv.models import create_model

    model = create_model("shufflenet_g3_wd4", num_classes=10, small_input=True)
    table = analyze_model("shufflenet_g3_wd4", batch_size=2, small_input=True, ceilings=CEILINGS, num_classes=10)
    assert table.total_multiply_adds == count_multiply_adds(model, torch.randn(2, 3, 32, 32))
    assert table.total_parameters == sum(p.numel() for p in model.parameters())


# Reference numbers (the papers, torchvision and pytorchcv): exact parameters; conv MACs to the paper's rounding.
REFERENCE = {
    "shufflenet_g1_w1": (1_531_936, "conv", 143e6, 1e6),
    "shufflenet_g3_w1": (1_865_728, "conv", 137e6, 1e6),
    "shufflenet_g8_w1": (2_434_768, "conv", 137e6, 1e6),
    "shufflenet_g3_wd4": (305_902, None, None, None),
    "resnext50_32x4d": (25_028_904, "all", 4.23e9, 0.01e9),
    "resnext101_32x8d": (88_791_336, "all", 16.41e9, 0.01e9),
    "mobilenet_w1": (4_231_976, "all", 568.7e6, 0.1e6),
    "alexnet": (60_965_224, None, None, None),
    "nin_cifar": (966_986, None, None, None),
    "resnext29_32x4d": (4_775_754, None, None, None),
}


@pytest.mark.parametrize("name", list(REFERENCE))
def test_totals_match_the_reference_table(name):
    parameters, which, multiply_adds, rounding = REFERENCE[name]
    table = analyze_model(name, ceilings=CEILINGS)
    assert table.total_parameters == parameters
    if which is not None:
        counted = table.multiply_adds_by_kind()["conv"] if which == "conv" else table.total_multiply_adds
        assert abs(counted - multiply_adds) <= rounding / 2, f"{counted:,}"


def test_csv_and_json_outputs_carry_rows_totals_and_units(tmp_path):
    table = analyze_model("shufflenet_g3_wd4", small_input=True, ceilings=CEILINGS)
    table.write_csv(tmp_path / "cost.csv")
    table.write_json(tmp_path / "cost.json")
    with open(tmp_path / "cost.csv", newline="") as file:
        records = list(csv.DictReader(file))
    assert len(records) == len(table.rows) + 1 and records[-1]["name"] == "TOTAL"
    assert int(records[-1]["multiply_adds"]) == table.total_multiply_adds
    assert sum(int(r["parameters"]) for r in records[:-1]) == table.total_parameters
    document = json.loads((tmp_path / "cost.json").read_text())
    assert document["totals"]["flops"] == 2 * table.total_multiply_adds
    assert "FLOPs = 2 x MACs" in document["units"]["multiply_adds"]
    assert document["machine"]["peak_gflops"] == 500.0
    assert document["layers"][0]["input_shape"] == "1x3x32x32"


def test_machine_ceilings_reject_non_positive_values_and_measure_when_not_given():
    with pytest.raises(ValueError, match="peak_gflops=0"):
        MachineCeilings(0, 1, "x")
    from groupconv.analysis import machine_ceilings

    given = machine_ceilings(100, 10)
    assert (given.peak_gflops, given.bandwidth_gbs) == (100.0, 10.0) and "given" in given.source


def test_cli_analyze_prints_table_units_and_writes_files(tmp_path, capsys):
    csv_path, json_path = tmp_path / "a.csv", tmp_path / "a.json"
    code = main(["analyze", "shufflenet_g3_w1", "--compute-only", "--peak-gflops", "500", "--bandwidth-gbs", "66.8",
                 "--csv", str(csv_path), "--json", str(json_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "features.stage2.unit2.compress_conv1" in out and "PointwiseGroupedConv2d" in out
    assert "parameters 1,865,728" in out and "MACs" in out and "FLOPs" in out
    assert "other layers" in out  # BN/ReLU rows folded into one line by --compute-only
    assert csv_path.is_file() and json.loads(json_path.read_text())["totals"]["parameters"] == 1_865_728


@pytest.mark.parametrize("argv, message", [
    (["analyze", "shufflenet_g3_w9"], "unknown model 'shufflenet_g3_w9'"),
    (["analyze", "alexnet", "--input-size", "32", "--peak-gflops", "1", "--bandwidth-gbs", "1"],
     "model alexnet cannot run on an input of size 1x3x32x32"),
    (["analyze", "alexnet", "--batch-size", "0", "--peak-gflops", "1", "--bandwidth-gbs", "1"], "batch_size=0"),
    (["analyze", "alexnet", "--peak-gflops", "-5"], "--peak-gflops=-5.0"),
    (["analyze", "nin_cifar", "--input-size", "1", "2", "3", "4"], "--input-size=1 2 3 4"),
])
def test_cli_analyze_bad_input_is_a_one_line_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("groupconv analyze: error: ") and message in err
    assert "Traceback" not in err


def test_the_groupconv_command_has_the_analysis_commands(capsys):
    from groupconv.cli import main as groupconv_main

    for command in ("analyze", "profile", "correlate", "draw", "report"):
        with pytest.raises(SystemExit) as exit_info:
            groupconv_main([command, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: groupconv {command}" in capsys.readouterr().out
    assert groupconv_main(["analyze", "nin_cifar_typo"]) == 2
    assert "groupconv analyze: error: unknown model 'nin_cifar_typo'" in capsys.readouterr().err


def test_every_analysis_option_has_help():
    import argparse

    from groupconv.cli.analysis import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    pending, checked = [parser], 0
    while pending:
        for action in pending.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(action.choices.values())
            elif not isinstance(action, argparse._HelpAction):
                assert action.help, f"{action.option_strings or action.dest} has no help"
                checked += 1
    assert checked > 50
