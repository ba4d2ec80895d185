"""`import groupconv` lets OpenMP's workers spin between parallel regions, unless told otherwise; and how
environment.py reads variables (environment.py)."""

import os
import warnings
import subprocess
import sys

import pytest

from groupconv import environment


def test_a_fresh_import_sets_the_spin_before_torch_loads():
    script = ("import sys, os, groupconv; "
              "print(os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules, groupconv.environment.openmp_wait)")
    env = {key: value for key, value in os.environ.items()
           if key not in (*environment.OPENMP_WAIT_VARIABLES, environment.ENV_OPENMP_SPIN)}
    printed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                             check=True).stdout.split(maxsplit=2)
    assert printed[:2] == [str(environment.OPENMP_SPIN_COUNT), "True"]
    assert "set by groupconv" in printed[2]


@pytest.fixture
def unset(monkeypatch):
    for name in (*environment.OPENMP_WAIT_VARIABLES, environment.ENV_OPENMP_SPIN):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(environment, "openmp_wait", environment.openmp_wait)
    monkeypatch.setattr(environment, "openmp_loaded_first", environment.openmp_loaded_first)
    return monkeypatch


def test_after_torch_it_changes_nothing_and_says_how_to(unset):
    assert "torch was imported before groupconv" in environment.spin_openmp_workers()
    assert "GOMP_SPINCOUNT" not in os.environ


@pytest.mark.parametrize("name, value", [("GOMP_SPINCOUNT", "5"), ("OMP_WAIT_POLICY", "PASSIVE")])
def test_the_users_own_setting_is_kept(unset, name, value):
    unset.setenv(name, value)
    assert environment.spin_openmp_workers() == f"as the environment says ({name}={value})"
    assert os.environ[name] == value


def test_it_can_be_turned_off_and_a_misspelt_switch_is_an_error(unset):
    unset.setenv(environment.ENV_OPENMP_SPIN, "0")
    assert environment.spin_openmp_workers() == "OpenMP's default (GROUPCONV_OPENMP_SPIN=0)"
    unset.setenv(environment.ENV_OPENMP_SPIN, "sometimes")
    with pytest.raises(ValueError, match="GROUPCONV_OPENMP_SPIN='sometimes' must be one of"):
        environment.spin_openmp_workers()


def test_optimize_for_inference_warns_once_where_torch_came_first(monkeypatch):
    import torch

    from groupconv.inference import optimize, optimize_for_inference

    monkeypatch.setattr(environment, "openmp_loaded_first", True)
    monkeypatch.setattr(optimize, "_warned_of_sleeping_workers", False)
    model, x = torch.nn.Conv2d(3, 4, 1), torch.randn(1, 3, 4, 4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # (one thread: nothing to wake, nothing said)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            optimize_for_inference(model, x, keep_freed_memory=False)
        torch.set_num_threads(2)
        with pytest.warns(UserWarning, match="torch was imported before groupconv.*GOMP_SPINCOUNT=100000"):
            optimize_for_inference(model, x, keep_freed_memory=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            optimize_for_inference(model, x, keep_freed_memory=False)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("mapping", ["os.environ", "a plain mapping"])
def test_variables_are_read_as_they_are_now(monkeypatch, mapping):
    if mapping == "a plain mapping":  # (another Python's environ without CPython's inner dict: read with .get)
        monkeypatch.setattr(os, "environ", {})
    monkeypatch.delenv("GROUPCONV_TUNE", raising=False)
    assert environment.text("GROUPCONV_TUNE") is None and environment.flag("GROUPCONV_TUNE", True) is True
    monkeypatch.setenv("GROUPCONV_TUNE", " Off ")
    assert environment.text("GROUPCONV_TUNE") == "Off" and environment.flag("GROUPCONV_TUNE", True) is False
    monkeypatch.setenv("GROUPCONV_TUNE", "")
    assert environment.text("GROUPCONV_TUNE") is None
