"""Plant known bugs in a copy of the source tree, one at a time, and check that the tests catch each.

Run before a release:

    .venv/bin/python scripts/mutation.py                 # every bug, two at a time
    .venv/bin/python scripts/mutation.py --only pointwise --jobs 1

Each bug is a text substitution in one file of a copy of the repository's tracked files under a temporary
folder (the working tree is never touched). The bug's tests run there, with that copy's sources first on the
path; a mutated C++ source gives the native library another name (it is named after a hash of its sources),
so it is rebuilt there, in a TORCH_EXTENSIONS_DIR of this run's own (the bugs in the C++ sources are listed
first: their builds take longest). The bugs outside the C++ sources are checked with the native kernels
turned off (GROUPCONV_NATIVE=0), which saves a build per parallel job. The script prints which tests fail
with each bug and exits non-zero if a bug makes none fail (or if a substitution no longer matches the
source: the list below must follow the code).
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Bug:
    name: str
    description: str
    path: str  # relative to the repository root
    original: str  # must occur exactly once in the file
    replacement: str
    tests: tuple[str, ...]  # pytest arguments: files, node ids, -k expressions

    @property
    def in_native_kernels(self) -> bool:
        return self.path.startswith("src/groupconv/csrc/")


ORACLE = "tests/test_conv_oracle.py"

BUGS = [
    Bug("pointwise-partial-store", "csrc/pointwise.cpp skips the masked store of a group's last half vector",
        "src/groupconv/csrc/pointwise.cpp",
        "    if constexpr (HALF) store_first(yg + p * y_stride + VECTORS * lanes, tail[p], width - VECTORS * lanes);\n",
        "", (ORACLE, "-k", "wide_groups and native")),
    Bug("fused-shuffle-permutation", "csrc/cpu_kernels.cpp reads the shuffled input channel with the axes swapped",
        "src/groupconv/csrc/cpu_kernels.cpp",
        "(k % shuffle) * (c / shuffle) + k / shuffle", "(k / shuffle) * (c / shuffle) + k % shuffle",
        (ORACLE, "-k", "native and (float64_matches_torch or gradcheck)")),
    Bug("batch-norm-variance-mean", "csrc/batch_norm.cpp's variance forgets to subtract the squared mean",
        "src/groupconv/csrc/batch_norm.cpp",
        "sum_squares[c] / count - shifted_mean * shifted_mean", "sum_squares[c] / count",
        ("tests/test_batch_norm.py",)),
    Bug("reference-low-precision-sum", "ops/reference.py sums bfloat16 and float16 in their own precision",
        "src/groupconv/ops/reference.py",
        "return torch.float32 if dtype in _LOW_PRECISION else dtype", "return dtype",
        (ORACLE, "-k", "low_precision_sums and reference")),
    Bug("reference-shuffle-transpose", "ops/reference.py's channel shuffle leaves out the transpose",
        "src/groupconv/ops/reference.py",
        "c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)", "c // groups, *x.shape[2:]).reshape(x.shape)",
        ("tests/test_channel_shuffle.py", ORACLE, "-k", "shuffle or (float64_matches_torch and reference)")),
    Bug("reference-input-gradient-unshuffle", "ops/reference.py shuffles the input gradient instead of unshuffling it",
        "src/groupconv/ops/reference.py",
        "grad_input = channel_unshuffle(grad_input, args.shuffle_groups)",
        "grad_input = channel_shuffle(grad_input, args.shuffle_groups)",
        (ORACLE, "-k", "reference and (float64_matches_torch or not_its_own_inverse)")),
    Bug("reference-weight-gradient-pad", "ops/reference.py's weight gradient forgets the padding",
        "src/groupconv/ops/reference.py",
        "        x = channel_shuffle(x, args.shuffle_groups)\n    x = _pad(x, args.padding)\n    n, c = x.shape[:2]\n"
        "    g = args.groups\n    m, kernel_size = weight_shape[0], weight_shape[2:]",
        "        x = channel_shuffle(x, args.shuffle_groups)\n    x = _pad(x, [0] * len(args.padding))\n"
        "    n, c = x.shape[:2]\n    g = args.groups\n    m, kernel_size = weight_shape[0], weight_shape[2:]",
        (ORACLE, "-k", "float64_matches_torch and reference")),
    Bug("arguments-negative-padding", "negative padding is accepted", "src/groupconv/ops/arguments.py",
        "if any(p < 0 for p in pads):", "if any(p < -1 for p in pads):", ("tests/test_errors.py",)),
    Bug("arguments-zero-stride", "a stride or dilation of 0 is accepted", "src/groupconv/ops/arguments.py",
        "if any(v <= 0 for v in values):", "if any(v < 0 for v in values):", ("tests/test_errors.py",)),
    Bug("arguments-indivisible-groups", "channels not divisible by the groups are accepted",
        "src/groupconv/ops/arguments.py",
        '    if channels % groups != 0:\n        raise ValueError(f"{channels_name}={channels} is not divisible by '
        '{groups_name}={groups}")',
        '    if channels % groups != 0 and False:\n        raise ValueError(f"{channels_name}={channels} is not '
        'divisible by {groups_name}={groups}")',
        ("tests/test_errors.py",)),
    Bug("shuffle-backward-groups", "the channel shuffle's backward shuffles with the forward's groups",
        "src/groupconv/ops/custom_ops/shuffle.py",
        "ctx.inverse_groups = x.shape[1] // groups", "ctx.inverse_groups = groups",
        ("tests/test_channel_shuffle.py",)),
    Bug("accelerate-batch-norm-relu", "accelerate turns every BatchNorm2d into BN followed by a ReLU",
        "src/groupconv/nn/accelerate.py", "module.apply_act = False", "module.apply_act = True",
        ("tests/test_nn.py", "-k", "accelerate")),
    Bug("batch-norm-biased-running-variance", "the reference batch norm's running variance is not unbiased",
        "src/groupconv/ops/reference.py", "* (count / (count - 1))", "* 1.0", ("tests/test_batch_norm.py",)),
    Bug("gemm-group-order", "the gemm backend's forward multiplies each group by another group's weights",
        "src/groupconv/ops/backends/gemm.py",
        "out = torch.matmul(weight.reshape(g, m // g, c // g), x)",
        "out = torch.matmul(weight.reshape(g, m // g, c // g).flip(0), x)",
        ("tests/test_gemm.py", ORACLE, "-k", "gemm")),
    Bug("shufflenet-without-shuffle", "ShuffleNet's units lose their channel shuffle (the model and any twin built "
        "from it)", "src/groupconv/models/shufflenet.py",
        "shuffle_groups=groups if shuffle else 1", "shuffle_groups=1",
        ("tests/test_models.py", "-k", "shufflenet_training_gradients")),
]


def copy_sources(target: Path) -> None:
    """The repository's tracked files (as they are in the working tree, uncommitted edits included) under target."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPOSITORY, check=True, capture_output=True,
                           text=True).stdout.split("\0")
    for name in filter(None, files):
        source = REPOSITORY / name
        if source.is_file():
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)


