"""Closed forms of structured operators: the public surface, written once.

A structured operator knows three closed forms of its matrix — :meth:`ClosedForms.trace`,
:meth:`ClosedForms.slogdet` and :meth:`ClosedForms.frobenius_norm` — and gets
:meth:`ClosedForms.logdet` and :meth:`ClosedForms.det` from them here. Composites (block
diagonals, permuted or deferred operators) combine their parts' public closed forms, never their
private state. Values are computed in float64 and returned as 0-d tensors in the operator's dtype
(torch's default dtype for an operator that adapts) on its device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def as_result(value: Tensor | float, operator: object) -> Tensor:
    """``value`` as a 0-d tensor in ``operator``'s dtype on its device."""
    dtype = getattr(operator, "dtype", None) or torch.get_default_dtype()
    return torch.as_tensor(value, dtype=torch.float64).to(
        dtype=dtype, device=getattr(operator, "device", None)
    )


def float64_sum(values: list[Tensor]) -> Tensor:
    """The sum of 0-d tensors, in float64 (one value per block: rounding does not add up)."""
    return torch.stack([value.to(torch.float64) for value in values]).sum() if values else torch.tensor(0.0)


class ClosedForms:
    """Mixin: :meth:`logdet` and :meth:`det` from :meth:`slogdet`; subclasses write the other three."""

    def trace(self) -> Tensor:
        """``tr(A)``."""
        raise NotImplementedError

    def slogdet(self) -> tuple[Tensor, Tensor]:
        """``(sign, log|det A|)`` as :func:`torch.linalg.slogdet` returns them (sign 0 if singular)."""
        raise NotImplementedError

    def frobenius_norm(self) -> Tensor:
        """``‖A‖_F``."""
        raise NotImplementedError

    def logdet(self) -> Tensor:
        """``log det A``: ``-inf`` if ``A`` is singular, ``nan`` if ``det A < 0`` (as :func:`torch.logdet`).

        Computed from the log-determinants of the parts, so it does not overflow where
        :meth:`det` does (a float32 determinant overflows beyond ``e⁸⁸``).
        """
        sign, logabsdet = self.slogdet()
        nan_or_minus_inf = torch.where(sign == 0, -math.inf, math.nan).to(logabsdet)
        return torch.where(sign > 0, logabsdet, nan_or_minus_inf)

    def det(self) -> Tensor:
        """``det A = sign · exp(log|det A|)``; prefer :meth:`logdet`, which does not overflow."""
        sign, logabsdet = self.slogdet()
        return sign * torch.exp(logabsdet)
