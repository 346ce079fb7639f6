"""The seed tutorials under ``examples/`` run unchanged (but for imports), headless."""

import os
import runpy
from pathlib import Path

import matplotlib
import pytest
import torch

from curvkit import GGNLinearOperator, ggn_diagonal

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


def test_causal_language_model_example(monkeypatch, capsys):
    """Both layouts of sequence targets: the same Hessian and GGN (each against the dense
    reference), an empirical Fisher of its own each; flattened logits without ``batch_size_fn``
    are refused with a message that names the fix."""
    script = EXAMPLES[0].parent / "causal_language_model.py"
    monkeypatch.chdir(script.parent)
    namespace = runpy.run_path(os.fspath(script), run_name="__main__")
    output = capsys.readouterr().out
    assert "num_data: 5 sequences, 25 tokens" in output
    assert output.count("Compared arrays match.") == 6
    assert namespace["difference"] > 0.1  # per-sequence and per-token gradients: different matrices
    ns = namespace
    with pytest.raises(ValueError, match=r"X holds 3 samples but y has shape \[15\], 5 targets per sample"):
        GGNLinearOperator(ns["token_model"], ns["loss_func"], ns["params"], ns["token_data"])
    # the GGN diagonal takes per-sample gradients: sequences, not tokens
    diagonal = ggn_diagonal(ns["sequence_model"], ns["loss_func"], ns["params"], ns["sequence_data"])
    torch.testing.assert_close(diagonal, ns["dense_ggn"].diagonal())
    with pytest.raises(ValueError, match=r"keep the sequence axis \(output \[N, C, T\], y \[N, T\]\)"):
        ggn_diagonal(
            ns["token_model"],
            ns["loss_func"],
            ns["params"],
            ns["token_data"],
            batch_size_fn=ns["count_tokens"],
        )
