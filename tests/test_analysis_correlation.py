"""Filter-group correlation (groupconv.analysis.correlation) and `groupconv correlate`."""

import json

import numpy as np
import pytest
import torch

import groupconv.nn as gnn
from groupconv.analysis import default_pair, filter_correlation, layer_correlation
from groupconv.cli import main


def two_layers(groups: int) -> torch.nn.Sequential:
    """Linear, bias-free: conv1 (6 -> 6, 3x3) then conv2 (6 -> 9, 1x1), both with `groups` groups."""
    return torch.nn.Sequential(gnn.Conv2d(6, 6, 3, padding=1, groups=groups, bias=False),
                               gnn.Conv2d(6, 9, 1, groups=groups, bias=False))


def sign_balanced_batches(seed: int = 0) -> list[torch.Tensor]:
    """Inputs whose three channel groups are exactly uncorrelated, so independent groups give exactly 0 between them.

    Each image appears four times, with its three channel groups multiplied by the signs (+,+,+),
    (+,-,-), (-,+,-), (-,-,+): over the four copies every product of two different groups' signs
    sums to 0, and so does every group's sign. Negation is exact in floating point and the model is
    linear, so every cross moment between different groups cancels exactly.
    """
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(4, 6, 8, 8, generator=generator)
    signs = torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float32)
    per_channel = signs.repeat_interleave(2, dim=1)  # (4 copies, 6 channels)
    return [images * s[None, :, None, None] for s in per_channel]


@pytest.mark.parametrize("whiten", [False, True])
@pytest.mark.parametrize("statistic", ["correlation", "covariance"])
def test_truly_independent_groups_give_an_exactly_block_diagonal_map(whiten, statistic):
    model = two_layers(groups=3)
    result = layer_correlation(model, sign_balanced_batches(), "0", "1", whiten=whiten, statistic=statistic)
    assert result.matrix.shape == (9, 6)
    outside = result.matrix[~result.block_mask]
    assert outside.abs().max().item() < 1e-12
    assert result.block_energy > 1 - 1e-12
    assert result.unstructured_energy == pytest.approx(1 / 3)


def test_a_dense_model_is_not_block_diagonal():
    result = layer_correlation(two_layers(groups=1), sign_balanced_batches(), "0", "1", whiten=True, blocks=3)
    assert result.blocks_from == "3 blocks"
    assert result.block_energy < 0.8  # a block-diagonal map would put everything inside
    assert result.matrix[~result.block_mask].abs().max().item() > 0.1


def test_correlation_equals_numpy_corrcoef_of_the_pixel_samples():
    model = two_layers(groups=3)
    batches = [torch.randn(3, 6, 5, 5) for _ in range(2)]
    result = layer_correlation(model, batches, "0", "1")
    with torch.no_grad():
        first = torch.cat([model[0](x) for x in batches])
        second = torch.cat([model(x) for x in batches])
    samples_first = first.double().permute(0, 2, 3, 1).reshape(-1, 6).numpy()
    samples_second = second.double().permute(0, 2, 3, 1).reshape(-1, 9).numpy()
    expected = np.corrcoef(samples_second.T, samples_first.T)[:9, 9:]
    assert result.samples == 2 * 3 * 25
    np.testing.assert_allclose(result.matrix.numpy(), expected, atol=1e-6)


def test_whitening_makes_each_layer_white():
    from groupconv.analysis.correlation import zca_whitening_matrix

    generator = torch.Generator().manual_seed(1)
    mixing = torch.randn(5, 5, generator=generator, dtype=torch.float64)
    samples = torch.randn(4000, 5, generator=generator, dtype=torch.float64) @ mixing
    covariance = torch.cov(samples.T, correction=0)
    whitening = zca_whitening_matrix(covariance, epsilon=0)
    torch.testing.assert_close(whitening @ covariance @ whitening, torch.eye(5, dtype=torch.float64))
    torch.testing.assert_close(whitening, whitening.T)  # ZCA: the symmetric whitening, closest to the identity


