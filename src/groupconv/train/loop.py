"""The training loop: data, model, optimizer; then per epoch, train, evaluate, record, checkpoint.

Everything a resumed run needs is in the checkpoint, and everything random is derived from the
seed and the position (epoch, step): the data order (DistributedSampler.set_epoch), the
augmentation (augmentation_generator). So a run that is stopped anywhere and resumed computes
exactly what an uninterrupted run computes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, Subset

from ..ops.allocator import keep_freed_memory
from ..analysis import count_parameters
from ..data import LoadedDataset, load_dataset
from ..distributed import explain_parallel
from .builders import (augment, augmentation_generator, build_model, build_optimizer, build_scheduler,
                       seed_everything)
from .checkpoint import CheckpointError, checkpoint_bytes, load_checkpoint, load_model_weights, write_atomically
from .config import ConfigError, TrainConfig
from .distributed import (Distributed, all_reduce_data_sum, all_reduce_sum, barrier, broadcast_buffers,
                          cleanup_distributed, setup_distributed)
from .group_parallel import (check_group_parallel, checkpoint_states, local_optimizer_state, nothing_to_shard,
                             shard)
from .metrics import Totals, write_metrics
from .plots import plot_history
from .run_directory import BEST_CHECKPOINT, CONFIG_FILE, LAST_CHECKPOINT, claim_run_directory
from .training_state import check_training_state, restore_optimizer_and_scheduler


class StopRequest:
    """The first Ctrl-C (or SIGTERM, as a job scheduler sends) asks the loop to stop after the current step and
    save; a second one aborts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint (Ctrl-C again "
              f"to abort)", flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def agreed(self, context: Distributed) -> bool:
        """Whether any process was asked to stop: all must stop at the same step or the collectives hang."""
        if not context.enabled:
            return self.requested
        return bool(all_reduce_sum(torch.tensor([float(self.requested)]), context).item())


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def idle_cores(processes: int = 1) -> int:
    """Cores nobody else is using, shared among `processes`: more threads than idle cores makes every op of a small
    model wait for a descheduled thread at each barrier (ten times slower on a loaded 2-core machine)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    return max(1, (cores - busy) // processes)


def check_autocast(model: torch.nn.Module, data: LoadedDataset, context: Distributed) -> None:
    """ConfigError unless the model runs under bfloat16 autocast on this device (two samples, no gradient)."""
    sample = data.train.tensors[0][:2].to(context.device) if hasattr(data.train, "tensors") else None
    if sample is None:
        return
    try:
        with torch.no_grad(), torch.autocast(context.device.type, dtype=torch.bfloat16):
            model.eval()(sample)
    except (TypeError, RuntimeError) as error:
        raise ConfigError(f"--bf16: {type(model).__name__} does not run under bfloat16 autocast on {context.device} "
                          f"({str(error).splitlines()[0]})") from None
    finally:
        model.train()


def make_loaders(data: LoadedDataset, config: TrainConfig, context: Distributed):
    replicas = context.data_size
    if config.batch_size % replicas:
        raise ConfigError(f"--batch-size={config.batch_size} is not divisible by the {replicas} data-parallel "
                          f"processes")
    # Every data-parallel replica sees its own shard (the processes of one group parallel replica the same one);
    # shuffle order comes from (seed, epoch), never from global RNG state.
    sampler = DistributedSampler(data.train, num_replicas=replicas, rank=context.data_rank, shuffle=True,
                                 seed=config.seed)
    train_loader = DataLoader(data.train, batch_size=config.batch_size // replicas, sampler=sampler,
                              num_workers=config.workers, pin_memory=context.device.type == "cuda")
    # Evaluation: a disjoint shard per replica, no padding, so the summed counts are exact.
    test_shard = Subset(data.test, range(context.data_rank, len(data.test), replicas))
    test_loader = DataLoader(test_shard, batch_size=max(config.batch_size, 256), num_workers=config.workers)
    return train_loader, sampler, test_loader


def to_device(inputs, labels, device, channels_last):
    inputs = inputs.to(device, non_blocking=True)
    if channels_last and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs, labels.to(device, non_blocking=True)


@torch.no_grad()
def evaluate(model, loader, num_classes: int, context: Distributed, config: TrainConfig):
    """(loss, accuracy, confusion matrix) over the whole test set, summed over data-parallel processes.

    Under DDP the processes' batch-norm running statistics differ (each updates them on its own
    shard); rank 0's are given to all first, so the metrics are those of rank 0's model, the one
    that is saved.
    """
    broadcast_buffers(model, context)
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64)
    for inputs, labels in loader:
        inputs, labels = to_device(inputs, labels, context.device, config.channels_last)
        with torch.autocast(context.device.type, dtype=torch.bfloat16, enabled=config.bf16):
            logits = model(inputs)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").double().cpu()
        predictions = logits.argmax(dim=1)
        confusion += torch.bincount((labels * num_classes + predictions).cpu(), minlength=num_classes ** 2)
    loss_sum, confusion = all_reduce_data_sum(loss_sum, context), all_reduce_data_sum(confusion, context)
    confusion = confusion.view(num_classes, num_classes)
    count = max(int(confusion.sum()), 1)
    return loss_sum.item() / count, confusion.diagonal().sum().item() / count, confusion.numpy()


def train_one_epoch(model, loader, optimizer, scheduler, config: TrainConfig, context: Distributed, epoch: int,
                    start_step: int, totals: Totals, stop: StopRequest, all_reduce_gradients=None) -> int:
    """Train from batch `start_step` of `epoch`; returns the number of batches done (fewer if asked to stop).

    all_reduce_gradients: under group parallelism, averages the gradients over the data-parallel processes (DDP
    does it inside backward otherwise)."""
    from tqdm import tqdm

    model.train()
    bar = tqdm(total=len(loader), initial=start_step, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch",
               leave=False, disable=not (config.progress and context.is_main), dynamic_ncols=True)
    started, seen = time.perf_counter(), 0
    for step, (inputs, labels) in enumerate(loader):
        if step < start_step:
            continue  # resuming inside an epoch: same order, skip what was already trained on
        inputs = augment(inputs, config.augment, augmentation_generator(config.seed, epoch, step, context.data_rank))
        inputs, labels = to_device(inputs, labels, context.device, config.channels_last)
        with torch.autocast(context.device.type, dtype=torch.bfloat16, enabled=config.bf16):
            logits = model(inputs)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if all_reduce_gradients is not None:
            all_reduce_gradients()
        if config.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        optimizer.step()
        scheduler.step()
        correct = (logits.argmax(dim=1) == labels).sum().item()
        totals.add(loss.item() * len(labels), correct, len(labels))
        seen += len(labels)
        bar.update()
        bar.set_postfix(loss=f"{totals.loss:.3f}", acc=f"{totals.accuracy:.1%}",
                        img_s=f"{seen * context.data_size / (time.perf_counter() - started):.0f}", refresh=False)
        if stop.agreed(context):
            bar.close()
            return step + 1
    bar.close()
    return len(loader)


def global_totals(totals: Totals, context: Distributed) -> Totals:
    summed = all_reduce_data_sum(torch.tensor([totals.loss_sum, totals.correct, totals.count],
                                              dtype=torch.float64), context).tolist()
    return Totals(summed[0], int(summed[1]), int(summed[2]))


def checkpoint_info(config: TrainConfig, data: LoadedDataset) -> dict:
    info = {"model": config.model, "num_classes": data.num_classes, "in_chans": data.in_chans,
            "input_shape": list(data.input_shape), "dataset": config.dataset, "class_names": data.class_names,
            "config": dataclasses.asdict(config)}
    if data.normalisation is not None:  # what `groupconv predict` applies to image files
        info["normalisation"] = dataclasses.asdict(data.normalisation)
    return info


def config_file_text(config: TrainConfig, data: LoadedDataset) -> str:
    """config.json: every option (replayable with --config) plus what the data made of them (DERIVED_KEYS)."""
    values = dataclasses.asdict(config)
    values.update(num_classes=data.num_classes, in_chans=data.in_chans, input_shape=list(data.input_shape))
    return json.dumps(values, indent=2, sort_keys=True) + "\n"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and torch.compile, whose state_dict keys are the model's own."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def train(config: TrainConfig, resume: bool = False, stop_after_epoch: int | None = None,
          verbose: bool = True) -> dict:
    """Train as configured (resume: continue the run in config.output); returns a summary dict.

    stop_after_epoch: stop (with a checkpoint, as Ctrl-C would) once that many epochs are done.
    verbose: print the per-epoch lines and the summary (rank 0 only in any case).
    """
    context = setup_distributed(config.device)
    threads = torch.get_num_threads()
    try:
        check_group_parallel(config, context)
        with claim_run_directory(config, resume) if context.is_main else contextlib.nullcontext() as run_dir:
            summary = _train(config, context, run_dir, resume, stop_after_epoch, verbose)
        # Tear gloo down only once every process is done with its collectives: a process that destroys its group
        # while its peer still talks to it can abort ("terminate called without an active exception").
        barrier(context)
        return summary
    finally:
        torch.set_num_threads(threads)  # a library call leaves the caller's setting as it found it
        cleanup_distributed(context)


def _train(config: TrainConfig, context: Distributed, run_dir: Path | None, resume: bool,
           stop_after_epoch: int | None, verbose: bool) -> dict:
    started = time.perf_counter()
    torch.set_num_threads(config.threads or idle_cores(context.world_size))
    if config.keep_memory and context.device.type == "cpu":
        keep_freed_memory()
    seed_everything(config.seed, config.deterministic)
    # Rank 0 fetches (maybe downloads) first so that processes never race writing the same file.
    if context.is_main:
        data = load_dataset(config.dataset, config.data_dir, config.image_size, config.download)
    barrier(context)
    if not context.is_main:
        data = load_dataset(config.dataset, config.data_dir, config.image_size, download=False)
    # Record the size actually used, so config.json replays (and `eval` rebuilds) exactly this run.
    config = dataclasses.replace(config, image_size=data.input_shape[-1] if data.is_image else None)
    # The same seed on every process: the same weights, which group parallelism then splits.
    model = build_model(config, data.num_classes, data.in_chans, data.input_shape).to(context.device)
    if config.channels_last and data.is_image:
        model = model.to(memory_format=torch.channels_last)
    parameters = count_parameters(model)
    log = context.is_main and verbose
    if resume:
        path = Path(config.output) / LAST_CHECKPOINT
        model_state, state, saved_info = load_checkpoint(path)
        check_training_state(state, path)
        load_model_weights(model, model_state, saved_info, path)  # the whole model, split below like a new one
    group_parallel = None
    if config.group_parallel > 1:
        if log and nothing_to_shard(model, config.group_parallel):
            print(f"warning: --group-parallel={config.group_parallel}: no layer of {config.model} splits over "
                  f"{config.group_parallel} processes; each one computes the whole model", file=sys.stderr,
                  flush=True)
        group_parallel, context = shard(model, config, context)
    if config.bf16:
        check_autocast(model, data, context)
    train_loader, sampler, test_loader = make_loaders(data, config, context)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, len(train_loader))
    info = checkpoint_info(config, data)

    epoch, start_step, totals, history, best_accuracy = 0, 0, Totals(), [], -1.0
    if resume:
        state = {**state, "optimizer": local_optimizer_state(model, optimizer, state["optimizer"], context)}
        restore_optimizer_and_scheduler(optimizer, scheduler, state, path, config.optimizer,
                                        saved_info.get("config", {}).get("optimizer"))
        try:
            set_rng_states(state["rng"])
        except (KeyError, IndexError, ValueError, TypeError, OverflowError, RuntimeError) as error:
            raise CheckpointError(f"cannot continue from {path}: its random number generator states do not fit "
                                  f"({error})") from None
        epoch, start_step = state["epoch"], state["step"]
        history, best_accuracy = state["history"], state["best_accuracy"]
        # The saved partial sums are over all processes: one process of each group parallel replica carries them
        # on (the sums are over data-parallel processes), the others add theirs.
        totals = Totals(**state["totals"]) if context.data_rank == 0 else Totals()

    forward_model = model
    if context.enabled and group_parallel is None:
        forward_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[context.device.index] if context.device.type == "cuda" else None)
    if config.compile:
        forward_model = torch.compile(forward_model)

    def save(path_names: list[str]) -> None:
        """Every process calls it (group parallelism gathers the weights); rank 0 writes."""
        model_state, optimizer_state = checkpoint_states(unwrap(model), optimizer, context)
        if not context.is_main:
            return
        state = {"epoch": epoch, "step": start_step, "totals": totals.as_dict(), "history": history,
                 "best_accuracy": best_accuracy, "optimizer": optimizer_state,
                 "scheduler": scheduler.state_dict(), "rng": rng_states()}
        data_bytes = checkpoint_bytes(model_state, state, info)
        for name in path_names:
            write_atomically(run_dir / name, data_bytes)

    if context.is_main:
        write_atomically(run_dir / CONFIG_FILE, config_file_text(config, data).encode())
    if log:
        how = (f"{context.world_size} process(es)" if group_parallel is None else
               f"{context.world_size} processes ({context.data_size} data parallel x {config.group_parallel} "
               f"group parallel)")
        print(f"training {config.model} ({parameters:,} parameters) on {config.dataset} "
              f"{tuple(data.input_shape)} x {len(data.train)}, {how} on {context.device}, run directory {run_dir}",
              flush=True)
        if group_parallel is not None:
            print(explain_parallel(model), flush=True)

    interrupted = False
    with StopRequest() as stop:
        while epoch < config.epochs:
            sampler.set_epoch(epoch)
            epoch_started = time.perf_counter()
            done = train_one_epoch(forward_model, train_loader, optimizer, scheduler, config, context, epoch,
                                   start_step, totals, stop,
                                   group_parallel.all_reduce_gradients if group_parallel is not None else None)
            if done < len(train_loader):  # stopped inside the epoch: save the position and the partial sums
                start_step, interrupted = done, True
                totals = global_totals(totals, context)  # rank 0 saves the sums of all processes
                save([LAST_CHECKPOINT])
                break
            train_totals = global_totals(totals, context)
            # The plain model: DDP's forward would broadcast buffers, a collective that needs equal shard sizes.
            test_loss, test_accuracy, _ = evaluate(model, test_loader, data.num_classes, context, config)
            seconds = time.perf_counter() - epoch_started
            row = {"epoch": epoch + 1, "train_loss": train_totals.loss, "train_accuracy": train_totals.accuracy,
                   "test_loss": test_loss, "test_accuracy": test_accuracy, "lr": optimizer.param_groups[0]["lr"],
                   "seconds": seconds, "images_per_second": train_totals.count / seconds}
            history.append(row)
            improved = test_accuracy > best_accuracy
            best_accuracy = max(best_accuracy, test_accuracy)
            epoch, start_step, totals = epoch + 1, 0, Totals()
            save([LAST_CHECKPOINT, BEST_CHECKPOINT] if improved else [LAST_CHECKPOINT])
            if context.is_main:
                write_metrics(run_dir, history)
                plot_history(run_dir, history)
            if log:
                print(f"epoch {row['epoch']}/{config.epochs}  train loss {row['train_loss']:.4f} "
                      f"acc {row['train_accuracy']:.2%}  test loss {test_loss:.4f} acc {test_accuracy:.2%}  "
                      f"{seconds:.1f} s  {row['images_per_second']:.0f} img/s", flush=True)
            if stop.agreed(context):
                interrupted = True
                break
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break

    summary = {"run_dir": str(run_dir) if run_dir else None, "epochs_done": epoch, "interrupted": interrupted,
               "final_test_accuracy": history[-1]["test_accuracy"] if history else None,
               "best_test_accuracy": best_accuracy if history else None, "parameters": parameters,
               "seconds": time.perf_counter() - started, "history": history}
    if log:
        print_summary(summary, config)
    return summary


def print_summary(summary: dict, config: TrainConfig) -> None:
    if summary["interrupted"] or summary["epochs_done"] < config.epochs:
        how = "interrupted" if summary["interrupted"] else "stopped"
        print(f"{how} at epoch {summary['epochs_done']}/{config.epochs}; checkpoint saved. Continue with: "
              f"groupconv train --resume {summary['run_dir']}")
    if summary["history"]:
        print(f"{config.model} on {config.dataset}: test accuracy {summary['final_test_accuracy']:.2%} "
              f"(best {summary['best_test_accuracy']:.2%}), {summary['parameters']:,} parameters, "
              f"{summary['seconds']:.1f} s; results in {summary['run_dir']}")

