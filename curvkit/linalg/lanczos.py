r"""The Lanczos process with full re-orthogonalization and thick restarts.

For a symmetric :math:`\mathbf{A}` and a unit start vector :math:`\mathbf{v}_1`, the process
builds an orthonormal basis :math:`\mathbf{V}_m` of the Krylov space
:math:`\mathrm{span}\{\mathbf{v}_1, \mathbf{A}\mathbf{v}_1, \dots, \mathbf{A}^{m-1}\mathbf{v}_1\}`
and the projection :math:`\mathbf{H}_m = \mathbf{V}_m^\top \mathbf{A} \mathbf{V}_m` with

.. math::
    \mathbf{A}\mathbf{V}_m = \mathbf{V}_m \mathbf{H}_m + \beta_m \mathbf{v}_{m+1}\mathbf{e}_m^\top.

Without restarts :math:`\mathbf{H}_m` is the tridiagonal Lanczos matrix. Each new vector is
orthogonalized against the whole basis twice (classical Gram-Schmidt, "twice is enough"), so
the basis stays orthonormal to machine precision and no spurious copies of converged
eigenvalues appear. The entries of :math:`\mathbf{H}_m` are read off the orthogonalization
coefficients, which makes a thick restart (Wu & Simon, 2000) a change of basis: keeping Ritz
vectors :math:`\mathbf{V}_m\mathbf{S}_K` gives :math:`\mathbf{H} = \mathrm{diag}(\theta_K)`,
coupled to :math:`\mathbf{v}_{m+1}` by :math:`\beta_m \mathbf{S}_{m,K}`.

A Ritz pair :math:`(\theta_k, \mathbf{V}_m\mathbf{s}_k)` has residual norm
:math:`\|\mathbf{A}\mathbf{V}_m\mathbf{s}_k - \theta_k\mathbf{V}_m\mathbf{s}_k\| = \beta_m |s_{mk}|`,
so an eigenvalue of :math:`\mathbf{A}` lies within that distance of :math:`\theta_k`.

Everything runs in PyTorch on the operator's device; one product with ``A`` per step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from curvkit.linalg._operator import working_dtype
from curvkit.linear_operator import LinearOperator


class RitzPairs(NamedTuple):
    """Ritz values (ascending), the eigenvectors ``S`` of ``H`` and the residual norms."""

    values: Tensor
    S: Tensor
    residuals: Tensor


class LanczosProcess:
    """Lanczos with full re-orthogonalization on a symmetric operator.

    Args:
        A: Square operator, assumed symmetric.
        start: Start vector ``[n]`` (normalized here).
        max_dim: Largest basis size (memory: ``max_dim + 1`` vectors of length ``n``).
        generator: If given, a breakdown (invariant subspace found) is followed by a random
            restart vector orthogonal to the basis, so eigenvalues outside the Krylov space of
            ``start`` can still be found. Without, the process stops at a breakdown.
    """

    def __init__(
        self, A: LinearOperator, start: Tensor, max_dim: int, generator: torch.Generator | None = None
    ):
        dtype, device = working_dtype(A), start.device
        self.A, self.max_dim, self.generator = A, max_dim, generator
        self.V = torch.zeros(A.shape[0], max_dim + 1, dtype=dtype, device=device)
        self.H = torch.zeros(max_dim, max_dim, dtype=dtype, device=device)
        self.V[:, 0] = start / torch.linalg.vector_norm(start)
        self.size = 0
        self.beta = 0.0
        self.num_matvecs = 0
        self.broke_down = False
        self._norm_estimate = 0.0

    def step(self) -> bool:
        """Add one vector to the basis (one product with ``A``).

        Returns:
            ``False`` if the Krylov space became invariant and no restart vector was added.

        Raises:
            RuntimeError: If the product contains NaN or infinity, or the basis is full.
        """
        j = self.size
        if j >= self.max_dim:
            raise RuntimeError(f"The Lanczos basis is full ({self.max_dim} vectors).")
        w = self.A.matmat(self.V[:, j : j + 1]).squeeze(1)
        self.num_matvecs += 1
        norm_w = float(torch.linalg.vector_norm(w))
        if norm_w != norm_w or norm_w == float("inf"):
            raise RuntimeError("Lanczos: the operator returned NaN or infinity.")
        self._norm_estimate = max(self._norm_estimate, norm_w)
        basis = self.V[:, : j + 1]
        h = basis.T @ w
        w = w - basis @ h
        correction = basis.T @ w
        w = w - basis @ correction
        h = h + correction
        self.H[: j + 1, j] = h
        self.H[j, : j + 1] = h
        self.size = j + 1
        beta = float(torch.linalg.vector_norm(w))
        self.broke_down = beta <= 100 * torch.finfo(w.dtype).eps * max(self._norm_estimate, 1e-300)
        if not self.broke_down:
            self.beta = beta
            self.V[:, j + 1] = w / beta
            return True
        self.beta = 0.0
        if self.generator is None or self.size >= self.A.shape[0]:
            return False
        self.V[:, j + 1] = self._random_orthogonal_vector(basis)
        return True

    def _random_orthogonal_vector(self, basis: Tensor) -> Tensor:
        v = torch.randn(basis.shape[0], generator=self.generator, device=self.generator.device)
        v = v.to(dtype=basis.dtype, device=basis.device)
        for _ in range(2):
            v = v - basis @ (basis.T @ v)
        return v / torch.linalg.vector_norm(v)

    def ritz_pairs(self) -> RitzPairs:
        """Eigen-decompose the projection ``H`` of the current basis."""
        m = self.size
        values, S = torch.linalg.eigh(self.H[:m, :m])
        return RitzPairs(values, S, self.beta * S[m - 1].abs())

    def ritz_vectors(self, S: Tensor) -> Tensor:
        """``V_m S`` for coefficient columns ``S`` of shape ``[m, k]``."""
        return self.V[:, : self.size] @ S

    def restart(self, keep: Tensor) -> None:
        """Thick restart: keep the Ritz vectors with indices ``keep`` and the residual direction."""
        m, num_kept = self.size, keep.numel()
        values, S, _ = self.ritz_pairs()
        residual_direction = self.V[:, m].clone()
        self.V[:, :num_kept] = self.ritz_vectors(S[:, keep])
        self.V[:, num_kept] = residual_direction
        self.V[:, num_kept + 1 :] = 0.0
        self.H.zero_()
        self.H[:num_kept, :num_kept] = torch.diag(values[keep])
        self.size = num_kept
