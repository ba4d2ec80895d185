"""`groupconv predict`: a trained run's model on image files, the inference side of `groupconv train`.

Each file is read as the run's training images were: grey or RGB as the model's input channels, pixels scaled to
0..1, resized (bilinear) to the run's input size, then normalised with the statistics of the run's training split,
which the checkpoint records (a run from before they were recorded has them recomputed from its dataset). So the
files must look like the training data: for scikit-learn's digits, bright strokes on a dark background. The model
runs through groupconv.inference.optimize_for_inference, prepared once for the batch size used.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data import IMAGE_SUFFIXES, DatasetError, Normalisation, load_dataset, read_image
from ..data.base import resize_images
from ..inference import optimize_for_inference
from .config import ConfigError, TrainConfig
from .evaluation import load_run_with_info

CHANNEL_MODES = {1: "L", 3: "RGB"}


def image_files(paths) -> list[Path]:
    """The image files named, a directory standing for the image files directly inside it (sorted)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise DatasetError(f"directory {path} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files += inside
        elif path.is_file():
            files.append(path)
        else:
            raise DatasetError(f"image {path} does not exist")
    if not files:
        raise DatasetError("no images given")
    return files


def run_normalisation(info: dict, config: TrainConfig) -> Normalisation:
    """The normalisation the run's training images had: recorded in its checkpoint, or recomputed from its dataset."""
    recorded = info.get("normalisation")
    if recorded is None:
        data = load_dataset(config.dataset, config.data_dir, config.image_size)
        if data.normalisation is None:
            raise ConfigError(f"the run was trained on {config.dataset}, whose inputs are not images")
        return data.normalisation
    try:
        return Normalisation(tuple(map(float, recorded["mean"])), tuple(map(float, recorded["std"])))
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"the checkpoint's normalisation {recorded!r} is malformed ({error})") from None


def load_images(files: list[Path], info: dict, normalisation: Normalisation) -> torch.Tensor:
    """The files as the model's inputs (N, C, H, W): read, scaled to 0..1, resized each, normalised."""
    input_shape = tuple(info["input_shape"])
    mode = CHANNEL_MODES.get(input_shape[0])
    if len(input_shape) != 3 or mode is None:
        raise ConfigError(f"the run's model takes inputs of shape {input_shape}, not grey or RGB images")
    images = []
    for path in files:
        pixels = read_image(path, mode)
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        image = torch.tensor(pixels, dtype=torch.float32).div_(255.0)[None]
        images.append(resize_images(image, input_shape[1:]))
    return normalisation.apply(torch.cat(images))


def predict_images(run_dir, paths, which: str = "best", top: int = 5, batch_size: int = 64) -> list[dict]:
    """For each image file (in the order given, directories expanded): its `top` most probable classes, most
    probable first, as {"image": path, "predictions": [{"class": name, "index": i, "probability": p}, ...]}."""
    for name, value in (("top", top), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"--{name.replace('_', '-')}={value!r} must be a positive integer")
    model, config, info = load_run_with_info(run_dir, which)
    files = image_files(paths)
    inputs = load_images(files, info, run_normalisation(info, config))
    class_names = info.get("class_names") or [str(i) for i in range(info["num_classes"])]
    top = min(top, len(class_names))
    prepared = optimize_for_inference(model, inputs[:batch_size])
    probabilities = torch.cat([torch.softmax(prepared(batch).float(), dim=1) for batch in inputs.split(batch_size)])
    best = probabilities.topk(top, dim=1)
    return [{"image": str(path), "predictions": [{"class": class_names[i], "index": i, "probability": p}
                                                 for p, i in zip(values.tolist(), indices.tolist())]}
            for path, values, indices in zip(files, best.values, best.indices)]


def format_predictions(results: list[dict]) -> str:
    """One line per image: its path, then its classes with their probabilities, most probable first."""
    width = max(len(result["image"]) for result in results)
    return "\n".join(f"{result['image']:<{width}}  " + "  ".join(
        f"{p['class']} {p['probability']:.1%}" for p in result["predictions"]) for result in results)


def write_predictions(path: str | Path, results: list[dict]) -> None:
    try:
        Path(path).write_text(json.dumps(results, indent=1) + "\n")
    except OSError as error:
        raise ConfigError(f"cannot write the predictions to {path} ({error.strerror or error})") from None
