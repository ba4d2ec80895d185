"""See where the cost goes and what the groups learn.

- cost: parameter and multiply-add formulas, and count_multiply_adds (torch.utils.flop_counter).
- layers: the per-layer cost table (shapes, params, MACs, memory traffic, roofline time) on the meta device.
- roofline: machine ceilings, measured or given.
- profile: measured forward/backward time per layer next to its roofline floor.
- correlation: Deep Roots' inter-layer correlation maps and intra-layer filter correlation.
- drawings: channel-connection diagrams, filter grids, heatmaps.
- report: the HTML report of a training run (groupconv.train.report_run writes one from a run directory).
"""

from .connectivity import channel_connectivity, layer_connectivity, render_connectivity
from .correlation import CorrelationMap, FilterCorrelation, default_pair, filter_correlation, layer_correlation
from .cost import conv_multiply_adds, count_multiply_adds, count_parameters
from .drawings import ConnectionLayout, draw_connections, draw_filters, draw_layer_connections, standard_layouts
from .layers import CostTable, LayerCost, analyze_layers, analyze_model
from .profile import ProfileTable, plot_profile, profile_layers, profile_model
from .report import write_report
from .roofline import MachineCeilings, machine_ceilings
from ..ops.tuning.timing import median_seconds

__all__ = [
    "ConnectionLayout", "CorrelationMap", "CostTable", "FilterCorrelation", "LayerCost", "MachineCeilings",
    "ProfileTable", "analyze_layers", "analyze_model", "channel_connectivity", "conv_multiply_adds",
    "count_multiply_adds", "count_parameters", "default_pair", "draw_connections", "draw_filters",
    "draw_layer_connections", "filter_correlation", "layer_connectivity", "layer_correlation", "machine_ceilings",
    "median_seconds", "plot_profile", "profile_layers", "profile_model", "render_connectivity",
    "standard_layouts", "write_report",
]
