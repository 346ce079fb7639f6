"""Weight and combine the mini-batches' results into the data set's (and the ranks').

A curvature matrix of the empirical risk is a weighted sum of the same matrix over mini-batches.
A ``reduction='mean'`` loss divides batch ``b``'s sum of terms by their number ``K_b`` (samples,
or output entries for MSE, or non-ignored positions for cross-entropy, see
:func:`curvkit.losses.num_loss_terms`), while the full-data loss divides by ``K = Σ_b K_b``; so
the batch's matrix (of the loss as ``loss_func`` reduces it on that batch) enters with weight
``K_b / K``, and with weight ``1`` for ``'sum'``. This module is the only place that knows this
rule, so however the data is split into batches, the result is the full-data matrix. ``K`` is
accumulated in the same pass as the weighted sum, which is divided by it at the end: no extra
pass over the data.

The batch loop (:mod:`curvkit._engine.iteration`) is separate from how its partial results are
combined: the engine accumulates
``Σ_b w_b R_b`` and ``K`` over its own batches and hands them to its reduction
(:mod:`curvkit._engine.reduction`), which adds them over the ranks of a process group in
data-parallel runs (each rank iterating its own shard) or leaves them as they are. Every pass of
a product goes through :meth:`MiniBatchEngine.sum_over_batches`,
:meth:`MiniBatchEngine.accumulate_over_batches` or
:meth:`MiniBatchEngine.concatenate_over_batches`, so no product can forget the reduction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from curvkit._engine.iteration import Batch, BatchInput, BatchIteration
from curvkit._engine.reduction import checksum
from curvkit._precision import compute_dtype


class MiniBatchEngine(BatchIteration):
    """Iterate ``data`` on ``device`` (:class:`BatchIteration`) and combine per-batch results.

    Args:
        data, device: As for :class:`BatchIteration`.
        before_batch: Called before each batch's result in :meth:`sum_over_batches`,
            :meth:`accumulate_over_batches` and :meth:`concatenate_over_batches` (the products'
            guard: the model must not have changed, the cache must be current;
            :meth:`ModelDataSetup.before_batch`), so that no product path has to remember it.
        **iteration: ``num_data``, ``batch_size_fn``, ``progressbar``, ``loss_terms`` and
            ``reduction`` (how partial results are combined, :mod:`curvkit._engine.reduction`:
            in this process by default, or over the ranks of a process group), as for
            :class:`BatchIteration`.

    Raises:
        ValueError: As :class:`BatchIteration`.
    """

    def __init__(
        self,
        data: Iterable[tuple[BatchInput, Tensor]],
        device: torch.device,
        *,
        before_batch: Callable[[], None] | None = None,
        **iteration: Any,
    ):
        super().__init__(data, device, **iteration)
        self._before_batch = before_batch or (lambda: None)

    def sum_over_batches(
        self,
        batch_result: Callable[[Batch], Tensor | list[Tensor]],
        reduction: str,
        desc: str | None = None,
        out: list[Tensor] | None = None,
        inputs: Tensor | None = None,
    ) -> Tensor | list[Tensor]:
        """``Σ_b w_b batch_result(b)`` with ``w_b = K_b / K`` (``'mean'``) or ``1`` (``'sum'``).

        ``batch_result`` may return a tensor or a list of tensors (e.g. parameter-shaped);
        the sum is accumulated in place, in the same structure: in new tensors, or in ``out``
        (tensors of the results' shapes, say views of one preallocated matrix) if given. The
        sum records no autograd graph. Batches without loss terms (``K_b = 0``: every target
        ignored) are skipped; their loss is not defined. In data-parallel runs the local sums
        and ``K`` are added over the ranks (:mod:`curvkit._engine.reduction`); ``inputs``, the
        vectors the sum multiplies, must then be the same on every rank (checked).

        Raises:
            ValueError: If no batch has a loss term.
            DistributedError: If another rank failed in this pass, or the ranks multiply
                different ``inputs``.
        """
        if not self.reduction.distributed:
            total, num_terms, is_list, dtypes = self._local_sum(batch_result, reduction, desc, out)
            if total is None:
                raise ValueError("No batch of data has a loss term (every target is ignored).")
        else:
            total, num_terms, is_list, dtypes = self._reduced_sum(batch_result, reduction, desc, out, inputs)
        if reduction == "mean":
            for accumulated in total:
                accumulated.div_(num_terms)
        if out is not None and total is not out:  # summed in float32: rounded once, into out
            for target, accumulated in zip(out, total):
                target.copy_(accumulated)
            total = out
        total = [accumulated.to(dtype) for accumulated, dtype in zip(total, dtypes)]
        return total if is_list else total[0]

    def _local_sum(
        self,
        batch_result: Callable[[Batch], Tensor | list[Tensor]],
        reduction: str,
        desc: str | None,
        out: list[Tensor] | None,
    ) -> tuple[list[Tensor] | None, float, bool, list[torch.dtype]]:
        """This process's ``Σ_b K_b R_b`` (or ``Σ_b R_b``), ``Σ_b K_b``, lists or not, the dtypes.

        The sum is ``None`` if no batch has loss terms. Half-precision results are summed in
        float32 (:mod:`curvkit._precision`), also where ``out`` is given.
        """
        total, num_terms, is_list = None, 0.0, True
        dtypes = [] if out is None else [accumulated.dtype for accumulated in out]
        for batch in self.batches(desc):
            weight = batch.loss_terms if reduction == "mean" else 1.0
            if weight == 0.0:
                continue
            num_terms += weight
            self._before_batch()
            result = batch_result(batch)
            is_list = isinstance(result, list)
            parts = result if isinstance(result, list) else [result]
            with torch.no_grad():  # sums of results, not functions of them
                if total is not None:
                    for accumulated, part in zip(total, parts):
                        accumulated.add_(part, alpha=weight)
                elif out is None or any(compute_dtype(o.dtype) != o.dtype for o in out):
                    dtypes = dtypes or [part.dtype for part in parts]
                    total = [weight * part.to(compute_dtype(part.dtype)) for part in parts]
                else:
                    total = out
                    for accumulated, part in zip(total, parts):
                        torch.mul(part, weight, out=accumulated)
        return total, num_terms, is_list, dtypes

    def _reduced_sum(
        self,
        batch_result: Callable[[Batch], Tensor | list[Tensor]],
        reduction: str,
        desc: str | None,
        out: list[Tensor] | None,
        inputs: Tensor | None,
    ) -> tuple[list[Tensor], float, bool, list[torch.dtype]]:
        """The local sums added over the ranks: a status exchange, then one all-reduce."""
        step = f"a product of {desc}" if desc else "a sum over batches"
        with self.reduction.failure_told(step):
            total, num_terms, is_list, dtypes = self._local_sum(batch_result, reduction, desc, out)
            if total is None and out is not None:  # no loss term in this shard: it adds nothing
                # in the dtype the other ranks sum in (half precision in float32)
                total = [torch.zeros_like(o, dtype=compute_dtype(o.dtype)) for o in out]
            if total is None:
                raise ValueError(
                    f"No batch of data{self._on_rank()} has a loss term (every target is ignored)."
                )
        status = self.reduction.exchange(
            step,
            loss_terms=num_terms,
            size=float(sum(part.numel() for part in total)),
            checksum=checksum(inputs),
        )
        num_terms = status.total("loss_terms")
        if num_terms == 0:
            raise ValueError("No batch of data on any rank has a loss term (every target is ignored).")
        with torch.no_grad():
            self.reduction.all_reduce(total)
        return total, num_terms, is_list, dtypes

    def accumulate_over_batches(
        self,
        accumulate: Callable[[Batch, list[Tensor] | None], list[Tensor]],
        desc: str | None = None,
        finish: Callable[[list[Tensor]], list[Tensor]] | None = None,
    ) -> list[Tensor]:
        """``Σ_b`` (``reduction='sum'``) of per-batch terms that ``accumulate`` adds into the sum itself.

        ``accumulate(batch, total)`` returns the sum so far with the batch's terms added: new
        tensors at the first batch (``total`` is ``None``), ``total`` updated in place at the
        others. For terms cheapest added where they are formed: a Gram product ``XᵀX`` by
        ``addmm`` into the sum leaves no per-batch result to copy and add (KFAC's factors: the
        first batch's copy and the later batches' additions of ``[2049, 2049]`` factors took a
        tenth of the benchmark CNN's factor pass). ``finish(total)``, if given, completes this
        process's sum after its last batch (terms ``accumulate`` held back). In data-parallel
        runs the sums are then added over the ranks (a status exchange, then one all-reduce), as
        in :meth:`sum_over_batches`.

        Raises:
            ValueError: If there is no batch.
            DistributedError: If another rank failed in this pass.
        """
        step = f"a pass of {desc}" if desc else "a sum over batches"
        with self.reduction.failure_told(step):
            total = None
            for batch in self.batches(desc):
                self._before_batch()
                total = accumulate(batch, total)
            if total is None:
                raise ValueError(f"data{self._on_rank()} has no batch.")
            if finish is not None:
                total = finish(total)
        if self.reduction.distributed:
            self.reduction.exchange(step, size=float(sum(part.numel() for part in total)))
            with torch.no_grad():
                self.reduction.all_reduce(total)
        return total

    def concatenate_over_batches(
        self, batch_result: Callable[[Batch], Tensor], desc: str | None = None, inputs: Tensor | None = None
    ) -> Tensor:
        """Stack per-batch results along the first axis (the Jacobian's row blocks).

        In data-parallel runs every rank gets the rows of all ranks, those of lower ranks first
        (an all-gather); ``inputs`` as for :meth:`sum_over_batches`.
        """
        step = f"a product of {desc}" if desc else "a concatenation over batches"
        with self.reduction.failure_told(step):
            results = []
            for batch in self.batches(desc):
                self._before_batch()
                results.append(batch_result(batch))
            rows = torch.cat(results)
        if not self.reduction.distributed:
            return rows
        status = self.reduction.exchange(
            step,
            rows=float(rows.shape[0]),
            size=float(rows[0].numel() if rows.shape[0] else 0),
            checksum=checksum(inputs),
        )
        return self.reduction.gather_rows(rows, [int(count) for count in status.column("rows")])
