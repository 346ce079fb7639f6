"""An operator built on first use: kept, or built again for every use (KFAC's ``cache=False``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from curvkit.linear_operator import LinearOperator
from curvkit.structured._closed_forms import ClosedForms


class DeferredLinearOperator(ClosedForms, LinearOperator):
    """The operator ``build()`` returns, built when first used.

    With ``cache=True`` it is kept after the first use; with ``cache=False`` it is built again for
    every product or closed form and dropped afterwards, trading time for memory (an inverse's
    factors then exist only during a product). Shape, dtype, device and tags are given up front,
    since they are structural facts that must not wait for the build.

    Args:
        build: Returns the operator (of the declared shape).
        shape, dtype, device, symmetric, psd: As :class:`~curvkit.linear_operator.LinearOperator`.
        cache: Whether to keep the built operator.
    """

    def __init__(
        self,
        build: Callable[[], LinearOperator],
        shape: tuple[int, int],
        *,
        dtype: torch.dtype | None,
        device: torch.device | None,
        symmetric: bool,
        psd: bool,
        cache: bool,
    ):
        super().__init__(shape, dtype=dtype, device=device, symmetric=symmetric, psd=psd)
        self._build, self._cache = build, cache
        self._built: LinearOperator | None = None

    def _operator(self) -> LinearOperator:
        if self._built is not None:
            return self._built
        operator = self._build()
        if operator.shape != self.shape:
            raise RuntimeError(
                f"The deferred operator was declared {self.shape}, but built {operator.shape}."
            )
        if self._cache:
            self._built = operator
        return operator

    def _matmat(self, X: Tensor) -> Tensor:
        return self._operator().matmat(X)

    def _rmatmat(self, X: Tensor) -> Tensor:
        return self._operator().rmatmat(X)

    def to_dense(self, chunk_size: int = 256) -> Tensor:
        return self._operator().to_dense(chunk_size)

    def trace(self) -> Tensor:
        return self._operator().trace()

    def slogdet(self) -> tuple[Tensor, Tensor]:
        return self._operator().slogdet()

    def frobenius_norm(self) -> Tensor:
        return self._operator().frobenius_norm()
