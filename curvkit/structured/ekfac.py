r"""EKFAC's algebra: per block, eigenvalues in a Kronecker-factored eigenbasis.

George et al. (2018), "Fast Approximate Natural Gradient Descent in a Kronecker-factored
Eigenbasis": keep KFAC's eigenbasis ``Q_G ⊗ Q_A`` and replace its eigenvalues ``λ_G ⊗ λ_A`` by
the second moments of the gradients in that basis,
``Λ_ij = E[((Q_Gᵀ ∇_W ℓ Q_A)_ij)²]``, the diagonal that minimizes the Frobenius distance to the
Fisher among matrices with that eigenbasis. The corrected eigenvalues are accumulated by
:class:`~curvkit.structured.EigenvalueCorrections`; this class multiplies, inverts and gives
closed forms.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import torch

from curvkit.linear_operator import LinearOperator
from curvkit.structured._parameter_blocks import ParameterBlocks
from curvkit.structured.block_diagonal import BlockDiagonalLinearOperator
from curvkit.structured.blocks import EigenKroneckerBlock, Placement, eigen_operator, placement
from curvkit.structured.kfac_inverse import inverse_options


class EigenCorrectedKroneckerLinearOperator(ParameterBlocks):
    r"""EKFAC from eigenbases and eigenvalues: one block ``(Q_G ⊗ Q_A) diag(vec Λ) (Q_G ⊗ Q_A)ᵀ`` per layer.

    Blocks cover parameters as KFAC's do (:mod:`curvkit.structured.blocks`); ``Λ`` has the shape of
    the block's matrix (``[out, in]``; ``[out, in + 1]`` joined; ``[out, 1]`` for a bias alone).
    Closed forms come from the eigenvalues: ``tr = Σ Λ``, ``log det = Σ log Λ``,
    ``‖·‖_F = ‖Λ‖_F`` (eigenvectors are assumed orthonormal, as ``eigh`` returns them).

    Args:
        params: The parameters (only shapes, dtype and device are read), or their shapes.
        blocks: One :class:`~curvkit.structured.EigenKroneckerBlock` per block.
        dtype: Overrides the parameters' dtype.
        device: Overrides the parameters' device.

    Raises:
        TypeError: If a block or tensor has the wrong type.
        ValueError: If eigenvalues are negative or not finite, or shapes do not match the parameters.
    """

    BLOCK: ClassVar[type] = EigenKroneckerBlock
    _FORMAT: ClassVar[str] = "curvkit.EigenCorrectedKroneckerLinearOperator/1"

    def _checked_block(self, block: EigenKroneckerBlock, where: str) -> tuple[EigenKroneckerBlock, Placement]:
        eigenvalues = block.eigenvalues
        if not isinstance(eigenvalues, torch.Tensor) or eigenvalues.ndim != 2:
            raise ValueError(f"{where}.eigenvalues must be a matrix [rows, columns] of the block's shape.")
        eigenvalues = self._converted(eigenvalues)
        if not bool(torch.isfinite(eigenvalues).all()) or bool((eigenvalues < 0).any()):
            raise ValueError(f"{where}.eigenvalues must be finite and non-negative (second moments).")
        rows, columns = eigenvalues.shape
        output_dim, input_dim = (columns, rows) if block.input_major else (rows, columns)
        position = placement(
            self.in_layout.shapes, block.params, block.input_major, output_dim, input_dim, where
        )
        vectors = {}
        for name, dim in (("output_eigenvectors", output_dim), ("input_eigenvectors", input_dim)):
            tensor = getattr(block, name)
            if tensor is not None and (
                not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != (dim, dim)
            ):
                found = list(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(f"{where}.{name} must be None or of shape [{dim}, {dim}], got {found}.")
            vectors[name] = self._converted(tensor)
        return EigenKroneckerBlock(
            position.params, eigenvalues, **vectors, input_major=block.input_major
        ), position

    def _block_operator(self, block: EigenKroneckerBlock, where: Placement) -> LinearOperator:
        return eigen_operator(where, block)

    def inverse(
        self,
        damping: float = 0.0,
        use_heuristic_damping: bool = False,
        min_damping: float = 1e-8,
        use_exact_damping: bool = True,
        cache: bool = True,
        retry_double_precision: bool = True,
    ) -> BlockDiagonalLinearOperator:
        r"""``(EKFAC + δ I)⁻¹ = (Q_G ⊗ Q_A) diag(vec Λ + δ)⁻¹ (Q_G ⊗ Q_A)ᵀ`` per block.

        Only exact damping exists for EKFAC (its eigenvalues are not a Kronecker product, so there
        are no factors to damp); the arguments mirror
        :meth:`~curvkit.structured.KroneckerFactoredLinearOperator.inverse` so that callers can
        pass theirs through. ``cache`` and ``retry_double_precision`` have nothing to do here:
        the inverse is an entrywise reciprocal of ``Λ + δ``, computed now.

        Raises:
            ValueError: If ``use_exact_damping`` is False, the heuristic is asked for, or the
                damping is a pair, negative or not finite.
            torch.linalg.LinAlgError: If ``δ = 0`` and an eigenvalue is zero.
        """
        options = inverse_options(
            damping, use_heuristic_damping, min_damping, use_exact_damping, cache, retry_double_precision
        )
        if not options.use_exact_damping or options.use_heuristic_damping:
            raise ValueError(
                "EKFAC's inverse supports only exact damping: use_exact_damping=True, no heuristic."
            )
        blocks = []
        for index, (block, where) in enumerate(zip(self._blocks, self._placements)):
            shifted = block.eigenvalues.to(torch.float64) + options.damping
            if bool((shifted == 0).any()):
                raise torch.linalg.LinAlgError(
                    f"blocks[{index}] has a zero eigenvalue and damping is 0: the inverse does not exist."
                )
            inverted = replace(block, eigenvalues=(1.0 / shifted).to(block.eigenvalues.dtype))
            blocks.append((where.params, self._block_operator(inverted, where)))
        return BlockDiagonalLinearOperator(self.in_layout, blocks)
