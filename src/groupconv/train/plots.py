"""PNG plots of a run (loss and accuracy per epoch) and of an evaluation (confusion matrix), with matplotlib's Agg."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and no window popping up in the middle of training
    import matplotlib.pyplot as plt

    return plt


def plot_history(run_dir: Path, history: list[dict]) -> None:
    """loss.png and accuracy.png: train and test curves against the epoch."""
    plt = pyplot()
    epochs = [row["epoch"] for row in history]
    for name, label in (("loss", "cross-entropy loss"), ("accuracy", "accuracy")):
        figure, axes = plt.subplots(figsize=(5, 3.5))
        for split in ("train", "test"):
            axes.plot(epochs, [row[f"{split}_{name}"] for row in history], marker="o", markersize=3, label=split)
        axes.set_xlabel("epoch")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        figure.savefig(run_dir / f"{name}.png", dpi=100)
        plt.close(figure)


def plot_confusion_matrix(path: Path, matrix: np.ndarray, class_names: list[str], title: str) -> None:
    """Rows are true classes, columns predictions; counts written in the cells when there are few classes."""
    plt = pyplot()
    classes = len(matrix)
    size = min(3 + 0.45 * classes, 16)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="Blues")
    if classes <= 20:
        for true_class in range(classes):
            for predicted in range(classes):
                count = matrix[true_class, predicted]
                colour = "white" if count > matrix.max() / 2 else "black"
                axes.text(predicted, true_class, str(count), ha="center", va="center", color=colour, fontsize=8)
        axes.set_xticks(range(classes), class_names, rotation=90)
        axes.set_yticks(range(classes), class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def format_confusion_matrix(matrix: np.ndarray, class_names: list[str]) -> str:
    width = max(max(len(n) for n in class_names), len(str(matrix.max()))) + 1
    lines = [" " * width + " predicted ->", " " * width + "".join(f"{n:>{width}}" for n in class_names)]
    lines += [f"{name:>{width}}" + "".join(f"{c:>{width}}" for c in row) for name, row in zip(class_names, matrix)]
    return "\n".join(lines)
