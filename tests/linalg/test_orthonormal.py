"""Bases of blocks: CholeskyQR, Householder for wide blocks, randomized preconditioning; seeds per purpose."""

import pytest
import torch

from curvkit.linalg import _orthonormal
from curvkit.linalg._dots import row_dots
from curvkit.linalg._orthonormal import (
    embedded,
    orthonormalize_rows_,
    preconditioned_rows_,
    sparse_sign_embedding,
)
from curvkit.linalg._random import purpose_generator


def ill_conditioned_rows(m, n, rank, decay, seed=0):
    generator = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(n, rank, dtype=torch.float64, generator=generator)).Q
    scales = torch.logspace(0, -decay, rank, dtype=torch.float64)
    return ((U * scales) @ torch.randn(rank, m, dtype=torch.float64, generator=generator)).T.contiguous()


@pytest.mark.parametrize(("m", "n"), [(10, 5000), (300, 4000)])  # CholeskyQR; Householder (m > n / 64)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orthonormalize_rows_factorizes(m, n, dtype):
    Y = ill_conditioned_rows(m, n, m, 5).to(dtype)
    rows = Y.clone()
    R = orthonormalize_rows_(rows)
    eps = torch.finfo(dtype).eps
    assert float((row_dots(rows, rows) - torch.eye(m, dtype=torch.float64)).abs().max()) < 50 * eps * m**0.5
    # backward error grows with the rows (Householder's bound is ~ m ε); 100 ε alone held for one
    # BLAS build and not for another (1.02e-14 against 8.0e-15 in float64, m = 300)
    reconstruction = (rows.T.double() @ R - Y.T.double()).abs().max()
    assert float(reconstruction) < 100 * eps * m**0.5 * float(Y.abs().max())


@pytest.mark.parametrize(
    ("decay", "expected"),
    [
        (None, {"solve": 1, "exact": 1}),  # orthonormal rows: one pass, exact
        (1, {"solve": 2, "exact": 0}),  # condition 10 and 10³: two passes, block sums
        (3, {"solve": 2, "exact": 0}),
        (3.5, {"solve": 2, "exact": 1}),  # 3·10³: the factor's diagonal asks for the exact sum
        (6, {"solve": 2, "exact": 1}),  # 10⁶: the block sums do not factorize
    ],
)
def test_cholesky_qr_passes_and_exact_gram_matrices(decay, expected, monkeypatch):
    """Float32 rows: CholeskyQR2 for conditions up to 10⁶ (two triangular solves, no
    Householder), the first Gram matrix summed exactly only where the block sums would not do:
    ill-conditioned rows (the factor's diagonal spread, or a failed factorization), and
    orthonormal ones, whose one pass decides the result's accuracy."""
    if decay is None:
        Y = torch.linalg.qr(
            torch.randn(20_000, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        )
        Y = Y.Q.T.contiguous().float()
    else:
        Y = ill_conditioned_rows(12, 20_000, 12, decay).float()
    calls = {"solve": 0, "exact": 0}
    solve, dots = torch.linalg.solve_triangular, _orthonormal.row_dots

    def counted_solve(*args, **kwargs):
        calls["solve"] += 1
        return solve(*args, **kwargs)

    def counted_dots(rows, others, exact=False, **kwargs):
        calls["exact"] += exact
        return dots(rows, others, exact=exact, **kwargs)

    monkeypatch.setattr(torch.linalg, "solve_triangular", counted_solve)
    monkeypatch.setattr(_orthonormal, "row_dots", counted_dots)
    rows = Y.clone()
    R = orthonormalize_rows_(rows)
    eps = torch.finfo(torch.float32).eps
    assert float((row_dots(rows, rows) - torch.eye(12, dtype=torch.float64)).abs().max()) < 50 * eps * 12**0.5
    assert float((rows.T.double() @ R - Y.T.double()).abs().max()) < 100 * eps * float(Y.abs().max())
    assert calls == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("rank", "decay"), [(200, 3), (200, 12), (60, 4)]
)  # condition 1e3, beyond 1/ε, rank deficient
def test_preconditioned_rows_are_well_conditioned_with_the_same_span(dtype, rank, decay):
    m, n = 200, 6000
    Y = ill_conditioned_rows(m, n, rank, decay).to(dtype)
    rows = Y.clone()
    R = preconditioned_rows_(rows)
    singular = torch.linalg.svdvals(rows.double())
    assert float(singular.max()) < 10
    if rank == m and decay <= 3:
        assert float(singular.max() / singular.min()) < 10
        torch.testing.assert_close(
            R.T.double() @ rows.double(), Y.double(), atol=1e-4 if dtype == torch.float32 else 1e-12, rtol=0
        )
    Q = torch.linalg.qr(rows.T.double()).Q[:, : min(rank, m)]
    # the leading directions of Y lie in the span of the rows
    lead = torch.linalg.svd(Y.T.double(), full_matrices=False).U[:, :20]
    assert float(torch.linalg.matrix_norm(lead - Q @ (Q.T @ lead))) < (
        1e-3 if dtype == torch.float32 else 1e-10
    )


def test_sparse_embedding_has_its_signs_per_column_and_embeds_rows_in_either_orientation():
    S = sparse_sign_embedding(30, 500, torch.float64, torch.device("cpu")).to_dense()
    nonzeros = (S != 0).sum(0)
    assert int(nonzeros.max()) <= 8 and int(nonzeros.min()) >= 1
    torch.testing.assert_close(
        sparse_sign_embedding(30, 500, torch.float64, torch.device("cpu"), transposed=True).to_dense(), S.T
    )
    rows = torch.randn(12, 500, dtype=torch.float64)
    torch.testing.assert_close(embedded(rows, 30), S @ rows.T, atol=1e-12, rtol=0)


def test_purpose_generators_differ_for_one_seed_and_repeat():
    draw = lambda g: torch.randn(5, generator=g)  # noqa: E731
    assert torch.equal(draw(purpose_generator(3, "sketch")), draw(purpose_generator(3, "sketch")))
    assert not torch.equal(draw(purpose_generator(3, "sketch")), draw(purpose_generator(3, "error test")))
    assert not torch.equal(draw(purpose_generator(3, "sketch")), draw(purpose_generator(4, "sketch")))
    generator = torch.Generator().manual_seed(0)
    assert purpose_generator(generator, "sketch") is generator
    with pytest.raises(TypeError, match="seed must be"):
        purpose_generator("3", "sketch")
