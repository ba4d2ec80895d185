"""What filter groups learn: the correlation between the responses of two adjacent layers ("Deep Roots",
Ioannou et al. 2017), and the correlation between the filters of one layer.

Inter-layer: for a layer `second` that reads the output of a layer `first`, every spatial position
of every image is one sample of the two response vectors (first's C channels and second's M
channels, each the layer's own output, before any activation that follows it). The M x C
cross-covariance (or correlation) is accumulated over all batches in float64, optionally after
ZCA-whitening each layer's responses (Deep Roots' figure: both layers whitened, so the picture
shows the connections between the layers rather than the correlations within each). If `second`
has G filter groups, output group g reads only input group g, and the "group-diagonal blocks" are
exactly where its connectivity (groupconv.analysis.layer_connectivity, shuffle included) is True.
`block_energy` is the fraction of the matrix's squared entries inside those blocks; a matrix with
no structure puts `unstructured_energy` (the blocks' share of the entries, 1/G) there.

Spatial sizes: the two maps must have the same size for a pixel to be one sample of both. When
they differ (a pooling or strided layer between them) `match_spatial=True` average-pools the
larger map down to the smaller size (F.adaptive_avg_pool); otherwise it is a ValueError.

Intra-layer: the correlation between the flattened filters (in_channels/G x kernel entries each)
of one conv layer; `block_energy` there counts the off-diagonal squared correlation inside the
groups' blocks, since the diagonal is 1 for every filter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .connectivity import channel_connectivity, layer_connectivity
from .drawings import draw_matrix
from .layers import trace_layers
from .modules import explained_forward_failure, find_layer

STATISTICS = ("correlation", "covariance")


@dataclass
class CorrelationMap:
    """Cross-correlation (or covariance) of two adjacent layers' responses: rows `second`, columns `first`."""

    first: str
    second: str
    matrix: torch.Tensor  # (second's channels, first's channels), float64
    block_mask: torch.Tensor  # bool, same shape: True inside the group-diagonal blocks
    blocks_from: str  # which grouping defines the blocks
    statistic: str
    whitened: bool
    samples: int
    spatial_note: str  # how the two maps were lined up ('' when they had the same size)

    @property
    def block_energy(self) -> float:
        return _energy_fraction(self.matrix, self.block_mask)

    @property
    def unstructured_energy(self) -> float:
        return self.block_mask.double().mean().item()

    def summary(self) -> str:
        whitened = "ZCA-whitened " if self.whitened else ""
        note = f"; {self.spatial_note}" if self.spatial_note else ""
        return (f"{self.statistic} of {whitened}responses, {self.second} (rows) vs {self.first} (columns), "
                f"{self.samples:,} samples{note}: {100 * self.block_energy:.1f}% of the energy in the group-diagonal "
                f"blocks ({self.blocks_from}; a matrix without structure: {100 * self.unstructured_energy:.1f}%)")

    def to_dict(self) -> dict:
        return dict(first=self.first, second=self.second, statistic=self.statistic, whitened=self.whitened,
                    samples=self.samples, blocks_from=self.blocks_from, spatial_note=self.spatial_note,
                    block_energy=self.block_energy, unstructured_energy=self.unstructured_energy,
                    shape=list(self.matrix.shape))

    def draw(self, path, **kwargs) -> tuple[int, int]:
        """Heatmap PNG with the blocks outlined; returns its (width, height) in pixels."""
        whitened = ", ZCA-whitened" if self.whitened else ""
        title = (f"{self.statistic} of responses{whitened}: {100 * self.block_energy:.1f}% of energy in group blocks "
                 f"(unstructured: {100 * self.unstructured_energy:.1f}%)\n{self.blocks_from}; {self.samples:,} samples")
        return draw_matrix(self.matrix.numpy(), path, title, f"{self.second} channel", f"{self.first} channel",
                           self.block_mask.numpy(), **kwargs)


