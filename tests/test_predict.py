"""`groupconv predict`: a trained run on image files gives what the model gives on the dataset's own inputs."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from groupconv.cli import main
from groupconv.data import DatasetError, load_dataset
from groupconv.train import CheckpointError, ConfigError, load_run
from groupconv.train.checkpoint import checkpoint_bytes, load_checkpoint, write_atomically
from groupconv.train.prediction import predict_images

from .test_data import write_image_folder
from .test_train import run_cli, tiny_options


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained for one epoch on a tiny RGB ImageFolder tree, and that tree."""
    root = tmp_path_factory.mktemp("predict")
    data_dir = write_image_folder(root / "bars", train_per_class=6, test_per_class=3, size=10, mode="RGB")
    assert main(["train", *map(str, tiny_options(data_dir, root / "run", epochs=1))]) == 0
    return root / "run", data_dir


def test_predictions_equal_the_model_on_the_datasets_inputs(trained):
    run_dir, data_dir = trained
    data = load_dataset("folder", data_dir)
    files = [data_dir / "test" / name / f"{i}.png" for name in data.class_names for i in range(3)]
    results = predict_images(run_dir, files, top=3, batch_size=4)  # batches of 4, 4 and 1

    model, _ = load_run(run_dir)
    with torch.no_grad():
        expected = torch.softmax(model(data.test.tensors[0]), dim=1)
    assert [r["image"] for r in results] == [str(f) for f in files]
    for result, probabilities in zip(results, expected):
        best = probabilities.topk(3)
        assert [p["index"] for p in result["predictions"]] == best.indices.tolist()
        assert [p["class"] for p in result["predictions"]] == [data.class_names[i] for i in best.indices]
        assert [p["probability"] for p in result["predictions"]] == pytest.approx(best.values.tolist(), abs=1e-5)


def test_a_directory_stands_for_its_images_and_other_sizes_are_resized(trained, tmp_path):
    run_dir, data_dir = trained
    folder = data_dir / "test" / "b"
    big = tmp_path / "big.png"  # the same picture at twice the size, resized back by predict
    with Image.open(folder / "0.png") as image:
        image.resize((20, 20), Image.NEAREST).save(big)
    results = predict_images(run_dir, [folder, big], top=1)
    assert [r["image"] for r in results] == [str(folder / f"{i}.png") for i in range(3)] + [str(big)]
    assert results[-1]["predictions"][0]["index"] == results[0]["predictions"][0]["index"]


def test_a_checkpoint_without_recorded_statistics_gets_them_from_its_dataset(trained, tmp_path):
    run_dir, data_dir = trained
    model_state, training_state, info = load_checkpoint(run_dir / "best.safetensors")
    assert set(info["normalisation"]) == {"mean", "std"} and len(info["normalisation"]["mean"]) == 3
    del info["normalisation"]
    older = tmp_path / "older.safetensors"
    write_atomically(older, checkpoint_bytes(model_state, training_state, info))
    files = [data_dir / "test" / "a" / "0.png", data_dir / "test" / "c" / "2.png"]
    assert predict_images(older, files) == predict_images(run_dir, files)


def test_the_command_prints_a_line_per_image_and_writes_json(trained, tmp_path, capsys):
    run_dir, data_dir = trained
    out = tmp_path / "predictions.json"
    code, printed, _ = run_cli(["predict", run_dir, data_dir / "test" / "c", "--top", "2", "--json", out], capsys)
    assert code == 0
    lines = printed.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith(str(data_dir / "test" / "c")) for line in lines)
    written = json.loads(out.read_text())
    assert len(written) == 3 and all(len(r["predictions"]) == 2 for r in written)
    assert all(f"{p['class']} {p['probability']:.1%}" in line for r, line in zip(written, lines)
               for p in r["predictions"])


@pytest.mark.parametrize("images, options, error, message", [
    (["missing.png"], {}, DatasetError, "missing.png does not exist"),
    ([], {}, DatasetError, "no images given"),
    (["test/a/0.png"], {"top": 0}, ConfigError, "--top=0"),
    (["test/a/0.png"], {"batch_size": 1.5}, ConfigError, "--batch-size=1.5"),
])
def test_bad_arguments_are_named(trained, images, options, error, message):
    run_dir, data_dir = trained
    with pytest.raises(error, match=message):
        predict_images(run_dir, [data_dir / i for i in images], **options)


def test_a_directory_without_images_and_a_missing_run_are_errors(trained, tmp_path, capsys):
    run_dir, _ = trained
    with pytest.raises(DatasetError, match="holds no image files"):
        predict_images(run_dir, [tmp_path])
    with pytest.raises(CheckpointError, match="does not exist"):
        predict_images(tmp_path / "no-run", [tmp_path])
    code, _, err = run_cli(["predict", tmp_path / "no-run", tmp_path], capsys)
    assert code == 2 and "groupconv predict: error:" in err and "Traceback" not in err
