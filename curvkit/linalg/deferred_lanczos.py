r"""Lanczos with full re-orthogonalization deferred to block sweeps.

:class:`~curvkit.linalg.lanczos.LanczosProcess` orthogonalizes every new vector against the whole
basis before multiplying it: two matrix-vector passes over the basis per step. On a CPU these run
at memory speed on one core, a sizeable share of a density's time next to the products (design
notes, "Measurements behind the code").
This process multiplies each new vector right after the three-term recurrence (orthogonalized
against its two predecessors only) and orthogonalizes the vectors of the last ``s`` steps
together: one block sweep of two matrix-matrix products over the basis (block classical
Gram-Schmidt), then a Cholesky QR within the block. Deferring re-orthogonalization to save
passes over the basis follows the delayed variants of Arnoldi (Hernández, Román & Tomás, 2007);
the algebra below keeps the result that of full re-orthogonalization.

Write :math:`\mathbf{B}` for the vectors actually multiplied (settled rows, then pending ones)
and :math:`\mathbf{M}` for the recorded coefficients: :math:`\mathbf{A}\mathbf{B}_{:m} =
\mathbf{B}_{:m+1}\mathbf{M}` holds to rounding whatever the orthogonality of the pending
vectors, since each product is split into its components along the window and a remainder and
nothing is dropped. A sweep factors :math:`\mathbf{B} = \mathbf{V}\mathbf{R}` with
:math:`\mathbf{V}` orthonormal and :math:`\mathbf{R} = [\mathbf{I}, \mathbf{C}^\top;
\mathbf{0}, \mathbf{L}^\top]` upper triangular (the block's coefficients on the settled rows
and its Cholesky factor), hence

.. math::
    \mathbf{A}\mathbf{V}_{:m} = \mathbf{V}_{:m+1}\,\mathbf{R}\,\mathbf{M}\,\mathbf{R}_{:m,:m}^{-1},

the Lanczos relation of the orthonormal basis of the same Krylov space: the projected matrix, its
Ritz pairs and the quadratures are those of step-by-step full re-orthogonalization up to
rounding, and the basis is orthonormal to working precision. As there, inner products and norms
over the ``n`` entries are summed in float64 by blocks (:mod:`curvkit.linalg._dots`), so that
this holds in float32 whatever ``n``; :math:`\mathbf{M}` and :math:`\mathbf{R}` are kept in
float64, :math:`\mathbf{R}` being what the rows were actually transformed with.

One pass is accurate for a (unit) vector that keeps more than :math:`1/\sqrt{2}` of its norm
(the criterion of Daniel, Gragg, Kaufman & Stewart, 1976). Pending vectors drift from the settled
basis by rounding amplified through the recurrence, fastest once Ritz pairs have converged to
machine precision; the first vector of a block that lost more is orthogonalized on its own (two
passes), the products of the vectors after it are discarded, and the block size halves (it
doubles back, up to ``block_size``, after sweeps that removed at most :math:`\sqrt{\varepsilon}`).
On the benchmark MLP Hessian no product is discarded; on matrices with outliers a few are (at most
``block_size - 1`` per cut).

Reference: V. Hernández, J. E. Román, A. Tomás (2007). Parallel Arnoldi eigensolvers with
enhanced scalability via global communications rearrangement. Parallel Computing 33(7-8).
"""

from __future__ import annotations

import torch
from torch import Tensor

from curvkit.linalg._dots import norm, norms, row_dots
from curvkit.linalg.lanczos import BREAKDOWN, RitzPairs, checked_norm, enlarged
from curvkit.linear_operator import LinearOperator


