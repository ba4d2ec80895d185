"""Run a function on P local processes joined in a gloo process group, with a deadline: for tests and benchmarks.

The parent process hosts the rendezvous (a torch.distributed TCPStore bound to port 0 on 127.0.0.1, so the port is
free and stays taken, with no window in which another program could grab it); the children connect to it. Each
child sends back its function's return value, or its traceback. A child that hangs (a collective waiting for a rank
that stopped) is killed at the deadline, so a caller always gets an answer in bounded time.
"""

from __future__ import annotations

import datetime
import io
import os
import queue
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..models.common import check_positive_int

HOST = "127.0.0.1"


@dataclass(frozen=True)
class RankOutcome:
    """How one rank ended: its return value, or the error it raised (a traceback), or its exit code only."""

    rank: int
    exitcode: int | None  # None: still running at the deadline (then killed)
    value: Any = None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.exitcode == 0 and self.error is None


def _child(rank: int, world_size: int, port: int, process_group_timeout: float, threads: int, function: Callable,
           args: tuple, results) -> None:
    torch.set_num_threads(threads)
    try:
        store = dist.TCPStore(HOST, port, world_size, is_master=False,
                              timeout=datetime.timedelta(seconds=process_group_timeout))
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=process_group_timeout))
        try:
            value = function(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        results.put(_serialized(rank, value, None))
    except BaseException:  # (reported to the parent, which decides)
        results.put(_serialized(rank, None, traceback.format_exc()))
        raise SystemExit(1)


def _serialized(rank: int, value: Any, error: str | None) -> bytes:
    """Bytes, not tensors: torch's multiprocessing would share a tensor's memory by a file descriptor that the child
    must stay alive to hand over."""
    buffer = io.BytesIO()
    torch.save((rank, value, error), buffer)
    return buffer.getvalue()


def _deserialized(data: bytes) -> tuple[int, Any, str | None]:
    return torch.load(io.BytesIO(data), weights_only=False)


def launch_ranks(function: Callable, world_size: int, args: tuple = (), timeout: float = 60.0,
                 process_group_timeout: float = 30.0, threads: int | None = None) -> list[RankOutcome]:
    """Run function(rank, world_size, *args) on `world_size` spawned processes in one gloo process group; wait at
    most `timeout` seconds; return every rank's outcome. `function` must be importable (a module-level function)."""
    check_positive_int(world_size, "world_size")
    if not timeout > 0:
        raise ValueError(f"timeout={timeout!r} must be positive")
    threads = threads or max(1, (os.cpu_count() or 1) // world_size)
    store = dist.TCPStore(HOST, 0, world_size, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=process_group_timeout))
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_child, args=(rank, world_size, store.port, process_group_timeout, threads,
                                                      function, args, results), daemon=True)
                 for rank in range(world_size)]
    for process in processes:
        process.start()
    received: dict[int, tuple[Any, str | None]] = {}
    deadline = time.monotonic() + timeout
    # Results are drained while waiting: a child blocks on exit until its queued result is read.
    while time.monotonic() < deadline:
        try:
            rank, value, error = _deserialized(results.get(timeout=0.1))
            received[rank] = (value, error)
        except queue.Empty:
            if all(not process.is_alive() for process in processes):
                break
    killed = set()
    for rank, process in enumerate(processes):
        if process.is_alive():
            process.kill()
            killed.add(rank)
        process.join(timeout=5)
    while not results.empty():
        rank, value, error = _deserialized(results.get())
        received[rank] = (value, error)
    return [RankOutcome(rank, None if rank in killed else process.exitcode, *received.get(rank, (None, None)))
            for rank, process in enumerate(processes)]


def run_ranks(function: Callable, world_size: int, args: tuple = (), timeout: float = 60.0,
              process_group_timeout: float = 30.0, threads: int | None = None) -> list[Any]:
    """launch_ranks, returning every rank's value; any failure is a RuntimeError with each failed rank's story."""
    outcomes = launch_ranks(function, world_size, args, timeout, process_group_timeout, threads)
    failed = [outcome for outcome in outcomes if not outcome.succeeded]
    if failed:
        stories = "\n".join(
            f"rank {outcome.rank}: " + (outcome.error or ("did not finish within the timeout (killed)"
                                                         if outcome.exitcode is None else
                                                         f"exited with code {outcome.exitcode}"))
            for outcome in failed)
        raise RuntimeError(f"{len(failed)} of {world_size} ranks failed running {function.__name__}:\n{stories}")
    return [outcome.value for outcome in outcomes]
