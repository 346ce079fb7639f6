"""Bad input: one line on stderr naming the option and what it expects, exit status 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from curvkit.cli import main

MODELS = """
import torch
from torch import nn

def good():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    return model, nn.MSELoss(), [(torch.randn(5, 3), torch.randn(5, 2))]

def tensor():
    return torch.zeros(3)

def pair():
    model, loss, data = good()
    return model, loss

def not_a_module():
    _, loss, data = good()
    return (lambda x: x), loss, data

def loss_not_callable():
    model, _, data = good()
    return model, "mse", data

def data_a_tensor():
    model, loss, _ = good()
    return model, loss, torch.randn(5, 3)

def batch_not_a_pair():
    model, loss, _ = good()
    return model, loss, [torch.randn(5, 3)]

def no_batches():
    model, loss, _ = good()
    return model, loss, []

def shapes_mismatch():
    model, loss, _ = good()
    return model, loss, [(torch.randn(5, 7), torch.randn(5, 2))]

def raises():
    raise ValueError("no data here")

def frozen():
    model, loss, data = good()
    model.requires_grad_(False)
    return model, loss, data
"""

CASES = {
    "module does not import": (["--model", "no_such_module_xyz:build"], "cannot import 'no_such_module_xyz'"),
    "file does not exist": (["--model", "missing.py:build"], "no file 'missing.py'"),
    "file does not import": (["--model", "broken.py:build"], "importing 'broken.py' raised SyntaxError"),
    "no such function": (["--model", "models.py:absent"], "'models.py' has no function 'absent'"),
    "no function named": (["--model", "mlp2"], "expected 'mlp', 'cnn', 'package.module:function'"),
    "returns a tensor": (
        ["--model", "models.py:tensor"],
        "must return (model, loss_function, data), got a Tensor",
    ),
    "returns a pair": (["--model", "models.py:pair"], "got a tuple of length 2"),
    "model not a module": (["--model", "models.py:not_a_module"], "with an nn.Module first, got a function"),
    "loss not callable": (["--model", "models:loss_not_callable"], "with a callable loss second, got a str"),
    "data a tensor": (
        ["--model", "models.py:data_a_tensor"],
        "data an iterable of batches (X, y), got a Tensor",
    ),
    "batch not a pair": (
        ["--model", "models.py:batch_not_a_pair"],
        "batch 0 must be a pair (X, y) of tensors",
    ),
    "no batches": (["--model", "models.py:no_batches"], "data holds no batch"),
    "shapes mismatch": (["--model", "models.py:shapes_mismatch"], "fails on the first batch: RuntimeError"),
    "function raises": (
        ["--model", "models.py:raises"],
        "the function raised ValueError: no data here (models.py:",
    ),
    "nothing to train": (["--model", "models.py:frozen"], "the model has no trainable parameters"),
    "params select nothing": (
        ["--model", "models.py:good", "--params", "conv"],
        "--params 'conv' selects no parameter",
    ),
    "params select nothing, default": (
        ["--params", "^bias"],
        "the model's parameters are: fc1.weight, fc1.bias",
    ),
    "params not a regex": (["--params", "(weight"], "--params '(weight' is not a regular expression"),
    "budget zero": (["--budget", "0"], "--budget must be a positive integer, got 0"),
    "budget not a number": (["--budget", "many"], "argument --budget: invalid int value: 'many'"),
    "top-k zero": (["--top-k", "0"], "--top-k must be a positive integer, got 0"),
    "seed negative": (["--seed", "-1"], "--seed must be a non-negative integer, got -1"),
    "dtype unknown": (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    "device unknown": (["--device", "gpu0"], "--device 'gpu0' is not a torch device"),
    "out is a file": (["--out", "models.py"], "--out 'models.py' is a file; expected a directory"),
    "unknown option": (["--fast"], "unrecognized arguments: --fast"),
}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "broken.py").write_text("def build(:\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the report adds the working directory
    sys.modules.pop("models", None)
    return tmp_path


@pytest.mark.parametrize("argv, expected", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_one_line_and_status_2(workdir, capsys, argv, expected):
    before = sorted(path.name for path in workdir.iterdir())
    assert main(["report", "--quick", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("curvkit report: error: ")
    assert expected in lines[0]
    assert sorted(path.name for path in workdir.iterdir()) == before  # no report folder


def test_console_exit_status_without_traceback(workdir):
    """The real command, in a fresh interpreter: status 2, one line, no traceback."""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    completed = subprocess.run(
        [sys.executable, "-m", "curvkit", "report", "--model", "models.py:pair"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.splitlines() == [
        "curvkit report: error: --model 'models.py:pair' must return (model, loss_function, data), "
        "got a tuple of length 2."
    ]
