"""The run directory: where a run's config, metrics, plots and checkpoints live, and who may write there.

A run claims its directory before writing anything: a new directory is created exclusively
(os.mkdir fails if it exists, so two runs can never both believe they made it), and a lock file
holding the claiming process's pid is hard-linked into place (a link either appears whole or
fails, so nobody ever reads a half-written pid). The lock is removed when the run ends, however it
ends short of SIGKILL; SIGTERM is turned into an ordinary exit so that happens. A lock left by a
killed process is reported, never silently taken over: its pid may belong to a run on another
machine sharing the file system, and only the user knows the directory is free.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .config import ConfigError, TrainConfig

LAST_CHECKPOINT = "last.safetensors"
BEST_CHECKPOINT = "best.safetensors"
CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
# Temporary files of write_atomically (".<name>.tmp<pid>") and of _take_lock (".lock-draft<pid>"); those of a
# process that is gone are stale.
TEMPORARY_FILE = re.compile(r"^\.(?:.+\.tmp|lock-draft)(\d+)$")


def default_run_directory(config: TrainConfig) -> Path:
    return Path("runs") / f"{config.model}-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def process_is_running(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def _read_lock(lock: Path) -> tuple[int | None, str]:
    """(pid, host) of a lock file; pid None when it cannot be read as one."""
    try:
        fields = lock.read_text().split()
        return int(fields[0]), fields[1] if len(fields) > 1 else socket.gethostname()
    except (OSError, ValueError, IndexError):
        return None, ""


def _held_error(run_dir: Path, resuming: bool) -> ConfigError:
    """Why the lock of `run_dir` cannot be taken: a live run, a dead one, or an unreadable lock."""
    lock = run_dir / LOCK_FILE
    pid, host = _read_lock(lock)
    if pid is None:
        return ConfigError(f"run directory {run_dir} is locked by {lock}, which does not hold a process id: if no "
                           f"run uses {run_dir}, delete {lock} and try again")
    if host != socket.gethostname():
        return ConfigError(f"run directory {run_dir} is in use by process {pid} on host {host}: if that run is "
                           f"gone, delete {lock} and try again")
    if process_is_running(pid):
        what = "it cannot be resumed while that process runs" if resuming else "choose another --output"
        return ConfigError(f"run directory {run_dir} is in use by another process (pid {pid}): {what}")
    how = f"continue it with --resume {run_dir}" if (run_dir / LAST_CHECKPOINT).is_file() else "train again"
    return ConfigError(f"run directory {run_dir} is locked by process {pid}, which is no longer running (killed?): "
                       f"if no other run uses {run_dir}, delete {lock} and {how}")


def _take_lock(run_dir: Path, resuming: bool) -> None:
    """Create run_dir/.lock holding this process's pid and host, or ConfigError naming whoever holds it."""
    lock = run_dir / LOCK_FILE
    draft = run_dir / f".lock-draft{os.getpid()}"
    try:
        draft.write_text(f"{os.getpid()} {socket.gethostname()}\n")
        try:
            os.link(draft, lock)  # atomic and exclusive: fails if the lock exists
        except FileExistsError:
            raise _held_error(run_dir, resuming) from None
        finally:
            draft.unlink(missing_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot write into run directory {run_dir} ({error.strerror or error})") from None


def _release_lock(run_dir: Path) -> None:
    pid, _ = _read_lock(run_dir / LOCK_FILE)
    if pid == os.getpid():  # never remove a lock someone else took after ours was deleted by hand
        (run_dir / LOCK_FILE).unlink(missing_ok=True)


def remove_stale_temporary_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files of write_atomically left by processes that no longer run; returns them."""
    removed = []
    for path in run_dir.iterdir():
        match = TEMPORARY_FILE.match(path.name)
        if match and int(match.group(1)) != os.getpid() and not process_is_running(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _make_directory(path: Path) -> list[Path]:
    """Create `path` and its missing parents; returns the directories created, deepest last.

    FileExistsError when `path` itself exists: os.mkdir without exist_ok is the exclusive claim.
    """
    missing = [path, *[parent for parent in path.parents if not parent.exists()]]
    created = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            if directory == path:
                raise
            continue  # a parent made meanwhile by someone else: fine
        created.append(directory)
    return created


def _claim_new(run_dir: Path, overwrite: bool, numbered: bool) -> tuple[Path, list[Path]]:
    """Create (or, where allowed, adopt) the run directory; `numbered`: take run_dir-2, -3, ... if it exists."""
    candidate, number = run_dir, 1
    while True:
        try:
            return candidate, _make_directory(candidate)
        except FileExistsError:
            if numbered:  # a default name: another run started in the same second; never share its directory
                number += 1
                candidate = run_dir.with_name(f"{run_dir.name}-{number}")
                continue
        except OSError as error:
            raise ConfigError(f"cannot create run directory {candidate} ({error.strerror or error})") from None
        if not candidate.is_dir():
            raise ConfigError(f"run directory {candidate} exists and is not a directory")
        if (candidate / LOCK_FILE).exists():
            raise _held_error(candidate, resuming=False)
        if any(candidate.iterdir()) and not overwrite:
            raise ConfigError(f"run directory {candidate} already exists: pass --resume {candidate} to continue it, "
                              f"--overwrite to replace its files, or another --output")
        return candidate, []  # an empty directory the user made, or --overwrite: written into, never removed


def _remove_created(created: list[Path]) -> None:
    """Remove the directories this run created, deepest first, as long as they are empty."""
    for directory in reversed(created):
        try:
            directory.rmdir()
        except OSError:
            return  # someone else's files are in it: leave it


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """While inside, SIGTERM raises SystemExit(143) so that `finally` blocks run: temporary files and the lock are
    removed. (Python's default for SIGTERM ends the process on the spot.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def claim_run_directory(config: TrainConfig, resuming: bool) -> Iterator[Path]:
    """The run directory, held by this process until the block ends (ConfigError if another run holds it).

    New runs get a directory of their own (an existing non-empty one is an error unless --overwrite;
    a default name gets a -2, -3, ... suffix when taken); --resume takes the existing directory.
    A run that fails before its first checkpoint removes the directory it created.
    """
    with _sigterm_exits():
        if resuming:
            run_dir, created = Path(config.output), []
            if not (run_dir / LAST_CHECKPOINT).is_file():
                raise ConfigError(f"cannot resume: {run_dir / LAST_CHECKPOINT} does not exist")
        else:
            requested = Path(config.output) if config.output else default_run_directory(config)
            run_dir, created = _claim_new(requested, config.overwrite, numbered=not config.output)
        try:
            _take_lock(run_dir, resuming)
        except ConfigError:
            _remove_created(created)  # only if still empty: the winner of a race may be writing there
            raise
        finished = False
        try:
            remove_stale_temporary_files(run_dir)
            yield run_dir
            finished = True
        finally:
            # A run that fails before its first checkpoint leaves no directory behind (a user's mistake, caught
            # only once the data or the model is loaded, must not leave an empty run directory).
            failed_early = not finished and created and not (run_dir / LAST_CHECKPOINT).exists()
            if failed_early:
                (run_dir / CONFIG_FILE).unlink(missing_ok=True)
            _release_lock(run_dir)
            if failed_early:
                _remove_created(created)
