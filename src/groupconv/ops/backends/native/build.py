"""Building and loading groupconv's compiled CPU kernels (src/groupconv/csrc/).

The kernels are C++ compiled with torch's cpp_extension on first use (or ahead of time by `main()`, which
scripts/setup.sh runs) with -O3 -march=native and OpenMP. Only gcc is needed; the ninja build tool comes from the
package registries.

The library's name is `groupconv_native_<hash>`, the hash of its sources, its compile flags and the torch build
(version, C++ ABI, CUDA version), in a folder of that name under torch's extensions folder (TORCH_EXTENSIONS_DIR,
default ~/.cache/torch_extensions). So two checkouts or virtual environments never build into the same folder, and a
library compiled from other sources or for another torch is never loaded: changed sources get a new name.

One process builds a folder at a time: the others wait on a lock file that names its owner. The wait is bounded
(GROUPCONV_NATIVE_BUILD_TIMEOUT seconds, 10 minutes by default), and a stale lock (its owner dead: a build that was
killed; or, where the owner cannot be asked, older than the timeout) is taken over. If the build fails, times out, or
GROUPCONV_NATIVE=0, `unavailable_reason()` says why, groupconv warns once, and every call goes to the other
backends: the library keeps working, and never hangs.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
import warnings
from pathlib import Path

import torch

from .... import environment

ENV_NATIVE = "GROUPCONV_NATIVE"
ENV_BUILD_TIMEOUT = "GROUPCONV_NATIVE_BUILD_TIMEOUT"
DEFAULT_BUILD_TIMEOUT_SECONDS = 600.0
CSRC = Path(__file__).resolve().parents[3] / "csrc"
SOURCES = [CSRC / "cpu_kernels.cpp", CSRC / "batch_norm.cpp", CSRC / "pointwise.cpp", CSRC / "narrow_nhwc.cpp",
           CSRC / "memory_tracking.cpp", CSRC / "settled_calls.cpp",
           CSRC / "inference_ops.cpp"]
HEADERS = sorted(CSRC.glob("*.h"))  # part of the library too: a changed header must change its name
CFLAGS = ("-O3", "-march=native", "-fopenmp")
LDFLAGS = ("-fopenmp",)
LOCK_NAME = "groupconv-build.lock"
POLL_SECONDS = 0.5

_module = None
_error: str | None = None


def torch_build() -> str:
    """What a compiled extension depends on in the torch it was built against."""
    return (f"torch {torch.__version__}; cxx11 abi {int(torch._C._GLIBCXX_USE_CXX11_ABI)}; "
            f"cuda {torch.version.cuda}; python {sys.version_info.major}.{sys.version_info.minor}")


def library_name(sources=(*SOURCES, *HEADERS), cflags=CFLAGS, ldflags=LDFLAGS) -> str:
    """`groupconv_native_<hash12>`: the hash of the sources' (and headers') names and contents, the flags and the
    torch build."""
    digest = hashlib.sha256()
    for source in sources:
        source = Path(source)
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    digest.update(" ".join([*cflags, "|", *ldflags, "|", torch_build()]).encode())
    return f"groupconv_native_{digest.hexdigest()[:12]}"


def build_directory(name: str) -> Path:
    """The folder the library `name` is built in: torch's, under its extensions folder (TORCH_EXTENSIONS_DIR)."""
    from torch.utils import cpp_extension  # (setuptools and friends: imported only when a build is asked for)

    return Path(cpp_extension._get_build_directory(name, verbose=False))


class BuildLock:
    """A lock file in the build folder holding its owner's host, pid and start time (see the module docstring)."""

    def __init__(self, directory: Path, timeout: float):
        self.path = Path(directory) / LOCK_NAME
        self.timeout = timeout

    def _owner_is_gone(self) -> bool:
        """Whether the lock is stale: its owner process (on this host) is dead; where the owner cannot be asked (another
        host sharing the folder, a half-written lock file), whether the lock is older than the timeout. A live owner
        is never overtaken, however slow its build: two builds in one folder would corrupt each other."""
        try:
            host, pid, started = self.path.read_text().split()
            age, pid = time.time() - float(started), int(pid)
        except (OSError, ValueError):
            try:
                age, host, pid = time.time() - self.path.stat().st_mtime, "", 0
            except OSError:
                return False  # gone already: the next attempt takes it
        if host == socket.gethostname() and pid > 0:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:  # alive, another user's
                pass
            return False
        return age > self.timeout

    def acquire(self) -> bool:
        """Take the lock, waiting at most `timeout` seconds for another owner; False if it could not be had."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self._owner_is_gone():
                    self.path.unlink(missing_ok=True)
                    continue
                if time.monotonic() >= deadline:
                    return False
                time.sleep(POLL_SECONDS)
                continue
            with os.fdopen(descriptor, "w") as f:
                f.write(f"{socket.gethostname()} {os.getpid()} {time.time()}\n")
            return True

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def _put_ninja_on_path() -> None:
    """torch's builder runs `ninja`; the pip package installs it next to the venv's python, not on PATH."""
    try:
        import ninja
    except ImportError:
        return
    bin_dir = getattr(ninja, "BIN_DIR", None)
    if bin_dir and bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def _unavailable(reason: str) -> None:
    global _error
    _error = reason
    warnings.warn(f"groupconv: {reason}; using the other backends instead", RuntimeWarning, stacklevel=3)


def load(verbose: bool = False):
    """The compiled module, building it if needed; None (and `unavailable_reason()` says why) if it cannot be had."""
    global _module, _error
    if _module is not None or _error is not None:
        return _module
    if not environment.flag(ENV_NATIVE, True):
        _error = f"turned off by {ENV_NATIVE}=0"
        return None
    try:
        name = library_name()
        directory = build_directory(name)
        lock = BuildLock(directory, environment.seconds(ENV_BUILD_TIMEOUT, DEFAULT_BUILD_TIMEOUT_SECONDS))
        if not lock.acquire():
            _unavailable(f"the native CPU kernels were not built: another process has been building them in "
                         f"{directory} for over {lock.timeout:.0f} s ({ENV_BUILD_TIMEOUT})")
            return None
        try:
            from torch.utils import cpp_extension

            # Holding our lock, no other groupconv process builds here: a lock file torch's builder left is a killed
            # build's, and torch would wait on it forever.
            (directory / "lock").unlink(missing_ok=True)
            _put_ninja_on_path()
            # Copies: torch's builder appends its own flags to the lists it is given.
            _module = cpp_extension.load(name=name, sources=[str(source) for source in SOURCES],
                                         extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS),
                                         build_directory=str(directory), verbose=verbose)
        finally:
            lock.release()
    except Exception as error:  # a compiler, ninja or header problem: keep working without the kernels
        _unavailable(f"the native CPU kernels could not be built ({type(error).__name__}: {str(error).strip()[-500:]})")
    return _module


def unavailable_reason() -> str | None:
    load()
    return _error


def main(argv: list[str] | None = None) -> int:
    """Build the kernels now and say where they are (scripts/setup.sh runs this)."""
    argv = sys.argv[1:] if argv is None else argv
    module = load(verbose="--verbose" in argv)
    if module is None:
        print(f"groupconv native kernels: not available: {_error}")
        return 1
    print(f"groupconv native kernels: ready ({module.__file__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
