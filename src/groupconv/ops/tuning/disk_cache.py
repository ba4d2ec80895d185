"""The tuner's decisions on disk: one JSON file per machine, torch build and version of groupconv's kernels.

The file name carries the torch version, the CPU (and GPUs) and a hash of groupconv's kernel sources, so a
decision is never reused on another machine or build, nor after the kernels it measured change. Later processes
read the file and measure nothing. GROUPCONV_CACHE_DIR moves it (default: $XDG_CACHE_HOME/groupconv or
~/.cache/groupconv).

The file maps each problem to its decision: {"backend": the chosen name, "seconds": every contender's median time,
"peak_bytes": their peak memory (where counted), "measured": how it was measured (tuner.Measurement.record: the
warm-up calls each contender took, whether each came to a steady time, the timed rounds, a timestamp, and "warm")}.
Only decisions measured warm are written here; one measured while the process was still cold (tuner.py says how that
is told) holds for this process only, and a later process measures again. Files written before decisions carried
"measured" stay readable: their decisions are measured again once (they may have been measured cold) and replaced.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import torch

from .. import allocator
from ... import environment

ENV_CACHE_DIR = "GROUPCONV_CACHE_DIR"

_decisions: dict[str, dict] | None = None  # the disk file's contents, loaded on first use
_decisions_path: Path | None = None  # the file they were read from
_this_process: dict[str, dict] = {}  # decisions measured cold: kept in memory, never written
_warned: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(f"groupconv tuning: {message}", RuntimeWarning, stacklevel=3)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The code whose speed the decisions measured: groupconv's compiled and Triton kernels. A decision measured against
# other kernels (an earlier groupconv) does not hold for these, so the cache file is named after their contents too.
_KERNEL_SOURCES = ("csrc/*.cpp", "csrc/*.h", "ops/backends/triton/kernels.py")


@functools.cache
def kernels_fingerprint() -> str:
    """A short hash of groupconv's kernel sources (what a tuning decision measured)."""
    return sources_fingerprint(Path(__file__).resolve().parents[2])


def sources_fingerprint(package: Path) -> str:
    """A short hash of the kernel sources under `package` (groupconv's directory layout)."""
    digest = hashlib.sha1()
    for pattern in _KERNEL_SOURCES:
        for path in sorted(package.glob(pattern)):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:8]


def cache_path() -> Path:
    """The JSON file holding the decisions of this machine, this torch build and these kernels."""
    root = environment.text(ENV_CACHE_DIR)
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "groupconv"
    # The GPUs too: a decision between Triton and cuDNN measured on one card does not hold on another.
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    machine = hashlib.sha1(f"{platform.machine()}|{_cpu_name()}|{'|'.join(gpus)}".encode()).hexdigest()[:10]
    # Whether freed memory is kept too (groupconv.ops.allocator says why).
    kept = "-freedmemorykept" if allocator.freed_memory_kept() else ""
    return Path(root) / f"tuning-torch{torch.__version__}-{machine}-kernels{kernels_fingerprint()}{kept}.json"


def problem_key(problem) -> str:
    return repr(problem)


def decisions() -> dict[str, dict]:
    """Every decision on disk, read on first use."""
    global _decisions, _decisions_path
    path = cache_path()
    if _decisions is None or path != _decisions_path:
        _decisions_path = path
        try:
            _decisions = json.loads(path.read_text()) if path.exists() else {}
            if not isinstance(_decisions, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as error:
            warn_once(f"ignoring unreadable cache {path} ({error}); decisions will be measured again")
            _decisions = {}
    return _decisions


def entry(key: str) -> dict | None:
    """The newest decision for `key`: one measured cold in this process, else the one on disk."""
    return _this_process.get(key) or decisions().get(key)


def record(key: str, decision: dict) -> None:
    """Keep `decision` for `key`: on disk if it was measured warm, else in this process only (the disk keeps any
    older warm decision for later processes)."""
    if decision.get("measured", {}).get("warm"):
        _this_process.pop(key, None)
        decisions()[key] = decision
        save()
    else:
        _this_process[key] = decision


def save() -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a crash or a concurrent process never leaves a half-written file. The whole file is
        # written after each decision, so compact: indenting makes json use its pure-Python encoder, which cost 7.5 s
        # of the default training run's first epoch (336 decisions).
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
            f.write(json.dumps(_decisions, sort_keys=True))
        os.replace(f.name, path)
    except OSError as error:
        warn_once(f"cannot write {path} ({error}); decisions are kept for this process only")


def clear() -> None:
    """Forget every decision, in this process and on disk."""
    global _decisions
    _decisions = {}
    _this_process.clear()
    cache_path().unlink(missing_ok=True)


@contextlib.contextmanager
def temporary_cache() -> Iterator[Path]:
    """Inside the block, decisions start from nothing and are kept in a temporary directory, removed afterwards: the
    user's cache is neither read nor written there, and is read again after the block."""
    global _decisions
    saved_root, saved_this_process = os.environ.get(ENV_CACHE_DIR), dict(_this_process)
    with tempfile.TemporaryDirectory(prefix="groupconv-tuning-") as directory:
        os.environ[ENV_CACHE_DIR] = directory
        _decisions = {}
        _this_process.clear()
        try:
            yield Path(directory)
        finally:
            if saved_root is None:
                os.environ.pop(ENV_CACHE_DIR, None)
            else:
                os.environ[ENV_CACHE_DIR] = saved_root
            _decisions = None
            _this_process.clear()
            _this_process.update(saved_this_process)
