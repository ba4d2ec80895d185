"""Pictures generated from a layer's configuration or weights (PNG via matplotlib, no display needed).

- Connections (the figures of the grouped-convolution papers): two columns of channel nodes, inputs left and outputs right,
  a line wherever an output channel reads an input channel (groupconv.analysis.layer_connectivity).
  Output nodes are coloured by their group. Input nodes and lines are coloured by the group the input
  channel comes from: for a plain grouped conv, the group that reads it; for a shuffled grouped conv,
  the group of the layer before the shuffle (channel i came from group i // (C / shuffle_groups)),
  so the picture shows each output group reading one channel of every colour, as in ShuffleNet's Fig. 1.
- Filters: the first conv layer's filters as a grid of small images, bordered by colour of group
  (rule in filter_groups), as AlexNet's Fig. 3 shows the two GPUs' conv1 filters.
- Matrices (correlation maps): a heatmap with the group-diagonal blocks outlined.

All figures are matplotlib Figure objects drawn by the Agg renderer directly (no pyplot, no global
backend switch) and saved at exactly width_pixels x height_pixels.
"""

from __future__ import annotations

import math
import os
import textwrap
from dataclasses import dataclass

import numpy as np
import torch

from ..ops.arguments import check_divisible, check_groups
from .connectivity import channel_connectivity
from .modules import conv_family, conv_layers, find_layer


