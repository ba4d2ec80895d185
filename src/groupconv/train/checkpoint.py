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


MAX_DEPTH = 32  # the training state is a few levels deep; a crafted file must not exhaust the stack


class _Malformed(ValueError):
    """What is wrong inside a checkpoint's header; load_checkpoint adds the file's name."""


def _stored_tensor(key, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    if not isinstance(key, str) or not key.startswith(STATE_PREFIX) or key not in tensors:
        raise _Malformed(f"its training state refers to a tensor {key!r} that is not in the file")
    return tensors[key]


def _unpack(value, tensors: dict[str, torch.Tensor], depth: int = 0):
    """The inverse of _pack; anything _pack cannot have written is _Malformed."""
    if depth > MAX_DEPTH:
        raise _Malformed(f"its training state is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, list):
        return [_unpack(v, tensors, depth + 1) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return _stored_tensor(value["__tensor__"], tensors)
        if "__ndarray__" in value:
            tensor = _stored_tensor(value["__ndarray__"], tensors)
            try:
                dtype = np.dtype(value.get("dtype"))
                if dtype.kind not in "biuf" or tensor.dtype == torch.bfloat16:
                    raise TypeError(f"dtype {dtype}")
                return tensor.numpy().astype(dtype)
            except (TypeError, ValueError) as error:
                raise _Malformed(f"an array of its training state has an unusable type ({error})") from None
        if isinstance(value.get("__tuple__"), list):
            return tuple(_unpack(v, tensors, depth + 1) for v in value["__tuple__"])
        if isinstance(value.get("__dict__"), list) and all(isinstance(item, list) and len(item) == 2
                                                          for item in value["__dict__"]):
            items = [(_unpack(k, tensors, depth + 1), _unpack(v, tensors, depth + 1)) for k, v in value["__dict__"]]
            if not all(k is None or isinstance(k, (bool, int, float, str)) for k, _ in items):
                raise _Malformed("a key of its training state is not a number or a string")
            return dict(items)
        raise _Malformed(f"its training state holds an object of unknown kind (keys {sorted(value)[:4]})")
    return value  # JSON's scalars: None, bool, int, float, str


# The fields of a checkpoint's info that are read back, with their JSON types (when present).
INFO_TYPES = {"model": str, "num_classes": int, "in_chans": int, "input_shape": list, "dataset": str,
              "class_names": list, "config": dict, "normalisation": dict}
_JSON_NAMES = {str: "string", int: "integer", list: "array", dict: "object"}


def _check_info(info) -> dict:
    if not isinstance(info, dict):
        raise _Malformed("its info is not a JSON object")
    for key, kind in INFO_TYPES.items():
        if key in info and (not isinstance(info[key], kind) or isinstance(info[key], bool)):
            raise _Malformed(f"its info field {key!r} is {info[key]!r}, not a JSON {_JSON_NAMES[kind]}")
    for key in ("num_classes", "in_chans"):
        if key in info and info[key] < 1:
            raise _Malformed(f"its info field {key!r} is {info[key]}, not a positive integer")
    shape = info.get("input_shape", [1, 1])
    if not 2 <= len(shape) <= 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise _Malformed(f"its info field 'input_shape' is {shape!r}, not 2 or 3 positive integers")
    return info


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
        metadata = json.loads(data[8:8 + header_length]).get("__metadata__") or {}
        if metadata.get("format") != FORMAT_VERSION:
            raise _Malformed(f"its format is {metadata.get('format')!r}, not {FORMAT_VERSION!r}")
        info, tree = _check_info(json.loads(metadata["info"])), json.loads(metadata["state"])
        state = _unpack(tree, tensors)
    except KeyError as error:
        raise CheckpointError(f"{path} is not a groupconv checkpoint (no {error} in its header)") from None
    except RecursionError:
        raise CheckpointError(f"{path} is not a groupconv checkpoint (its header is nested too deeply)") from None
    except (SafetensorError, ValueError, UnicodeDecodeError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path} is not a groupconv checkpoint ({error})") from None
    model_state = {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    return model_state, state, info


def load_model_weights(model: torch.nn.Module, model_state: dict[str, torch.Tensor], info: dict,
                       path: Path | str) -> None:
    """Load weights, with an error that names the model and class count the checkpoint was made for."""
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - model_state.keys()), sorted(model_state.keys() - expected.keys())
    common = sorted(expected.keys() & model_state.keys())
    misshapen = [k for k in common if model_state[k].shape != expected[k].shape]
    mistyped = [k for k in common if model_state[k].is_floating_point() != expected[k].is_floating_point()]
    problems = [f"{what} {names[0]}" + (f" and {len(names) - 1} more" if len(names) > 1 else "")
                for what, names in (("no tensor", missing), ("an unknown tensor", unexpected),
                                    ("another shape for", misshapen), ("another kind of number for", mistyped))
                if names]
    if problems:
        made_for = f"model {info.get('model')!r} with {info.get('num_classes')} classes"
        raise CheckpointError(f"checkpoint {path} was made for {made_for} and does not fit this model "
                              f"({'; '.join(problems)})")
    model.load_state_dict(model_state, strict=True)
