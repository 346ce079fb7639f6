"""Results that unpack as skerch's tuples and carry what the call cost."""

from __future__ import annotations

from torch import Tensor


class SketchResult(tuple):
    """A tuple of tensors (unpacks as skerch's return value) with ``num_products`` and extra facts.

    Attributes:
        num_products: Products with the operator (columns multiplied, both sides counted).
    """

    num_products: int

    def __new__(cls, values: tuple[Tensor, ...], num_products: int, **facts: object) -> SketchResult:
        result = super().__new__(cls, values)
        result.num_products = num_products
        result.__dict__.update(facts)
        return result


class EighResult(SketchResult):
    """``(eigenvalues, eigenvectors)`` of :func:`~curvkit.sketch.seigh`, with ``num_products``."""

    @property
    def eigenvalues(self) -> Tensor:
        return self[0]

    @property
    def eigenvectors(self) -> Tensor:
        return self[1]


class SVDResult(SketchResult):
    """``(U, S, Vh)`` of :func:`~curvkit.sketch.ssvd`, with ``num_products``."""

    @property
    def U(self) -> Tensor:
        return self[0]

    @property
    def S(self) -> Tensor:
        return self[1]

    @property
    def Vh(self) -> Tensor:
        return self[2]