def test_filter_correlation_of_identical_filters_within_groups():
    layer = gnn.Conv2d(4, 6, 3, groups=2, bias=False)
    with torch.no_grad():
        base = torch.randn(2, 2, 3, 3)
        base[1] -= (base[1].flatten() @ base[0].flatten()) / base[0].flatten().square().sum() * base[0]
        layer.weight.copy_(base.repeat_interleave(3, dim=0))  # filters 0-2 equal, 3-5 equal
    result = filter_correlation(torch.nn.Sequential(layer), "0")
    assert result.matrix.shape == (6, 6)
    torch.testing.assert_close(result.matrix.diagonal(), torch.ones(6, dtype=torch.float64))
    assert result.groups == 2
    assert result.block_energy > 0.95  # the groups are nearly uncorrelated after centring


def test_bad_layer_names_list_the_valid_ones():
    model = two_layers(groups=3)
    with pytest.raises(ValueError, match=r"first='conv9' is not a layer of Sequential; its conv layers are: 0, 1"):
        layer_correlation(model, [torch.randn(1, 6, 4, 4)], "conv9", "1")
    with pytest.raises(ValueError, match="is a ReLU, not a convolution"):
        layer_correlation(torch.nn.Sequential(gnn.Conv2d(3, 3, 1), torch.nn.ReLU()), [torch.randn(1, 3, 2, 2)],
                          "0", "1")


def test_layers_whose_channels_do_not_line_up_are_an_error():
    model = torch.nn.Sequential(gnn.Conv2d(3, 8, 1), gnn.Conv2d(8, 6, 1), gnn.Conv2d(6, 6, 1))
    with pytest.raises(ValueError, match=r"first='0' \(8 output channels\) and second='2' \(6 input channels\) "
                                         "do not line up"):
        layer_correlation(model, [torch.randn(1, 3, 4, 4)], "0", "2")


def test_different_spatial_sizes_need_match_spatial():
    model = torch.nn.Sequential(gnn.Conv2d(3, 6, 3, padding=1), gnn.Conv2d(6, 6, 3, stride=2, padding=1, groups=3))
    data = [torch.randn(2, 3, 8, 8)]
    with pytest.raises(ValueError, match="different spatial sizes.*match_spatial=True"):
        layer_correlation(model, data, "0", "1")
    result = layer_correlation(model, data, "0", "1", match_spatial=True)
    assert result.samples == 2 * 4 * 4 and "average-pooled to 4x4" in result.spatial_note


def test_default_pair_is_the_first_grouped_reader():
    from groupconv.models import create_model

    model = create_model("shufflenet_g3_wd4", small_input=True)
    pair = default_pair(model, (1, 3, 32, 32))
    modules = dict(model.named_modules())
    assert 1 < modules[pair.second].groups < modules[pair.second].in_channels
    assert modules[pair.first].out_channels == modules[pair.second].in_channels


def test_cli_correlate_writes_heatmaps_and_json(tmp_path, capsys):
    heatmap, filters, document = tmp_path / "c.png", tmp_path / "f.png", tmp_path / "c.json"
    code = main(["correlate", "shufflenet_g3_wd4", "--batch-size", "4", "--batches", "2", "-o", str(heatmap),
                 "--filters-output", str(filters), "--json", str(document)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "of the energy in the group-diagonal blocks" in out and "ZCA-whitened" in out
    assert heatmap.is_file() and filters.is_file()
    data = json.loads(document.read_text())
    assert 0 <= data["layers"]["block_energy"] <= 1
    assert len(data["matrix"]) == data["layers"]["shape"][0]


@pytest.mark.parametrize("argv, message", [
    (["correlate", "shufflenet_g3_wd4", "--layers", "features.stage1.unit1.dw_conv",
      "features.stage1.unit1.expand_conv3"],
     "first='features.stage1.unit1.dw_conv' is not a layer of ShuffleNet; closest: features.stage1.unit1.dw_conv2"),
    (["correlate", "shufflenet_g3_wd4", "--layers", "nope", "features.stage1.unit1.expand_conv3"],
     "its 49 conv layers are: features.init_block.conv, features.stage1.unit1.compress_conv1,"),
    (["correlate", "shufflenet_g3_wd4", "--layers", "features.init_block.conv", "features.stage1.unit1.expand_conv3"],
     "do not line up"),
    (["correlate", "shufflenet_g3_wd4", "--batches", "0"], "batches=0"),
    (["correlate"], "give a MODEL name or --run RUN_DIR"),
    (["correlate", "--run", "/nonexistent/run"], "run_dir='/nonexistent/run' is not a directory"),
])
def test_cli_correlate_bad_input(argv, message, capsys, tmp_path):
    assert main(argv + ["-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("groupconv correlate: error: ") and message in err, err
