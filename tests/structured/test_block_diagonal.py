"""Blocks of parameters in any order: ``P · BlockDiag(B_1, ..., B_L) · Pᵀ``."""

import pytest
import torch
from contract import contract_on_cases
from hypothesis import given, settings
from hypothesis import strategies as st
from structured_factors import matrix, place_blocks, positive, psd

from curvkit.linear_operator import DenseLinearOperator
from curvkit.structured import BlockDiagonalLinearOperator, DiagonalLinearOperator, KroneckerLinearOperator

SHAPES = [(2, 3), (4,), (3, 2, 2), (2,)]  # sizes 6, 4, 12, 2


def _case(dtype=torch.float64, symmetric=True):
    sizes = [6, 4, 12, 2]
    kron = KroneckerLinearOperator(psd(3, 0, dtype), psd(4, 1, dtype), psd=True)  # params 2
    factors = (
        (psd(2, 2, dtype), psd(4, 4, dtype))
        if symmetric
        else (matrix(2, 2, 2, dtype), matrix(4, 4, 4, dtype))
    )
    joint = KroneckerLinearOperator(*factors)  # params (3, 0): not neighbours, in reverse order
    diagonal = positive(4, 3, dtype)  # param 1
    operator = BlockDiagonalLinearOperator(
        SHAPES,
        [
            ((2,), kron),
            ((3, 0), joint),
            ((1,), DiagonalLinearOperator(diagonal)),
        ],
    )
    reference = place_blocks(
        sizes,
        [
            ((2,), kron.to_dense().double()),
            ((3, 0), joint.to_dense().double()),
            ((1,), torch.diag(diagonal).double()),
        ],
    )
    return operator, reference


CASES = {
    "symmetric": lambda: _case(),
    "nonsymmetric": lambda: _case(symmetric=False),
    "float32": lambda: _case(torch.float32),
}


TestContract = contract_on_cases(CASES)


def test_tags_and_closed_forms():
    operator, reference = _case()
    assert operator.is_symmetric and not operator.is_psd  # the joint Kronecker block is not declared PSD
    torch.testing.assert_close(operator.trace(), reference.trace())
    torch.testing.assert_close(operator.logdet(), torch.logdet(reference))
    torch.testing.assert_close(operator.det(), torch.det(reference))
    torch.testing.assert_close(operator.frobenius_norm(), torch.linalg.matrix_norm(reference))
    assert not _case(symmetric=False)[0].is_symmetric


def test_closed_forms_need_them_in_every_block():
    operator = BlockDiagonalLinearOperator(
        [(2,), (1,)],
        [((1,), DiagonalLinearOperator(torch.ones(1))), ((0,), DenseLinearOperator(torch.eye(2)))],
    )
    with pytest.raises(TypeError, match=r"blocks\[1\] \(DenseLinearOperator\) has no closed-form trace\(\)"):
        operator.trace()


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 4), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_any_partition_in_any_order(sizes, seed, data):
    """A random partition of the parameters into blocks, each listing its parameters in random order."""
    order = data.draw(st.permutations(range(len(sizes))))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(sizes) - 1)), max_size=len(sizes) - 1)))
    groups = [tuple(order[a:b]) for a, b in zip([0, *cuts], [*cuts, len(sizes)]) if a < b]
    matrices = [
        matrix(sum(sizes[p] for p in group), sum(sizes[p] for p in group), seed + i)
        for i, group in enumerate(groups)
    ]
    operator = BlockDiagonalLinearOperator(
        [(size,) for size in sizes], [(group, DenseLinearOperator(m)) for group, m in zip(groups, matrices)]
    )
    reference = place_blocks(sizes, list(zip(groups, matrices)))
    X = matrix(sum(sizes), 2, seed)
    torch.testing.assert_close(operator @ X, reference @ X, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(operator.T @ X, reference.T @ X, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(operator.to_dense(), reference)


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        ([((0,), torch.eye(6)), ((0, 1), torch.eye(10))], r"Parameter 0 is in blocks\[0\] and blocks\[1\]"),
        ([((0,), torch.eye(6))], r"Parameters \[1\] are in no block"),
        ([((0,), torch.eye(6)), ((2,), torch.eye(4))], "there are 2"),
        ([((0,), torch.eye(5)), ((1,), torch.eye(4))], r"blocks\[0\] must be square of size 6"),
        ([((), torch.eye(6))], "lists no parameters"),
        ([((0,), torch.eye(6)), ((1,), torch.eye(4, dtype=torch.float64))], "share one dtype"),
        ([((-1,), torch.eye(6))], "non-negative integer"),
    ],
)
def test_bad_input(blocks, message):
    with pytest.raises(ValueError, match=message):
        BlockDiagonalLinearOperator(
            [(2, 3), (4,)], [(params, DenseLinearOperator(m)) for params, m in blocks]
        )
