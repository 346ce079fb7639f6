"""SubmatrixLinearOperator: products, transpose, validation."""

from __future__ import annotations

import numpy
import pytest
import torch
from scipy.sparse.linalg import aslinearoperator

from curvkit.linear_operator import DenseLinearOperator
from curvkit.submatrix import SubmatrixLinearOperator


@pytest.fixture
def matrix() -> torch.Tensor:
    return torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("rows, cols", [([0, 3, 7], [1, 2, 5]), ([5, 1], [4, 0, 3, 2]), ([2], [3])])
def test_matches_dense_slicing(matrix, rows, cols):
    expected = matrix[rows, :][:, cols]
    sub = SubmatrixLinearOperator(DenseLinearOperator(matrix), rows, cols)
    assert sub.shape == (len(rows), len(cols))
    torch.testing.assert_close(sub.to_dense(), expected)
    torch.testing.assert_close(sub @ torch.eye(len(cols), dtype=torch.float64), expected)
    torch.testing.assert_close(sub.T.to_dense(), expected.T)
    x = torch.randn(len(rows), dtype=torch.float64)
    torch.testing.assert_close(x @ sub, x @ expected)
    numpy.testing.assert_allclose(
        sub @ numpy.ones(len(cols)), (expected @ torch.ones(len(cols)).double()).numpy()
    )


def test_foreign_operators_and_index_types(matrix):
    rows, cols = numpy.array([1, 4]), torch.tensor([0, 5])
    sub = SubmatrixLinearOperator(aslinearoperator(matrix.numpy()), rows, cols)
    torch.testing.assert_close(sub.to_dense(), matrix[[1, 4], :][:, [0, 5]])
    torch.testing.assert_close(sub.T.to_dense(), matrix[[1, 4], :][:, [0, 5]].T)


def test_set_submatrix_changes_shape(matrix):
    sub = SubmatrixLinearOperator(matrix, [0, 1], [0, 1])
    sub.set_submatrix([2, 3, 4], [5])
    assert sub.shape == (3, 1)
    torch.testing.assert_close(sub.to_dense(), matrix[[2, 3, 4], :][:, [5]])


@pytest.mark.parametrize(
    "rows, cols, match",
    [
        ([0, 0], [1], "row_idxs must not contain duplicates, got \\[0\\]"),
        ([0], [1, 2, 1], "col_idxs must not contain duplicates"),
        ([0.0], [1], "row_idxs must contain integers only, got 0.0"),
        ([0], [True], "col_idxs must contain integers only"),
        ([8], [1], "row_idxs must lie in \\[0, 8\\), got out-of-range index 8"),
        ([0], [-1], "col_idxs must lie in \\[0, 6\\), got out-of-range index -1"),
        ("01", [1], "row_idxs must be a list of integers"),
    ],
)
def test_bad_indices(matrix, rows, cols, match):
    with pytest.raises(ValueError, match=match):
        SubmatrixLinearOperator(matrix, rows, cols)
    sub = SubmatrixLinearOperator(matrix, [0], [0])
    with pytest.raises(ValueError, match=match):
        sub.set_submatrix(rows, cols)
