"""How the partial results of a pass over the data are combined: in this process, or across processes.

The engine (:class:`curvkit._engine.MiniBatchEngine`) iterates its batches and accumulates
``Σ_b w_b R_b`` and ``K = Σ_b K_b`` locally; a reduction then combines them. There are two:

- :class:`LocalReduction` (``process_group=None``): the local sums are the result.
- :class:`ProcessGroupReduction` (a ``torch.distributed`` process group): each process iterates
  its own shard of the data; the sums of all ranks are added by an all-reduce, so that every rank
  holds what one process computes on all the data (``Σ_r Σ_{b ∈ r} w_b R_b / Σ_r K_r``).

:func:`reduction_for` chooses between them, the one place that does. Every collective is preceded
by a *status exchange*: an all-gather of a few float64 numbers per rank (whether the rank failed,
which step it is at, what it computes, its counts), so that a rank that raised, that builds
another operator or that is at another step makes every rank raise a clear error instead of
leaving the others blocked in the collective. A rank that never arrives (a crash, an endless
loop) is caught by the process group's timeout. Design and costs: docs/design-notes.md
("Data-parallel products").
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

STATUS_FIELDS = (
    "failed",
    "step",
    "signature",
    "loss_terms",
    "samples",
    "batches",
    "rows",
    "size",
    "checksum",
)
"""The numbers each rank sends in a status exchange, in this order (float64)."""

_SHARED = "_curvkit_shared_across_ranks"
"""Attribute that marks an exception every rank already knows of (no second exchange for it)."""


PACK_LIMIT = 2**20
"""Entries from which a tensor is all-reduced on its own rather than packed with the others."""


class DistributedError(RuntimeError):
    """Another rank failed, or the ranks disagree about what they compute."""


def code(text: str) -> float:
    """A text as a number that a float64 holds exactly (CRC-32)."""
    return float(zlib.crc32(text.encode()))


@lru_cache(maxsize=8)
def position_weights(length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``1 … 2`` in ``length`` steps, kept for the next use (a few lengths at most)."""
    return torch.linspace(1.0, 2.0, length, dtype=dtype, device=device)


