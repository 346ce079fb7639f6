r"""The Lanczos process with full re-orthogonalization and thick restarts.

For a symmetric :math:`\mathbf{A}` and a unit start vector :math:`\mathbf{v}_1`, the process
builds an orthonormal basis :math:`\mathbf{V}_m` of the Krylov space
:math:`\mathrm{span}\{\mathbf{v}_1, \mathbf{A}\mathbf{v}_1, \dots, \mathbf{A}^{m-1}\mathbf{v}_1\}`
and the projection :math:`\mathbf{H}_m = \mathbf{V}_m^\top \mathbf{A} \mathbf{V}_m` with

.. math::
    \mathbf{A}\mathbf{V}_m = \mathbf{V}_m \mathbf{H}_m + \beta_m \mathbf{v}_{m+1}\mathbf{e}_m^\top.

Without restarts :math:`\mathbf{H}_m` is the tridiagonal Lanczos matrix. Each new vector
:math:`\mathbf{A}\mathbf{v}_j` is first orthogonalized against the vectors it couples to in exact
arithmetic (:math:`\mathbf{v}_{j-1}, \mathbf{v}_j`: the three-term recurrence), then once against
the whole basis (classical Gram-Schmidt), and a second time only if that pass removed more than
:math:`1 - 1/\sqrt{2}` of its norm (the DGKS criterion of Daniel, Gragg, Kaufman & Stewart,
1976). So the basis stays orthonormal to machine precision and no spurious copies of converged
eigenvalues appear, at two passes over the basis per step; vectors are stored as rows so a pass
reads only the ``j`` vectors in use. Inner products and norms over the ``n`` entries are
accumulated in float64 by blocks (:mod:`curvkit.linalg._dots`), so in float32 too the basis stays
orthonormal to a few units of rounding whatever ``n``; the coefficients subtracted are those
recorded (rounded to the working precision), and :math:`\mathbf{H}_m` is kept in float64. The
entries of :math:`\mathbf{H}_m` are read off the orthogonalization coefficients, which makes a
thick restart (Wu & Simon, 2000) a change of basis: keeping Ritz vectors
:math:`\mathbf{V}_m\mathbf{S}_K` gives :math:`\mathbf{H} = \mathrm{diag}(\theta_K)`, coupled to
:math:`\mathbf{v}_{m+1}` by :math:`\beta_m \mathbf{S}_{m,K}`.

Given orthonormal ``locked`` vectors :math:`\mathbf{L}` (converged eigenvectors), the process
runs on their orthogonal complement: every new vector is also orthogonalized against
:math:`\mathbf{L}`, which is Lanczos on :math:`\mathbf{P}\mathbf{A}\mathbf{P}` with
:math:`\mathbf{P} = \mathbf{I} - \mathbf{L}\mathbf{L}^\top` (deflation by locking); if
:math:`\|\mathbf{A}\mathbf{L} - \mathbf{L}\mathbf{\Theta}\| \le \varepsilon`, that operator
differs from :math:`\mathbf{A}` on the complement by at most :math:`\varepsilon`.

A Ritz pair :math:`(\theta_k, \mathbf{V}_m\mathbf{s}_k)` has residual norm
:math:`\|\mathbf{A}\mathbf{V}_m\mathbf{s}_k - \theta_k\mathbf{V}_m\mathbf{s}_k\| = \beta_m |s_{mk}|`,
so an eigenvalue of :math:`\mathbf{A}` lies within that distance of :math:`\theta_k`.

Everything runs in PyTorch on the operator's device; one product with ``A`` per step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from curvkit._pages import empty_block
from curvkit.linalg._dots import norm, row_dots
from curvkit.linalg._orthonormal import orthonormalized
from curvkit.linear_operator import LinearOperator

BREAKDOWN = 100
"""A residual below ``BREAKDOWN · ε · ‖A‖`` (estimated) marks an invariant subspace."""


def enlarged(tensor: Tensor, shape: tuple[int, int]) -> Tensor:
    """Zeros of ``shape`` with ``tensor`` in the top left corner (storage that grows)."""
    result = tensor.new_zeros(shape)
    result[: tensor.shape[0], : tensor.shape[1]] = tensor
    return result


def checked_norm(w: Tensor) -> float:
    """``‖w‖`` of an operator's product, an estimate of ``‖A‖`` and a check for NaN.

    PyTorch's kernel: fast, but in float32 accurate only to a relative error that grows with the
    length; :func:`curvkit.linalg._dots.norm` is used where accuracy matters.

    Raises:
        RuntimeError: If ``w`` contains NaN or infinity.
    """
    result = float(torch.linalg.vector_norm(w))
    if result != result or result == float("inf"):
        raise RuntimeError("Lanczos: the operator returned NaN or infinity.")
    return result


class RitzPairs(NamedTuple):
    """Ritz values (ascending), the eigenvectors ``S`` of ``H`` and the residual norms (float64)."""

    values: Tensor
    S: Tensor
    residuals: Tensor


class LanczosProcess:
    """Lanczos with full re-orthogonalization on a symmetric operator.

    Args:
        A: Square operator, assumed symmetric.
        start: Start vector ``[n]`` (projected onto the complement of ``locked`` and normalized).
        max_dim: Largest basis size (memory: ``max_dim + 1`` vectors of length ``n``).
        generator: If given, a breakdown (invariant subspace found) is followed by a random
            restart vector orthogonal to the basis, so eigenvalues outside the Krylov space of
            ``start`` can still be found. Without, the process stops at a breakdown.
        locked: Orthonormal rows ``[p, n]`` to work orthogonally to (deflation), or ``None``.

    Attributes:
        dim: Dimension ``n - p`` of the space the process explores.
        broke_down: Whether the last step found an invariant subspace.
        probed_complement: Whether the last step multiplied such a random restart vector. If it
            broke down too, ``A`` is a multiple of the identity on the complement of the basis
            (and of ``locked``): a random vector of that complement is an eigenvector only if
            all its eigenvalues are equal, with probability one.
    """

    def __init__(
        self,
        A: LinearOperator,
        start: Tensor,
        max_dim: int,
        generator: torch.Generator | None = None,
        locked: Tensor | None = None,
    ):
        dtype, device = start.dtype, start.device
        self.A, self.max_dim, self.generator = A, max_dim, generator
        self.locked = (
            None if locked is None or locked.shape[0] == 0 else locked.to(dtype=dtype, device=device)
        )
        self.dim = A.shape[0] - (0 if self.locked is None else self.locked.shape[0])
        self.V = empty_block((max_dim + 1, A.shape[0]), dtype, device).zero_()  # basis vectors as rows
        self.H = torch.zeros(max_dim, max_dim, dtype=torch.float64, device=device)
        start = self._deflate(start.clone())
        self.V[0] = start / norm(start)
        self.size = 0
        self._coupled_from = 0  # first basis vector that A v_j couples to in exact arithmetic
        self.beta = 0.0
        self.num_matvecs = 0
        self.broke_down = False
        self.probed_complement = False
        self._next_is_random = False
        self._norm_estimate = 0.0

    def _deflate(self, v: Tensor) -> Tensor:
        """Remove the components along the locked vectors (twice, for accuracy), in place."""
        if self.locked is not None:
            for _ in range(2):
                v.addmv_(self.locked.T, row_dots(self.locked, v).to(v.dtype), alpha=-1)
        return v

    def grow(self, max_dim: int) -> None:
        """Enlarge the storage to ``max_dim`` basis vectors, keeping the current basis."""
        if max_dim <= self.max_dim:
            return
        self.V = enlarged(self.V, (max_dim + 1, self.V.shape[1]))
        self.H, self.max_dim = enlarged(self.H, (max_dim, max_dim)), max_dim

    def step(self) -> bool:
        """Add one vector to the basis (one product with ``A``).

        Returns:
            ``False`` if the Krylov space became invariant and no restart vector was added.

        Raises:
            RuntimeError: If the product contains NaN or infinity, or the basis is full.
        """
        if self.size >= self.max_dim:
            raise RuntimeError(f"The Lanczos basis is full ({self.max_dim} vectors).")
        w = self.A.matmat(self.V[self.size].unsqueeze(1)).squeeze(1)
        j = self.size
        self.probed_complement, self._next_is_random = self._next_is_random, False
        self.num_matvecs += 1
        self._norm_estimate = max(self._norm_estimate, checked_norm(w))
        h = torch.zeros(j + 1, dtype=torch.float64, device=w.device)
        coupled = self.V[self._coupled_from : j + 1]
        coefficients = row_dots(coupled, w).to(w.dtype)
        w = torch.addmv(w, coupled.T, coefficients, alpha=-1)  # a new tensor: A's product may alias v_j
        h[self._coupled_from :] = coefficients
        basis, norm_before = self.V[: j + 1], float(torch.linalg.vector_norm(w))  # for a ratio: fast kernel
        for _ in range(2):
            h += self._subtract(basis, w)
            if self.locked is not None:
                self._subtract(self.locked, w)
            norm_after = norm(w)
            if norm_after > 0.7071 * norm_before:
                break
            norm_before = norm_after
        self.H[: j + 1, j] = h
        self.H[j, : j + 1] = h
        self.size = j + 1
        self._coupled_from = j
        beta = norm_after
        self.broke_down = beta <= BREAKDOWN * torch.finfo(w.dtype).eps * max(self._norm_estimate, 1e-300)
        if not self.broke_down:
            self.beta = beta
            torch.div(w, beta, out=self.V[j + 1])
            return True
        self.beta = 0.0
        if self.generator is None or self.size >= self.dim:
            return False
        self.V[j + 1] = self._random_orthogonal_vector(basis)
        self._next_is_random = True
        return True

    @staticmethod
    def _subtract(rows: Tensor, w: Tensor) -> Tensor:
        """Remove ``w``'s components along ``rows`` in place and return their coefficients.

        The coefficients are those actually subtracted (rounded to the working precision), as
        float64, so that ``H`` records what was removed.
        """
        coefficients = row_dots(rows, w).to(w.dtype)
        w.addmv_(rows.T, coefficients, alpha=-1)
        return coefficients.double()

    def _random_orthogonal_vector(self, basis: Tensor) -> Tensor:
        return self.random_complement(basis, 1)[:, 0]

    def random_complement(self, basis: Tensor, num_vectors: int) -> Tensor:
        """``[n, num_vectors]`` random orthonormal columns orthogonal to ``basis`` rows and ``locked``."""
        shape = (basis.shape[1], num_vectors)
        X = torch.randn(shape, generator=self.generator, device=self.generator.device, dtype=basis.dtype)
        X = X.to(dtype=basis.dtype, device=basis.device)
        for _ in range(2):
            X = X - basis.T @ row_dots(basis, X.T).to(X.dtype)
            if self.locked is not None:
                X = X - self.locked.T @ row_dots(self.locked, X.T).to(X.dtype)
            X = orthonormalized(X)
        return X

    def ritz_pairs(self) -> RitzPairs:
        """Eigen-decompose the projection ``H`` of the current basis."""
        m = self.size
        values, S = torch.linalg.eigh(self.H[:m, :m])
        return RitzPairs(values, S, self.beta * S[m - 1].abs())

    def ritz_vectors(self, S: Tensor) -> Tensor:
        """``V_m S`` (``[n, k]``) for coefficient columns ``S`` of shape ``[m, k]``."""
        return self.V[: self.size].T @ S.to(self.V.dtype)

    def restart(self, keep: Tensor) -> None:
        """Thick restart: keep the Ritz vectors with indices ``keep`` and the residual direction."""
        m, num_kept = self.size, keep.numel()
        values, S, _ = self.ritz_pairs()
        residual_direction = self.V[m].clone()
        self.V[:num_kept] = S[:, keep].T.to(self.V.dtype) @ self.V[:m]
        self.V[num_kept] = residual_direction
        self.V[num_kept + 1 :] = 0.0
        self.H.zero_()
        self.H[:num_kept, :num_kept] = torch.diag(values[keep])
        self.size = num_kept
        self._coupled_from = 0  # the residual direction couples to every kept Ritz vector