class DeferredLanczosProcess:
    """Lanczos on a symmetric operator, re-orthogonalized in block sweeps (see the module).

    Args:
        A: Square operator, assumed symmetric.
        start: Start vector ``[n]`` (normalized here).
        max_dim: Largest basis size (memory: ``max_dim + 1`` vectors of length ``n``).
        block_size: Most steps between sweeps. ``1`` sweeps after every step (no deferral).

    Attributes:
        size: Number of products in the basis (``m``).
        num_matvecs: Products absorbed, including discarded ones.
        broke_down: Whether the Krylov space became invariant; the process then stops.
        block: Current number of steps between sweeps (adapted, at most ``block_size``).
        num_sweeps, num_cuts: Sweeps so far, and how many of them cut their block.
    """

    def __init__(self, A: LinearOperator, start: Tensor, max_dim: int, block_size: int = 8):
        dtype, device, n = start.dtype, start.device, A.shape[0]
        self.A, self.max_dim, self.block_size = A, max_dim, block_size
        self.V = torch.empty(max_dim + 1, n, dtype=dtype, device=device)  # B's rows, then V's
        self.M = torch.zeros(max_dim + 1, max_dim, dtype=torch.float64, device=device)
        torch.div(start, norm(start), out=self.V[0])
        self.size, self.num_matvecs, self.broke_down = 0, 0, False
        self.num_sweeps = self.num_cuts = 0
        self._settled = 1  # rows below are orthonormal and final
        self.block = block_size
        self._norm_estimate = 0.0
        self._eps = torch.finfo(dtype).eps

    def grow(self, max_dim: int) -> None:
        """Enlarge the storage to ``max_dim`` basis vectors, keeping the current basis."""
        if max_dim <= self.max_dim:
            return
        self.V = enlarged(self.V, (max_dim + 1, self.V.shape[1]))
        self.M, self.max_dim = enlarged(self.M, (max_dim + 1, max_dim)), max_dim

    def next_vector(self) -> Tensor:
        """The vector the next step multiplies ``A`` onto (``[n]``, a view into the basis).

        Raises:
            RuntimeError: If the basis is full or the process broke down.
        """
        if self.size >= self.max_dim or self.broke_down:
            raise RuntimeError(f"The Lanczos basis is full ({self.max_dim} vectors) or invariant.")
        return self.V[self.size]

    def step(self) -> bool:
        """Multiply the next vector and absorb the product; ``False`` at a breakdown."""
        return self.absorb(self.A.matmat(self.next_vector().unsqueeze(1)).squeeze(1))

    def absorb(self, w: Tensor) -> bool:
        """Complete a step with ``w = A b_m`` (``b_m`` = :meth:`next_vector`), multiplied by the caller.

        Returns:
            ``False`` if the Krylov space became invariant.

        Raises:
            RuntimeError: If ``w`` contains NaN or infinity.
        """
        self.next_vector()  # room check
        j = self.size
        self.num_matvecs += 1
        self._norm_estimate = max(self._norm_estimate, checked_norm(w))
        window = self.V[max(0, j - 1) : j + 1]
        coefficients = row_dots(window, w).to(w.dtype)
        residual = torch.addmv(w, window.T, coefficients, alpha=-1, out=self.V[j + 1])
        self.M[max(0, j - 1) : j + 1, j] = coefficients
        gamma = norm(residual)
        self.size = j + 1
        if gamma <= BREAKDOWN * self._eps * self._norm_estimate:
            self.broke_down = True
        else:
            residual.div_(gamma)
            self.M[j + 1, j] = gamma
        if self.broke_down or self._num_pending() >= self.block or self.size == self.max_dim:
            self._sweep()
        return not self.broke_down

    def ritz_pairs(self) -> RitzPairs:
        """Eigen-decompose the projection of ``A`` onto the basis (after settling pending vectors)."""
        self._sweep()
        m = self.size
        H = self.M[:m, :m]
        values, S = torch.linalg.eigh((H + H.T) / 2)
        return RitzPairs(values, S, (self.M[m, :m] @ S).abs())

    def _num_pending(self) -> int:
        """Rows not yet swept: up to the next vector, or the last multiplied one at a breakdown."""
        last_row = self.size - 1 if self.broke_down else self.size
        return last_row + 1 - self._settled

    def _sweep(self) -> None:
        """Orthonormalize the pending rows against the settled ones and each other; update ``M``."""
        settled, num_pending = self._settled, self._num_pending()
        if num_pending <= 0:
            return
        self.num_sweeps += 1
        basis, pending = self.V[:settled], self.V[settled : settled + num_pending]
        C = row_dots(pending, basis).to(pending.dtype)  # [q, settled]: components along the settled rows
        pending.addmm_(C, basis, alpha=-1)
        C = C.double()  # what was subtracted
        gram = row_dots(pending, pending)
        L, info = torch.linalg.cholesky_ex(gram)
        # one pass is accurate for (unit) rows that keep more than 1/√2 of their norm (Daniel,
        # Gragg, Kaufman & Stewart, 1976); the first row that does not is orthogonalized alone
        cut = num_pending if int(info) == 0 else int(info) - 1
        lost = (L.diagonal()[:cut] < 0.5**0.5).nonzero()
        cut = int(lost[0]) if lost.numel() else cut
        largest = float(C.abs().max())
        if cut == num_pending:
            Q, L = _triangular_solve(L, pending)
            if largest <= self._eps**0.5:
                self.block = min(self.block_size, 2 * self.block)
        else:
            Q, C, L, num_pending = self._cut(basis, pending, C, gram, cut)
        # Cholesky QR normalizes through a Gram matrix; norms summed directly are more accurate
        row_norms = norms(Q, 1).to(Q.dtype).clamp_min(torch.finfo(Q.dtype).tiny)
        torch.div(Q, row_norms[:, None], out=self.V[settled : settled + num_pending])
        L *= row_norms.double()[None, :]
        self._transform(C, L, num_pending)
        self._settled = settled + num_pending
        self._stop_at_invariant_subspace(settled, settled + num_pending)

    def _stop_at_invariant_subspace(self, first: int, stop: int) -> None:
        """Break down at the first swept row ``i`` whose coupling ``M[i, i-1]`` is negligible.

        The local residual of a step overestimates that coupling by the drift of its vector from
        the basis, so a breakdown inside a block shows only after the sweep; the products after
        it are discarded.
        """
        couplings = self.M[first:stop, first - 1 : stop - 1].diagonal().abs()
        negligible = (couplings <= BREAKDOWN * self._eps * self._norm_estimate).nonzero()
        if negligible.numel():
            row = first + int(negligible[0])
            self.size, self._settled, self.broke_down = row, row, True
        if self.broke_down:
            self.M[self.size :] = 0.0
            self.M[:, self.size :] = 0.0

    def _cut(
        self, basis: Tensor, pending: Tensor, C: Tensor, gram: Tensor, cut: int
    ) -> tuple[Tensor, Tensor, Tensor, int]:
        """Keep pending rows ``0..cut``, the last orthogonalized on its own; drop later products."""
        self.num_cuts += 1
        self.block = max(1, self.block // 2)
        last_row = self._settled + cut
        self.size, self.broke_down = last_row, False
        self.M[last_row + 1 :] = 0.0
        self.M[:, last_row:] = 0.0
        L = gram.new_zeros(cut + 1, cut + 1)
        Q = torch.empty_like(pending[: cut + 1])
        Q[:cut], L[:cut, :cut] = _triangular_solve(torch.linalg.cholesky(gram[:cut, :cut]), pending[:cut])
        C, tail = C[: cut + 1].clone(), pending[cut].clone()
        for _ in range(2):
            along_basis = row_dots(basis, tail).to(tail.dtype)
            along_block = row_dots(Q[:cut], tail).to(tail.dtype)
            tail.addmv_(basis.T, along_basis, alpha=-1).addmv_(Q[:cut].T, along_block, alpha=-1)
            C[cut] += along_basis.double()
            L[cut, :cut] += along_block.double()
        L[cut, cut] = 1.0
        Q[cut] = tail
        return Q, C, L, cut + 1

    def _transform(self, C: Tensor, L: Tensor, num_pending: int) -> None:
        r"""``M ← R M R_{:m,:m}^{-1}`` with ``R = [[I, Cᵀ], [0, Lᵀ]]`` acting on the pending rows."""
        settled, m = self._settled, self.size
        M = self.M[: m + 1, :m]
        block, num_columns = slice(settled, settled + num_pending), m - settled
        if num_columns > 0:  # columns of the pending vectors that were multiplied
            right = M[:, settled:m] - M[:, :settled] @ C.T[:, :num_columns]
            M[:, settled:m] = torch.linalg.solve_triangular(
                L.T[:num_columns, :num_columns], right, upper=True, left=False
            )
        rows = M[block].clone()
        M[:settled] += C.T[:, : rows.shape[0]] @ rows
        M[block] = L.T[: rows.shape[0], : rows.shape[0]] @ rows


def _triangular_solve(L: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """``(Q, L')``: ``Q = L⁻¹ rows`` for a lower triangular float64 ``L``, in the working precision.

    ``L'`` is the float64 inverse of the rounded ``L⁻¹``, so that ``rows = L' Q`` holds for the
    rows actually computed, up to the rounding of the product (not of ``L⁻¹``).
    """
    inverse = torch.linalg.inv(L).to(rows.dtype)
    return inverse @ rows, torch.linalg.inv(inverse.double()).tril()
