"""``curvkit report --model cnn``: the built-in CNN's top Hessian eigenvalues against ARPACK's.

The reference multiplies with the float64 Hessian by plain double backward (``torch.autograd``)
and lets ``scipy.sparse.linalg.eigsh`` find the eigenvalues: independent of curvkit, and much
faster than a dense Hessian of this CNN on 512 images.
"""

from __future__ import annotations

import copy
import json

import numpy
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

from curvkit.cli import main
from curvkit.report.builtin import trained_builtin


def test_cnn_report(tmp_path):
    out = tmp_path / "cnn"
    assert (
        main(
            [
                "report",
                "--model",
                "cnn",
                "--quick",
                "--no-dense",
                "--budget",
                "500",
                "--top-k",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    analyses = metrics["analyses"]
    assert metrics["problem"]["num_parameters"] == 1790
    assert [layer["layer"] for layer in metrics["problem"]["layers"]] == ["conv1", "conv2", "fc"]
    assert (analyses["dense"]["status"], analyses["dense"]["message"]) == ("skipped", "--no-dense.")
    assert sum(metrics["budget"]["used"].values()) <= 500
    model, loss_function, data, _ = trained_builtin("cnn", seed=0, quick=True, progressbar=False)
    model = copy.deepcopy(model).double()
    data = [(X.double(), y) for X, y in data]
    params = list(model.parameters())
    X, y = torch.cat([X for X, _ in data]), torch.cat([y for _, y in data])
    gradient = torch.autograd.grad(loss_function(model(X), y), params, create_graph=True)

    def hessian_vector(v):
        pieces = torch.from_numpy(v).split([p.numel() for p in params])
        dot = sum((g * piece.view_as(g)).sum() for g, piece in zip(gradient, pieces))
        return torch.cat([h.flatten() for h in torch.autograd.grad(dot, params, retain_graph=True)]).numpy()

    H = LinearOperator((1790, 1790), matvec=hessian_vector, dtype=numpy.float64)
    top = numpy.sort(eigsh(H, k=3, which="LA", tol=1e-12)[0])[::-1]
    result = analyses["eigenvalues"]["numbers"]["hessian"]
    assert numpy.all(
        numpy.abs(numpy.array(result["eigenvalues"]) - top)
        <= numpy.array(result["residual_norms"]) + 1e-5 * top[0]
    )
