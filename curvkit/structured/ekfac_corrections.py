r"""EKFAC's corrected eigenvalues, accumulated batch by batch from per-example gradients.

George et al. (2018): in KFAC's eigenbasis, the corrected eigenvalue of ``Q_G[:, i] ⊗ Q_A[:, j]``
is the second moment of the gradients' coordinate there,

.. math::
    \Lambda_{ij} = \sum_n s_n \big( (\mathbf{Q}_G^\top \mathbf{W}_n \mathbf{Q}_A)_{ij} \big)^2,
    \qquad \mathbf{W}_n = \sum_t \mathbf{g}_{nt} \mathbf{a}_{nt}^\top,

with ``W_n`` the per-example gradient of a layer that sees ``T`` positions (tokens, pixels) per
example, ``g_nt`` the gradient at its output and ``a_nt`` its input there, and ``s_n`` a scale
(``1 / N``, say). Three ways to the sum, chosen per call by cost (``T``: positions, ``R × C``:
the block's matrix; facts as in curvlinops 3.0.1's analysis, the ``T (R² + C²)`` comparison ours):

- **Gramian** (when ``T² (R + C) < R C``, e.g. always for ``T = 1``): with the rotated vectors
  ``g̃ = Q_Gᵀ g``, ``ã = Q_Aᵀ a``, ``Λ = Σ_n Σ_{s,t} (g̃_ns ∘ g̃_nt)(ã_ns ∘ ã_nt)ᵀ``: one matrix
  product over the ``N T²`` pairs, memory ``N T² (R + C)``, no per-example gradient formed;
- **per-example gradients** otherwise (memory ``N R C``): rotate the vectors first
  (``N T (R² + C²)`` operations) or form ``W_n`` and rotate it (``N R C (R + C)``), whichever is
  cheaper, then square and sum.

Both work on chunks of examples of at most ``max_entries`` numbers, so the memory stays bounded
whatever the batch. Nothing of the data set is kept between calls but the ``R × C`` sums.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from numbers import Real

import torch
from torch import Tensor

from curvkit._boundary import as_integer
from curvkit.structured._factors import cast_back, scaled_to_one
from curvkit.structured.blocks import EigenKroneckerBlock
from curvkit.structured.ekfac import EigenCorrectedKroneckerLinearOperator


def uses_gramian(positions: int, rows: int, columns: int) -> bool:
    """Whether the Gramian route needs less memory than per-example gradients."""
    return positions**2 * (rows + columns) < rows * columns


def squared_projections(
    row_vectors: Tensor,
    column_vectors: Tensor,
    row_basis: Tensor | None,
    column_basis: Tensor | None,
    max_entries: int,
) -> tuple[Tensor, float]:
    r"""``Σ_n ((Q_Rᵀ Σ_t r_nt c_ntᵀ Q_C)_{ij})²`` in float64, for ``r [N, T, R]``, ``c [N, T, C]``.

    As ``(S, s)`` with the sum ``s · S``: the Gramian route on a CPU scales the vectors first.
    ``None`` bases are identities. See the module docstring for the routes.
    """
    N, T, R = row_vectors.shape
    C = column_vectors.shape[2]
    total = torch.zeros(R, C, dtype=torch.float64, device=row_vectors.device)
    gramian = uses_gramian(T, R, C)
    rotate_first = gramian or T * (R * R + C * C) <= R * C * (R + C)
    if rotate_first:
        row_vectors = row_vectors if row_basis is None else row_vectors @ row_basis
        column_vectors = column_vectors if column_basis is None else column_vectors @ column_basis
    scale = 1.0
    if gramian:  # products of pairs of rotated vectors, scaled to 1: no subnormal numbers
        epsilon = torch.finfo(row_vectors.dtype).eps
        row_vectors, row_scale = scaled_to_one(row_vectors, epsilon)
        column_vectors, column_scale = scaled_to_one(column_vectors, epsilon)
        scale = (row_scale * column_scale) ** 2
    chunk = max(1, max_entries // (T * T * (R + C) if gramian else R * C))
    for start in range(0, N, chunk):
        rows, columns = row_vectors[start : start + chunk], column_vectors[start : start + chunk]
        if gramian:
            row_pairs = (rows.unsqueeze(2) * rows.unsqueeze(1)).reshape(-1, R)
            column_pairs = (columns.unsqueeze(2) * columns.unsqueeze(1)).reshape(-1, C)
            total += (row_pairs.T @ column_pairs).to(torch.float64)
            continue
        gradients = rows.transpose(1, 2) @ columns
        if not rotate_first:
            gradients = _rotated(gradients, row_basis, column_basis)
        total += gradients.square().sum(0).to(torch.float64)
    return total, scale


def _rotated(gradients: Tensor, row_basis: Tensor | None, column_basis: Tensor | None) -> Tensor:
    """``Q_Rᵀ W_n Q_C`` for each ``W_n`` of ``[n, R, C]``."""
    if row_basis is not None:
        gradients = row_basis.T @ gradients
    return gradients if column_basis is None else gradients @ column_basis


def _row_and_column_bases(spec: EigenKroneckerBlock) -> tuple[Tensor | None, Tensor | None]:
    """The eigenbases of the rows and of the columns of the block's matrix."""
    if spec.input_major:
        return spec.input_eigenvectors, spec.output_eigenvectors
    return spec.output_eigenvectors, spec.input_eigenvectors


