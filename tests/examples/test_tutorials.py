"""The seed tutorials under ``examples/`` run unchanged (but for imports), headless."""

import os
import runpy
from pathlib import Path

import matplotlib
import pytest

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("tutorial_*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda path: path.stem)
def test_tutorial_runs(script, monkeypatch, capsys):
    matplotlib.use("Agg")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(script.parent)
    runpy.run_path(os.fspath(script), run_name="__main__")
    output = capsys.readouterr().out
    if script.stem == "tutorial_matrix_vector_products":
        assert output.count("Compared arrays match.") == 4
    matplotlib.pyplot.close("all")


def test_all_seed_tutorials_are_present():
    names = {path.stem for path in EXAMPLES}
    assert {"tutorial_matrix_vector_products", "tutorial_visual_tour", "tutorial_submatrices"} <= names
