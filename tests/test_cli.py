"""The groupconv command: demo, backends, models (train/eval/analyze have their own test files)."""

import pytest

from groupconv.cli import main


def test_cli_demo_prints_costs_and_ratio(capsys):
    assert main(["demo", "--channels", "24", "--size", "8", "--batch", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "grouped conv (G=3)" in out and "torch/ours" in out
    assert "5,184" in out  # 24*24*9 parameters of the standard conv
    assert "#..#..#.." in out  # the shuffled connectivity picture


def test_cli_backends_and_bad_options(capsys):
    assert main(["backends"]) == 0
    assert "aten:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["demo", "--channels", "10", "--groups", "3"])
    assert "--channels=10 is not divisible by --groups=3" in capsys.readouterr().err


def test_cli_models_lists_the_zoo_with_reference_counts(capsys):
    assert main(["models", "shufflenet_g3_*"]) == 0
    out = capsys.readouterr().out
    assert out.count("shufflenet_g3_") == 6 and "alexnet" not in out
    assert "1,865,728" in out  # shufflenet_g3_w1, models.md
    assert main(["models", "nin_root4", "--markdown"]) == 0
    assert "| nin_root4 | nin | 32x32 | 455,498 | 123.4M |" in capsys.readouterr().out
    assert main(["models", "vgg*"]) == 2
    assert "no model matches 'vgg*'" in capsys.readouterr().err
