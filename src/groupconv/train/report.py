"""The HTML report of a training run: its model, metrics and test data, handed to groupconv.analysis.write_report."""

from __future__ import annotations

from pathlib import Path

from ..analysis import MachineCeilings, write_report
from ..analysis.report import read_metrics_csv
from ..analysis.sample_data import dataset_batches
from .evaluation import load_run
from .run_directory import CONFIG_FILE


def load_run_with_data(run_dir, which: str = "best", batch_size: int = 64, batches: int = 4):
    """(model, config, test batches) of a groupconv.train run directory (config.json + checkpoint)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run_dir={str(run_dir)!r} is not a directory")
    if not (run_dir / CONFIG_FILE).is_file():
        raise ValueError(f"run_dir={str(run_dir)!r} has no {CONFIG_FILE}: is it a groupconv training run?")
    model, config = load_run(run_dir, which=which)
    image_size = getattr(config, "image_size", None) or None
    data, _ = dataset_batches(config.dataset, batch_size, batches, image_size, getattr(config, "data_dir", None))
    return model, config, data


def report_run(run_dir, which: str = "best", batch_size: int = 64, batches: int = 4,
               ceilings: MachineCeilings | None = None, whiten: bool = True) -> Path:
    """write_report for a run directory of groupconv.train: its checkpoint, metrics.csv and test split."""
    model, config, data = load_run_with_data(run_dir, which, batch_size, batches)
    metrics_path = Path(run_dir) / "metrics.csv"
    rows = read_metrics_csv(metrics_path) if metrics_path.is_file() else []
    return write_report(run_dir, model, rows, data, config.model, (1, *data[0].shape[1:]), ceilings, whiten)