@dataclass
class FilterCorrelation:
    """Correlation between the flattened filters of one conv layer (filters x filters)."""

    layer: str
    matrix: torch.Tensor
    block_mask: torch.Tensor  # True where two filters are in the same group
    groups: int

    @property
    def block_energy(self) -> float:
        """Share of the off-diagonal squared correlation between filters of the same group."""
        off_diagonal = ~torch.eye(self.matrix.shape[0], dtype=torch.bool)
        return _energy_fraction(self.matrix * off_diagonal, self.block_mask & off_diagonal)

    @property
    def unstructured_energy(self) -> float:
        off_diagonal = ~torch.eye(self.matrix.shape[0], dtype=torch.bool)
        return ((self.block_mask & off_diagonal).sum() / max(1, off_diagonal.sum().item())).item()

    def summary(self) -> str:
        return (f"correlation between the {self.matrix.shape[0]} filters of {self.layer} (G={self.groups}): "
                f"{100 * self.block_energy:.1f}% of the off-diagonal energy within groups "
                f"(without structure: {100 * self.unstructured_energy:.1f}%)")

    def draw(self, path, **kwargs) -> tuple[int, int]:
        title = f"filter correlation of {self.layer} (G={self.groups}): " \
                f"{100 * self.block_energy:.1f}% of off-diagonal energy within groups"
        return draw_matrix(self.matrix.numpy(), path, title, "filter", "filter", self.block_mask.numpy(), **kwargs)


def _energy_fraction(matrix: torch.Tensor, mask: torch.Tensor) -> float:
    squares = matrix.double().square()
    total = squares.sum().item()
    return squares[mask].sum().item() / total if total > 0 else 0.0


def zca_whitening_matrix(covariance: torch.Tensor, epsilon: float = 1e-4) -> torch.Tensor:
    """ZCA whitening U diag(1/sqrt(lambda + eps)) U^T; eps = epsilon x the mean eigenvalue keeps near-dead channels
    finite.

    A matrix function of the covariance, so a block-diagonal covariance gives a block-diagonal
    whitening matrix (whitening never mixes independent groups).
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    eigenvalues = eigenvalues.clamp(min=0)
    regulariser = epsilon * eigenvalues.mean().item() or epsilon
    return eigenvectors @ torch.diag((eigenvalues + regulariser).rsqrt()) @ eigenvectors.T


class _CrossMoments:
    """Running sums for the means, covariances and cross-covariance of two response vectors, in float64."""

    def __init__(self):
        self.samples = 0
        self.sum_a = self.sum_b = self.aa = self.bb = self.ba = 0

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.samples += a.shape[0]
        self.sum_a = self.sum_a + a.sum(0)
        self.sum_b = self.sum_b + b.sum(0)
        self.aa = self.aa + a.T @ a
        self.bb = self.bb + b.T @ b
        self.ba = self.ba + b.T @ a

    def covariances(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = self.samples
        mean_a, mean_b = self.sum_a / n, self.sum_b / n
        return (self.aa / n - torch.outer(mean_a, mean_a), self.bb / n - torch.outer(mean_b, mean_b),
                self.ba / n - torch.outer(mean_b, mean_a))


def _as_samples(response: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N * prod(spatial), C) in float64: every position of every image is one sample."""
    return response.detach().to("cpu", torch.float64).movedim(1, -1).reshape(-1, response.shape[1])


