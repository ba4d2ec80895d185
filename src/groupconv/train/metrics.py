"""Per-epoch metrics: accumulation during an epoch, and the CSV, JSON and PNG files of a run directory."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .checkpoint import write_atomically

COLUMNS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "seconds",
           "images_per_second")
TIMING_COLUMNS = ("seconds", "images_per_second")  # the columns that differ between identical runs


@dataclass
class Totals:
    """Running sums over the samples seen so far; saved in checkpoints so an interrupted epoch resumes exactly."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0

    def add(self, loss_sum: float, correct: int, count: int) -> None:
        self.loss_sum += loss_sum
        self.correct += correct
        self.count += count

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.count, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.count, 1)

    def as_dict(self) -> dict:
        return asdict(self)


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """metrics.csv and metrics.json, one row per completed epoch."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_atomically(run_dir / "metrics.csv", text.getvalue().encode())
    write_atomically(run_dir / "metrics.json", (json.dumps(history, indent=1) + "\n").encode())


def read_metrics(run_dir: Path) -> list[dict]:
    return json.loads((Path(run_dir) / "metrics.json").read_text())