def plant(bug: Bug, tree: Path) -> None:
    path = tree / bug.path
    text = path.read_text()
    count = text.count(bug.original)
    if count != 1:
        raise ValueError(f"bug {bug.name}: the text to replace occurs {count} times in {bug.path} (once expected)")
    path.write_text(text.replace(bug.original, bug.replacement))


def run_tests(bug: Bug, tree: Path, extensions: Path, timeout: float) -> tuple[list[str], str]:
    """The tests that fail with the bug planted (a timeout counts as caught), and the end of pytest's output."""
    environment = dict(os.environ, PYTHONPATH=str(tree / "src"), TORCH_EXTENSIONS_DIR=str(extensions),
                       GROUPCONV_CACHE_DIR=str(tree / ".cache"), PYTHONDONTWRITEBYTECODE="1",
                       GROUPCONV_NATIVE_BUILD_TIMEOUT=str(timeout))
    if not bug.in_native_kernels:
        environment["GROUPCONV_NATIVE"] = "0"  # no build needed: the other backends run the tests
    command = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *bug.tests]
    try:
        result = subprocess.run(command, cwd=tree, env=environment, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [f"(timed out after {timeout:.0f} s)"], ""
    output = result.stdout + result.stderr
    failed = sorted({match.group(1) for match in re.finditer(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)})
    if result.returncode not in (0, 1) and not failed:  # a crash (the interpreter killed by a signal, say)
        failed = [f"(pytest exited with status {result.returncode})"]
    return failed, output[-3000:]


def check(bug: Bug, slots: queue.Queue, timeout: float) -> tuple[Bug, list[str], float, str]:
    """Plant `bug` in a free slot's copy of the sources and run its tests there.

    A slot is a folder used by one bug at a time: the copy of the sources, always at the same path, and its own
    extensions folder. The native build's commands name the sources by path, so a library built in a slot is reused
    by every later bug there that leaves the C++ sources alone; a bug in them builds a library of its own."""
    slot = slots.get()
    try:
        start = time.monotonic()
        tree = slot / "repository"
        copy_sources(tree)  # the pristine sources again (copy2 keeps their times, so the built objects stay valid)
        plant(bug, tree)
        failed, output = run_tests(bug, tree, slot / "torch-extensions", timeout)
        return bug, failed, time.monotonic() - start, output
    finally:
        slots.put(slot)


def summarise(tests: list[str], limit: int = 3) -> str:
    names = [test.split("::", 1)[-1] for test in tests]
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="bugs checked at the same time (default 2)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds for one bug's tests, build included")
    parser.add_argument("--only", nargs="*", default=None, help="check only the bugs whose names contain these words")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="folder for the copies and their builds, kept afterwards (a later run there reuses the "
                             "builds); default: a temporary folder, removed at the end")
    parser.add_argument("--list", action="store_true", help="list the bugs and exit")
    parser.add_argument("--verbose", action="store_true", help="print pytest's output for a bug no test catches")
    args = parser.parse_args(argv)
    bugs = [bug for bug in BUGS if args.only is None or any(word in bug.name for word in args.only)]
    if args.list:
        for bug in bugs:
            print(f"{bug.name:38} {bug.description}")
        return 0
    if not bugs:
        parser.error(f"no bug's name contains any of {args.only}")
    with tempfile.TemporaryDirectory(prefix="groupconv-mutation-") as temporary:
        folder = args.work_dir or temporary
        slots = queue.Queue()
        for index in range(args.jobs):
            slots.put(Path(folder) / f"slot{index}")
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(lambda bug: check(bug, slots, args.timeout), bugs))
    missed = []
    print(f"{'bug':38} {'caught':6} {'time':>6}  failing tests")
    for bug, failed, seconds, output in results:
        print(f"{bug.name:38} {'yes' if failed else 'NO':6} {seconds:5.0f}s  {summarise(failed) if failed else '-'}")
        if not failed:
            missed.append(bug)
            if args.verbose:
                print(output)
    if missed:
        print(f"\n{len(missed)} of {len(results)} bugs caught by no test: {', '.join(bug.name for bug in missed)}")
        return 1
    print(f"\nall {len(results)} bugs caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
