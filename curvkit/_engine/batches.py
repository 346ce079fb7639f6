"""Iterate mini-batches, weight their contributions, show progress.

A curvature matrix of the empirical risk is a weighted sum of the same matrix over mini-batches.
A ``reduction='mean'`` loss divides batch ``b``'s sum of terms by their number ``K_b`` (samples,
or output entries for MSE, or non-ignored positions for cross-entropy, see
:func:`curvkit.losses.num_loss_terms`), while the full-data loss divides by ``K = Σ_b K_b``; so
the batch's matrix (of the loss as ``loss_func`` reduces it on that batch) enters with weight
``K_b / K``, and with weight ``1`` for ``'sum'``. This module is the only place that knows this
rule, so however the data is split into batches, the result is the full-data matrix. ``K`` is
accumulated in the same pass as the weighted sum, which is divided by it at the end: no extra
pass over the data.

The sums over batches are the seam for data-parallel products: a distributed engine shards
the batches across processes and all-reduces the partial sums (and ``K``) in
:meth:`sum_over_batches` and :meth:`accumulate_over_batches`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from curvkit._boundary import as_integer
from curvkit._engine.finite import DATA_HINT, check_finite, named_inputs

BatchInput = Tensor | Mapping[str, Tensor]

PASS_BAR_DELAY = 1.0
"""Seconds a pass over the data runs before its progress bar appears."""


@dataclass(frozen=True)
class Batch:
    """One mini-batch on the operator's device.

    Attributes:
        index: Position of the batch in the iteration order.
        X: Model input (a tensor or a dict of tensors).
        y: Targets.
        size: Number of samples ``N_b``.
        loss_terms: Number ``K_b`` of terms ``reduction='mean'`` averages over (see the module
            docstring); counted on the batch as ``data`` yields it, before it moves to the
            device, so that the count costs no device synchronization for data on the host.
    """

    index: int
    X: BatchInput
    y: Tensor
    size: int
    loss_terms: float | None = None  # None only in the batch handed to the counting function


def _to_device(X: Any, device: torch.device) -> Any:
    """``X`` (a tensor or a dict of them) on ``device``.

    Copies to an accelerator do not block the host (``non_blocking``): from pinned memory
    (``DataLoader(pin_memory=True)``) they overlap with the products, from pageable memory they
    are staged as before. Copies to the CPU block, so that the host never reads unfinished data.
    """
    if isinstance(X, Tensor):
        return X.to(device, non_blocking=device.type != "cpu")
    if isinstance(X, Mapping):
        return {key: _to_device(value, device) for key, value in X.items()}
    return X


def _size_mismatch(index: int, size: int, y: Tensor) -> str:
    """Why a batch's targets do not match its number of samples, and the likely fix."""
    message = f"batch {index}: X holds {size} samples but y has shape {list(y.shape)}"
    if y.ndim > 0 and y.shape[0] > size > 0 and y.shape[0] % size == 0:  # several targets per sample
        return (
            f"{message}, {y.shape[0] // size} targets per sample. For sequence targets (a language "
            "model's tokens), either keep the sequence axis (output [N, C, T], y [N, T]), or flatten "
            "output [N·T, C] and y [N·T] and pass batch_size_fn counting the targets, e.g. "
            "batch_size_fn=lambda X: X.numel() for token ids X of shape [N, T] (each token then "
            "counts as a sample; see docs/sequence-targets.md)."
        )
    return (
        f"{message}; data must yield mini-batches with the batch axis first (e.g. a DataLoader with "
        "a batch_size), not single samples."
    )


