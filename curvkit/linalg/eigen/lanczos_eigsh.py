r"""Extreme eigenpairs of a symmetric operator by thick-restart Lanczos with locking."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from curvkit._boundary import as_integer, nonnegative_float
from curvkit.linalg._dots import row_dots
from curvkit.linalg._operator import product_eps, square_operator, working_dtype
from curvkit.linalg._orthonormal import orthonormalized
from curvkit.linalg._progress import product_progress
from curvkit.linalg._random import Seed, as_generator, random_block
from curvkit.linalg.lanczos import LanczosProcess, checked_norm
from curvkit.linear_operator import LinearOperator

WHICH = ("LA", "SA", "LM")


def _priority(values: Tensor, which: str) -> Tensor:
    """A key that is larger for more wanted eigenvalues."""
    return {"LA": values, "SA": -values, "LM": values.abs()}[which]


def _wanted_order(values: Tensor, which: str) -> Tensor:
    """Indices of the Ritz values, most wanted first."""
    return torch.argsort(_priority(values, which), descending=True)


class _Pairs(NamedTuple):
    """Eigenpair approximations: values ``[m]`` and orthonormal vectors ``[n, m]``."""

    values: Tensor
    vectors: Tensor

    def most_wanted(self, k: int, which: str) -> _Pairs:
        """The ``k`` most wanted pairs, most wanted first."""
        order = _wanted_order(self.values, which)[:k]
        return _Pairs(self.values[order], self.vectors[:, order])

    def join(self, other: _Pairs) -> _Pairs:
        """Both sets of pairs (their vectors orthogonal to each other)."""
        return _Pairs(torch.cat([self.values, other.values]), torch.cat([self.vectors, other.vectors], 1))


class _Search:
    """Thick-restart Lanczos runs on the complement of locked vectors, sharing one product budget.

    Args:
        A: Symmetric operator.
        k: Number of wanted eigenpairs (the most copies of a value a run needs to report).
        which: ``'LA'``, ``'SA'`` or ``'LM'``.
        tol: Relative residual tolerance (already at least machine precision).
        ncv: Largest basis size of a run.
        max_matvecs: Products allowed for all runs together and the final Rayleigh–Ritz.
        generator: Source of start and restart vectors.
    """

    def __init__(
        self, A: LinearOperator, k: int, which: str, tol: float, ncv: int, max_matvecs: int, generator
    ):
        self.A, self.k, self.which, self.tol, self.ncv = A, k, which, tol, ncv
        self.max_matvecs, self.generator = max_matvecs, generator
        self.budget = max_matvecs - k  # the final Rayleigh–Ritz multiplies k vectors
        self.num_matvecs = 0
        self.scale = 0.0  # largest |Ritz value| seen: the estimate of ||A|| that tol refers to

    @property
    def threshold(self) -> float:
        """Residual norm below which a Ritz pair counts as converged: ``tol · ‖A‖``."""
        return self.tol * self.scale

    def run(self, want: int, locked: Tensor | None) -> tuple[_Pairs, bool]:
        """Lanczos from a random vector orthogonal to ``locked`` (rows), until ``want`` pairs converge.

        Returns:
            The ``want`` most wanted converged Ritz pairs and ``False``; or, once the run has
            seen its whole space (the basis fills it, or ``A`` is ``c I`` on the rest), every
            exact pair it needs (up to ``k`` copies of ``c``) and ``True``.

        Raises:
            RuntimeError: If the product budget runs out first.
        """
        A = self.A
        start = random_block(A.shape[0], 1, "normal", self.generator, working_dtype(A), A.device)
        process = LanczosProcess(self.A, start[:, 0], self.ncv, self.generator, locked)
        ncv = min(self.ncv, process.dim)
        num_kept = min(want + (ncv - want) // 2, ncv - 1)
        check_every = max(1, (ncv - want) // 4)
        while True:
            if self.num_matvecs >= self.budget:
                raise RuntimeError(
                    f"lanczos_eigsh did not converge to tol={self.tol:g} within "
                    f"max_matvecs={self.max_matvecs} products (k={self.k} of them kept for the final "
                    "Rayleigh–Ritz)"
                    + (
                        "."
                        if locked is None
                        else ": the wanted pairs converged, but the search of "
                        "their complement for further copies of repeated eigenvalues did not finish."
                    )
                )
            process.step()
            self.num_matvecs += 1
            if process.size == process.dim or (process.probed_complement and process.broke_down):
                return self._everything(process), True
            due = process.size == ncv or (process.size - want) % check_every == 0
            if process.size >= want and due and not process.broke_down:
                values, S, residuals = process.ritz_pairs()
                self.scale = max(self.scale, float(values.abs().max()))
                wanted = _wanted_order(values, self.which)[:want]
                if bool((residuals[wanted] <= self.threshold).all()):
                    return _Pairs(values[wanted], process.ritz_vectors(S[:, wanted])), False
            if process.size == ncv:
                process.restart(_wanted_order(process.ritz_pairs().values, self.which)[:num_kept])

    def _everything(self, process: LanczosProcess) -> _Pairs:
        """All Ritz pairs of an invariant basis, plus copies of ``c`` if ``A = c I`` on the rest."""
        values, S, _ = process.ritz_pairs()
        self.scale = max(self.scale, float(values.abs().max()))
        pairs = _Pairs(values, process.ritz_vectors(S))
        num_copies = min(self.k, process.dim - process.size)
        if num_copies == 0:
            return pairs
        c = process.H[process.size - 1, process.size - 1]  # Rayleigh quotient of the probe vector
        copies = process.random_complement(process.V[: process.size], num_copies)
        return pairs.join(_Pairs(c.repeat(num_copies), copies))


def _rayleigh_ritz(A: LinearOperator, vectors: Tensor) -> _Pairs:
    r"""The Ritz pairs of ``A`` in the span of ``vectors`` (``[n, k]``): one product with ``k`` columns.

    With :math:`\mathbf{Q}` an orthonormal basis of the span, the eigenpairs
    :math:`(\theta_i, \mathbf{y}_i)` of :math:`\mathbf{Q}^\top\mathbf{A}\mathbf{Q}` (in float64)
    give the pairs :math:`(\theta_i, \mathbf{Q}\mathbf{y}_i)`: eigenvalues that are the vectors'
    Rayleigh quotients, and the smallest residual block :math:`\|\mathbf{A}\mathbf{U} -
    \mathbf{U}\mathbf{\Theta}\|_F` over the span.

    Raises:
        RuntimeError: If the product contains NaN or infinity.
    """
    Q = orthonormalized(vectors)
    AQ = A.matmat(Q)
    checked_norm(AQ.flatten())
    projection = row_dots(Q.T, AQ.T, exact=True)
    values, Y = torch.linalg.eigh((projection + projection.T) / 2)
    return _Pairs(values.to(Q.dtype), Q @ Y.to(Q.dtype))


def lanczos_eigsh(
    A: Any,
    k: int = 6,
    *,
    which: str = "LA",
    tol: float = 1e-6,
    max_matvecs: int | None = None,
    ncv: int | None = None,
    seed: Seed = None,
    check_multiplicity: bool = True,
    progressbar: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""Compute ``k`` extreme eigenpairs of a symmetric operator, like ``scipy.sparse.linalg.eigsh``.

    Runs the Lanczos process (:mod:`curvkit.linalg.lanczos`) with full re-orthogonalization
    from a random start vector, with thick restarts (Wu & Simon, 2000) whenever the basis
    reaches ``ncv`` vectors: the ``k + (ncv - k) // 2`` most wanted Ritz vectors are kept. Every
    ``(ncv - k) // 4`` steps and before each restart, it checks whether every wanted Ritz pair
    :math:`(\theta, \mathbf{u})` satisfies

    .. math::
        \|\mathbf{A}\mathbf{u} - \theta\mathbf{u}\| \le \mathrm{tol} \cdot \max_j |\theta_j|,

    i.e. relative to the estimated spectral norm; eigenvalues are then accurate to about
    :math:`\mathrm{tol}^2 \|\mathbf{A}\|^2 / \mathrm{gap}`.

    **Repeated eigenvalues.** The Krylov space of one vector :math:`\mathbf{v}` holds only the
    component of :math:`\mathbf{v}` in each eigenspace, so it sees one copy of a multiple
    eigenvalue, and a small residual cannot tell a missing copy: curvature matrices, with their
    large null spaces and repeated eigenvalues, would get interior eigenvalues instead. So the
    converged pairs :math:`(\mathbf{\Theta}, \mathbf{L})` are *locked*, and a fresh run from a
    random vector orthogonal to :math:`\mathbf{L}` explores the complement (Lanczos on
    :math:`(\mathbf{I} - \mathbf{L}\mathbf{L}^\top)\mathbf{A}(\mathbf{I} -
    \mathbf{L}\mathbf{L}^\top)`, where the next copy is visible) until its most wanted Ritz pair
    converges. If that value is more wanted than the least wanted locked one by more than
    :math:`\mathrm{tol} \cdot \max_j |\theta_j|`, it replaces it and the complement is explored
    again; otherwise the result is returned. No exploration runs when the locked values are all
    equal within that tolerance (``k = 1`` included): a missing copy could not change them. The
    exploration certifies the result as the first run certifies an extreme eigenvalue: with
    probability one over the random start vector, in exact arithmetic.

    A run also ends when its basis fills its space, or when a random vector orthogonal to an
    invariant basis is itself an eigenvector (its Krylov space breaks down at once): then
    :math:`\mathbf{A} = c\,\mathbf{I}` on the rest of the space with probability one, and copies
    of :math:`c` with eigenvectors drawn from that rest complete the spectrum without further
    products (the null space of a low-rank matrix costs one product). Every product counts
    towards ``max_matvecs``. With distinct eigenvalues and ``k > 1`` the check costs one more
    run with one wanted pair (a total of 1.5 to 1.8 times the first run's products, in our tests), a
    :math:`p`-fold eigenvalue about :math:`p` such runs. Locked residuals add up, so a returned
    pair has residual at most about ``(k + 1) · tol · max|θ|``.

    **Accuracy.** The result is a final Rayleigh–Ritz step on the span of the ``k`` vectors
    found: one product with a block of ``k`` columns, counted in ``max_matvecs``. The returned
    vectors are orthonormal to a few units of rounding of the working precision and the
    eigenvalues are their Rayleigh quotients (computed in float64, then rounded), whatever the
    dimension: inner products and norms over its entries are summed in float64 by blocks
    (:mod:`curvkit.linalg._dots`), as in the Lanczos process itself.

    Wu, K., & Simon, H. (2000). Thick-restart Lanczos method for large symmetric eigenvalue
    problems. SIAM Journal on Matrix Analysis and Applications.

    Args:
        A: Symmetric operator (symmetry is assumed, not checked).
        k: Number of eigenpairs, ``1 ≤ k ≤ dim``.
        which: ``'LA'`` (largest algebraic), ``'SA'`` (smallest algebraic) or ``'LM'`` (largest
            magnitude).
        tol: Relative residual tolerance, ``≥ 0`` (``0``: machine precision; at least the
            products' precision: for a half-precision operator, its rounding).
        max_matvecs: Maximum number of products with ``A`` (columns), all runs and the final
            Rayleigh–Ritz step (``k``) together. Default: ``10 · dim``.
        ncv: Largest basis size, ``k < ncv ≤ dim`` (or ``ncv = dim``), for ``'LM'`` at least
            ``2k + 1``. Default:
            ``min(dim, max(2k + 1, 20))``. Memory: ``ncv + k + 1`` vectors.
        seed: ``int``, ``torch.Generator`` or ``None``.
        check_multiplicity: Explore the complement of the converged vectors for further copies
            of repeated eigenvalues (above). ``False`` returns after the first run, as ARPACK
            does: 1.5–1.8 times cheaper with distinct eigenvalues, but a repeated eigenvalue may
            then show fewer copies than it has, the next eigenvalues taking their places (the
            exploration also catches a wanted eigenvalue that a small ``ncv`` let converge late).
        progressbar: Show one progress bar for the run, counting products.

    Returns:
        Eigenvalues ``[k]`` in ascending order and eigenvectors ``[dim, k]`` (orthonormal
        columns), tensors on the operator's device.

    Raises:
        ValueError: If ``A`` is not square or an argument is out of range.
        RuntimeError: If the eigenpairs did not converge, or the complement was not explored,
            within ``max_matvecs`` products.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
        >>> values, vectors = lanczos_eigsh(A, k=3, which="LA", seed=0)
        >>> values.round(decimals=6).tolist()
        [98.0, 99.0, 100.0]
        >>> null_space = torch.diag(torch.cat([torch.zeros(95), torch.ones(5)])).double()
        >>> lanczos_eigsh(null_space, k=3, which="SA", seed=0)[0].abs().max() < 1e-12
        tensor(True)
    """
    A = square_operator(A, typed=True)
    n = A.shape[0]
    as_integer(k, "k", minimum=1)
    if k > n:
        raise ValueError(f"k must be at most the operator's dimension {n}, got {k}.")
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}.")
    tol = nonnegative_float(tol, "tol")
    ncv = min(n, max(2 * k + 1, 20)) if ncv is None else as_integer(ncv, "ncv", minimum=1)
    if ncv > n or (ncv <= k and ncv != n):
        raise ValueError(f"ncv must satisfy k < ncv ≤ dim (or ncv = dim), got ncv={ncv}, k={k}, dim={n}.")
    if which == "LM" and ncv < min(n, 2 * k + 1):
        raise ValueError(
            f"which='LM' needs ncv ≥ 2k + 1 = {2 * k + 1} (got {ncv}): the wanted eigenvalues may sit at "
            "both ends of the spectrum, and a smaller basis can accept one end before the other appears."
        )
    max_matvecs = 10 * n if max_matvecs is None else as_integer(max_matvecs, "max_matvecs", minimum=1)
    tol = max(tol, product_eps(A))

    with product_progress(A, progressbar, "lanczos_eigsh") as A:
        return _search_with_locking(A, k, which, tol, ncv, max_matvecs, seed, check_multiplicity)


def _search_with_locking(
    A: LinearOperator,
    k: int,
    which: str,
    tol: float,
    ncv: int,
    max_matvecs: int,
    seed: Seed,
    check_multiplicity: bool,
) -> tuple[Tensor, Tensor]:
    """The runs of :func:`lanczos_eigsh` on checked arguments, then its Rayleigh–Ritz step."""
    n = A.shape[0]
    search = _Search(A, k, which, tol, ncv, max_matvecs, as_generator(seed, A.device))
    found, complete = search.run(k, None)
    locked = found.most_wanted(k, which)
    while check_multiplicity and not complete and locked.values.numel() < n:
        priority = _priority(locked.values, which)  # most wanted first
        if not bool(priority[0] > priority[-1] + search.threshold):
            break  # all k values equal: a missing copy would not change them
        found, complete = search.run(1, locked.vectors.T.contiguous())
        if not complete:
            beyond = _priority(found.values, which) > priority[-1] + search.threshold
            if not bool(beyond.any()):
                break
            found = _Pairs(found.values[beyond], found.vectors[:, beyond])
        locked = locked.join(found).most_wanted(k, which)
    result = _rayleigh_ritz(A, locked.vectors)  # ascending
    return result.values, result.vectors
