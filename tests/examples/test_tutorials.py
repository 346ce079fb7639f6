"""The seed tutorials under ``examples/`` run unchanged (but for imports), headless."""

import os
import re
import runpy
from pathlib import Path

import matplotlib
import pytest
import torch

from curvkit import GGNLinearOperator, ggn_diagonal

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("tutorial_*.py"))
SKETCH = "tutorial_sketched_hessian_eigh"
SLOW = {SKETCH}  # 39,760 parameters, 4,030 Hessian products: the reduced variant below runs by default


def relative_error(output: str) -> float:
    """The sketch tutorial's printed relative error (the seed printed 3.98e-6 for skerch)."""
    return float(re.search(r"RELATIVE ERROR: (\S+)", output).group(1))


@pytest.mark.parametrize(
    "script",
    [pytest.param(path, marks=pytest.mark.slow) if path.stem in SLOW else path for path in EXAMPLES],
    ids=lambda path: path.stem,
)
def test_tutorial_runs(script, monkeypatch, capsys):
    matplotlib.use("Agg")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(script.parent)
    namespace = runpy.run_path(os.fspath(script), run_name="__main__")
    output = capsys.readouterr().out
    if script.stem == "tutorial_matrix_vector_products":
        assert output.count("Compared arrays match.") == 4
    if script.stem == SKETCH:
        assert "Number of trainable parameters: 39760" in output
        assert relative_error(output) <= 4e-5  # within 10x of the seed's 3.98e-6
        evs = namespace["evs"].double()
        assert float((evs.T @ evs - torch.eye(2000, dtype=torch.float64)).abs().max()) < 1e-5
    matplotlib.pyplot.close("all")


def test_sketch_tutorial_reduced(monkeypatch, capsys):
    """The sketch tutorial's code on a smaller MLP (3,985 parameters, 600 measurements), certified alike."""
    script = EXAMPLES[0].parent / f"{SKETCH}.py"
    source = script.read_text()
    for old, new in [
        ("DATASET_SHAPE = (2, 50, 784)", "DATASET_SHAPE = (2, 10, 784)"),
        ("MLP_DIMS = (784, 50, 10)", "MLP_DIMS = (784, 5, 10)"),
        ("SKETCH_DIMS, TEST_MEAS = 2000, 30", "SKETCH_DIMS, TEST_MEAS = 600, 30"),
    ]:
        assert old in source
        source = source.replace(old, new)
    matplotlib.use("Agg")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": "__main__"}
    exec(compile(source, str(script), "exec"), namespace)
    output = capsys.readouterr().out
    assert "Number of trainable parameters: 3985" in output
    assert relative_error(output) <= 4e-5
    H, ews, evs = namespace["H"], namespace["ews"], namespace["evs"]
    dense = H.to_dense().double()
    exact = float(
        torch.linalg.matrix_norm(dense - (evs.double() * ews.double()) @ evs.double().T)
        / torch.linalg.matrix_norm(dense)
    )
    assert exact <= 4e-5 and 0.3 * exact <= relative_error(output) <= 3 * exact
    matplotlib.pyplot.close("all")


def test_all_seed_tutorials_are_present():
    names = {path.stem for path in EXAMPLES}
    assert {
        "tutorial_matrix_vector_products",
        "tutorial_visual_tour",
        "tutorial_submatrices",
        SKETCH,
    } <= names


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