class MiniBatchEngine:
    """Iterate ``data`` on ``device`` and combine per-batch results.

    Args:
        data: Iterable of ``(X, y)`` pairs (a list or a ``DataLoader``); iterated once per
            product, so it must be re-iterable and deterministic.
        device: Device to move the batches to.
        num_data: Total number of samples ``N``. Computed with one pass over ``data`` on
            first use when not given; a given one is checked against every pass.
        batch_size_fn: Maps ``X`` to its batch size. Required when ``X`` is a dict; by
            default the size of ``X``'s first axis.
        progressbar: Show a tqdm progress bar over the batches of a pass that takes longer than
            :data:`PASS_BAR_DELAY` seconds (a bar per short product would flash by, many times
            inside one run of an algorithm, which shows its own bar of products).
        loss_terms: Maps a batch (as ``data`` yields it, before it moves to ``device``) to its
            number ``K_b`` of averaged loss terms (the weights of ``reduction='mean'``); by
            default its number of samples.
        before_batch: Called before each batch's result in :meth:`sum_over_batches`,
            :meth:`accumulate_over_batches` and :meth:`concatenate_over_batches` (the products'
            guard: the model must not have changed, the cache must be current;
            :meth:`ModelDataSetup.before_batch`), so that no product path has to remember it.

    Raises:
        ValueError: If ``data`` is not re-iterable (e.g. a generator) or ``num_data`` is not
            a positive integer.
    """

    def __init__(
        self,
        data: Iterable[tuple[BatchInput, Tensor]],
        device: torch.device,
        *,
        num_data: int | None = None,
        batch_size_fn: Callable[[BatchInput], int] | None = None,
        progressbar: bool = False,
        loss_terms: Callable[[Batch], float] | None = None,
        before_batch: Callable[[], None] | None = None,
    ):
        if not isinstance(data, Iterable) or isinstance(data, (Tensor, str)):
            raise ValueError(f"data must be an iterable of (X, y) mini-batches, got {type(data).__name__}.")
        if isinstance(data, Iterator):
            raise ValueError(
                f"data must be re-iterable (every product passes over it), got a one-shot "
                f"{type(data).__name__}. Pass a list of (X, y) batches or a DataLoader."
            )
        num_data = None if num_data is None else as_integer(num_data, "num_data", minimum=1)
        if batch_size_fn is not None and not callable(batch_size_fn):
            raise ValueError("batch_size_fn must be callable, mapping X to its batch size.")
        self.data = data
        self.device = device
        self.progressbar = progressbar
        self._batch_size_fn = batch_size_fn
        self._num_data = num_data
        self._num_data_given = num_data is not None  # only a given one is checked against passes
        self._loss_terms = loss_terms or (lambda batch: float(batch.size))
        self._before_batch = before_batch or (lambda: None)
        self.num_passes = 0  # passes started, so that per-pass checks (the cache's) know a new one
        self.batches_in_last_pass = 0  # of the last completed pass (the determinism probe compares)
        self._checked_batches = 0  # batches 0, 1, ... below this were found finite

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

        The first time a batch is yielded, its floating-point inputs and targets are checked for
        NaN and infinity, as ``data`` yields them (on the host, for data there: no device
        synchronization; see :mod:`curvkit._engine.finite`).

        Raises:
            ValueError: If ``data`` yields no batch, a batch is not an ``(X, y)`` pair, its
                targets do not have its samples on their first axis, its inputs or targets are
                not finite, or the batches' sizes do not add up to ``num_data``.
        """
        self.num_passes += 1
        # an iterator, not the data: tqdm.auto's asyncio base calls iter() on an iterable in its
        # constructor and tqdm again when iterating, which started a DataLoader twice per pass
        total = len(self.data) if isinstance(self.data, Sized) else None
        iterator = tqdm(
            iter(self.data),
            total=total,
            desc=desc,
            disable=not self.progressbar,
            leave=False,
            delay=PASS_BAR_DELAY,
        )
        index, num_samples = -1, 0
        for index, pair in enumerate(iterator):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                what = type(pair).__name__
                what += f" of length {len(pair)}" if isinstance(pair, (tuple, list)) else ""
                raise ValueError(
                    f"data must yield (X, y) pairs; batch {index} is a {what}. "
                    "Combine several inputs into a dict X (with batch_size_fn), e.g. in a collate_fn."
                )
            X, y = pair
            size = self.batch_size(X)
            if isinstance(y, Tensor) and (y.ndim == 0 or y.shape[0] != size):
                raise ValueError(_size_mismatch(index, size, y))
            if index >= self._checked_batches:  # once per batch: see finite.py
                check_finite(index, {**named_inputs(X), "the target y": y}, DATA_HINT)
                self._checked_batches = index + 1
            num_samples += size
            loss_terms = self._loss_terms(Batch(index, X, y, size))
            yield Batch(index, _to_device(X, self.device), _to_device(y, self.device), size, loss_terms)
        if index < 0:
            raise ValueError("data is empty: it yielded no mini-batch.")
        self.batches_in_last_pass = index + 1
        if self._num_data_given and num_samples != self._num_data:
            raise ValueError(
                f"num_data is {self._num_data}, but data yielded {num_samples} samples in this pass. "
                "Pass the number of samples data holds (or None to count them)."
            )

    @property
    def num_data(self) -> int:
        """Total number of samples ``N`` (one pass over ``data`` the first time, unless given)."""
        if self._num_data is None:
            num_data = sum(self.batch_size(X) for X, _ in self.data)
            if num_data == 0:
                raise ValueError("data is empty: it contains no samples.")
            self._num_data = num_data
        return self._num_data

    def sum_over_batches(
        self,
        batch_result: Callable[[Batch], Tensor | list[Tensor]],
        reduction: str,
        desc: str | None = None,
        out: list[Tensor] | None = None,
    ) -> Tensor | list[Tensor]:
        """``Σ_b w_b batch_result(b)`` with ``w_b = K_b / K`` (``'mean'``) or ``1`` (``'sum'``).

        ``batch_result`` may return a tensor or a list of tensors (e.g. parameter-shaped);
        the sum is accumulated in place, in the same structure: in new tensors, or in ``out``
        (tensors of the results' shapes, say views of one preallocated matrix) if given. The
        sum records no autograd graph. Batches without loss terms (``K_b = 0``: every target
        ignored) are skipped; their loss is not defined.

        Raises:
            ValueError: If no batch has a loss term.
        """
        total, num_terms, structure = None, 0.0, None
        for batch in self.batches(desc):
            weight = batch.loss_terms if reduction == "mean" else 1.0
            if weight == 0.0:
                continue
            num_terms += weight
            self._before_batch()
            result = batch_result(batch)
            structure = type(result)
            parts = result if isinstance(result, list) else [result]
            with torch.no_grad():  # sums of results, not functions of them
                if total is not None:
                    for accumulated, part in zip(total, parts):
                        accumulated.add_(part, alpha=weight)
                elif out is None:
                    total = [weight * part for part in parts]
                else:
                    total = out
                    for accumulated, part in zip(total, parts):
                        torch.mul(part, weight, out=accumulated)
        if total is None:
            raise ValueError("No batch of data has a loss term (every target is ignored).")
        if reduction == "mean":
            for accumulated in total:
                accumulated.div_(num_terms)
        return total if structure is list else total[0]

    def accumulate_over_batches(
        self, accumulate: Callable[[Batch, list[Tensor] | None], list[Tensor]], desc: str | None = None
    ) -> list[Tensor]:
        """``Σ_b`` (``reduction='sum'``) of per-batch terms that ``accumulate`` adds into the sum itself.

        ``accumulate(batch, total)`` returns the sum so far with the batch's terms added: new
        tensors at the first batch (``total`` is ``None``), ``total`` updated in place at the
        others. For terms cheapest added where they are formed: a Gram product ``XᵀX`` by
        ``addmm`` into the sum leaves no per-batch result to copy and add (KFAC's factors: the
        first batch's copy and the later batches' additions of ``[2049, 2049]`` factors took a
        tenth of the benchmark CNN's factor pass). A distributed engine all-reduces the result.

        Raises:
            ValueError: If there is no batch.
        """
        total = None
        for batch in self.batches(desc):
            self._before_batch()
            total = accumulate(batch, total)
        if total is None:
            raise ValueError("data has no batch.")
        return total

    def concatenate_over_batches(
        self, batch_result: Callable[[Batch], Tensor], desc: str | None = None
    ) -> Tensor:
        """Stack per-batch results along the first axis (the Jacobian's row blocks)."""
        results = []
        for batch in self.batches(desc):
            self._before_batch()
            results.append(batch_result(batch))
        return torch.cat(results)
