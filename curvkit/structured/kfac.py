r"""KFAC's algebra on given Kronecker factors: ``P · BlockDiag(G_l ⊗ A_l) · Pᵀ`` and what it yields.

Model-free and data-free: whoever computes the factors (from layer inputs and output gradients,
of any Fisher type, 'expand' or 'reduce') hands them over as :class:`KroneckerBlock`\ s, one per
layer (or two, weight and bias, when they are kept apart); this class multiplies, inverts,
eigendecomposes, gives closed forms and saves them. Martens & Grosse (2015), "Optimizing neural
networks with Kronecker-factored approximate curvature"; Grosse & Martens (2016) for
convolutions; Eschenhagen et al. (2023) for weight sharing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor

from curvkit._boundary import as_integer
from curvkit.linear_operator import LinearOperator
from curvkit.structured._closed_forms import as_result
from curvkit.structured._deferred import DeferredLinearOperator
from curvkit.structured._factors import checked_factor, eigh64, once_per_factor, symmetrized
from curvkit.structured._parameter_blocks import ParameterBlocks
from curvkit.structured.block_diagonal import BlockDiagonalLinearOperator
from curvkit.structured.blocks import (
    KroneckerBlock,
    Placement,
    kronecker_eigenbasis,
    kronecker_operator,
    placement,
)
from curvkit.structured.ekfac import EigenCorrectedKroneckerLinearOperator
from curvkit.structured.ekfac_corrections import EigenvalueCorrections
from curvkit.structured.kfac_inverse import inverse_block, inverse_options


class KroneckerFactoredLinearOperator(ParameterBlocks):
    r"""KFAC from its factors: one block ``G ⊗ A`` per layer (see :mod:`curvkit.structured.blocks`).

    The blocks act on curvkit's flattening of the parameters (row-major, one parameter after the
    other) — ``torch.kron(G, A)`` on a weight's entries, see
    :mod:`curvkit.structured.kronecker` for the order. A product with ``k`` columns costs
    ``O(k Σ_l out_l in_l (out_l + in_l))``; nothing of size ``D²`` is formed. Factors are
    symmetrized, converted to the parameters' dtype and device, and must be positive
    semi-definite (they are second moments; this is not checked beyond diagonals, and the
    operator is tagged PSD).

    Closed forms (from the blocks; each written once, in
    :class:`~curvkit.structured.KroneckerLinearOperator`): :meth:`trace`, :meth:`logdet`,
    :meth:`det`, :meth:`frobenius_norm`. :meth:`inverse` gives the damped inverse,
    :meth:`eigendecomposed` the same matrix in its Kronecker eigenbasis (EKFAC before correction),
    :meth:`eigenvalue_corrections` the accumulator of EKFAC's corrected eigenvalues.

    Args:
        params: The parameters (only shapes, dtype and device are read), or their shapes.
        blocks: One :class:`KroneckerBlock` per block; every parameter in exactly one.
        dtype: Overrides the parameters' dtype.
        device: Overrides the parameters' device.
        copy: Symmetrize copies of the factors (the default). ``False`` keeps the given
            tensors as they are, which must then be exactly symmetric (and, being positive
            semi-definite, are checked for finiteness on their diagonals, which bound every
            entry): for a caller that hands over factors of its own
            (:class:`~curvkit.KFACLinearOperator`: a symmetrized copy of a wide factor costs
            page faults and transposed reads, design notes, "Measurements behind the code").

    Raises:
        TypeError: If a block or factor has the wrong type.
        ValueError: If a factor is not square ``[n, n]`` (or a diagonal ``[n]``), has non-finite
            or (diagonal) negative entries, or does not match its parameters' shapes, or the
            blocks do not partition the parameters.

    Example:
        >>> import torch
        >>> W, b = torch.zeros(3, 2), torch.zeros(3)
        >>> G, A = 2.0 * torch.eye(3), torch.tensor([[2.0, 1.0], [1.0, 2.0]])
        >>> kfac = KroneckerFactoredLinearOperator(
        ...     [W, b], [KroneckerBlock((0,), G, A), KroneckerBlock((1,), G)]
        ... )
        >>> kfac.shape, kfac.trace().item()
        ((9, 9), 30.0)
        >>> x = torch.randn(9)
        >>> torch.allclose(kfac.inverse(damping=1e-3) @ (kfac @ x), x, atol=1e-2)
        True
    """

    BLOCK: ClassVar[type] = KroneckerBlock
    _FORMAT: ClassVar[str] = "curvkit.KroneckerFactoredLinearOperator/1"
    _LATER_FIELDS: ClassVar[frozenset[str]] = frozenset({"output_rank", "input_rank"})

    def __init__(
        self,
        params: Sequence[Tensor] | Sequence[Sequence[int]],
        blocks: Sequence[KroneckerBlock],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        copy: bool = True,
    ):
        if not isinstance(copy, bool):
            raise TypeError(f"copy must be a bool, got {copy!r}.")
        self._copy = copy
        super().__init__(params, blocks, dtype=dtype, device=device)

    def _install(self, blocks: Sequence[KroneckerBlock]) -> None:
        # a factor held by several blocks is copied once (converted and symmetrized in one copy)
        self._copy_of = once_per_factor(lambda given: symmetrized(given.detach(), self.dtype, self.device))
        try:
            super()._install(blocks)
        finally:
            del self._copy_of  # it holds the given factors

    def _checked_block(self, block: KroneckerBlock, where: str) -> tuple[KroneckerBlock, Placement]:
        output_factor = self._factor(block.output_factor, f"{where}.output_factor")
        input_factor = (
            None if block.input_factor is None else self._factor(block.input_factor, f"{where}.input_factor")
        )
        input_dim = None if input_factor is None else input_factor.shape[0]
        position = placement(
            self.in_layout.shapes, block.params, block.input_major, output_factor.shape[0], input_dim, where
        )
        output_rank = _rank_bound(block.output_rank, f"{where}.output_rank")
        input_rank = None if input_factor is None else _rank_bound(block.input_rank, f"{where}.input_rank")
        checked = KroneckerBlock(
            position.params, output_factor, input_factor, block.input_major, output_rank, input_rank
        )
        return checked, position

    def _factor(self, factor: object, name: str) -> Tensor:
        """The factor checked, in this operator's dtype and device, symmetrized."""
        given = checked_factor(factor, name, finite_diagonal=not self._copy)
        if given.ndim == 2 and self._copy:
            return self._copy_of(given)
        factor = self._converted(given)
        if factor.ndim == 1 and bool((factor < 0).any()):
            raise ValueError(f"{name} is a diagonal with negative entries; factors are second moments (PSD).")
        return factor

    def _block_operator(self, block: KroneckerBlock, where: Placement) -> LinearOperator:
        return kronecker_operator(where, block.output_factor, block.input_factor)

    def slogdet(self) -> tuple[Tensor, Tensor]:
        """``(sign, log|det|)``; ``(0, -inf)`` at once where a factor's rank bound is below its size.

        Such a factor is singular, and so is every Kronecker product holding it: its eigenvalues
        computed in floating point would be rounding, the log-determinant of no use.
        """
        if any(_bounded_below_size(block) for block in self._blocks):
            return as_result(0.0, self), as_result(-math.inf, self)
        return super().slogdet()

    def inverse(
        self,
        damping: float | tuple[float, float] = 0.0,
        use_heuristic_damping: bool = False,
        min_damping: float = 1e-8,
        use_exact_damping: bool = False,
        cache: bool = True,
        retry_double_precision: bool = True,
    ) -> BlockDiagonalLinearOperator:
        r"""The inverse of damped KFAC, block by block (curvlinops' ``KFACInverseLinearOperator``).

        See :mod:`curvkit.structured.kfac_inverse` for the three kinds of damping and where they
        differ from curvlinops. Blocks are inverted when first used (a product or closed form),
        with the factors as they are now.

        Args:
            damping: ``δ ≥ 0`` added to both factors, or a pair ``(δ_A, δ_G)`` (input, output).
            use_heuristic_damping: Split ``δ`` between the factors by Martens & Grosse's π.
            min_damping: Lower bound of each factor's damping under the heuristic.
            use_exact_damping: Invert ``G ⊗ A + δ I`` through the factors' eigendecompositions.
            cache: Keep the inverted factors (else they are computed again for every product).
            retry_double_precision: Retry a failed float32 Cholesky factorization in float64.

        Returns:
            A symmetric PSD :class:`~curvkit.structured.BlockDiagonalLinearOperator` with closed forms.

        Raises:
            TypeError: If a switch is not a bool.
            ValueError: If a damping is negative or not finite, a pair is given with the heuristic
                or exact damping, or both of those are selected.
            torch.linalg.LinAlgError: When used, if a damped factor is not positive definite.
        """
        options = inverse_options(
            damping, use_heuristic_damping, min_damping, use_exact_damping, cache, retry_double_precision
        )
        blocks = []
        for index, (block, where) in enumerate(zip(self._blocks, self._placements)):
            deferred = DeferredLinearOperator(
                partial(inverse_block, block, where, options, f"blocks[{index}]"),
                self._operator.blocks[index][1].shape,
                dtype=self.dtype,
                device=self.device,
                symmetric=True,
                psd=True,
                cache=cache,
            )
            blocks.append((where.params, deferred))
        return BlockDiagonalLinearOperator(self.in_layout, blocks)

    def eigendecomposed(self) -> EigenCorrectedKroneckerLinearOperator:
        r"""This matrix as ``(Q_G ⊗ Q_A) diag(λ_G ⊗ λ_A) (Q_G ⊗ Q_A)ᵀ`` per block (EKFAC, uncorrected).

        Eigendecompositions in float64; negative eigenvalues (rounding) clamped to zero, so this
        equals KFAC up to that clamping.
        """
        eigh = once_per_factor(eigh64)  # a separate bias's output factor is its weight's
        return EigenCorrectedKroneckerLinearOperator(
            self.in_layout.shapes,
            [
                kronecker_eigenbasis(where, block, eigh)[1]
                for block, where in zip(self._blocks, self._placements)
            ],
            dtype=self.dtype,
            device=self.device,
        )

    def eigenvalue_corrections(self, max_entries: int = 2**24) -> EigenvalueCorrections:
        """An accumulator of EKFAC's corrected eigenvalues in this KFAC's eigenbasis (see its class)."""
        return EigenvalueCorrections(self.eigendecomposed(), max_entries=max_entries)


def _rank_bound(rank: object, name: str) -> int | None:
    return None if rank is None else as_integer(rank, name, minimum=0)


def _bounded_below_size(block: KroneckerBlock) -> bool:
    factors = [(block.output_factor, block.output_rank), (block.input_factor, block.input_rank)]
    return any(rank is not None and rank < factor.shape[0] for factor, rank in factors if factor is not None)
