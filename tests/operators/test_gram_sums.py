"""``add_gram``: the lower triangle of ``Σ x xᵀ`` over rows of every layout the factor pass hands it."""

import pytest
import torch

from curvkit.operators import _gram_sums as gram_sums

F64 = torch.float64


def _rows(layout: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if layout == "row-major":  # a linear layer's inputs [N, R, d]
        return torch.randn(3, 2, 7, dtype=F64, generator=generator)
    if layout == "features apart, fewer positions":  # a convolution's patches [N, R, d], R < d
        return torch.randn(3, 7, 2, dtype=F64, generator=generator).transpose(1, 2)
    if layout == "features apart, more positions":  # R ≥ d: per sample
        return torch.randn(3, 7, 9, dtype=F64, generator=generator).transpose(1, 2)
    # output gradients [k, N, R, d] as a view of [N, k, d, R]
    return torch.randn(3, 2, 7, 4, dtype=F64, generator=generator).permute(1, 0, 3, 2)


@pytest.mark.parametrize(
    "layout",
    ["row-major", "features apart, fewer positions", "features apart, more positions", "columns first"],
)
@pytest.mark.parametrize("strip", [2, 64])  # strips of the lower triangle, or one product
def test_add_gram_sums_outer_products_of_the_rows(monkeypatch, layout, strip):
    monkeypatch.setattr(gram_sums, "GRAM_STRIP", strip)
    rows = _rows(layout)
    flat = rows.reshape(-1, rows.shape[-1])
    expected = flat.T @ flat
    total = gram_sums.add_gram(None, rows, alpha=0.5)
    torch.testing.assert_close(total.tril(), 0.5 * expected.tril(), rtol=1e-14, atol=1e-14)
    total = gram_sums.add_gram(total, rows)  # added in place into the sums so far
    torch.testing.assert_close(total.tril(), 1.5 * expected.tril(), rtol=1e-14, atol=1e-14)
