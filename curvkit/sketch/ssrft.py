r"""The scrambled subsampled randomized trigonometric transform (SSRFT) as a test matrix.

.. math::
    \mathbf{S}^\top = \mathbf{R}\,\mathbf{F}\,\boldsymbol{\Pi}_2\,\mathbf{F}\,\boldsymbol{\Pi}_1
    \in \mathbb{R}^{k \times n},

with :math:`\mathbf{F}` the orthonormal DCT-II, :math:`\boldsymbol{\Pi}_i` random permutations
with random signs and :math:`\mathbf{R}` the first :math:`k` rows of a random permutation
(Woolfe, Liberty, Rokhlin & Tygert 2008; Tropp, Yurtsever, Udell & Cevher 2019, §3.2).
:math:`\mathbf{S} \in \mathbb{R}^{n\times k}` has orthonormal columns, costs :math:`O(n \log n)`
per column instead of a Gaussian matrix's :math:`O(nk)` storage, and is described by a few
integer vectors. Like skerch's, the operator is tall: its product is the adjoint transform.

Woolfe, F., Liberty, E., Rokhlin, V., & Tygert, M. (2008). A fast randomized algorithm for the
approximation of matrices. Applied and Computational Harmonic Analysis, 25(3).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from curvkit._boundary import as_integer
from curvkit.linalg._random import Seed, purpose_generator
from curvkit.linear_operator import LinearOperator


def dct(x: Tensor) -> Tensor:
    r"""The orthonormal DCT-II of the columns of ``x`` (``[n, b]``), through one complex FFT.

    :math:`X_k = s_k \sum_j x_j \cos(\pi (2j + 1) k / 2n)` with :math:`s_0 = \sqrt{1/n}` and
    :math:`s_k = \sqrt{2/n}`: the even entries followed by the odd ones reversed, transformed, and
    turned by :math:`e^{-i\pi k/2n}` (Makhoul 1980).
    """
    n = x.shape[0]
    v = torch.cat([x[0::2], x[1::2].flip(0)])
    k = torch.arange(n, device=x.device, dtype=x.dtype)
    twiddle = torch.polar(torch.ones_like(k), -math.pi * k / (2 * n)).unsqueeze(1)
    result = (torch.fft.fft(v, dim=0) * twiddle).real * math.sqrt(2 / n)
    result[0] /= math.sqrt(2)
    return result


def idct(X: Tensor) -> Tensor:
    r"""The inverse of :func:`dct` (its transpose, the orthonormal DCT-III), through one inverse FFT.

    With :math:`c_k = X_k / s_k` and :math:`c_n = 0`, the FFT of the reordered vector is
    :math:`V_k = e^{i\pi k / 2n} (c_k - i c_{n-k})`.
    """
    n = X.shape[0]
    c = X * math.sqrt(n / 2)
    c[0] *= math.sqrt(2)
    mirrored = torch.cat([torch.zeros_like(c[:1]), c[1:].flip(0)])  # c_{n-k}
    k = torch.arange(n, device=X.device, dtype=X.dtype)
    twiddle = torch.polar(torch.ones_like(k), math.pi * k / (2 * n)).unsqueeze(1)
    v = torch.fft.ifft(torch.complex(c, -mirrored) * twiddle, dim=0).real
    x = torch.empty_like(v)
    half = (n + 1) // 2
    x[0::2], x[1::2] = v[:half], v[half:].flip(0)
    return x


class SSRFTLinOp(LinearOperator):
    r"""The SSRFT :math:`\mathbf{S} \in \mathbb{R}^{n\times k}` (``k ≤ n``, orthonormal columns).

    ``S @ X`` embeds ``X``'s rows at the picked indices and applies the inverse transform,
    ``S.T @ Z`` (and ``Z.T @ S``) applies the transform and picks ``k`` rows. The random
    permutations, signs and indices are drawn once, on the CPU, so the matrix is the same on every
    device.

    Args:
        shape: ``(n, k)`` with ``k ≤ n``.
        seed: ``int``, ``torch.Generator`` or ``None``.
        dtype: ``torch.float32`` or ``torch.float64``.
        device: The device of the products.

    Raises:
        ValueError: If ``k > n``.

    Example:
        >>> import torch
        >>> S = SSRFTLinOp((6, 3), seed=0, dtype=torch.float64)
        >>> torch.allclose(S.T @ (S @ torch.eye(3, dtype=torch.float64)), torch.eye(3, dtype=torch.float64))
        True
    """

    def __init__(
        self,
        shape: tuple[int, int],
        seed: Seed = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = "cpu",
    ):
        n, k = (as_integer(shape[0], "shape[0]", minimum=1), as_integer(shape[1], "shape[1]", minimum=1))
        if k > n:
            raise ValueError(f"An SSRFT cannot be wider than tall: shape must have k ≤ n, got {shape}.")
        super().__init__((n, k), dtype=dtype, device=device)
        generator = purpose_generator(seed, "ssrft")

        def signed_permutation() -> tuple[Tensor, Tensor]:
            permutation = torch.randperm(n, generator=generator)
            signs = torch.randint(0, 2, (n,), generator=generator).to(dtype).mul_(2).sub_(1)
            return permutation.to(self.device), signs.to(self.device).unsqueeze(1)

        self._first, self._second = signed_permutation(), signed_permutation()
        self._picked = torch.randperm(n, generator=generator)[:k].to(self.device)

    def transform(self, Z: Tensor) -> Tensor:
        """``Sᵀ Z`` for ``Z`` of shape ``[n, b]``."""
        (p1, s1), (p2, s2) = self._first, self._second
        return dct(s2 * dct(s1 * Z[p1])[p2])[self._picked]

    def columns(self, start: int, stop: int) -> Tensor:
        """Columns ``start, …, stop - 1`` of ``S`` (``S`` times identity columns, in O(n log n) each)."""
        unit = torch.zeros(self.shape[0], stop - start, dtype=self.dtype, device=self.device)
        unit[self._picked[start:stop], torch.arange(stop - start, device=self.device)] = 1
        return self._embedded(unit)

    def _embedded(self, Y: Tensor) -> Tensor:
        (p1, s1), (p2, s2) = self._first, self._second
        Z = torch.empty_like(Y)
        Z[p2] = s2 * idct(Y)  # Π₂ᵀ w puts s₂ ⊙ w at the permuted rows
        X = torch.empty_like(Y)
        X[p1] = s1 * idct(Z)
        return X

    def _matmat(self, X: Tensor) -> Tensor:
        Y = X.new_zeros(self.shape[0], X.shape[1])
        Y[self._picked] = X
        return self._embedded(Y)

    def _rmatmat(self, X: Tensor) -> Tensor:
        return self.transform(X)
