"""Test doubles with the public signatures of ``KFACLinearOperator`` and ``curvkit.sketch``'s two functions.

They let the report's KFAC and sketch analyses be tested before those are implemented:
the numbers are those of the doubles, and the tests check what the report makes of them. They
are not KFAC or a sketching library: ``BlockDiagonalGGN`` is the dense GGN with the blocks
between different parameter tensors zeroed (block-diagonal, as KFAC is), ``seigh`` a plain
randomized range finder with a Rayleigh–Ritz step, ``apost_error`` the mean of squared norms of
products with Gaussian vectors, as their documentation describes them.
"""

from __future__ import annotations

import sys
import types
from typing import ClassVar

import torch
from torch import Tensor

from curvkit import LinearOperator, as_linear_operator, reference


class BlockDiagonalGGN(LinearOperator):
    """``KFACLinearOperator(model, loss, params, data, ...)`` stand-in: the GGN's diagonal blocks."""

    created: ClassVar[list[dict]] = []  # the keyword arguments of each construction

    def __init__(
        self, model_func, loss_func, params, data, progressbar=False, check_deterministic=True, **kwargs
    ):
        params = list(params)
        ggn = reference.ggn_matrix(model_func, loss_func, params, data)
        mask = torch.zeros_like(ggn, dtype=torch.bool)
        start = 0
        for param in params:
            mask[start : start + param.numel(), start : start + param.numel()] = True
            start += param.numel()
        self.matrix = torch.where(mask, ggn, torch.zeros_like(ggn))
        super().__init__(ggn.shape, dtype=ggn.dtype, device=ggn.device, symmetric=True, psd=True)
        BlockDiagonalGGN.created.append(kwargs)

    def _matmat(self, X: Tensor) -> Tensor:
        return self.matrix @ X


def seigh(
    lop, lop_device, lop_dtype, outer_dims, seed=0, noise_type="rademacher", recovery_type="hmt", **kwargs
):
    """``seigh`` stand-in: ``Q = orth(A Ω)``, eigenpairs of ``Qᵀ A Q`` (``2 · outer_dims`` products)."""
    A = as_linear_operator(lop)
    generator = torch.Generator(device=lop_device).manual_seed(seed)
    omega = torch.randn(A.shape[1], outer_dims, generator=generator, dtype=lop_dtype, device=lop_device)
    Q = torch.linalg.qr(A @ omega).Q
    values, vectors = torch.linalg.eigh(Q.T @ (A @ Q))
    order = torch.argsort(values.abs(), descending=True)
    seigh.last = (values[order], Q @ vectors[:, order])
    return seigh.last


def apost_error(lop1, lop2, device, dtype, num_meas=5, seed=0, noise_type="gaussian", **kwargs):
    """``apost_error`` stand-in: squared norms of ``A₁ω``, ``A₂ω``, ``(A₁ − A₂)ω``, averaged over ω."""
    generator = torch.Generator(device=device).manual_seed(seed + 12345)
    omega = torch.randn(lop1.shape[1], num_meas, generator=generator, dtype=dtype, device=device)
    Y1, Y2 = as_linear_operator(lop1) @ omega, as_linear_operator(lop2) @ omega
    values = [(Y**2).sum(0).double() for Y in (Y1, Y2, Y1 - Y2)]
    return tuple(v.mean() for v in values), tuple(values)


def install(monkeypatch, kfac: bool = True, sketch: bool = True) -> None:
    """Make ``from curvkit import KFACLinearOperator`` and the ``curvkit.sketch`` imports find the doubles."""
    import curvkit

    if kfac:
        BlockDiagonalGGN.created.clear()
        monkeypatch.setattr(curvkit, "KFACLinearOperator", BlockDiagonalGGN, raising=False)
    if sketch:
        package = types.ModuleType("curvkit.sketch")
        algorithms = types.ModuleType("curvkit.sketch.algorithms")
        a_posteriori = types.ModuleType("curvkit.sketch.a_posteriori")
        algorithms.seigh, a_posteriori.apost_error = seigh, apost_error
        package.algorithms, package.a_posteriori = algorithms, a_posteriori
        for module in (package, algorithms, a_posteriori):
            monkeypatch.setitem(sys.modules, module.__name__, module)


def remove(monkeypatch) -> None:
    """Make both imports fail, as in a curvkit without KFAC and sketches."""
    import curvkit

    monkeypatch.delattr(curvkit, "KFACLinearOperator", raising=False)
    for name in ("curvkit.sketch", "curvkit.sketch.algorithms", "curvkit.sketch.a_posteriori"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: the import raises ImportError
