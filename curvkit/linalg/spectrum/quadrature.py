r"""Lanczos quadrature: nodes and weights of a spectral density (Golub & Meurant; Papyan, 2020).

For a unit vector :math:`\mathbf{v}` and a symmetric :math:`\mathbf{A} = \sum_i \lambda_i
\mathbf{u}_i\mathbf{u}_i^\top`, the measure :math:`\mu_{\mathbf{v}} = \sum_i (\mathbf{u}_i^\top
\mathbf{v})^2 \delta_{\lambda_i}` has expectation :math:`\frac{1}{d}\sum_i \delta_{\lambda_i}`
over Gaussian :math:`\mathbf{v}`. After :math:`m` Lanczos steps from :math:`\mathbf{v}`, the
eigenvalues :math:`\theta_k` of the tridiagonal matrix :math:`\mathbf{T}_m = \mathbf{S}
\mathrm{diag}(\theta)\mathbf{S}^\top` and the weights :math:`w_k = S_{1k}^2` form the Gauss
quadrature of :math:`\mu_{\mathbf{v}}`, exact for polynomials of degree :math:`2m - 1`.

The same run estimates the spectrum's boundaries for free: extreme Ritz values converge first,
and :math:`[\theta_1 - r_1, \theta_m + r_m]` (with Ritz residual norms :math:`r`) contains an
eigenvalue at each end. If the residuals exceed the tolerance after :math:`m` steps, the Krylov
space of the same :math:`\mathbf{v}` is extended (up to :math:`4m` vectors, checking every
:math:`\max(1, \lfloor m/8 \rfloor)` steps); the quadrature
still uses the first :math:`m` steps only.

Each run re-orthogonalizes fully, in block sweeps every few steps
(:mod:`curvkit.linalg.deferred_lanczos`). Independent runs (repeats) advance in lockstep, so that
each step multiplies the operator once onto a block of vectors (:func:`lanczos_quadratures`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from curvkit.linalg._operator import working_dtype
from curvkit.linalg._random import random_block
from curvkit.linalg.deferred_lanczos import DeferredLanczosProcess
from curvkit.linear_operator import LinearOperator


class Quadrature(NamedTuple):
    """Nodes ``θ_k`` and weights ``w_k`` (summing to one) of one Lanczos quadrature."""

    nodes: Tensor
    weights: Tensor


LOCKSTEP_BYTES = 2**30
"""Memory of the Lanczos bases of the runs that advance in lockstep (at least one run)."""


def lanczos_quadratures(
    A: LinearOperator,
    ncv: int,
    generator: torch.Generator,
    num_runs: int,
    boundaries_tol: float | None = None,
    lockstep_bytes: int = LOCKSTEP_BYTES,
) -> tuple[list[Quadrature], tuple[float, float] | None]:
    """Run ``num_runs`` Lanczos processes of ``ncv`` steps from independent Gaussian start vectors.

    The runs advance in lockstep, as many at a time as keep their bases (``ncv + 1`` vectors
    each) within ``lockstep_bytes``: each step multiplies ``A`` once onto the block of their
    current vectors, which a curvature operator computes at a fraction of the cost per column of
    separate products (``vmap`` over the columns). Each run's arithmetic is otherwise its own, so
    the quadratures are those of runs one after the other, up to rounding. Start vectors are
    drawn from ``generator`` in the order of the runs.

    Args:
        A: Symmetric operator.
        ncv: Number of Lanczos steps (quadrature nodes) per run.
        generator: Source of the start vectors.
        num_runs: Number of runs.
        boundaries_tol: If given, the first run also estimates the smallest and largest
            eigenvalue, with Ritz residuals at most ``boundaries_tol`` times the spectral radius
            (``0``: machine precision), extending its Krylov space when needed.
        lockstep_bytes: Memory allowed for the bases of the runs in lockstep.

    Returns:
        The quadratures, and ``(λ_min, λ_max)`` estimates (or ``None``).
    """
    n, dtype = A.shape[0], working_dtype(A)
    basis_bytes = (ncv + 1) * n * torch.finfo(dtype).bits // 8
    group_size = max(1, min(num_runs, lockstep_bytes // basis_bytes))
    quadratures, boundaries = [], None
    for first in range(0, num_runs, group_size):
        processes = [_start(A, ncv, generator) for _ in range(min(group_size, num_runs - first))]
        running = list(processes)
        while running:
            vectors = [process.next_vector() for process in running]
            # one run passes a view of its basis row (no copy); several, a stacked block
            block = vectors[0].unsqueeze(1) if len(vectors) == 1 else torch.stack(vectors, 1)
            products = A.matmat(block)
            running = [
                process
                for process, product in zip(running, products.T)
                if process.absorb(product.contiguous()) and process.size < ncv
            ]
        for index, process in enumerate(processes):
            values, S, residuals = process.ritz_pairs()  # float64: the quadrature in the working dtype
            quadratures.append(Quadrature(values.to(process.V.dtype), (S[0] ** 2).to(process.V.dtype)))
            if first == 0 and index == 0 and boundaries_tol is not None:
                boundaries = _eigenvalue_boundaries(process, values, residuals, ncv, boundaries_tol)
    return quadratures, boundaries


def _start(A: LinearOperator, ncv: int, generator: torch.Generator) -> DeferredLanczosProcess:
    """A Lanczos process on ``A`` from a Gaussian start vector."""
    start = random_block(A.shape[0], 1, "normal", generator, working_dtype(A), A.device)
    return DeferredLanczosProcess(A, start[:, 0], ncv)


def _eigenvalue_boundaries(
    process: DeferredLanczosProcess, values: Tensor, residuals: Tensor, ncv: int, boundaries_tol: float
) -> tuple[float, float]:
    """Extreme-eigenvalue estimates from a finished run, extending its Krylov space if needed."""
    n = process.A.shape[0]
    tol = max(boundaries_tol, torch.finfo(process.V.dtype).eps)
    check_every, max_dim = max(1, ncv // 8), min(n, 4 * ncv)
    while True:
        radius = float(values.abs().max())
        converged = float(residuals[0]) <= tol * radius and float(residuals[-1]) <= tol * radius
        if converged or process.broke_down or process.size == max_dim:
            return float(values[0] - residuals[0]), float(values[-1] + residuals[-1])
        process.grow(min(max_dim, process.size + 4 * check_every))
        for _ in range(min(check_every, max_dim - process.size)):
            if not process.step():
                break
        values, _, residuals = process.ritz_pairs()
