"""Building the native kernels: a library named after what it was built from, and a build lock that never hangs.

Nothing here compiles: the name is a hash of the sources, and the lock is a file.
"""

import os
import socket
import subprocess
import sys
import time
import warnings

import pytest

from groupconv.ops.backends.native import build


def source_tree(root, kernel_text):
    root.mkdir()
    source = root / "cpu_kernels.cpp"
    source.write_text(kernel_text)
    return [source]


def test_two_source_trees_get_two_library_names(tmp_path):
    one = source_tree(tmp_path / "one", "void f() {}")
    other = source_tree(tmp_path / "other", "void f() { /* changed */ }")
    same = source_tree(tmp_path / "same", "void f() {}")
    name = build.library_name(one)
    assert name.startswith("groupconv_native_") and len(name) == len("groupconv_native_") + 12
    assert build.library_name(other) != name == build.library_name(same)  # the contents, not the folder
    assert build.library_name(one, cflags=["-O2"]) != name  # and the compile flags
    assert build.library_name() != build.library_name(one)  # groupconv's own sources


def test_a_changed_header_changes_the_library_name(tmp_path):
    sources = source_tree(tmp_path / "tree", "void f() {}")
    header = tmp_path / "tree" / "layout.h"
    header.write_text("inline int g() { return 1; }")
    name = build.library_name([*sources, header])
    header.write_text("inline int g() { return 2; }")
    assert build.library_name([*sources, header]) != name
    assert set(build.HEADERS) == set(build.CSRC.glob("*.h")) and build.HEADERS  # groupconv's headers are hashed


@pytest.mark.native
def test_loading_leaves_the_library_name_as_it_was():
    """torch's builder appends its own flags to the flag lists it is given; the name must not change with them."""
    name = build.library_name()
    module = build.load()
    if module is None:
        pytest.skip(f"native kernels unavailable: {build.unavailable_reason()}")
    assert build.library_name() == name
    assert name in module.__file__


def test_the_build_folder_is_named_after_the_library(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    name = build.library_name()
    assert build.build_directory(name) == tmp_path / name


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_lock_left_by_a_dead_build_is_taken_over(tmp_path):
    lock = build.BuildLock(tmp_path, timeout=60)
    lock.path.write_text(f"{socket.gethostname()} {dead_pid()} {time.time()}\n")
    start = time.monotonic()
    assert lock.acquire()
    assert time.monotonic() - start < 5
    assert lock.path.read_text().split()[1] == str(os.getpid())
    lock.release()
    assert not lock.path.exists()


def test_a_lock_older_than_the_timeout_is_taken_over(tmp_path):
    lock = build.BuildLock(tmp_path, timeout=1)
    lock.path.write_text(f"another-host 1 {time.time() - 3600}\n")  # (another host: its pid cannot be asked)
    assert lock.acquire()
    lock.release()


def test_waiting_for_a_live_build_is_bounded(tmp_path):
    holder = build.BuildLock(tmp_path, timeout=60)
    assert holder.acquire()  # this process: alive
    waiter = build.BuildLock(tmp_path, timeout=1)
    start = time.monotonic()
    assert not waiter.acquire()
    assert 1 <= time.monotonic() - start < 5
    holder.release()
    assert waiter.acquire()
    waiter.release()


def test_a_build_that_cannot_get_the_lock_warns_and_leaves_the_kernels_out(tmp_path, monkeypatch):
    """load() gives up after the timeout, says why, and the other backends run (never a hang)."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv(build.ENV_BUILD_TIMEOUT, "0.5")
    monkeypatch.setattr(build, "_module", None)
    monkeypatch.setattr(build, "_error", None)
    holder = build.BuildLock(build.build_directory(build.library_name()), timeout=60)
    assert holder.acquire()
    try:
        with pytest.warns(RuntimeWarning, match="another process has been building them"):
            assert build.load() is None
        assert "GROUPCONV_NATIVE_BUILD_TIMEOUT" in build.unavailable_reason()
    finally:
        holder.release()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build.load() is None  # (the answer is kept: one warning per process)
