"""A report per training run: one HTML page with the PNGs beside it (RUN_DIR/report/).

Sections: the training curves (from metrics.csv), the per-layer cost table of the trained model,
the ZCA-whitened correlation between two adjacent layers ("Deep Roots"), the correlation between
the filters of the grouped layer, its channel connections, and the first layer's filters
coloured by group.

`write_report` takes the pieces (model, metrics rows, data batches); groupconv.train.report_run
reads them from a run directory (analysis sits below train, so it never loads a run itself).
"""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path

import torch

from .correlation import default_pair, filter_correlation, layer_correlation
from .drawings import draw_filters, draw_layer_connections, new_figure, save_figure
from .layers import analyze_layers
from .modules import conv_layers
from .roofline import MachineCeilings, machine_ceilings
from .tables import shape_text, si

REPORT_FOLDER = "report"


def read_metrics_csv(path) -> list[dict]:
    """The rows of a metrics.csv as dicts of floats (ints for the epoch); empty cells become None."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"metrics file {str(path)!r} does not exist")
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    parsed = []
    for number, row in enumerate(rows, start=2):
        values = {}
        for key, text in row.items():
            if text in ("", None):
                values[key] = None
                continue
            try:
                values[key] = float(text)
            except ValueError:
                values[key] = text  # a non-numeric column (a timestamp): kept as text, not plotted
        if not isinstance(values.get("epoch"), float):
            raise ValueError(f"{path}: line {number} has no numeric 'epoch' column")
        values["epoch"] = int(values["epoch"])
        parsed.append(values)
    return parsed


def plot_curves(rows: list[dict], path, width_pixels: int = 1100, height_pixels: int = 420) -> tuple[int, int]:
    """Loss (left) and accuracy (right) against the epoch, train and test; returns the PNG's size."""
    if not rows:
        raise ValueError("metrics rows are empty: the run has no completed epoch to plot")
    figure = new_figure(width_pixels, height_pixels)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    epochs = [row["epoch"] for row in rows]
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        for split, style in (("train", "-o"), ("test", "-s")):
            key = f"{split}_{metric}"
            values = [row.get(key) for row in rows]
            if any(isinstance(v, float) and math.isfinite(v) for v in values):
                axes.plot(epochs, [v if isinstance(v, float) else float("nan") for v in values], style,
                          markersize=3, label=split)
        axes.set(xlabel="epoch", ylabel=metric, title=metric)
        axes.grid(True, alpha=0.3)
        if axes.lines:
            axes.legend()
        else:
            axes.text(0.5, 0.5, f"no {metric} recorded", ha="center", va="center", transform=axes.transAxes)
    save_figure(figure, path)
    return width_pixels, height_pixels


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "n/a"


def _image(name: str, caption: str) -> str:
    return (f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _cost_table_html(table) -> str:
    headers = ("layer", "type", "input", "output", "kernel", "groups", "params", "MACs", "traffic bytes",
               "FLOP/byte", "roofline us")
    lines = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in headers) + "</tr>"]
    for row in table.rows:
        if row.kind not in ("conv", "linear"):
            continue
        cells = (row.label, row.type, shape_text(row.input_shape), shape_text(row.output_shape),
                 shape_text(row.kernel_size), row.groups or "", f"{row.parameters:,}", f"{row.multiply_adds:,}",
                 f"{row.traffic_bytes:,}", f"{row.arithmetic_intensity:.1f}", f"{row.roofline_seconds * 1e6:.1f}")
        lines.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


_STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
td:first-child,td:nth-child(2),th{text-align:left}img{max-width:100%}figcaption{font-size:13px;color:#444}"""


def write_report(run_dir, model: torch.nn.Module, metrics_rows: list[dict], data, model_name: str,
                 input_shape, ceilings: MachineCeilings | None = None, whiten: bool = True) -> Path:
    """Write RUN_DIR/report/report.html and its PNGs; returns the HTML's path.

    `data`: an iterable of input batches (or (input, target) pairs) for the correlation maps.
    `input_shape`: one sample's shape with the batch, e.g. (1, 3, 16, 16), for the cost table.
    Sections whose layers the model lacks (no grouped pair, no conv) say so instead of a picture.
    """
    folder = Path(run_dir) / REPORT_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    ceilings = ceilings if ceilings is not None else machine_ceilings()
    data = list(data)
    sections = [f"<h1>{html.escape(model_name)}: run report</h1>",
                f"<p>Run directory: {html.escape(str(Path(run_dir).resolve()))}</p>"]

    if metrics_rows:
        plot_curves(metrics_rows, folder / "curves.png")
        last = metrics_rows[-1]
        scored = [row for row in metrics_rows if isinstance(row.get("test_accuracy"), float)]
        best = max(scored, key=lambda row: row["test_accuracy"]) if scored else None
        summary = (f"last test accuracy {_number(last.get('test_accuracy'))}, best {best['test_accuracy']:.4g} "
                   f"(epoch {best['epoch']})" if best else "no test accuracy recorded")
        sections += ["<h2>Training curves</h2>", _image("curves.png", "loss and accuracy per epoch"),
                     f"<p>{len(metrics_rows)} epochs; {summary}.</p>"]
    else:
        sections += ["<h2>Training curves</h2>", "<p>No completed epoch in metrics.csv.</p>"]

    costs = analyze_layers(model, tuple(input_shape), ceilings, model_name=model_name)
    costs.write_csv(folder / "cost.csv")
    totals = costs.totals()
    sections += ["<h2>Cost per layer (one sample)</h2>",
                 f"<p>input {shape_text(costs.input_shape)}; parameters {totals['parameters']:,}; "
                 f"{totals['multiply_adds']:,} multiply-adds (MACs; FLOPs = 2 x MACs); traffic "
                 f"{si(totals['traffic_bytes'])}B; roofline {totals['roofline_seconds'] * 1e3:.3f} ms "
                 f"({html.escape(ceilings.source)}). Conv and linear layers below; every layer in "
                 f'<a href="cost.csv">cost.csv</a>.</p>', _cost_table_html(costs)]

    sections.append("<h2>What the groups learn</h2>")
    try:
        pair = default_pair(model, tuple(input_shape), model_name)
    except ValueError as error:
        sections.append(f"<p>No correlation map: {html.escape(str(error))}</p>")
        pair = None
    if pair is not None:
        correlation = layer_correlation(model, data, pair.first, pair.second, whiten=whiten,
                                        match_spatial=not pair.same_spatial_size)
        correlation.draw(folder / "correlation.png")
        filters = filter_correlation(model, pair.second)
        filters.draw(folder / "filter_correlation.png")
        draw_layer_connections(dict(model.named_modules())[pair.second], folder / "connections.png", pair.second)
        (folder / "correlation.json").write_text(json.dumps(correlation.to_dict(), indent=1) + "\n")
        sections += [f"<p>{html.escape(correlation.summary())}</p>",
                     _image("correlation.png", f"correlation between {pair.first} and {pair.second}"),
                     f"<p>{html.escape(filters.summary())}</p>",
                     _image("filter_correlation.png", f"filter correlation of {pair.second}"),
                     _image("connections.png", f"channel connections of {pair.second}")]
    if conv_layers(model):
        draw_filters(model, folder / "filters.png")
        sections += ["<h2>First-layer filters</h2>", _image("filters.png", "first conv layer's filters by group")]

    page = folder / "report.html"
    page.write_text("<!doctype html>\n<html><head><meta charset='utf-8'><title>"
                    f"{html.escape(model_name)} report</title><style>{_STYLE}</style></head><body>\n"
                    + "\n".join(sections) + "\n</body></html>\n")
    return page