def new_figure(width_pixels: int, height_pixels: int, dpi: int = 100):
    from matplotlib.figure import Figure

    for name, value in (("width_pixels", width_pixels), ("height_pixels", height_pixels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 50:
            raise ValueError(f"{name}={value!r} must be an int of at least 50")
    return Figure(figsize=(width_pixels / dpi, height_pixels / dpi), dpi=dpi, layout="constrained")


def save_figure(figure, path) -> None:
    """Save at the figure's own size (no tight bounding box, so the pixel size is the one asked for)."""
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    figure.savefig(path, dpi=figure.dpi)


def group_colours(count: int) -> list:
    """`count` distinguishable RGBA colours: tab10 / tab20 for few groups, a hue circle for many."""
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["hsv"](i / count) for i in range(count)]


# ---------------------------------------------------------------------------------------------------------------
# Connections


@dataclass(frozen=True)
class ConnectionLayout:
    """The channel structure of a convolution: what `draw_connections` draws."""

    in_channels: int
    out_channels: int
    groups: int = 1
    shuffle_groups: int = 1
    kernel_size: int | None = None  # only for the title: 1 makes it "pointwise"
    title: str | None = None

    def __post_init__(self):
        for name in ("in_channels", "out_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        check_groups(self.groups)
        check_groups(self.shuffle_groups, "shuffle_groups")
        check_divisible(self.in_channels, "in_channels", self.groups)
        check_divisible(self.out_channels, "out_channels", self.groups)
        check_divisible(self.in_channels, "in_channels", self.shuffle_groups, "shuffle_groups")

    @classmethod
    def of(cls, layer: torch.nn.Module, title: str | None = None) -> "ConnectionLayout":
        kernel = layer.kernel_size[0] if all(k == layer.kernel_size[0] for k in layer.kernel_size) else None
        return cls(layer.in_channels, layer.out_channels, layer.groups, getattr(layer, "shuffle_groups", 1), kernel,
                   title)

    def name(self) -> str:
        """'standard conv', 'grouped conv (G=3)', 'depthwise conv', 'pointwise grouped conv (G=3)', ... ."""
        pointwise = "pointwise " if self.kernel_size == 1 else ""
        if self.groups == 1:
            kind = "pointwise conv" if pointwise else "standard conv"
        elif self.groups == self.in_channels:
            kind = "depthwise conv"
        else:
            kind = f"{pointwise}grouped conv (G={self.groups})"
        if self.shuffle_groups > 1:
            kind = f"channel shuffle ({self.shuffle_groups}) + {kind}"
        return kind

    def connectivity(self) -> torch.Tensor:
        return channel_connectivity(self.in_channels, self.out_channels, self.groups, self.shuffle_groups)

    def input_source_groups(self) -> list[int]:
        """The colour index of each input channel: its shuffle source group, or the group that reads it."""
        source_groups = self.shuffle_groups if self.shuffle_groups > 1 else self.groups
        return [i // (self.in_channels // source_groups) for i in range(self.in_channels)]

    def output_groups(self) -> list[int]:
        return [o // (self.out_channels // self.groups) for o in range(self.out_channels)]


def scaled_layout(layout: ConnectionLayout, max_channels: int = 48) -> ConnectionLayout:
    """A layout with at most about `max_channels` channels a side and the same structure, for drawing big layers.

    Channels per group are scaled down together (keeping their ratio roughly) to at most 6 and at
    least 2 where the layer has 2, and the number of groups is capped so that the total fits; a
    shuffle keeps its group count where it can.
    """
    if max(layout.in_channels, layout.out_channels) <= max_channels:
        return layout
    in_per_group, out_per_group = layout.in_channels // layout.groups, layout.out_channels // layout.groups
    shrink = max(1.0, max(in_per_group, out_per_group) / 6)
    in_per_group = max(min(2, in_per_group), round(in_per_group / shrink))
    out_per_group = max(min(2, out_per_group), round(out_per_group / shrink))
    groups = max(1, min(layout.groups, max_channels // max(in_per_group, out_per_group)))
    shuffle = layout.shuffle_groups
    if shuffle > 1 and layout.shuffle_groups == layout.groups:
        shuffle = groups
    elif shuffle > 1:
        while groups > 1 and (groups * in_per_group) % shuffle:
            groups -= 1
        if (groups * in_per_group) % shuffle:
            in_per_group = shuffle
    title = (f"{layout.title or layout.name()}: {layout.in_channels} -> {layout.out_channels} channels, "
             f"drawn with {groups * in_per_group} -> {groups * out_per_group}")
    return ConnectionLayout(groups * in_per_group, groups * out_per_group, groups, shuffle, layout.kernel_size, title)


def standard_layouts(in_channels: int, out_channels: int, groups: int, shuffle_groups: int | None = None
                     ) -> list[ConnectionLayout]:
    """The grouped-convolution family for one channel count: standard 3x3, grouped 3x3, pointwise grouped, shuffled
    pointwise grouped (ShuffleNet), and depthwise 3x3 when out_channels is a multiple of in_channels."""
    layouts = [ConnectionLayout(in_channels, out_channels, kernel_size=3),
               ConnectionLayout(in_channels, out_channels, groups, kernel_size=3),
               ConnectionLayout(in_channels, out_channels, groups, kernel_size=1),
               ConnectionLayout(in_channels, out_channels, groups, shuffle_groups or groups, kernel_size=1)]
    if out_channels % in_channels == 0:
        layouts.append(ConnectionLayout(in_channels, out_channels, in_channels, kernel_size=3))
    return layouts


def draw_connections(layouts, path, panel_pixels: tuple[int, int] = (360, 600), dpi: int = 100) -> tuple[int, int]:
    """Draw one panel per ConnectionLayout side by side into a PNG; returns its (width, height) in pixels."""
    from matplotlib.collections import LineCollection

    layouts = [layouts] if isinstance(layouts, ConnectionLayout) else list(layouts)
    if not layouts:
        raise ValueError("layouts must name at least one ConnectionLayout")
    width, height = panel_pixels[0] * len(layouts), panel_pixels[1]
    figure = new_figure(width, height, dpi)
    axes_row = figure.subplots(1, len(layouts), squeeze=False)[0]
    for axes, layout in zip(axes_row, layouts):
        connectivity = layout.connectivity()
        in_y = [1 - (i + 0.5) / layout.in_channels for i in range(layout.in_channels)]
        out_y = [1 - (o + 0.5) / layout.out_channels for o in range(layout.out_channels)]
        source = layout.input_source_groups()
        colours = group_colours(max(max(source), max(layout.output_groups())) + 1)
        outputs, inputs = torch.nonzero(connectivity, as_tuple=True)
        segments = [((0.0, in_y[i]), (1.0, out_y[o])) for o, i in zip(outputs.tolist(), inputs.tolist())]
        line_colours = [colours[source[i]] for i in inputs.tolist()]
        alpha = min(0.9, max(0.08, 40 / max(1, len(segments))))
        axes.add_collection(LineCollection(segments, colors=line_colours, linewidths=0.8, alpha=alpha))
        node_size = max(4.0, min(80.0, 2400 / max(layout.in_channels, layout.out_channels)))
        axes.scatter([0.0] * layout.in_channels, in_y, s=node_size, c=[colours[g] for g in source],
                     edgecolors="black", linewidths=0.4, zorder=3)
        axes.scatter([1.0] * layout.out_channels, out_y, s=node_size,
                     c=[colours[g] for g in layout.output_groups()], edgecolors="black", linewidths=0.4, zorder=3)
        axes.set_xlim(-0.15, 1.15)
        axes.set_ylim(0, 1)
        axes.set_xticks([0, 1], ["input\nchannels", "output\nchannels"])
        axes.set_yticks([])
        for side in ("top", "right", "left"):
            axes.spines[side].set_visible(False)
        per_output = layout.in_channels // layout.groups
        # Wrapped to the panel's width: layer names in a title are long and would be clipped at the figure's edge.
        title = textwrap.fill(f"{layout.title or layout.name()}", width=max(24, panel_pixels[0] // 7))
        axes.set_title(f"{title}\n{layout.in_channels} -> {layout.out_channels}, each output reads {per_output}",
                       fontsize=8)
    save_figure(figure, path)
    return width, height


def draw_layer_connections(layer: torch.nn.Module, path, name: str | None = None, max_channels: int = 48,
                           **kwargs) -> tuple[int, int]:
    """The connections of one conv layer (drawn scaled down, with the same structure, if it is large)."""
    title = f"{name}: {conv_family(layer)}" if name else None
    return draw_connections(scaled_layout(ConnectionLayout.of(layer, title), max_channels), path, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Filters


def filter_groups(model: torch.nn.Module, layer_name: str) -> tuple[list[int], str]:
    """The group of each filter of conv `layer_name`, and the rule that gave it.

    1. If the layer itself has groups > 1: filter o belongs to group o // (out_channels / groups).
    2. Otherwise, if the next conv layer (model.named_modules() order) reads exactly this layer's
       channels and is grouped (1 < groups < in_channels), each filter takes the group of that layer
       that reads its output channel: AlexNet's conv1 filters split by conv2's two filter groups, the
       paper's two GPUs.
    3. Otherwise all filters are one group.
    Depthwise next layers are not used: every channel would be its own group.
    """
    layers = conv_layers(model)
    layer = find_layer(model, layer_name)
    if layer.groups > 1:
        per_group = layer.out_channels // layer.groups
        return [o // per_group for o in range(layer.out_channels)], f"groups of {layer_name} (G={layer.groups})"
    names = list(layers)
    following = names[names.index(layer_name) + 1:] if layer_name in names else []
    if following:
        reader = layers[following[0]]
        if reader.in_channels == layer.out_channels and 1 < reader.groups < reader.in_channels:
            connectivity = channel_connectivity(reader.in_channels, reader.out_channels, reader.groups,
                                                getattr(reader, "shuffle_groups", 1))
            first_reader = connectivity.to(torch.int8).argmax(dim=0)  # the first output channel reading each input
            per_group = reader.out_channels // reader.groups
            return ((first_reader // per_group).tolist(),
                    f"by the group of {following[0]} (G={reader.groups}) that reads each filter's output")
    return [0] * layer.out_channels, "one group"


def _filter_images(weight: torch.Tensor) -> np.ndarray:
    """(filters, height, width, 3) images in [0, 1]: RGB for 3 input channels, grey (channel mean) otherwise.

    Each filter is scaled to its own range, as in AlexNet's Fig. 3. 1-D filters are one row high;
    3-D filters show their middle slice.
    """
    weight = weight.detach().to("cpu", torch.float64)
    if weight.dim() == 3:
        weight = weight[:, :, None, :]
    elif weight.dim() == 5:
        weight = weight[:, :, weight.shape[2] // 2]
    if weight.shape[1] == 3:
        images = weight.permute(0, 2, 3, 1)
    else:
        images = weight.mean(dim=1, keepdim=True).permute(0, 2, 3, 1).expand(-1, -1, -1, 3)
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    span = images.amax(dim=(1, 2, 3), keepdim=True) - low
    return ((images - low) / torch.where(span > 0, span, torch.ones_like(span))).numpy()


def draw_filters(model: torch.nn.Module, path, layer: str | None = None, width_pixels: int = 900,
                 height_pixels: int = 700, dpi: int = 100) -> tuple[int, int]:
    """The filters of conv `layer` (default: the model's first conv) as a bordered grid; returns the PNG's size.

    Filters are laid out group by group (see filter_groups for the rule), each with a border in its
    group's colour. Random or trained weights alike; a model on the meta device has none to draw.
    """
    layers = conv_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no convolution layers to draw")
    layer = layer if layer is not None else next(iter(layers))
    conv = find_layer(model, layer)
    if conv.weight.is_meta:
        raise ValueError(f"layer {layer!r} is on the meta device: it has no weights to draw")
    groups, rule = filter_groups(model, layer)
    images = _filter_images(conv.weight)
    order = sorted(range(len(groups)), key=lambda o: (groups[o], o))
    count, kernel_height, kernel_width = images.shape[0], images.shape[1], images.shape[2]

    scale = max(1, 24 // max(kernel_height, kernel_width))  # small kernels get bigger cells
    border, gap = max(1, scale // 3), 2
    cell_height, cell_width = kernel_height * scale + 2 * border, kernel_width * scale + 2 * border
    columns = max(1, round(math.sqrt(count * (width_pixels / height_pixels) * cell_height / cell_width)))
    rows = math.ceil(count / columns)
    mosaic = np.ones((rows * (cell_height + gap) + gap, columns * (cell_width + gap) + gap, 3))
    colours = group_colours(max(groups) + 1)
    for slot, filter_index in enumerate(order):
        top = gap + (slot // columns) * (cell_height + gap)
        left = gap + (slot % columns) * (cell_width + gap)
        mosaic[top:top + cell_height, left:left + cell_width] = colours[groups[filter_index]][:3]
        image = images[filter_index].repeat(scale, axis=0).repeat(scale, axis=1)
        mosaic[top + border:top + border + image.shape[0], left + border:left + border + image.shape[1]] = image

    figure = new_figure(width_pixels, height_pixels, dpi)
    axes = figure.subplots()
    axes.imshow(mosaic, interpolation="nearest")
    axes.set_axis_off()
    channels = "RGB" if conv.in_channels == 3 else "mean over input channels"
    axes.set_title(f"{type(model).__name__} {layer}: {count} filters {'x'.join(map(str, conv.kernel_size))} "
                   f"({channels}); colour: {rule}", fontsize=9)
    save_figure(figure, path)
    return width_pixels, height_pixels


# ---------------------------------------------------------------------------------------------------------------
# Matrices


def _mask_outline(mask: np.ndarray) -> list:
    """Segments along every cell edge between a masked and an unmasked cell (or the border), in imshow coordinates."""
    padded = np.pad(mask, 1).astype(np.int8)
    rows, columns = np.nonzero(np.diff(padded, axis=0)[:, 1:-1])  # edge above row r (r = 0..n)
    horizontal = [((c - 0.5, r - 0.5), (c + 0.5, r - 0.5)) for r, c in zip(rows.tolist(), columns.tolist())]
    rows, columns = np.nonzero(np.diff(padded, axis=1)[1:-1, :])  # edge left of column c
    vertical = [((c - 0.5, r - 0.5), (c - 0.5, r + 0.5)) for r, c in zip(rows.tolist(), columns.tolist())]
    return horizontal + vertical


def draw_matrix(matrix, path, title: str, row_label: str, column_label: str, block_mask=None,
                width_pixels: int = 760, height_pixels: int = 640, dpi: int = 100) -> tuple[int, int]:
    """Heatmap of a (rows x columns) matrix, symmetric colour scale around 0, `block_mask` outlined in black."""
    from matplotlib.collections import LineCollection

    matrix = np.asarray(matrix, dtype=np.float64)
    figure = new_figure(width_pixels, height_pixels, dpi)
    axes = figure.subplots()
    limit = float(np.abs(matrix).max()) or 1.0
    image = axes.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest", aspect="auto")
    if block_mask is not None:
        mask = np.asarray(block_mask, dtype=bool)
        if mask.any() and not mask.all():
            axes.add_collection(LineCollection(_mask_outline(mask), colors="black", linewidths=0.8))
    figure.colorbar(image, ax=axes, shrink=0.85)
    axes.set_xlabel(column_label)
    axes.set_ylabel(row_label)
    axes.set_title(title, fontsize=9)
    save_figure(figure, path)
    return width_pixels, height_pixels
