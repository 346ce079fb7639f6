"""KFAC of every supported loss and its options: a bias's block is the exact GGN / EF block.

With KFAC-reduce a bias's block sums each sample's gradient over its rows before the outer
product: it is exact for a bias of a layer on sequences and of a layer used twice, too.
"""

import pytest
import torch
from kfac_problems import F64, batches, block, mlp_classifier, sequence_problem
from torch import nn

from curvkit import EKFACLinearOperator, KFACLinearOperator
from curvkit.reference import empirical_fisher_matrix, ggn_matrix

REFERENCES = {"type-2": ggn_matrix, "empirical": empirical_fisher_matrix}


def classifier_problem(loss: str):
    model = mlp_classifier()
    make_x = lambda n, g: torch.randn(n, 4, generator=g, dtype=F64)  # noqa: E731
    if loss == "bce":
        make_y = lambda n, g: torch.rand(n, 3, generator=g, dtype=F64)  # noqa: E731
        return model, nn.BCEWithLogitsLoss(), batches((3, 5), make_x, make_y), "batch"
    if loss == "mse-sum":
        make_y = lambda n, g: torch.randn(n, 3, generator=g, dtype=F64)  # noqa: E731
        return model, nn.MSELoss(reduction="sum"), batches((3, 5), make_x, make_y), None
    make_y = lambda n, g: torch.randint(0, 3, (n,), generator=g)  # noqa: E731
    return model, nn.CrossEntropyLoss(label_smoothing=0.1), batches((3, 5), make_x, make_y), "batch"


def ignored_sequence_problem():
    """Cross-entropy on ``[N, C, T]`` with some positions ignored (and a batch with few terms)."""
    model, _, data = sequence_problem("ce")
    data = [(X, torch.where(torch.arange(y.numel()).reshape(y.shape) % 3 == 0, -100, y)) for X, y in data]
    return model, nn.CrossEntropyLoss(ignore_index=-100), data, "batch+sequence"


PROBLEMS = {
    "bce": lambda: classifier_problem("bce"),
    "mse-sum": lambda: classifier_problem("mse-sum"),
    "ce-label-smoothing": lambda: classifier_problem("ce"),
    "ce-sequence-ignore-index": ignored_sequence_problem,
}


@pytest.mark.parametrize("fisher_type", ["type-2", "empirical"])
@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_bias_blocks_are_exact(name, fisher_type):
    model, loss_func, data, loss_average = PROBLEMS[name]()
    params = list(model.parameters())
    kwargs = {"fisher_type": fisher_type, "loss_average": loss_average, "kfac_approx": "reduce"}
    kfac = KFACLinearOperator(model, loss_func, params, data, **kwargs)
    exact, dense = REFERENCES[fisher_type](model, loss_func, params, data), kfac.to_dense()
    biases = [index for index, p in enumerate(params) if p.ndim == 1]
    for index in biases:
        torch.testing.assert_close(
            block(dense, params, index), block(exact, params, index), rtol=1e-9, atol=1e-13
        )
    # and EKFAC's trace is the exact one (its eigenvalues are diag(Qᵀ B Q) of every block)
    ekfac = EKFACLinearOperator(model, loss_func, params, data, **kwargs)
    torch.testing.assert_close(ekfac.trace, exact.trace(), rtol=1e-9, atol=0)
