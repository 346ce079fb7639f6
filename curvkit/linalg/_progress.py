"""One progress bar per run of an algorithm, counting the operator's products.

An algorithm that takes ``progressbar=True`` wraps its operator in :class:`CountedOperator`
inside :func:`product_progress`: every product advances the bar by its number of columns, so
the bar shows products done out of the budget (or out of the most the run may take), their rate
and the time left, in tqdm's conventions. A curvature operator built with ``progressbar=True``
shows a bar per pass over its data only where a pass takes longer than a second
(:data:`curvkit._engine.iteration.PASS_BAR_DELAY`), below the algorithm's bar.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor
from tqdm.auto import tqdm

from curvkit.linear_operator import LinearOperator


class CountedOperator(LinearOperator):
    """``A``, advancing a progress bar by the number of columns of each product.

    Args:
        operator: The operator.
        bar: The tqdm bar to advance.
    """

    def __init__(self, operator: LinearOperator, bar: tqdm):
        super().__init__(
            operator.shape,
            dtype=operator.dtype,
            device=operator.device,
            symmetric=operator.is_symmetric,
            psd=operator.is_psd,
            in_layout=operator.in_layout,
            out_layout=operator.out_layout,
        )
        self.operator, self.bar = operator, bar

    @property
    def columns_per_product(self) -> int | None:
        return self.operator.columns_per_product

    def _matmat(self, X: Tensor) -> Tensor:
        result = self.operator.matmat(X)
        self.bar.update(X.shape[1])
        return result

    def _rmatmat(self, X: Tensor) -> Tensor:
        result = self.operator.rmatmat(X)
        self.bar.update(X.shape[1])
        return result


@contextmanager
def product_progress(
    A: LinearOperator, progressbar: bool, description: str, total: int | None = None
) -> Iterator[LinearOperator]:
    """``A`` with its products counted on a bar (``A`` itself if ``progressbar`` is false).

    Args:
        A: The operator.
        progressbar: Whether to show the bar.
        description: The bar's label (the routine's name).
        total: Products the run takes, or the most it may take; ``None`` if unknown.

    Yields:
        The operator to multiply with.

    Raises:
        TypeError: If ``progressbar`` is not a bool.
    """
    if not isinstance(progressbar, bool):
        raise TypeError(f"progressbar must be True or False, got {progressbar!r}.")
    if not progressbar:
        yield A
        return
    with tqdm(total=total, desc=description, unit="product") as bar:
        yield CountedOperator(A, bar)
