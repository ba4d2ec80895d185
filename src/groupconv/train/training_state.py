"""Restoring the training state of a checkpoint (`train --resume`), refusing one that does not fit.

A checkpoint file is data from outside: it may be damaged, from another version, or made by hand.
Everything in it is checked before training starts against what this run built (the optimizer's
and the scheduler's own state, the model's parameters), so that a file that loads but does not fit
is one CheckpointError here, not a TypeError or a shape mismatch at the first optimizer step.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .metrics import COLUMNS, Totals


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _mismatch(value, template, where: str) -> str | None:
    """Where `value` differs in structure or type from `template` (a state_dict of the same kind), or None.

    Keys only one side has are left alone: torch adds keys between versions, and load_state_dict
    keeps this run's value for a key the file lacks.
    """
    if isinstance(template, bool) or template is None:
        ok = value is None or isinstance(value, bool)
    elif _is_number(template):
        ok = _is_number(value) and math.isfinite(value)
    elif isinstance(template, str):
        ok = isinstance(value, str)
    elif isinstance(template, torch.Tensor):
        ok = isinstance(value, torch.Tensor) and value.shape == template.shape and value.dtype == template.dtype
    elif isinstance(template, (list, tuple)):
        if not isinstance(value, (list, tuple)) or len(value) != len(template):
            return where
        return next((m for i, (v, t) in enumerate(zip(value, template))
                     if (m := _mismatch(v, t, f"{where}[{i}]"))), None)
    elif isinstance(template, dict):
        if not isinstance(value, dict):
            return where
        return next((m for key in template.keys() & value.keys()
                     if (m := _mismatch(value[key], template[key], f"{where}[{key!r}]"))), None)
    else:
        ok = True
    return None if ok else where


def check_training_state(state, path: Path) -> None:
    """CheckpointError unless the loop's own fields (position, running sums, history) have their types."""
    def refuse(what: str):
        raise CheckpointError(f"cannot continue from {path}: its training state has {what}")

    if not isinstance(state, dict):
        refuse("no fields")
    missing = sorted({"epoch", "step", "totals", "history", "best_accuracy", "optimizer", "scheduler", "rng"}
                     - set(state))
    if missing:
        refuse(f"no {', '.join(missing)}")
    for name in ("epoch", "step"):
        if not _is_count(state[name]):
            refuse(f"{name}={state[name]!r}, not a count")
    totals = state["totals"]
    if (not isinstance(totals, dict) or set(totals) != set(Totals().as_dict()) or not _is_number(totals["loss_sum"])
            or not _is_count(totals["correct"]) or not _is_count(totals["count"])):
        refuse(f"running sums {totals!r}, not the numbers {', '.join(Totals().as_dict())}")
    history = state["history"]
    if not isinstance(history, list) or not all(
            isinstance(row, dict) and list(row) == list(COLUMNS) and all(map(_is_number, row.values()))
            for row in history):
        refuse(f"a metric history that is not a list of rows of {', '.join(COLUMNS)}")
    if not _is_number(state["best_accuracy"]):
        refuse(f"best_accuracy={state['best_accuracy']!r}, not a number")


def restore_optimizer_and_scheduler(optimizer: torch.optim.Optimizer, scheduler, state: dict, path: Path,
                                    optimizer_name: str, saved_optimizer_name) -> None:
    """Load the saved optimizer and scheduler states into this run's, after checking they fit them.

    saved_optimizer_name: the --optimizer the checkpoint was made with (its info's config), if recorded.
    """
    def refuse(what: str):
        raise CheckpointError(f"cannot continue {path} with --optimizer={optimizer_name}: its training state does "
                              f"not fit ({what})")

    if saved_optimizer_name is not None and saved_optimizer_name != optimizer_name:
        refuse(f"it was made with --optimizer={saved_optimizer_name}")
    saved_optimizer, saved_scheduler = state["optimizer"], state["scheduler"]
    own = optimizer.state_dict()
    if not isinstance(saved_optimizer, dict) or not isinstance(saved_optimizer.get("state"), dict):
        refuse("the optimizer state is not a dictionary of per-parameter states")
    where = (_mismatch(saved_optimizer.get("param_groups"), own["param_groups"], "param_groups")
             or _mismatch(saved_scheduler, scheduler.state_dict(), "scheduler"))
    if where:
        refuse(f"{where} differs in type or length from this run's")
    if [group["params"] for group in saved_optimizer["param_groups"]] != [g["params"] for g in own["param_groups"]]:
        refuse("its parameter groups hold other parameters")
    for name in ("last_epoch", "_step_count"):
        if name in saved_scheduler and not _is_count(saved_scheduler[name]):
            refuse(f"the scheduler's {name}={saved_scheduler[name]!r} is not a count")
    try:
        optimizer.load_state_dict(saved_optimizer)
        scheduler.load_state_dict(saved_scheduler)
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        refuse(str(error).splitlines()[0] if str(error) else type(error).__name__)
    # Per-parameter buffers (momentum, Adam's moments and step) are used at the first step: check them now.
    for parameter, buffers in optimizer.state.items():
        if not isinstance(parameter, torch.Tensor) or not isinstance(buffers, dict):
            refuse("the optimizer state names a parameter this model does not have")
        for name, buffer in buffers.items():
            if buffer is None and name == "momentum_buffer":
                continue
            shape_fits = isinstance(buffer, torch.Tensor) and (
                buffer.shape == parameter.shape or (name == "step" and buffer.numel() == 1))
            if not shape_fits or not buffer.is_floating_point():
                described = (f"{tuple(buffer.shape)} {buffer.dtype}" if isinstance(buffer, torch.Tensor)
                             else type(buffer).__name__)
                refuse(f"the optimizer's {name} is {described} for a parameter of shape {tuple(parameter.shape)}")
