"""The rows each of KFAC's factors sums, which bound its rank."""

import pytest
import torch
from torch import nn

from curvkit import KFACLinearOperator

F64 = torch.float64


def _ranks(model, loss_func, data, **kwargs):
    """Each block's ``(output_rank, input_rank)`` and factors, as the pass hands them over."""
    kfac = KFACLinearOperator(model, loss_func, list(model.parameters()), data, **kwargs)
    return [(block.output_rank, block.input_rank, block) for block in kfac.factored.blocks]


@pytest.mark.parametrize(
    ("fisher_type", "columns"), [("type-2", 3), ("mc", 2), ("empirical", 1), ("forward-only", None)]
)
def test_rank_bounds_are_the_rows_each_factor_sums(fisher_type, columns):
    """``K`` columns of ``N`` samples' gradients for ``G``, ``N`` inputs for ``A``, over all batches."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 6), nn.ReLU(), nn.Linear(6, 4)).double()
    data = [(torch.randn(n, 30, dtype=F64), torch.randint(0, 4, (n,))) for n in (3, 2)]
    mc_samples = {"mc_samples": 2} if fisher_type == "mc" else {}
    ranks = _ranks(model, nn.CrossEntropyLoss(), data, fisher_type=fisher_type, **mc_samples)
    output_rank = None if columns is None else columns * 5  # type-2: C − 1 columns per sample
    assert [rank[:2] for rank in ranks] == [(output_rank, 5), (output_rank, None)] * 2
    for output_rank, input_rank, block in ranks:  # bounds indeed
        for bound, factor in [(output_rank, block.output_factor), (input_rank, block.input_factor)]:
            if bound is not None:
                assert int(torch.linalg.matrix_rank(factor)) <= bound


@pytest.mark.parametrize(("kfac_approx", "rows"), [("expand", 2 * 4), ("reduce", 2)])
def test_rank_bounds_of_shared_weights_count_their_rows(kfac_approx, rows):
    """A linear layer on sequences ``[N, T, d]``: ``N T`` rows expanded, ``N`` reduced (bias joined)."""
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    data = [(torch.randn(2, 4, 5, dtype=F64), torch.randn(2, 4, 3, dtype=F64))]
    ranks = _ranks(
        model,
        nn.MSELoss(),
        data,
        fisher_type="empirical",
        kfac_approx=kfac_approx,
        separate_weight_and_bias=False,
        loss_average="batch+sequence",
    )
    assert [rank[:2] for rank in ranks] == [(rows, rows)]


def test_rank_bounds_of_convolutions_count_positions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * 16, 2)).double()
    data = [(torch.randn(n, 2, 4, 4, dtype=F64), torch.randint(0, 2, (n,))) for n in (2, 1)]
    ranks = _ranks(model, nn.CrossEntropyLoss(), data, fisher_type="empirical")
    assert [rank[:2] for rank in ranks] == [(3 * 16, 3 * 16), (3 * 16, None), (3, 3), (3, None)]


def test_an_embeddings_diagonal_factor_is_bounded_by_its_tokens():
    """Token counts ``[V]`` from ``N T`` tokens: at most that many nonzero, so ``logdet = -inf``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(30, 4), nn.Linear(4, 3)).double()
    data = [(torch.randint(0, 30, (2, 5)), torch.randn(2, 5, 3, dtype=F64))]
    kwargs = {"fisher_type": "empirical", "loss_average": "batch+sequence"}
    ranks = _ranks(model, nn.MSELoss(), data, **kwargs)
    assert [rank[:2] for rank in ranks] == [(2 * 5, 2 * 5), (2 * 5, 2 * 5), (2 * 5, None)]
    token_counts = ranks[0][2].input_factor
    assert token_counts.shape == (30,) and int(torch.count_nonzero(token_counts)) <= 2 * 5
    kfac = KFACLinearOperator(model, nn.MSELoss(), list(model.parameters()), data, **kwargs)
    assert kfac.logdet == -torch.inf == torch.logdet(kfac.to_dense())
