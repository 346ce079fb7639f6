r"""The blocks of KFAC and EKFAC: which parameters a block covers, its factors, and its operator.

A block covers one layer's parameters in one of three ways (curvlinops'
``separate_weight_and_bias``):

- a weight alone, ``W ∈ ℝ^{out × in}`` (a convolution's ``[out, in, *kernel]`` is the matrix
  ``[out, in · ∏ kernel]``): the block is ``G ⊗ A``;
- a bias alone, ``b ∈ ℝ^{out}``: the block is ``G`` (``G ⊗ [1]``: the bias's input is 1);
- weight and bias joined as ``[W b] ∈ ℝ^{out × (in + 1)}``: ``G ⊗ A`` with ``A`` the second
  moment of the inputs with a 1 appended, on ``vec([W b])``.

An ``nn.Embedding``'s weight ``[num_embeddings, dim]`` has its inputs along the rows
(``input_major=True``): the block is ``A ⊗ G``, with ``A`` diagonal (token counts). In every case
the block acts on the matrix ``M`` the parameters form (``W``, ``b`` as a column, or ``[W b]``) as
``vec(L M Rᵀ)``, with ``(L, R) = (G, A)``, or ``(A, G)`` for input-major weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from curvkit._boundary import as_integer
from curvkit.linear_operator import LinearOperator
from curvkit.structured._factors import cast_back, eigh64
from curvkit.structured.eigen_kronecker import EigenKroneckerLinearOperator
from curvkit.structured.joined import JoinedWeightBiasLinearOperator
from curvkit.structured.kronecker import KroneckerLinearOperator


@dataclass(frozen=True)
class KroneckerBlock:
    """One block of KFAC: its parameters and its two Kronecker factors.

    Attributes:
        params: Positions in the parameter list: ``(weight,)``, ``(bias,)`` or ``(weight, bias)``
            (joined, in that order).
        output_factor: ``G``, ``[out, out]`` (or a diagonal ``[out]``): the second moment of the
            gradients at the layer's outputs.
        input_factor: ``A``, ``[in, in]`` or ``[in]``: the second moment of the layer's inputs
            (with a 1 appended when weight and bias are joined); ``None`` for a bias alone.
        input_major: The weight stores inputs along its rows (``nn.Embedding``): block ``A ⊗ G``.
        output_rank: An upper bound of ``G``'s rank, or ``None``: a second moment summed from
            ``r`` rows has rank at most ``r``. Where it is well below the factor's size, its
            eigendecomposition (EKFAC, exact damping) costs ``O(n² r)`` instead of ``O(n³)``;
            a bound below the true rank is detected, and the full decomposition taken.
        input_rank: The same for ``A``.
    """

    params: tuple[int, ...]
    output_factor: Tensor
    input_factor: Tensor | None = None
    input_major: bool = False
    output_rank: int | None = None
    input_rank: int | None = None


@dataclass(frozen=True)
class EigenKroneckerBlock:
    """One block of EKFAC: its parameters, the Kronecker eigenbasis and the eigenvalues in it.

    Attributes:
        params: As :class:`KroneckerBlock`.
        eigenvalues: ``Λ`` in the shape of the block's matrix: ``[out, in]`` (``[out, in + 1]``
            joined, ``[out, 1]`` for a bias alone, ``[in, out]`` input-major).
        output_eigenvectors: ``Q_G``, ``[out, out]``; ``None`` for the identity.
        input_eigenvectors: ``Q_A``; ``None`` for the identity (a bias alone, a diagonal ``A``).
        input_major: As :class:`KroneckerBlock`.
    """

    params: tuple[int, ...]
    eigenvalues: Tensor
    output_eigenvectors: Tensor | None = None
    input_eigenvectors: Tensor | None = None
    input_major: bool = False


@dataclass(frozen=True)
class Placement:
    """Where a block sits: its parameters and the shape ``[rows, columns]`` of the matrix they form."""

    params: tuple[int, ...]
    rows: int
    columns: int
    joined: bool
    input_major: bool

    def ordered(self, output: object, input: object) -> tuple[object, object]:
        """``(left, right)`` Kronecker factors from the ``(output, input)`` ones."""
        return (input, output) if self.input_major else (output, input)


def placement(
    shapes: Sequence[torch.Size],
    params: Sequence[int],
    input_major: bool,
    output_dim: int,
    input_dim: int | None,
    where: str,
) -> Placement:
    """Check a block's parameters against its factors' sizes (``input_dim=None``: no input factor).

    Raises:
        ValueError: Naming ``where`` and what was expected.
    """
    if not isinstance(input_major, bool):
        raise TypeError(f"{where}.input_major must be a bool, got {input_major!r}.")
    if isinstance(params, (str, bytes)) or not isinstance(params, Sequence) or len(params) not in (1, 2):
        raise ValueError(f"{where}.params must be (weight,), (bias,) or (weight, bias), got {params!r}.")
    params = tuple(as_integer(p, f"{where}.params entry", minimum=0) for p in params)
    for position in params:
        if position >= len(shapes):
            raise ValueError(f"{where}.params lists parameter {position}, but there are {len(shapes)}.")
    weight = shapes[params[0]]
    if len(params) == 1 and len(weight) == 1:  # a bias alone
        if input_major or input_dim not in (None, 1):
            raise ValueError(
                f"{where} is a bias alone (parameter {params[0]} of shape {list(weight)}): it has no input "
                "factor and is not input-major."
            )
        _expect(
            weight[0] == output_dim,
            where,
            f"output factor of size {weight[0]} for a bias of shape {list(weight)}",
            output_dim,
        )
        return Placement(params, output_dim, 1, joined=False, input_major=False)
    if len(weight) < 2:
        raise ValueError(
            f"{where}: the weight (parameter {params[0]}) must have ≥ 2 dimensions, got {list(weight)}."
        )
    if input_dim is None:
        raise ValueError(f"{where} covers a weight (parameter {params[0]}), so it needs an input factor.")
    first, rest = weight[0], math.prod(weight[1:])
    if input_major:
        if len(params) == 2:
            raise ValueError(f"{where}: an input-major weight (nn.Embedding) has no bias to join.")
        _expect(
            first == input_dim,
            where,
            f"input factor of size {first} (the weight's rows, {list(weight)})",
            input_dim,
        )
        _expect(
            rest == output_dim,
            where,
            f"output factor of size {rest} (the weight's columns, {list(weight)})",
            output_dim,
        )
        return Placement(params, input_dim, output_dim, joined=False, input_major=True)
    _expect(
        first == output_dim,
        where,
        f"output factor of size {first} (the weight's rows, {list(weight)})",
        output_dim,
    )
    if len(params) == 1:
        _expect(
            rest == input_dim,
            where,
            f"input factor of size {rest} (the weight's columns, {list(weight)})",
            input_dim,
        )
        return Placement(params, output_dim, input_dim, joined=False, input_major=False)
    bias = shapes[params[1]]
    if tuple(bias) != (first,):
        raise ValueError(
            f"{where}: the bias (parameter {params[1]}) must have shape [{first}], got {list(bias)}."
        )
    _expect(
        rest + 1 == input_dim,
        where,
        f"input factor of size {rest + 1} (the weight's columns and the bias)",
        input_dim,
    )
    return Placement(params, output_dim, input_dim, joined=True, input_major=False)


def _expect(condition: bool, where: str, expected: str, got: int) -> None:
    if not condition:
        raise ValueError(f"{where} needs an {expected}, got size {got}.")


def assembled(core: LinearOperator, where: Placement) -> LinearOperator:
    """``core`` (acting on the block's matrix) on the block's parameters: joined ones permuted."""
    return JoinedWeightBiasLinearOperator(core, where.rows) if where.joined else core


def kronecker_operator(
    where: Placement, output_factor: Tensor, input_factor: Tensor | None
) -> LinearOperator:
    """``G ⊗ A`` (or ``A ⊗ G``, or ``G ⊗ [1]``) on the block's parameters.

    The factors must be checked and symmetrized already (:class:`.kfac.KroneckerFactoredLinearOperator`
    does); they are declared PSD.
    """
    if input_factor is None:
        input_factor = torch.ones(1, dtype=output_factor.dtype, device=output_factor.device)
    left, right = where.ordered(output_factor, input_factor)
    return assembled(KroneckerLinearOperator(left, right, psd=True, checked=True), where)


def eigen_operator(where: Placement, block: EigenKroneckerBlock) -> LinearOperator:
    """``(Q_L ⊗ Q_R) diag(vec Λ) (Q_L ⊗ Q_R)ᵀ`` on the block's parameters."""
    left, right = where.ordered(block.output_eigenvectors, block.input_eigenvectors)
    return assembled(EigenKroneckerLinearOperator(block.eigenvalues, left, right), where)


def kronecker_eigenbasis(
    where: Placement,
    block: KroneckerBlock,
    eigh: Callable[[Tensor, int | None], tuple[Tensor, Tensor | None]] = eigh64,
) -> tuple[Tensor, EigenKroneckerBlock]:
    """KFAC's eigenvalues ``vec Λ = λ_L ⊗ λ_R`` (float64, ``[rows, columns]``) and eigenbasis.

    Eigendecompositions in float64 (``eigh``: :func:`eigh64`, or one that remembers factors
    shared between blocks), negative eigenvalues (rounding) clamped to zero; the eigenvectors in
    the factors' dtype. The block returned holds the eigenvalues in that dtype.
    """
    output_values, output_vectors = eigh(block.output_factor, block.output_rank)
    if block.input_factor is None:
        input_values, input_vectors = torch.ones(1, dtype=torch.float64, device=output_values.device), None
    else:
        input_values, input_vectors = eigh(block.input_factor, block.input_rank)
    left_values, right_values = where.ordered(output_values, input_values)
    values = torch.outer(left_values, right_values)
    dtype = block.output_factor.dtype
    basis = EigenKroneckerBlock(
        where.params, cast_back(values, dtype), output_vectors, input_vectors, where.input_major
    )
    return values, basis