def checksum(tensor: Tensor | None) -> float:
    """A number that differs, almost surely, between two different tensors (0 for ``None``).

    A position-weighted sum (so that a permutation of the entries changes it), one reduction in
    the tensor's own dtype: equal tensors give equal sums on every rank.
    """
    if tensor is None or tensor.numel() == 0:
        return 0.0
    flat = tensor.detach().reshape(-1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.to(torch.float64)
    return float(torch.dot(flat, position_weights(flat.numel(), flat.dtype, flat.device)))


@dataclass(frozen=True)
class Status:
    """The status exchange's numbers of every rank (rows by rank, :data:`STATUS_FIELDS`)."""

    table: Tensor

    def column(self, field: str) -> list[float]:
        """``field`` of every rank."""
        return self.table[:, STATUS_FIELDS.index(field)].tolist()

    def total(self, field: str) -> float:
        """``field`` summed over the ranks."""
        return float(sum(self.column(field)))


class LocalReduction:
    """This process only (``process_group=None``): partial results are the results."""

    rank = 0
    world_size = 1
    distributed = False

    def exchange(self, step: str, **fields: float) -> Status:
        """This rank's status alone (see :meth:`ProcessGroupReduction.exchange`)."""
        row = [float(fields.get(field, 0.0)) for field in STATUS_FIELDS]
        row[STATUS_FIELDS.index("step")] = code(step)
        return Status(torch.tensor([row], dtype=torch.float64))

    def all_reduce(self, tensors: list[Tensor]) -> None:
        """Nothing to add."""

    def gather_rows(self, rows: Tensor, counts: list[int]) -> Tensor:
        """``rows`` as they are."""
        return rows

    def minimum(self, value: int, step: str) -> int:
        """``value`` (the smallest over the ranks in data-parallel runs)."""
        return value

    def share_failure(self, step: str, error: BaseException) -> None:
        """Nothing to share: the caller raises ``error`` as it is."""

    @contextmanager
    def failure_told(self, step: str) -> Iterator[None]:
        """Run this rank's part of ``step``; tell the other ranks of an exception before it propagates.

        (:meth:`share_failure`.) Nothing is exchanged if all goes well.
        """
        try:
            yield
        except BaseException as error:
            self.share_failure(step, error)
            raise

    @contextmanager
    def failures_shared(self, step: str) -> Iterator[None]:
        """Nothing to share: exceptions propagate as they are."""
        yield


class ProcessGroupReduction(LocalReduction):
    """Data-parallel over the ranks of a ``torch.distributed`` process group.

    Args:
        group: The process group (``torch.distributed.group.WORLD`` or one from ``new_group``).

    Raises:
        ValueError: If ``torch.distributed`` is not initialized or ``group`` is not a group.
    """

    distributed = True

    def __init__(self, group: object):
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "process_group was given, but torch.distributed is not initialized: call "
                "torch.distributed.init_process_group (torchrun sets its environment) first, or pass "
                "process_group=None."
            )
        if not isinstance(group, dist.ProcessGroup):
            raise ValueError(
                f"process_group must be a torch.distributed ProcessGroup (e.g. "
                f"torch.distributed.group.WORLD) or None, got {type(group).__name__}."
            )
        self._dist, self.group = dist, group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        # NCCL reduces device tensors only; every other backend (gloo) host tensors
        backend = dist.get_backend(group)
        nccl = backend == "nccl"
        self._device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def exchange(
        self, step: str, failure: str | None = None, signature: str | None = None, **fields: float
    ) -> Status:
        """All-gather every rank's status; raise on every rank if one failed or the ranks disagree.

        Args:
            step: What the ranks are about to do (ranks at different steps are an error).
            failure: This rank's error message, if it failed.
            signature: What this rank computes, if it matters at this step (compared by a code;
                the texts are gathered for the message if they differ).
            **fields: This rank's numbers (:data:`STATUS_FIELDS`; missing ones are 0).

        Returns:
            Every rank's numbers.

        Raises:
            DistributedError: On every rank but the failing ones, if a rank failed; on every
                rank, if the ranks are at different steps or compute different things
                (``signature``) or send different sizes.
        """
        fields = {**fields, "failed": float(failure is not None), "signature": code(signature or "")}
        row = LocalReduction.exchange(self, step, **fields).table.to(self._device)
        gathered = [torch.empty_like(row) for _ in range(self.world_size)]
        self._dist.all_gather(gathered, row, group=self.group)
        status = Status(torch.cat(gathered).cpu())
        failed = [rank for rank, flag in enumerate(status.column("failed")) if flag]
        if failed:
            messages = [None] * self.world_size
            self._dist.all_gather_object(messages, failure, group=self.group)
            if failure is not None:
                return status  # the caller re-raises its own exception
            details = "; ".join(f"rank {rank}: {messages[rank]}" for rank in failed)
            raise _shared(DistributedError(f"rank {self.rank} stops: another rank failed ({details})."))
        for field, what in (
            ("step", "are at different steps (one rank called a product or method the others did not)"),
            ("signature", "built different computations (model parameters, operator, loss or fisher_type)"),
            ("size", "multiply blocks of different sizes"),
            ("checksum", "multiply different vectors (seed the random vectors alike on every rank)"),
        ):
            values = status.column(field)
            if field == "checksum":
                scale = max(abs(value) for value in values) or 1.0
                agree = max(values) - min(values) <= 1e-6 * scale
            else:
                agree = len(set(values)) == 1
            if not agree and field == "signature":
                texts = [None] * self.world_size
                self._dist.all_gather_object(texts, signature, group=self.group)
                values = [f"rank {rank}: {text}" for rank, text in enumerate(texts)]
            if not agree:
                raise _shared(
                    DistributedError(
                        f"The ranks of the process group {what}, at {step}: {field} by rank is {values}."
                    )
                )
        return status

    def all_reduce(self, tensors: list[Tensor]) -> None:
        """Sum ``tensors`` over the ranks, in place.

        Small tensors travel packed into one buffer (one collective for a product's pieces);
        tensors of at least :data:`PACK_LIMIT` entries (KFAC's factors) are reduced as they are,
        without the two copies that packing costs. A group of one rank has nothing to add.
        """
        if not tensors or self.world_size == 1:
            return
        packed_tensors = []
        for tensor in tensors:
            if tensor.numel() < PACK_LIMIT:
                packed_tensors.append(tensor)
                continue
            on_device = tensor.contiguous().to(self._device)
            self._dist.all_reduce(on_device, group=self.group)
            if on_device.data_ptr() != tensor.data_ptr():
                tensor.copy_(on_device)
        if not packed_tensors:
            return
        packed = torch.cat([tensor.reshape(-1) for tensor in packed_tensors]).to(self._device)
        self._dist.all_reduce(packed, group=self.group)
        offset = 0
        for tensor in packed_tensors:
            tensor.copy_(packed[offset : offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()

    def minimum(self, value: int, step: str) -> int:
        """The smallest ``value`` over the ranks (read off a status exchange)."""
        return int(min(self.exchange(step, rows=float(value)).column("rows")))

    def gather_rows(self, rows: Tensor, counts: list[int]) -> Tensor:
        """Every rank's ``rows`` stacked in rank order; ``counts``: each rank's number of rows.

        All-gather needs equal sizes, so each rank's rows are padded to the largest count.
        """
        longest = max(counts)
        padded = rows.new_zeros(longest, *rows.shape[1:])
        padded[: rows.shape[0]] = rows
        padded = padded.to(self._device)
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        self._dist.all_gather(gathered, padded, group=self.group)
        return torch.cat([part[:count] for part, count in zip(gathered, counts)]).to(rows.device)

    @contextmanager
    def failures_shared(self, step: str) -> Iterator[None]:
        """Run a rank's part of ``step``; then every rank learns whether any rank failed in it.

        The failing rank re-raises its own exception, every other rank raises
        :class:`DistributedError` naming it. Collectives inside (products) exchange statuses
        of the same size, so a rank that failed before one of them meets the others there, and
        they all raise there.
        """
        with self.failure_told(step):
            yield
        self.exchange(step)

    def share_failure(self, step: str, error: BaseException) -> None:
        """Tell the other ranks, in a status exchange, that this rank failed at ``step``.

        Once per error: an error every rank knows of already (one raised by an exchange, or
        shared by an inner step) is not sent again. The caller then raises ``error``.
        """
        if getattr(error, _SHARED, False):
            return
        self.exchange(step, failure=f"{type(error).__name__}: {error}")
        _shared(error)


def _shared(error: BaseException) -> BaseException:
    """``error``, marked as known to every rank."""
    setattr(error, _SHARED, True)
    return error


def reduction_for(process_group: object | None) -> LocalReduction:
    """The reduction of ``process_group``: this process for ``None``, else across its ranks.

    Raises:
        ValueError: As :class:`ProcessGroupReduction`.
    """
    if process_group is None:
        return LocalReduction()
    return ProcessGroupReduction(process_group)
