"""The report of the built-in MLP with ``--quick``, written once per session, and its problem in float64."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from curvkit.cli import main
from curvkit.report.builtin import trained_builtin


@pytest.fixture(scope="session")
def default_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """``curvkit report --quick`` on the default, as a user runs it: its folder and ``metrics.json``."""
    out = tmp_path_factory.mktemp("default") / "curvkit-report"
    assert main(["report", "--quick", "--out", str(out)]) == 0
    return out, json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="session")
def default_problem_float64() -> tuple:
    """The default report's model (trained again, same seed), loss, parameters and data, in float64."""
    model, loss_function, data, _ = trained_builtin("mlp", seed=0, quick=True, progressbar=False)
    model = copy.deepcopy(model).double()
    data = [(X.double(), y) for X, y in data]
    return model, loss_function, list(model.parameters()), data
