"""Iterate a data set's mini-batches on the operator's device: checked, counted, shown.

Every pass over the data goes through :meth:`BatchIteration.batches`, which checks what ``data``
yields (``(X, y)`` pairs, targets with the samples on their first axis, finite entries, the
same number of samples in every pass), counts each batch's loss terms before the batch moves
to the device, and shows a progress bar for long passes. In data-parallel runs
(:meth:`BatchIteration.join`) each rank iterates its own shard and learns where it lies among
the others'. How the batches' results are combined is :mod:`curvkit._engine.batches`'.
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
from curvkit._engine.reduction import LocalReduction

BatchInput = Tensor | Mapping[str, Tensor]

PASS_BAR_DELAY = 1.0
"""Seconds a pass over the data runs before its progress bar appears."""


@dataclass(frozen=True)
class Batch:
    """One mini-batch on the operator's device.

    Attributes:
        index: Position of the batch in this process's iteration order.
        X: Model input (a tensor or a dict of tensors).
        y: Targets.
        size: Number of samples ``N_b``.
        loss_terms: Number ``K_b`` of terms ``reduction='mean'`` averages over (see the module
            docstring); counted on the batch as ``data`` yields it, before it moves to the
            device, so that the count costs no device synchronization for data on the host.
        global_index: Position of the batch in the data of all ranks (the batches of lower ranks
            first; ``index`` in one process); the MC-Fisher's targets are drawn per
            ``global_index``, so that sharding does not change them.
    """

    index: int
    X: BatchInput
    y: Tensor
    size: int
    loss_terms: float | None = None  # None only in the batch handed to the counting function
    global_index: int = 0


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


class BatchIteration:
    """Iterate ``data`` on ``device``, checked, with the data set's size and each batch's loss terms.

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
        reduction: The process group, if any (:mod:`curvkit._engine.reduction`): over the
            ranks of one, each iterates its own shard ``data``, and ``num_data`` is the number
            of samples of all shards together.

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
        reduction: LocalReduction | None = None,
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
        self.reduction = reduction or LocalReduction()
        self._shard_samples: int | None = None  # samples of this rank's shard (data-parallel only)
        self.sample_offset = 0  # samples of the lower ranks' shards
        self.batch_offset = 0  # batches of the lower ranks' shards
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
        iterator = iter(self.data)
        if self.progressbar:  # a disabled bar still takes a lock and starts tqdm's monitor thread
            iterator = tqdm(iterator, total=total, desc=desc, leave=False, delay=PASS_BAR_DELAY)
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
            X, y = _to_device(X, self.device), _to_device(y, self.device)
            yield Batch(index, X, y, size, loss_terms, self.batch_offset + index)
        if index < 0:
            raise ValueError(f"data is empty{self._on_rank()}: it yielded no mini-batch.")
        self.batches_in_last_pass = index + 1
        if self._shard_samples is not None and num_samples != self._shard_samples:
            raise ValueError(
                f"data{self._on_rank()} yielded {self._shard_samples} samples when the operator was "
                f"built, but {num_samples} in this pass. The data must not change between passes."
            )
        if not self.reduction.distributed and self._num_data_given and num_samples != self._num_data:
            raise ValueError(
                f"num_data is {self._num_data}, but data yielded {num_samples} samples in this pass. "
                "Pass the number of samples data holds (or None to count them)."
            )

    def _on_rank(self) -> str:
        """`` on rank r`` in data-parallel runs, for messages."""
        return f" on rank {self.reduction.rank}" if self.reduction.distributed else ""

    @property
    def num_data(self) -> int:
        """Total number of samples ``N`` (one pass over ``data`` the first time, unless given).

        In data-parallel runs, the samples of all ranks' shards (counted by :meth:`join`).
        """
        if self._num_data is None:
            num_data = sum(self.batch_size(X) for X, _ in self.data)
            if num_data == 0:
                raise ValueError(f"data is empty{self._on_rank()}: it contains no samples.")
            self._num_data = num_data
        return self._num_data

    def join(self, signature: str) -> None:
        """Count this rank's shard and agree with the other ranks (data-parallel runs only).

        One pass over ``data`` reading batch sizes; then the ranks exchange their counts and a
        code of ``signature`` (what they compute: it must be the same on every rank), and each
        learns ``N`` and how many samples and batches lie before its shard.

        Raises:
            DistributedError: On every rank, if the signatures differ.
            ValueError: On every rank, if a given ``num_data`` is not the total of the shards.
        """
        if not self.reduction.distributed:
            return
        sizes = [self.batch_size(X) for X, _ in self.data]
        status = self.reduction.exchange(
            "building the operator",
            signature=signature,
            samples=float(sum(sizes)),
            batches=float(len(sizes)),
        )
        samples, batches = status.column("samples"), status.column("batches")
        rank = self.reduction.rank
        total = int(sum(samples))
        if self._num_data_given and total != self._num_data:
            raise ValueError(
                f"num_data is {self._num_data}, but the shards of the {len(samples)} ranks hold {total} "
                f"samples ({[int(count) for count in samples]} by rank). Pass the number of samples of "
                "all shards together (or None to count them)."
            )
        self._num_data, self._shard_samples = total, int(samples[rank])
        self.sample_offset, self.batch_offset = int(sum(samples[:rank])), int(sum(batches[:rank]))
