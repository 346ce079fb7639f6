r"""Orthonormal bases of tall blocks, stored as rows, by CholeskyQR with float64 Gram matrices.

The randomized estimators orthonormalize blocks :math:`\mathbf{Y} \in \mathbb{R}^{n\times m}` with
:math:`n` up to :math:`10^7` and :math:`m` in the tens. Householder QR reads the block once per
column there; CholeskyQR (Fukaya et al., 2014) needs one Gram matrix
:math:`\mathbf{Y}^\top\mathbf{Y} = \mathbf{R}^\top\mathbf{R}` (a matrix product) and one
triangular solve :math:`\mathbf{Q} = \mathbf{Y}\mathbf{R}^{-1}` (in place). Its loss of
orthogonality grows with :math:`\kappa(\mathbf{Y})^2`, so it is repeated on its own output until
the Gram matrix it starts from is close to the identity (twice for every :math:`\mathbf{Y}` that
is well conditioned in its precision: CholeskyQR2). The Gram matrices are block sums added in
float64 (:func:`~curvkit.linalg._dots.row_dots`), whose rounding does not grow with :math:`n`.
The first one is summed exactly in float64 (``row_dots(..., exact=True)``, twice the cost) when
its Cholesky factor shows :math:`\mathbf{Y}` too ill-conditioned for the block sums
(:func:`_needs_exact_gram`), so that the first factorization holds for :math:`\kappa(\mathbf{Y})`
up to about :math:`10^7`, and when :math:`\mathbf{Y}` is orthonormal already, so that one pass
with the exact sum finishes it (more accurately than a second pass with block sums). A block
that is still not factorizable (numerically rank deficient) falls back to Householder QR.

Blocks that are not tall and skinny (more than :math:`n / 64` rows, the sketches of
:mod:`curvkit.sketch`: 2,000 rows of length 39,760) go to Householder QR directly (LAPACK's
blocked ``geqrf`` and ``orgqr``, in the block's dtype): there the float64 Gram matrices cost more
than the reflectors (measurements in ``docs/design-notes.md``, "Sketched decompositions"), and
Householder QR needs no retry on rank-deficient blocks.

For wide blocks whose basis need not come out orthonormal (a Rayleigh–Ritz step can take the
Gram matrix of a well-conditioned basis instead), :func:`preconditioned_rows_` costs one
triangular solve: :math:`\mathbf{Y}\mathbf{R}_s^{-1}` with :math:`\mathbf{R}_s` from the QR
factorization of a sparse random embedding :math:`\mathbf{S}\mathbf{Y}` (``2m`` rows, 8 random
signs per column of :math:`\mathbf{S}`), which is well conditioned whatever
:math:`\kappa(\mathbf{Y})` where :math:`\mathbf{S}` embeds the range of :math:`\mathbf{Y}`
(randomized preconditioning; Rokhlin & Tygert 2008, Balabanov 2022, Higgins et al. 2023).

Fukaya, T., Nakatsukasa, Y., Yanagisawa, Y., & Yamamoto, Y. (2014). CholeskyQR2: A simple and
communication-avoiding algorithm for computing a tall-skinny QR factorization on a large-scale
parallel system. Workshop on Latest Advances in Scalable Algorithms for Large-Scale Systems.
Rokhlin, V., & Tygert, M. (2008). A fast randomized algorithm for overdetermined linear
least-squares regression. PNAS, 105(36). Balabanov, O. (2022). Randomized Cholesky QR
factorizations. arXiv:2210.09953. Higgins, A. J., Szyld, D. B., Boman, E. G., & Yamazaki, I.
(2023). Analysis of randomized Householder-Cholesky QR factorization with multisketching.
arXiv:2309.05868.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from curvkit.linalg._dots import BLOCK, row_dots

MAX_PASSES = 4
"""CholeskyQR passes before falling back to Householder QR."""

EMBEDDING_NONZEROS = 8
"""Random signs per column of the sparse embedding of :func:`preconditioned_rows_`."""

EMBEDDING_SEED = 0
"""The embedding's seed: it changes the basis, not its span; fixed, so callers' streams stay untouched."""

TALL_RATIO = 64
"""Blocks with more than ``n / TALL_RATIO`` rows of length ``n`` take Householder QR directly."""


def orthonormalize_rows_(rows: Tensor) -> Tensor:
    r"""Orthonormalize the rows of ``rows`` (``[m, n]``, the columns of ``Y``) in place; return ``R``.

    On return the rows are an orthonormal basis :math:`\mathbf{Q}^\top` of the rows' span with
    :math:`\mathbf{Y} = \mathbf{Q}\mathbf{R}` and :math:`\mathbf{R}` upper triangular, as a
    float64 ``[m, m]`` tensor. A pass stops the repetition once the accurately summed Gram matrix
    of its input deviates from the identity by at most ``1/2`` (then its output is orthonormal to
    the working precision): rows that are orthonormal already take one pass with the exact sum,
    others two. Memory: the rows, plus a float64 slice of them (``row_dots``).

    Raises:
        ValueError: If ``rows`` has more rows than columns.
    """
    num_rows = rows.shape[0]
    if num_rows > rows.shape[1]:
        raise ValueError(f"Cannot orthonormalize {num_rows} vectors of length {rows.shape[1]}.")
    if num_rows * TALL_RATIO > rows.shape[1]:
        return householder_rows_(rows)
    R = torch.eye(num_rows, dtype=torch.float64, device=rows.device)
    for repetition in range(MAX_PASSES):
        # block sums decide how orthonormal a later pass leaves the rows; the first pass's
        # errors only have to leave a factorizable Gram matrix, which the next pass corrects
        accurate = repetition > 0
        G = row_dots(rows, rows)
        factor = _cholesky_factor(G)
        if not accurate and (
            factor is None or _needs_exact_gram(factor, rows.dtype) or _near_identity(G)
        ):  # ill-conditioned rows, or orthonormal ones that one exact pass finishes
            G, accurate = row_dots(rows, rows, exact=True), True
            factor = _cholesky_factor(G)
        if factor is None:
            break
        torch.linalg.solve_triangular(factor.to(rows.dtype).T, rows, upper=False, out=rows)
        R = factor @ R
        if accurate and _near_identity(G):
            return R
    return householder_rows_(rows).double() @ R


def _near_identity(gram: Tensor) -> bool:
    """Whether a Gram matrix deviates from the identity by at most ``1/2`` in every entry."""
    return float((gram - torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)).abs().max()) <= 0.5


def _cholesky_factor(gram: Tensor) -> Tensor | None:
    """The upper Cholesky factor of ``gram``, or ``None`` where it does not exist in float64."""
    factor, info = torch.linalg.cholesky_ex(gram, upper=True)
    return factor if int(info) == 0 and bool(torch.isfinite(factor).all()) else None


def _needs_exact_gram(factor: Tensor, dtype: torch.dtype) -> bool:
    r"""Whether the rows behind the Cholesky ``factor`` of their block-summed Gram matrix need it exact.

    A Gram error :math:`\mathbf{E}` leaves :math:`\mathbf{Q} = \mathbf{Y}\mathbf{R}^{-1}` off
    orthonormal by about :math:`\|\mathbf{E}\| / \sigma_{\min}(\mathbf{Y})^2 = \delta\,
    \kappa(\mathbf{Y})^2` for a relative error :math:`\delta`; the next pass corrects a
    deviation up to ``1/2``. Here :math:`\kappa` is estimated by the spread of the factor's
    diagonal (a lower bound, typically within a small factor) and :math:`\delta` by
    :math:`\sqrt{\text{BLOCK}}\,\varepsilon` (block sums of random rounding errors; the
    measured error is smaller still), so that a first pass without the exact sum is taken only
    where the next pass will not have to repeat it.
    """
    diagonal = factor.diagonal().abs()
    spread = float(diagonal.max() / diagonal.min())
    return spread**2 * math.sqrt(BLOCK) * torch.finfo(dtype).eps > 0.5


def householder_rows_(rows: Tensor) -> Tensor:
    r"""Householder QR of the columns ``rows.T``, written back into ``rows``; return ``R`` (float64).

    ``rows.T`` of a row-major block is column-major, LAPACK's layout, so ``geqrf`` takes it
    without a transposing copy; the reflectors are expanded into :math:`\mathbf{Q}` by
    ``householder_product`` (``orgqr``). Memory: one more block of the rows' size.
    """
    reflectors, tau = torch.geqrf(rows.T)
    R = reflectors.triu()[: rows.shape[0]].double()
    rows.copy_(torch.linalg.householder_product(reflectors, tau).T)
    return R


def orthonormalized(X: Tensor) -> Tensor:
    """Orthonormal columns spanning those of ``X`` (``[n, p]``, full column rank), as a new tensor."""
    rows = X.T.contiguous()
    orthonormalize_rows_(rows)
    return rows.T


def sparse_sign_embedding(
    num_rows: int, dim: int, dtype: torch.dtype, device: torch.device, transposed: bool = False
) -> Tensor:
    """A sparse ``[num_rows, dim]`` CSR matrix with ``EMBEDDING_NONZEROS`` random signs per column.

    Row indices and signs come from a CPU generator seeded with ``EMBEDDING_SEED`` (repeated
    indices of a column add up, which leaves the embedding's distribution all but unchanged).
    ``transposed`` gives the same matrix transposed, ``[dim, num_rows]``, as CSR.
    """
    generator = torch.Generator().manual_seed(EMBEDDING_SEED)
    per_column = min(EMBEDDING_NONZEROS, num_rows)
    row_index = torch.randint(0, num_rows, (per_column * dim,), generator=generator)
    signs = torch.randint(0, 2, (per_column * dim,), generator=generator).to(dtype).mul_(2).sub_(1)
    column_index = torch.arange(dim).repeat(per_column)
    indices, shape = torch.stack([row_index, column_index]), (num_rows, dim)
    if transposed:
        indices, shape = indices.flip(0), shape[::-1]
    embedding = torch.sparse_coo_tensor(indices, signs, shape, check_invariants=True).coalesce()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return embedding.to(device).to_sparse_csr()


def embedded(rows: Tensor, num_rows: int) -> Tensor:
    r"""``S Y`` for ``Y = rows.T`` and the ``[num_rows, n]`` :func:`sparse_sign_embedding` ``S``.

    On the CPU as :math:`(\mathbf{Y}^\top\mathbf{S}^\top)^\top`: the CPU kernel of
    ``S @ rows.T`` first copies the column-major ``Y`` into rows of its own (a transposing copy
    of the whole block, slower than the product), while ``rows @ Sᵀ`` reads the rows as they are.
    """
    dim = rows.shape[1]
    if rows.device.type == "cpu":
        return (rows @ sparse_sign_embedding(num_rows, dim, rows.dtype, rows.device, transposed=True)).T
    return sparse_sign_embedding(num_rows, dim, rows.dtype, rows.device) @ rows.T


def preconditioned_rows_(rows: Tensor) -> Tensor:
    r"""``Y ← Y R_s⁻¹`` for ``Y = rows.T`` in place, ``R_s`` from a sparse embedding of ``Y``; return ``R_s``.

    The rows keep their span and come out well conditioned but not orthonormal; the caller
    takes their Gram matrix (or orthonormalizes them further). Small diagonal entries of
    :math:`\mathbf{R}_s` (below ``ε · max``, a numerically rank-deficient block; or zero, a zero
    block) are raised to that level, so the solve stays finite. Memory: the sketch, ``[2m, m]``.
    """
    num_rows, dim = rows.shape
    R = torch.linalg.qr(embedded(rows, min(2 * num_rows, dim)), mode="r").R
    diagonal = R.diagonal()
    floor = max(torch.finfo(rows.dtype).eps * float(diagonal.abs().max()), torch.finfo(rows.dtype).tiny)
    diagonal[diagonal.abs() < floor] = floor  # any invertible R_s preconditions; the span is Y's
    torch.linalg.solve_triangular(R.T, rows, upper=False, out=rows)
    return R
