"""The exact GGN diagonal and its Monte-Carlo variant against the dense matrices."""

import pytest
import torch
from torch import nn
from zoo import make_problem_from_id

from curvkit import FisherMCLinearOperator
from curvkit.operators.ggn_diagonal import GGNDiagonalLinearOperator, ggn_diagonal


def test_exact_diagonal_matches_reference(small_problem, reference_of):
    p = small_problem
    diagonal = ggn_diagonal(p.model, p.loss_func, p.params, p.data, batch_size_fn=p.batch_size_fn)
    expected = reference_of(p.name, "ggn").diagonal()
    torch.testing.assert_close(diagonal, expected, rtol=1e-9, atol=1e-12 * expected.abs().max().item())


def test_mc_diagonal_is_the_diagonal_of_the_mc_fisher_with_the_same_seed():
    p = make_problem_from_id("mlp-ce-mean-three-list")
    diagonal = ggn_diagonal(p.model, p.loss_func, p.params, p.data, mode="mc", mc_samples=3, seed=7)
    fisher = FisherMCLinearOperator(p.model, p.loss_func, p.params, p.data, mc_samples=3, seed=7)
    torch.testing.assert_close(diagonal, fisher.to_dense().diagonal(), rtol=1e-9, atol=1e-14)


def test_operator_form_and_errors():
    p = make_problem_from_id("cnn-ce-mean-one-dict")
    operator = GGNDiagonalLinearOperator(p.model, p.loss_func, p.params, p.data)
    assert operator.shape == (p.dim, p.dim) and operator.is_psd
    with pytest.raises(ValueError, match="mode must be 'exact' or 'mc'"):
        ggn_diagonal(p.model, p.loss_func, p.params, p.data, mode="approximate")
    with pytest.raises(NotImplementedError, match="loss_func must be one of"):
        ggn_diagonal(p.model, nn.L1Loss(), p.params, p.data)
    with pytest.raises(ValueError, match=r"must be an nn\.Module"):
        ggn_diagonal(lambda X: p.model(X), p.loss_func, p.params, p.data)


def test_models_that_vmap_cannot_batch_get_a_clear_error():
    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = nn.GRU(3, 4, batch_first=True), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    model = Recurrent().double()
    data = [(torch.randn(5, 6, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1]))]
    with pytest.raises(
        RuntimeError, match="ggn_diagonal pushes the samples through model_func one at a time"
    ):
        ggn_diagonal(model, nn.CrossEntropyLoss(), list(model.parameters()), data)