def _pool_to(response: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    pools = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
    return response if tuple(response.shape[2:]) == size else pools[len(size)](response, size)


def _input_of(batch) -> torch.Tensor:
    """A data item is a tensor or a tuple/list whose first element is the input (as DataLoaders yield)."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, tuple | list) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise ValueError(f"data items must be tensors or (input, target) pairs, got {type(batch).__name__}")


def check_adjacent(model: torch.nn.Module, first: str, second: str, blocks: int | None = None
                   ) -> tuple[torch.Tensor, str]:
    """ValueError unless `second` can read `first` (channel counts line up); returns the block mask and its origin."""
    first_layer = find_layer(model, first, "first")
    second_layer = find_layer(model, second, "second")
    if first_layer.out_channels != second_layer.in_channels:
        raise ValueError(f"layers first={first!r} ({first_layer.out_channels} output channels) and second={second!r} "
                         f"({second_layer.in_channels} input channels) do not line up: the second layer must read "
                         f"the first one's output channels")
    if blocks is None:
        return layer_connectivity(second_layer), f"groups of {second} (G={second_layer.groups}" + (
            f", reading through a shuffle of {second_layer.shuffle_groups})"
            if getattr(second_layer, "shuffle_groups", 1) > 1 else ")")
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"blocks={blocks!r} must be a positive integer")
    if first_layer.out_channels % blocks or second_layer.out_channels % blocks:
        raise ValueError(f"blocks={blocks} must divide the channels of first={first!r} ({first_layer.out_channels}) "
                         f"and second={second!r} ({second_layer.out_channels})")
    return channel_connectivity(first_layer.out_channels, second_layer.out_channels, blocks), f"{blocks} blocks"


def layer_correlation(model: torch.nn.Module, data, first: str, second: str, whiten: bool = False,
                      statistic: str = "correlation", match_spatial: bool = False, blocks: int | None = None,
                      epsilon: float = 1e-4) -> CorrelationMap:
    """Correlation (or covariance) between the responses of conv layers `first` and `second` over `data`.

    `data`: an iterable of input batches (tensors, or (input, target) pairs). `first`, `second`: names
    as in model.named_modules(); `second` must read `first`'s output channels. `blocks`: measure
    against that many equal diagonal blocks instead of `second`'s own groups (to ask how
    block-diagonal a dense model is). The model runs in eval mode under no_grad (BatchNorm running
    statistics are not touched) and is put back in its mode afterwards.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic={statistic!r} must be one of {STATISTICS}")
    block_mask, blocks_from = check_adjacent(model, first, second, blocks)
    modules = dict(model.named_modules())
    moments = _CrossMoments()
    held: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    spatial_notes: set[str] = set()

    def hold_first(module, args, output):
        held["first"] = output.detach().clone()  # an in-place ReLU after the layer would change it

    def accumulate(module, args, output):
        if "first" not in held:
            problems.append(f"layer second={second!r} ran before first={first!r}: the second layer must read the "
                            "first one's output")
            return
        a, b = held.pop("first"), output.detach()
        if a.shape[2:] != b.shape[2:]:
            if not match_spatial:
                problems.append(f"layers first={first!r} (output {tuple(a.shape)}) and second={second!r} (output "
                                f"{tuple(b.shape)}) have different spatial sizes; every pixel is one sample, so the "
                                "maps must line up: pass match_spatial=True (--match-spatial) to average-pool the "
                                "larger map to the smaller size")
                return
            size = tuple(min(x, y) for x, y in zip(a.shape[2:], b.shape[2:]))
            spatial_notes.add(f"maps average-pooled to {'x'.join(map(str, size))} (first "
                              f"{'x'.join(map(str, a.shape[2:]))}, second {'x'.join(map(str, b.shape[2:]))})")
            a, b = _pool_to(a, size), _pool_to(b, size)
        moments.add(_as_samples(a), _as_samples(b))

    was_training = model.training
    handles = [modules[first].register_forward_hook(hold_first), modules[second].register_forward_hook(accumulate)]
    parameter = next(model.parameters(), None)
    try:
        model.eval()
        with torch.no_grad():
            for batch in data:
                x = _input_of(batch)
                if parameter is not None:
                    x = x.to(parameter.device, parameter.dtype)
                with explained_forward_failure(type(model).__name__, x.shape):
                    model(x)
                if problems:
                    raise ValueError(problems[0])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if moments.samples < 2:
        raise ValueError("data gave fewer than 2 samples: pass at least one batch of inputs")

    covariance_a, covariance_b, cross = moments.covariances()
    if whiten:
        whiten_a, whiten_b = zca_whitening_matrix(covariance_a, epsilon), zca_whitening_matrix(covariance_b, epsilon)
        cross = whiten_b @ cross @ whiten_a
        covariance_a = whiten_a @ covariance_a @ whiten_a
        covariance_b = whiten_b @ covariance_b @ whiten_b
    if statistic == "correlation":
        deviation_a = covariance_a.diagonal().clamp(min=0).sqrt()
        deviation_b = covariance_b.diagonal().clamp(min=0).sqrt()
        scale = torch.outer(deviation_b, deviation_a)
        cross = torch.where(scale > 0, cross / torch.where(scale > 0, scale, 1.0), 0.0)  # dead channels: 0
    return CorrelationMap(first, second, cross, block_mask, blocks_from, statistic, whiten, moments.samples,
                          "; ".join(sorted(spatial_notes)))


