"""Iterate mini-batches, weight their contributions, show progress.

A curvature matrix of the empirical risk ``L(θ) = c Σ_n ℓ_n`` is a weighted sum of the same
matrix over mini-batches: with ``N_b`` samples in batch ``b`` and ``N`` in total, the batch's
matrix (of the loss as ``loss_func`` reduces it on that batch) enters with weight ``N_b / N``
for ``reduction='mean'`` and ``1`` for ``'sum'``. This module is the only place that knows
this rule, so batches of unequal sizes give exactly the full-data matrix.

The sums over batches are the seam for data-parallel products: a distributed engine shards
the batches across processes and all-reduces the partial sums in :meth:`sum_over_batches`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

BatchInput = Tensor | Mapping[str, Tensor]


@dataclass(frozen=True)
class Batch:
    """One mini-batch on the operator's device.

    Attributes:
        index: Position of the batch in the iteration order.
        X: Model input (a tensor or a dict of tensors).
        y: Targets.
        size: Number of samples ``N_b``.
    """

    index: int
    X: BatchInput
    y: Tensor
    size: int


def _to_device(X: Any, device: torch.device) -> Any:
    if isinstance(X, Tensor):
        return X.to(device)
    if isinstance(X, Mapping):
        return {key: _to_device(value, device) for key, value in X.items()}
    return X


class MiniBatchEngine:
    """Iterate ``data`` on ``device`` and combine per-batch results.

    Args:
        data: Iterable of ``(X, y)`` pairs (a list or a ``DataLoader``); iterated once per
            product, so it must be re-iterable and deterministic.
        device: Device to move the batches to.
        num_data: Total number of samples ``N``. Computed with one pass over ``data`` on
            first use when not given.
        batch_size_fn: Maps ``X`` to its batch size. Required when ``X`` is a dict; by
            default the size of ``X``'s first axis.
        progressbar: Show a tqdm progress bar over the batches of each pass.

    Raises:
        ValueError: If ``data`` is not iterable or ``num_data`` is not positive.
    """

    def __init__(
        self,
        data: Iterable[tuple[BatchInput, Tensor]],
        device: torch.device,
        *,
        num_data: int | None = None,
        batch_size_fn: Callable[[BatchInput], int] | None = None,
        progressbar: bool = False,
    ):
        if not isinstance(data, Iterable) or isinstance(data, (Tensor, str)):
            raise ValueError(f"data must be an iterable of (X, y) mini-batches, got {type(data).__name__}.")
        if num_data is not None and (not isinstance(num_data, int) or num_data <= 0):
            raise ValueError(f"num_data must be a positive integer, got {num_data!r}.")
        if batch_size_fn is not None and not callable(batch_size_fn):
            raise ValueError("batch_size_fn must be callable, mapping X to its batch size.")
        self.data = data
        self.device = device
        self.progressbar = progressbar
        self._batch_size_fn = batch_size_fn
        self._num_data = num_data

    def batch_size(self, X: BatchInput) -> int:
        """The number of samples in ``X``.

        Raises:
            ValueError: If ``X`` is a dict and no ``batch_size_fn`` was given.
        """
        if self._batch_size_fn is not None:
            return int(self._batch_size_fn(X))
        if isinstance(X, Tensor):
            return X.shape[0]
        raise ValueError(
            f"batch_size_fn is required when X is a {type(X).__name__} rather than a tensor: "
            "pass batch_size_fn=lambda X: ... that returns the number of samples in X."
        )

    def batches(self, desc: str | None = None) -> Iterator[Batch]:
        """Yield the batches on the engine's device, with a progress bar if requested.

        Raises:
            ValueError: If ``data`` yields no batch or a batch is not an ``(X, y)`` pair.
        """
        iterator = tqdm(self.data, desc=desc, disable=not self.progressbar, leave=False)
        index = -1
        for index, pair in enumerate(iterator):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError(f"data must yield (X, y) pairs; batch {index} is a {type(pair).__name__}.")
            X, y = pair
            yield Batch(index, _to_device(X, self.device), _to_device(y, self.device), self.batch_size(X))
        if index < 0:
            raise ValueError("data is empty: it yielded no mini-batch.")

    @property
    def num_data(self) -> int:
        """Total number of samples ``N`` (one pass over ``data`` the first time, unless given)."""
        if self._num_data is None:
            self._num_data = sum(self.batch_size(X) for X, _ in self.data)
            if self._num_data == 0:
                raise ValueError("data is empty: it contains no samples.")
        return self._num_data

    def weight(self, batch: Batch, reduction: str) -> float:
        """The weight ``N_b / N`` (``'mean'``) or ``1`` (``'sum'``) of a batch's matrix."""
        return batch.size / self.num_data if reduction == "mean" else 1.0

    def sum_over_batches(
        self,
        batch_result: Callable[[Batch], Tensor | list[Tensor]],
        reduction: str,
        desc: str | None = None,
    ) -> Tensor | list[Tensor]:
        """``Σ_b w_b batch_result(b)`` with the weights of :meth:`weight`.

        ``batch_result`` may return a tensor or a list of tensors (e.g. parameter-shaped);
        the sum is accumulated in place, in the same structure.
        """
        total = None
        for batch in self.batches(desc):
            weight = self.weight(batch, reduction)
            result = batch_result(batch)
            parts = result if isinstance(result, list) else [result]
            if total is None:
                total = [weight * part for part in parts]
            else:
                for accumulated, part in zip(total, parts):
                    accumulated.add_(part, alpha=weight)
        return total if isinstance(result, list) else total[0]

    def concatenate_over_batches(
        self, batch_result: Callable[[Batch], Tensor], desc: str | None = None
    ) -> Tensor:
        """Stack per-batch results along the first axis (the Jacobian's row blocks)."""
        return torch.cat([batch_result(batch) for batch in self.batches(desc)])
