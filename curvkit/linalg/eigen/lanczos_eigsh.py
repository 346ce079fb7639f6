"""Extreme eigenpairs of a symmetric operator by thick-restart Lanczos."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from curvkit.linalg._operator import nonnegative_float, positive_int, square_operator, working_dtype
from curvkit.linalg._random import Seed, as_generator
from curvkit.linalg.lanczos import LanczosProcess

WHICH = ("LA", "SA", "LM")


def _wanted_order(values: Tensor, which: str) -> Tensor:
    """Indices of the Ritz values, most wanted first."""
    if which == "LA":
        return torch.argsort(values, descending=True)
    if which == "SA":
        return torch.argsort(values)
    return torch.argsort(values.abs(), descending=True)


def lanczos_eigsh(
    A: Any,
    k: int = 6,
    *,
    which: str = "LA",
    tol: float = 1e-6,
    max_matvecs: int | None = None,
    ncv: int | None = None,
    seed: Seed = None,
) -> tuple[Tensor, Tensor]:
    r"""Compute ``k`` extreme eigenpairs of a symmetric operator, like ``scipy.sparse.linalg.eigsh``.

    Runs the Lanczos process (:mod:`curvkit.linalg.lanczos`) with full re-orthogonalization
    from a random start vector, with thick restarts (Wu & Simon, 2000) whenever the basis
    reaches ``ncv`` vectors: the ``k + (ncv - k) // 2`` most wanted Ritz vectors are kept. Every
    ``(ncv - k) // 4`` steps and before each restart, it checks whether every wanted Ritz pair
    :math:`(\theta, \mathbf{u})` satisfies

    .. math::
        \|\mathbf{A}\mathbf{u} - \theta\mathbf{u}\| \le \mathrm{tol} \cdot \max_j |\theta_j|,

    i.e. relative to the estimated spectral norm, and stops if so; eigenvalues are then accurate
    to about :math:`\mathrm{tol}^2 \|\mathbf{A}\|^2 / \mathrm{gap}`. Single-vector Lanczos finds
    one copy of a multiple eigenvalue per Krylov space; after an invariant subspace is found, a
    random vector orthogonal to it continues the search, which recovers further copies.

    Wu, K., & Simon, H. (2000). Thick-restart Lanczos method for large symmetric eigenvalue
    problems. SIAM Journal on Matrix Analysis and Applications.

    Args:
        A: Symmetric operator (symmetry is assumed, not checked).
        k: Number of eigenpairs, ``1 ≤ k ≤ dim``.
        which: ``'LA'`` (largest algebraic), ``'SA'`` (smallest algebraic) or ``'LM'`` (largest
            magnitude).
        tol: Relative residual tolerance, ``≥ 0`` (``0``: machine precision).
        max_matvecs: Maximum number of products with ``A``. Default: ``10 · dim``.
        ncv: Largest basis size, ``k < ncv ≤ dim`` (or ``ncv = dim``). Default:
            ``min(dim, max(2k + 1, 20))``. Memory: ``ncv + 1`` vectors.
        seed: ``int``, ``torch.Generator`` or ``None``.

    Returns:
        Eigenvalues ``[k]`` in ascending order and eigenvectors ``[dim, k]`` (orthonormal
        columns), tensors on the operator's device.

    Raises:
        ValueError: If ``A`` is not square or an argument is out of range.
        RuntimeError: If the eigenpairs did not converge within ``max_matvecs`` products.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
        >>> values, vectors = lanczos_eigsh(A, k=3, which="LA", seed=0)
        >>> values.round(decimals=6).tolist()
        [98.0, 99.0, 100.0]
    """
    A = square_operator(A)
    n = A.shape[0]
    positive_int(k, "k")
    if k > n:
        raise ValueError(f"k must be at most the operator's dimension {n}, got {k}.")
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}.")
    tol = nonnegative_float(tol, "tol")
    ncv = min(n, max(2 * k + 1, 20)) if ncv is None else positive_int(ncv, "ncv")
    if ncv > n or (ncv <= k and ncv != n):
        raise ValueError(f"ncv must satisfy k < ncv ≤ dim (or ncv = dim), got ncv={ncv}, k={k}, dim={n}.")
    max_matvecs = 10 * n if max_matvecs is None else positive_int(max_matvecs, "max_matvecs")
    tol = max(tol, torch.finfo(working_dtype(A)).eps)

    generator = as_generator(seed, A.device)
    start = torch.randn(n, generator=generator, device=generator.device, dtype=working_dtype(A))
    process = LanczosProcess(A, start.to(A.device) if A.device is not None else start, ncv, generator)
    num_kept = min(k + (ncv - k) // 2, ncv - 1)
    check_every = max(1, (ncv - k) // 4)
    while True:
        process.step()
        exact = process.size == n or process.probed_complement
        due = process.size == ncv or exact or (process.size - k) % check_every == 0
        if process.size >= k and due and (exact or not process.broke_down):
            values, S, residuals = process.ritz_pairs()
            wanted = _wanted_order(values, which)[:k]
            threshold = tol * float(values.abs().max())
            if process.size == n or bool((residuals[wanted] <= threshold).all()):
                order = wanted[torch.argsort(values[wanted])]
                return values[order], process.ritz_vectors(S[:, order])
        if process.num_matvecs >= max_matvecs:
            raise RuntimeError(
                f"lanczos_eigsh did not converge to tol={tol:g} within max_matvecs={max_matvecs} products."
            )
        if process.size == ncv:
            values = process.ritz_pairs().values
            process.restart(_wanted_order(values, which)[:num_kept])