def filter_correlation(model: torch.nn.Module, layer: str) -> FilterCorrelation:
    """Correlation between the flattened filters of conv `layer` (as in model.named_modules())."""
    conv = find_layer(model, layer)
    if conv.weight.is_meta:
        raise ValueError(f"layer={layer!r} is on the meta device: it has no weights")
    filters = conv.weight.detach().to("cpu", torch.float64).flatten(1)
    filters = filters - filters.mean(dim=1, keepdim=True)
    norms = filters.norm(dim=1, keepdim=True)
    filters = filters / torch.where(norms > 0, norms, 1.0)
    group = torch.arange(conv.out_channels) // (conv.out_channels // conv.groups)
    return FilterCorrelation(layer, filters @ filters.T, group[:, None] == group[None, :], conv.groups)


@dataclass(frozen=True)
class AdjacentPair:
    first: str
    second: str
    first_output: tuple[int, ...]
    second_output: tuple[int, ...]

    @property
    def same_spatial_size(self) -> bool:
        return self.first_output[2:] == self.second_output[2:]


def adjacent_conv_pairs(model: torch.nn.Module, input_shape, model_name: str | None = None,
                        failure_hint: str = "") -> list[AdjacentPair]:
    """Consecutive conv layers (in execution order, traced on the meta device) whose channels line up."""
    modules = dict(model.named_modules())
    convs = [row for row in trace_layers(model, input_shape, model_name, failure_hint)
             if row.kind == "conv" and row.call == 1 and not modules[row.name].transposed]
    return [AdjacentPair(a.name, b.name, a.output_shape, b.output_shape) for a, b in zip(convs, convs[1:])
            if modules[a.name].out_channels == modules[b.name].in_channels]


def default_pair(model: torch.nn.Module, input_shape, model_name: str | None = None,
                 failure_hint: str = "") -> AdjacentPair:
    """The pair to look at when none is named: the first adjacent pair whose second layer is grouped.

    Preference: grouped (1 < G < channels) with maps of the same size, then grouped with different
    sizes (pooled to match), then depthwise likewise. A model without such a pair is a ValueError.
    """
    modules = dict(model.named_modules())
    pairs = adjacent_conv_pairs(model, input_shape, model_name, failure_hint)

    def grouped(pair):
        layer = modules[pair.second]
        return 1 < layer.groups < layer.in_channels

    for wanted in (lambda p: grouped(p) and p.same_spatial_size, grouped,
                   lambda p: modules[p.second].groups > 1 and p.same_spatial_size,
                   lambda p: modules[p.second].groups > 1):
        for pair in pairs:
            if wanted(pair):
                return pair
    raise ValueError(f"{model_name or type(model).__name__} has no two adjacent conv layers whose second one is "
                     "grouped; name the two layers (first=, second= / --layers FIRST SECOND)")