class EigenvalueCorrections:
    r"""Accumulates EKFAC's corrected eigenvalues in a fixed Kronecker eigenbasis, batch by batch.

    Hand over, for each block and batch, either the layer's output gradients and inputs
    (:meth:`add`) or per-example gradients (:meth:`add_gradients`), with the scale the Fisher type
    and loss reduction ask for; :meth:`result` returns the EKFAC operator. What counts as an
    "example" is the caller's: a datum, each Monte-Carlo sample of it, each column of the loss
    Hessian's square root (type-2), each position ('expand' read position by position). Several
    uses of one layer in a forward pass add up *before* squaring: concatenate their positions.

    Args:
        basis: The eigenbasis and the blocks (usually ``kfac.eigendecomposed()``; its eigenvalues
            are not used).
        max_entries: Most numbers an intermediate (per-example gradients or Gramian pairs of a
            chunk of examples) may hold.

    Example:
        >>> import torch
        >>> from curvkit.structured import KroneckerBlock, KroneckerFactoredLinearOperator
        >>> g, a = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
        >>> kfac = KroneckerFactoredLinearOperator(
        ...     [torch.zeros(3, 2, dtype=torch.float64)], [KroneckerBlock((0,), g.T @ g / 8, a.T @ a / 8)]
        ... )
        >>> corrections = kfac.eigenvalue_corrections()
        >>> corrections.add(0, output_gradients=g, inputs=a, scale=1 / 8)
        >>> ekfac = corrections.result()
        >>> per_example = torch.einsum("ni,nj->nij", g, a).reshape(8, 6)
        >>> torch.allclose(ekfac.trace(), per_example.square().sum() / 8)
        True
    """

    def __init__(self, basis: EigenCorrectedKroneckerLinearOperator, max_entries: int = 2**24):
        if not isinstance(basis, EigenCorrectedKroneckerLinearOperator):
            raise TypeError(
                f"basis must be an EigenCorrectedKroneckerLinearOperator, got {type(basis).__name__}."
            )
        self._basis = basis
        self._max_entries = as_integer(max_entries, "max_entries", minimum=1)
        self._sums = [torch.zeros_like(block.eigenvalues, dtype=torch.float64) for block in basis.blocks]
        self._added = [False] * len(basis.blocks)

    def _block(self, block: int) -> EigenKroneckerBlock:
        index = as_integer(block, "block", minimum=0)
        if index >= len(self._sums):
            raise ValueError(f"block must be below {len(self._sums)} (the number of blocks), got {index}.")
        return self._basis.blocks[index]

    def _tensor(self, tensor: object, name: str) -> Tensor:
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            raise TypeError(f"{name} must be a real floating-point tensor, got {type(tensor).__name__}.")
        return tensor.detach().to(dtype=self._basis.dtype, device=self._basis.device)

    def _accumulate(self, block: int, total: Tensor, scale: object, factor: float = 1.0) -> None:
        """Add ``scale · factor · total`` (``factor``: from :func:`squared_projections`)."""
        if isinstance(scale, bool) or not isinstance(scale, Real) or not math.isfinite(scale) or scale < 0:
            raise ValueError(f"scale must be a finite non-negative number, got {scale!r}.")
        self._sums[block].add_(total, alpha=float(scale) * factor)
        self._added[block] = True

    def add(
        self, block: int, output_gradients: Tensor, inputs: Tensor | None = None, *, scale: float = 1.0
    ) -> None:
        """Add ``scale · Σ_n (Q_Gᵀ W_n Q_A)²`` for ``W_n = Σ_t g_nt a_ntᵀ`` to a block's sum.

        Args:
            block: The block's index in ``basis.blocks``.
            output_gradients: ``g``, ``[N, out]`` or ``[N, T, out]``.
            inputs: ``a``, ``[N, in]`` or ``[N, T, in]`` — the vectors the input factor is the
                second moment of (ending in 1 when weight and bias are joined); ``None`` for a
                bias alone; for an input-major block with a diagonal input factor also token
                indices ``[N]`` or ``[N, T]`` (integers: one-hot inputs, never formed).
            scale: ``s ≥ 0``, the weight of each example.

        Raises:
            ValueError: If the shapes do not fit the block or each other.
        """
        spec = self._block(block)
        rows, columns = spec.eigenvalues.shape
        g = self._tensor(output_gradients, "output_gradients")
        g = g.unsqueeze(1) if g.ndim == 2 else g
        out = columns if spec.input_major else rows
        if g.ndim != 3 or g.shape[2] != out:
            raise ValueError(
                f"output_gradients must have shape [N, {out}] or [N, T, {out}], "
                f"got {list(output_gradients.shape)}."
            )
        if isinstance(inputs, Tensor) and not inputs.is_floating_point() and not inputs.is_complex():
            self._accumulate(block, self._token_projections(spec, g, inputs), scale)
            return
        if inputs is None:
            if len(spec.params) != 1 or columns != 1 or spec.input_major:
                raise ValueError(f"blocks[{block}] covers a weight: inputs are required.")
            a = g.new_ones(g.shape[0], g.shape[1], 1)
        else:
            a = self._tensor(inputs, "inputs")
            a = a.unsqueeze(1) if a.ndim == 2 else a
            in_dim = rows if spec.input_major else columns
            if a.ndim != 3 or a.shape[:2] != g.shape[:2] or a.shape[2] != in_dim:
                raise ValueError(
                    f"inputs must have shape [N, {in_dim}] or [N, T, {in_dim}] with output_gradients's N, T "
                    f"({list(g.shape[:2])}), got {list(inputs.shape)}."
                )
        row_vectors, column_vectors = (a, g) if spec.input_major else (g, a)
        row_basis, column_basis = _row_and_column_bases(spec)
        total, factor = squared_projections(
            row_vectors, column_vectors, row_basis, column_basis, self._max_entries
        )
        self._accumulate(block, total, scale, factor)

    def _token_projections(self, spec: EigenKroneckerBlock, g: Tensor, tokens: Tensor) -> Tensor:
        """``Σ_n (Σ_{t: token_nt = v} Q_Gᵀ g_nt)²`` for each token ``v``: one-hot inputs, never formed."""
        if not spec.input_major or spec.input_eigenvectors is not None:
            raise ValueError(
                "Integer inputs (token indices) need an input-major block with a diagonal input factor."
            )
        tokens = tokens.to(g.device).reshape(g.shape[0], -1)
        if tokens.shape[1] != g.shape[1]:
            raise ValueError(
                f"inputs (token indices) must have shape {list(g.shape[:2])}, got {list(tokens.shape)}."
            )
        vocabulary = spec.eigenvalues.shape[0]
        if bool((tokens < 0).any()) or bool((tokens >= vocabulary).any()):
            raise ValueError(f"inputs (token indices) must lie in [0, {vocabulary}).")
        rotated = g if spec.output_eigenvectors is None else g @ spec.output_eigenvectors
        example = torch.arange(g.shape[0], device=g.device).unsqueeze(1)
        keys, positions = torch.unique((example * vocabulary + tokens).reshape(-1), return_inverse=True)
        per_pair = rotated.new_zeros(keys.numel(), rotated.shape[2]).index_add_(
            0, positions, rotated.reshape(-1, rotated.shape[2])
        )
        total = torch.zeros(vocabulary, rotated.shape[2], dtype=torch.float64, device=g.device)
        return total.index_add_(0, keys % vocabulary, per_pair.square().to(torch.float64))

    def add_gradients(self, block: int, gradients: Tensor | Sequence[Tensor], *, scale: float = 1.0) -> None:
        """Add ``scale · Σ_n (Q_Gᵀ W_n Q_A)²`` for given per-example gradients.

        Args:
            block: The block's index.
            gradients: ``[N, *shape]`` of the block's parameter, or for a joined block the pair
                ``([N, *weight shape], [N, out])``.
            scale: ``s ≥ 0``.

        Raises:
            ValueError: If the shapes do not fit the block.
        """
        spec = self._block(block)
        rows, columns = spec.eigenvalues.shape
        shapes = [self._basis.in_layout.shapes[p] for p in spec.params]
        parts = [gradients] if isinstance(gradients, Tensor) else list(gradients)
        if len(parts) != len(shapes):
            raise ValueError(
                f"gradients must hold {len(shapes)} tensor(s) for blocks[{block}], got {len(parts)}."
            )
        parts = [self._tensor(part, "gradients") for part in parts]
        N = parts[0].shape[0] if parts[0].ndim else 0
        for part, shape in zip(parts, shapes):
            if tuple(part.shape) != (N, *shape):
                raise ValueError(
                    f"gradients must have shape [N, {', '.join(map(str, shape))}], got {list(part.shape)}."
                )
        matrices = torch.cat([part.reshape(N, rows, -1) for part in parts], dim=2)
        row_basis, column_basis = _row_and_column_bases(spec)
        total = torch.zeros(rows, columns, dtype=torch.float64, device=matrices.device)
        chunk = max(1, self._max_entries // (rows * columns))
        for start in range(0, N, chunk):
            rotated = _rotated(matrices[start : start + chunk], row_basis, column_basis)
            total += rotated.square().sum(0).to(torch.float64)
        self._accumulate(block, total, scale)

    @property
    def basis(self) -> EigenCorrectedKroneckerLinearOperator:
        """The eigenbasis and blocks the corrections are accumulated in."""
        return self._basis

    @property
    def sums(self) -> list[Tensor]:
        """The accumulated sums (float64), one per block: to be reduced across batches or processes."""
        return self._sums

    def add_sums(self, sums: Sequence[Tensor], *, scale: float = 1.0) -> None:
        """Add ``scale`` times sums accumulated elsewhere over the same basis (:attr:`sums` of another).

        Raises:
            ValueError: If there is not one sum of each block's shape per block.
        """
        if len(sums) != len(self._sums) or any(
            not isinstance(total, Tensor) or total.shape != mine.shape
            for total, mine in zip(sums, self._sums)
        ):
            raise ValueError(
                f"sums must hold one tensor per block, of shapes {[list(t.shape) for t in self._sums]}."
            )
        for block, total in enumerate(sums):
            self._accumulate(block, total.to(torch.float64), scale)

    def result(self) -> EigenCorrectedKroneckerLinearOperator:
        """EKFAC with the accumulated eigenvalues (in the basis' dtype and device), negatives set to 0.

        Also those below the dtype's smallest normal number (:func:`~curvkit.structured._factors.cast_back`).

        Raises:
            ValueError: If a block received nothing (its eigenvalues would be zero).
        """
        missing = [index for index, added in enumerate(self._added) if not added]
        if missing:
            raise ValueError(f"blocks {missing} received no gradients; add to every block before result().")
        # second moments, negative only by rounding: the Gramian route's products of pairs of
        # positions cancel where a moment is 0, and leave ± a float32 rounding error there
        blocks = [
            replace(block, eigenvalues=cast_back(total.clamp_min(0.0), block.eigenvalues.dtype))
            for block, total in zip(self._basis.blocks, self._sums)
        ]
        return EigenCorrectedKroneckerLinearOperator(
            self._basis.in_layout.shapes, blocks, dtype=self._basis.dtype, device=self._basis.device
        )
