"""The run report (groupconv.analysis.report) and `groupconv report`, on a run directory laid out as
groupconv.train writes one: config.json, metrics.csv, best.safetensors."""

import csv
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from groupconv.analysis import MachineCeilings, write_report
from groupconv.analysis.report import read_metrics_csv
from groupconv.cli import main
from groupconv.models import create_model

CEILINGS = MachineCeilings(500.0, 50.0, "test ceilings")
MODEL = "shufflenet_g3_wd4"
MODEL_KWARGS = dict(num_classes=10, in_chans=1, small_input=True)
METRICS = [dict(epoch=e, train_loss=2.3 / e, train_accuracy=0.2 * e, test_loss=2.4 / e, test_accuracy=0.18 * e)
           for e in range(1, 5)]


@pytest.fixture(autouse=True)
def quick_kernels(monkeypatch):
    """One thread and no backend tuning: the report's content does not depend on which kernel runs, and a
    shared machine runs tiny models fastest on one thread."""
    monkeypatch.setenv("GROUPCONV_TUNE", "0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_run_directory(path):
    path.mkdir()
    torch.manual_seed(0)
    model = create_model(MODEL, **MODEL_KWARGS)
    save_file(model.state_dict(), path / "best.safetensors")
    (path / "config.json").write_text(json.dumps({"model": MODEL, "dataset": "digits", "image_size": 32}))
    with open(path / "metrics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(METRICS[0]))
        writer.writeheader()
        writer.writerows(METRICS)
    return model


def assert_report(page):
    text = page.read_text()
    images = re.findall(r'<img src="([^"]+)"', text)
    assert {"curves.png", "correlation.png", "filter_correlation.png", "connections.png", "filters.png"} <= set(images)
    for name in images:
        image = Image.open(page.parent / name)
        assert image.size[0] >= 300 and image.size[1] >= 300
        assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 10
    assert "multiply-adds (MACs; FLOPs = 2 x MACs)" in text
    assert "of the energy in the group-diagonal blocks" in text
    assert (page.parent / "cost.csv").is_file()
    return text


def test_metrics_csv_is_read_back(tmp_path):
    make_run_directory(tmp_path / "run")
    rows = read_metrics_csv(tmp_path / "run" / "metrics.csv")
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    assert rows[1]["test_accuracy"] == pytest.approx(0.36)
    with pytest.raises(ValueError, match="does not exist"):
        read_metrics_csv(tmp_path / "missing.csv")


def test_write_report_from_model_metrics_and_data(tmp_path):
    saved = make_run_directory(tmp_path / "run")
    model = create_model(MODEL, **MODEL_KWARGS)
    model.load_state_dict(load_file(tmp_path / "run" / "best.safetensors"))
    data = [torch.randn(4, 1, 16, 16)]
    page = write_report(tmp_path / "run", model, read_metrics_csv(tmp_path / "run" / "metrics.csv"), data, MODEL,
                        (1, 1, 16, 16), CEILINGS)
    assert page == tmp_path / "run" / "report" / "report.html"
    text = assert_report(page)
    assert "4 epochs; last test accuracy 0.72, best 0.72 (epoch 4)" in text
    assert f"parameters {sum(p.numel() for p in saved.parameters()):,}" in text


def test_cli_report_on_a_real_training_run(tmp_path, capsys):
    from groupconv.train import resolve_config, train

    train(resolve_config({"model": "grouped_cnn1d_mnist1d", "dataset": "mnist1d", "epochs": 1, "batch_size": 256,
                          "output": str(tmp_path / "run"), "progress": False, "device": "cpu", "threads": 1}))
    capsys.readouterr()
    code = main(["report", str(tmp_path / "run"), "--batch-size", "32", "--batches", "2",
                 "--peak-gflops", "500", "--bandwidth-gbs", "50"])
    out = capsys.readouterr().out
    assert code == 0, out
    text = assert_report(tmp_path / "run" / "report" / "report.html")
    assert "grouped_cnn1d_mnist1d: run report" in text and "1 epochs; last test accuracy" in text


@pytest.mark.parametrize("setup, message", [
    (lambda path: None, "is not a directory"),
    (lambda path: path.mkdir(), "has no config.json"),
    (lambda path: make_run_directory(path), "is not a groupconv checkpoint"),  # bare weights, no training state
])
def test_cli_report_bad_run_directory(setup, message, tmp_path, capsys):
    setup(tmp_path / "run")
    assert main(["report", str(tmp_path / "run"), "--peak-gflops", "1", "--bandwidth-gbs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("groupconv report: error: ") and message in err, err


def test_report_of_a_model_without_grouped_layers_says_so(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 10))
    page = write_report(tmp_path / "run", model, [], [torch.randn(2, 3, 8, 8)], "dense", (1, 3, 8, 8), CEILINGS)
    text = page.read_text()
    assert "No completed epoch in metrics.csv" in text
    assert "No correlation map: dense has no two adjacent conv layers whose second one is grouped" in text
    assert Image.open(page.parent / "filters.png").size == (900, 700)
    assert not (page.parent / "correlation.png").exists()
