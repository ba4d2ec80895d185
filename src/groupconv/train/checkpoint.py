"""Checkpoints: one safetensors file holding the weights and the whole training state, written atomically.

Why one file: the weights, optimizer, scheduler, RNG states and metric history must always
match each other; a single file replaced with os.replace is either the old checkpoint or the
new one, whatever moment the process dies at. Why safetensors only: loading reads tensors and
a JSON header, nothing in it can execute code (unlike a pickle). Model weights are stored under
"model.<name>" keys, the rest of the state as tensors under "state.<n>" plus a JSON tree in the
metadata that refers to them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

FORMAT_VERSION = "1"
MODEL_PREFIX = "model."
STATE_PREFIX = "state."


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, corrupt, from another model): reported as `error: ...`."""


def _pack(value, tensors: dict[str, torch.Tensor]):
    """Replace every tensor in a tree of dicts/lists/tuples/scalars by a reference, collecting the tensors."""
    if isinstance(value, torch.Tensor):
        key = f"{STATE_PREFIX}{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        key = f"{STATE_PREFIX}{len(tensors)}"
        tensors[key] = torch.from_numpy(value.astype(np.int64) if value.dtype == np.uint32 else value.copy())
        return {"__ndarray__": key, "dtype": str(value.dtype)}
    if isinstance(value, dict):
        # JSON keys are strings; optimizer state is keyed by int, so keep the key's type.
        return {"__dict__": [[_pack(k, tensors), _pack(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_pack(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_pack(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")


def _unpack(value, tensors: dict[str, torch.Tensor]):
    if isinstance(value, list):
        return [_unpack(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return tensors[value["__ndarray__"]].numpy().astype(value["dtype"])
        if "__tuple__" in value:
            return tuple(_unpack(v, tensors) for v in value["__tuple__"])
        if "__dict__" in value:
            return {_unpack(k, tensors): _unpack(v, tensors) for k, v in value["__dict__"]}
    return value


def checkpoint_bytes(model_state: dict[str, torch.Tensor], training_state: dict, info: dict) -> bytes:
    """Serialise; `info` (model name, classes, config...) goes into the header, readable without the tensors."""
    tensors = {MODEL_PREFIX + k: v.detach().cpu().contiguous() for k, v in model_state.items()}
    tree = _pack(training_state, tensors)
    metadata = {"format": FORMAT_VERSION, "info": json.dumps(info), "state": json.dumps(tree)}
    return save_safetensors(tensors, metadata=metadata)


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync it, rename it over `path`, fsync the directory."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def save_checkpoint(path: Path, model_state: dict[str, torch.Tensor], training_state: dict, info: dict) -> None:
    write_atomically(path, checkpoint_bytes(model_state, training_state, info))


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(model state_dict, training state, info) of a checkpoint file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path} ({error.strerror or error})") from None
    try:
        tensors = load_safetensors(data)
        header_length = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + header_length]).get("__metadata__", {})
        info, tree = json.loads(metadata["info"]), json.loads(metadata["state"])
    except (SafetensorError, KeyError, ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not a groupconv checkpoint ({error})") from None
    model_state = {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    return model_state, _unpack(tree, tensors), info


def load_model_weights(model: torch.nn.Module, model_state: dict[str, torch.Tensor], info: dict,
                       path: Path | str) -> None:
    """Load weights, with an error that names the model and class count the checkpoint was made for."""
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as error:
        made_for = f"model {info.get('model')!r} with {info.get('num_classes')} classes"
        first_line = str(error).splitlines()[0]
        raise CheckpointError(f"checkpoint {path} was made for {made_for} and does not fit this model "
                              f"({first_line} ...)") from None
