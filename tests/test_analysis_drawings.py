"""Pictures (groupconv.analysis.drawings) and `groupconv draw`: written, of the promised size, not blank."""

import numpy as np
import pytest
import torch
from PIL import Image

import groupconv.nn as gnn
from groupconv.analysis import ConnectionLayout, draw_connections, draw_filters, draw_layer_connections
from groupconv.analysis.drawings import filter_groups, scaled_layout, standard_layouts
from groupconv.cli import main


def assert_real_picture(path, size):
    """The PNG exists, has `size` (width, height) pixels, and shows something: varied pixels, several colours."""
    image = Image.open(path).convert("RGB")
    assert image.size == tuple(size)
    pixels = np.asarray(image).reshape(-1, 3)
    assert pixels.var() > 0
    colours = {tuple(p) for p in pixels[:: max(1, len(pixels) // 20000)]}
    assert len(colours) > 10
    saturated = (pixels.max(axis=1).astype(int) - pixels.min(axis=1)) > 60  # not just greys
    assert saturated.any()


@pytest.mark.parametrize("layout", [
    ConnectionLayout(8, 8, kernel_size=3),
    ConnectionLayout(12, 12, 4, kernel_size=3),
    ConnectionLayout(6, 6, 6, kernel_size=3),
    ConnectionLayout(12, 24, 3, kernel_size=1),
    ConnectionLayout(12, 12, 3, 3, kernel_size=1),
], ids=["standard", "grouped G=4", "depthwise", "pointwise grouped", "shuffled grouped"])
def test_each_kind_of_connection_diagram(layout, tmp_path):
    path = tmp_path / "c.png"
    assert draw_connections(layout, path, panel_pixels=(300, 400)) == (300, 400)
    assert_real_picture(path, (300, 400))


def test_layout_names_and_family_figure(tmp_path):
    layouts = standard_layouts(12, 12, 3)
    assert [layout.name() for layout in layouts] == [
        "standard conv", "grouped conv (G=3)", "pointwise grouped conv (G=3)",
        "channel shuffle (3) + pointwise grouped conv (G=3)", "depthwise conv"]
    size = draw_connections(layouts, tmp_path / "family.png")
    assert size == (360 * 5, 600)
    assert_real_picture(tmp_path / "family.png", size)


def test_connection_colours_follow_the_groups():
    grouped = ConnectionLayout(12, 6, 3)
    assert grouped.output_groups() == [0, 0, 1, 1, 2, 2]
    assert grouped.input_source_groups() == [0] * 4 + [1] * 4 + [2] * 4
    shuffled = ConnectionLayout(12, 12, 3, 3)
    # the shuffle puts channels 0, 4, 8, 1 in the slice output group 0 reads: every colour of the layer before
    reads = shuffled.connectivity()[0].nonzero().flatten().tolist()
    assert reads == [0, 1, 4, 8]
    assert {shuffled.input_source_groups()[i] for i in reads} == {0, 1, 2}


def test_bad_layouts_are_errors_naming_the_argument():
    with pytest.raises(ValueError, match="in_channels=10 is not divisible by groups=3"):
        ConnectionLayout(10, 12, 3)
    with pytest.raises(ValueError, match="out_channels=0 must be a positive integer"):
        ConnectionLayout(4, 0)
    with pytest.raises(ValueError, match="width_pixels=10 must be an int of at least 50"):
        draw_connections(ConnectionLayout(4, 4), "x.png", panel_pixels=(10, 100))


def test_large_layers_are_drawn_scaled_down_with_their_structure(tmp_path):
    layer = gnn.ShuffledGroupedConv2d(240, 240, 1, groups=3, bias=False)
    scaled = scaled_layout(ConnectionLayout.of(layer))
    assert max(scaled.in_channels, scaled.out_channels) <= 48
    assert (scaled.groups, scaled.shuffle_groups) == (3, 3)
    assert "240 -> 240 channels" in scaled.title
    size = draw_layer_connections(layer, tmp_path / "layer.png", "stage2.conv")
    assert_real_picture(tmp_path / "layer.png", size)


def test_filter_grid_of_a_grouped_first_layer(tmp_path):
    model = torch.nn.Sequential(gnn.Conv2d(3, 12, 5, groups=1), gnn.Conv2d(12, 12, 3, groups=2))
    groups, rule = filter_groups(model, "0")
    assert groups == [0] * 6 + [1] * 6 and "by the group of 1 (G=2)" in rule  # AlexNet's two GPUs
    size = draw_filters(model, tmp_path / "filters.png", width_pixels=400, height_pixels=300)
    assert size == (400, 300)
    assert_real_picture(tmp_path / "filters.png", size)


def test_filters_of_a_meta_model_are_an_error(tmp_path):
    with torch.device("meta"):
        model = torch.nn.Sequential(gnn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="meta device"):
        draw_filters(model, tmp_path / "f.png")


def test_cli_draw_connections_and_filters(tmp_path, capsys):
    family, layer, filters = tmp_path / "family.png", tmp_path / "layer.png", tmp_path / "filters.png"
    assert main(["draw", "connections", "--channels", "8", "--groups", "4", "-o", str(family)]) == 0
    assert_real_picture(family, (360 * 5, 600))
    assert main(["draw", "connections", "--model", "shufflenet_g3_w1", "--layer",
                 "features.stage2.unit2.compress_conv1", "-o", str(layer)]) == 0
    assert main(["draw", "filters", "alexnet", "-o", str(filters)]) == 0
    assert_real_picture(filters, (900, 700))
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["draw", "connections", "--channels", "10", "--groups", "3"], "in_channels=10 is not divisible by groups=3"),
    (["draw", "connections", "--model", "alexnet"], "--model and --layer go together"),
    (["draw", "connections", "--model", "alexnet", "--layer", "features.9"], "--layer='features.9'"),
    (["draw", "filters", "alexnet", "--layer", "classifier"], "layer='classifier'"),
])
def test_cli_draw_bad_input(argv, message, capsys, tmp_path):
    assert main(argv + ["-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("groupconv draw: error: ") and message in err, err
