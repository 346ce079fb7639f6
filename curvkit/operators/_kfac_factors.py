r"""KFAC's factor pass: one forward and one backward pass per batch, all factors at once.

The pass (:mod:`._recorded_pass`) records each batch's layer uses and pulls the output factor
``S`` (``[K, *output.shape]``) back to every use's output, ``K`` columns in chunks; each block's
two sides are accumulated with one matrix product per chunk and side (:mod:`._kfac_plan` for
what feeds which side). Nothing per sample is formed beyond what the rules' row views give (a
convolution's patches, in chunks of samples).

Scaling. The batch's ``S`` carries the batch loss's scale ``c_b`` (``1/K_b`` for a mean over
``K_b`` terms); the output sides are accumulated times ``K_b`` (the per-term sums) and divided
by ``K = Σ_b K_b`` at the end, so the factors are those of the full data set's loss, however
the data is split (as the engine weights the other operators' batches). Input sides are divided
by their number of rows (``(sample, row)`` pairs; the ``K`` columns of a triple cancel). Every
sum, counts included, goes through the engine
(:meth:`curvkit._engine.MiniBatchEngine.accumulate_over_batches`: the Gram products are added
into the data set's sums by ``addmm``, no per-batch result is copied or added).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from curvkit._engine import Batch
from curvkit._engine.determinism import SharedPassProbe
from curvkit._layers.parameters import Layer
from curvkit._precision import compute_dtype
from curvkit.operators._gram_sums import GramBuffer
from curvkit.operators._kfac_plan import BlockPlan, shared_output_sides
from curvkit.operators._recorded_pass import Chunks, Uses, loss_weight_of, recorded_pass
from curvkit.operators._setup import ModelDataSetup
from curvkit.structured._factors import symmetrize_

PATCH_ENTRIES = 2**19
"""Most entries of a convolution's unfolded patches formed at once (chunks of samples): 2 MiB in
float32, the largest transient of the benchmark CNN's pass otherwise
(design notes, "Measurements behind the code")."""


@dataclass
class FactorSums:
    """One block's accumulated sides for one batch (or the data set)."""

    output: Tensor | None = None  # [rows, rows]; None for 'forward-only' (identity)
    input: Tensor | None = None  # [cols, cols], or [V] diagonal; None for a bias alone
    count: float = 0.0  # (sample, row) pairs of the input side
    output_rows: float = 0.0  # rows summed into each side: bounds of their ranks
    input_rows: float = 0.0


def _add(total: Tensor | None, value: Tensor) -> Tensor:
    return value if total is None else total.add_(value)


def _gram_rows(layer: Layer, inputs: Tensor, gridded: bool) -> Tensor:
    rule = layer.rule
    return rule.gram_rows(layer.module, inputs) if gridded else rule.input_rows(layer.module, inputs)


def _in_weight_order(side: Tensor | None, plan: BlockPlan, grid: tuple[int, int] | None) -> Tensor | None:
    """A block's input side, summed from rows in ``grid`` (:meth:`~LayerRule.gram_grid`), in weight order."""
    if side is None or side.ndim == 1 or plan.bias_only or grid is None:
        return side
    a, b = grid
    n = a * b
    ordered = torch.empty_like(side)
    ordered[:n, :n].view(b, a, b, a).copy_(side[:n, :n].view(a, b, a, b).permute(1, 0, 3, 2))
    if plan.joined:  # the bias's 1 stays last
        ordered[n, :n].view(b, a).copy_(side[n, :n].view(a, b).T)
        ordered[:n, n].view(b, a).copy_(side[:n, n].view(a, b).T)
        ordered[n, n] = side[n, n]
    return ordered


def _joined(rows: Tensor) -> Tensor:
    return torch.cat([rows, rows.new_ones(*rows.shape[:-1], 1)], dim=-1)


def _sample_chunks(layer: Layer, inputs: Tensor) -> list[slice]:
    """Slices of samples whose input rows fit :data:`PATCH_ENTRIES` (a convolution's patches).

    Linear layers' rows are views of their inputs: one chunk.
    """
    kernel = getattr(layer.module, "kernel_size", None)
    if kernel is None:
        return [slice(None)]
    per_sample = inputs[0].numel() * math.prod(kernel)
    step = max(1, PATCH_ENTRIES // max(per_sample, 1))
    return [slice(start, start + step) for start in range(0, inputs.shape[0], step)]


class BatchFactors:
    """Accumulates each block's sides over the uses of one batch.

    Args:
        kfac_approx: ``'expand'`` or ``'reduce'``.
        num_columns: ``K``, the columns of the output factor (``None`` for 'forward-only': no
            gradients, the output sides are identities).
        loss_weight: ``K_b`` for a mean loss, ``1`` for a sum: the gradient sides' weight.
        buffer: The pass's :class:`GramBuffer`, which every Gram product goes through.
        grids: The pass's grid of each block's input rows (:meth:`~LayerRule.gram_grid`),
            chosen at the block's first batch so that every batch's rows come in one order.
    """

    def __init__(
        self,
        kfac_approx: str,
        num_columns: int | None,
        loss_weight: float,
        buffer: GramBuffer,
        grids: dict[int, tuple[int, int] | None],
    ):
        self.reduce, self.num_columns, self.loss_weight = kfac_approx == "reduce", num_columns, loss_weight
        self.buffer, self.grids = buffer, grids

    def add_gradient_sides(self, sums: FactorSums, index: int, plan: BlockPlan, uses: Uses) -> None:
        """Add the terms of a chunk of columns' output gradients to block ``index``'s ``sums``."""
        output, inputs = _side_positions(index)
        if all(gradients is None for _, _, gradients in uses):
            return  # 'forward-only': the output sides are identities
        if self._reduces(plan, uses):
            gradient_sum = None
            for holder, _, gradients in uses:
                layer = holder.layer
                rows = layer.rule.output_rows(layer.module, gradients)
                g = rows.sum(2, dtype=compute_dtype(rows.dtype))  # [k, N, out]
                gradient_sum = _add(gradient_sum, g)
            sums.output = self.buffer.add(output, sums.output, gradient_sum, self.loss_weight)
            sums.output_rows += _num_rows(gradient_sum)
            return
        for holder, _, gradients in uses:
            layer = holder.layer
            g = layer.rule.output_rows(layer.module, gradients)  # [k, N, R, o]
            if holder.transposed:
                # an embedding's gradients lie along a [V, d] block's input side, which is counted
                # per (sample, row), not per column: hence 1/K (module docstring of _kfac_plan)
                alpha = self.loss_weight / self.num_columns
                sums.input = self.buffer.add(inputs, sums.input, g, alpha)
                sums.input_rows += _num_rows(g)
            else:
                sums.output = self.buffer.add(output, sums.output, g, self.loss_weight)
                sums.output_rows += _num_rows(g)

    def add_input_sides(self, sums: FactorSums, index: int, plan: BlockPlan, uses: Uses) -> None:
        """Add the terms of the uses' inputs to block ``index``'s ``sums`` (once per batch)."""
        if plan.bias_only:
            return
        if self._reduces(plan, uses):
            return self._add_reduced_inputs(sums, index, plan, uses)
        for holder, inputs, _ in uses:
            layer = holder.layer
            if holder.is_embedding:
                if holder.transposed and self.num_columns is None:
                    continue  # 'forward-only': its inputs lie along the output side, an identity
                counts = layer.rule.index_counts(layer.module, inputs).to(
                    compute_dtype(layer.module.weight.dtype)
                )
                if holder.transposed:  # one-hot rows, the same for every column
                    sums.output = _add(sums.output, torch.diag(counts * self.num_columns))
                    sums.output_rows += inputs.numel()
                else:  # a diagonal's rank: the distinct tokens, at most the tokens read
                    sums.input = _add(sums.input, counts)
                    sums.input_rows += inputs.numel()
                sums.count += inputs.numel()
                continue
            gridded = self._gridded(index, layer, inputs)
            for samples in _sample_chunks(layer, inputs):
                rows = _gram_rows(layer, inputs[samples], gridded)  # [n, R, in]
                if plan.joined:
                    rows = _joined(rows)
                sums.input = self.buffer.add(_side_positions(index)[1], sums.input, rows)
                num_rows = rows.shape[0] * rows.shape[1]  # the side's divisor and rank bound alike
                sums.count += num_rows
                sums.input_rows += num_rows
        return None

    def _gridded(self, index: int, layer: Layer, inputs: Tensor) -> bool:
        """Whether block ``index``'s rows come in a grid: the one its first batch chose, if any."""
        if index not in self.grids:
            self.grids[index] = layer.rule.gram_grid(layer.module, inputs)
        return self.grids[index] is not None

    def _reduces(self, plan: BlockPlan, uses: Uses) -> bool:
        """Whether the block takes KFAC-reduce (an embedding's block always takes expand)."""
        return self.reduce and not plan.input_major and not any(h.is_embedding for h, _, _ in uses)

    def _add_reduced_inputs(self, sums: FactorSums, index: int, plan: BlockPlan, uses: Uses) -> None:
        """KFAC-reduce's input side: per sample, the inputs averaged over the rows of all uses."""
        input_sum, rows_per_sample = None, 0
        for holder, inputs, _ in uses:
            layer = holder.layer
            parts = []
            gridded = self._gridded(index, layer, inputs)
            for samples in _sample_chunks(layer, inputs):
                rows = _gram_rows(layer, inputs[samples], gridded)
                parts.append(rows.sum(1, dtype=compute_dtype(rows.dtype)))
                positions = rows.shape[1]
            input_sum = _add(input_sum, torch.cat(parts))
            rows_per_sample += positions
        mean = input_sum / rows_per_sample
        if plan.joined:
            mean = _joined(mean)
        sums.input = self.buffer.add(_side_positions(index)[1], sums.input, mean)
        sums.count += mean.shape[0]
        sums.input_rows += mean.shape[0]


def factor_sums(
    setup: ModelDataSetup,
    plans: list[BlockPlan],
    fisher_type: str,
    kfac_approx: str,
    mc_samples: int,
    seed: int,
    probe: SharedPassProbe | None,
    reduction: str,
) -> tuple[list[FactorSums], float]:
    """Each block's factors, and the loss's divisor ``K`` (``1`` for a sum).

    A factor is its side summed over the data set and scaled: an output side by ``1/K``, an
    input side by one over its number of rows (:class:`FactorSums`' ``count``).
    """
    model = setup.model
    shared = shared_output_sides(plans)
    buffer, grids = GramBuffer(), {}

    def per_batch(batch: Batch, num_columns: int, chunks: Chunks, total: list[Tensor] | None) -> list[Tensor]:
        loss_weight = loss_weight_of(batch, reduction)
        columns = None if fisher_type == "forward-only" else num_columns
        accumulator = BatchFactors(kfac_approx, columns, loss_weight, buffer, grids)
        blocks = [FactorSums() if total is None else _sides(total, index) for index in range(len(plans))]
        for _, uses in chunks:  # the sides in place
            for index, (sums, plan, plan_uses) in enumerate(zip(blocks, plans, uses)):
                if index not in shared:
                    accumulator.add_gradient_sides(sums, index, plan, plan_uses)
            inputs = [[(holder, x, None) for holder, x, _ in plan_uses] for plan_uses in uses]
            del uses  # this chunk's gradients, before the next chunk is pulled back
        for index, (sums, plan, plan_uses) in enumerate(zip(blocks, plans, inputs)):
            accumulator.add_input_sides(sums, index, plan, plan_uses)
        batch_total = _flat(blocks, loss_weight, model)
        if total is None:
            return batch_total
        # a side is the total itself; the counts and the loss's terms are this batch's: added
        return [*batch_total[:-1], total[-1].add_(batch_total[-1])]

    totals = recorded_pass(
        setup, plans, fisher_type, mc_samples, seed, probe, per_batch, "KFAC factors", buffer.flush
    )
    *counts, loss_terms = totals[-1].tolist()
    divisor = loss_terms if reduction == "mean" else 1.0
    sums = []
    for index, (count, output_rows, input_rows) in enumerate(zip(*[iter(counts)] * 3)):
        output, inputs = totals[2 * index : 2 * index + 2]
        output = _mirrored(output, 1.0 / divisor)
        inputs = _mirrored(inputs, 1.0 / max(count, 1.0))
        inputs = _in_weight_order(inputs, plans[index], grids.get(index))
        # half precision's float32 sums rounded once (before a shared side is shared)
        output, inputs = (_rounded(side, model.dtype) for side in (output, inputs))
        sums.append(FactorSums(output, inputs, count, output_rows, input_rows))
    for index, source in shared.items():  # one tensor for both blocks: no side changes once computed
        sums[index].output, sums[index].output_rows = sums[source].output, sums[source].output_rows
    return sums, divisor


def _mirrored(side: Tensor, scale: float) -> Tensor | None:
    """A side summed in its lower triangle (:mod:`._gram_sums`), times ``scale``, exactly symmetric.

    ``None`` for an absent side. One pass over the side: scaled tile by tile as it is mirrored.
    """
    if side.numel() == 0:
        return None
    return symmetrize_(side, mean=False, scale=scale) if side.ndim == 2 else side.mul_(scale)


def _rounded(side: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if side is None else side.to(dtype)


def _num_rows(rows: Tensor) -> int:
    """The rows ``[..., features]`` holds (a Gram matrix of them has at most this rank)."""
    return rows.numel() // max(rows.shape[-1], 1)


def _side_positions(index: int) -> tuple[int, int]:
    """Positions of block ``index``'s output and input sides in the flat sums (:func:`_flat`)."""
    return 2 * index, 2 * index + 1


def _sides(total: list[Tensor], index: int) -> FactorSums:
    """Block ``index``'s sides in the flat sums so far (absent ones as ``None``), its count left at 0."""
    output, inputs = total[2 * index : 2 * index + 2]
    return FactorSums(None if output.numel() == 0 else output, None if inputs.numel() == 0 else inputs)


def _flat(blocks: list[FactorSums], loss_weight: float, model) -> list[Tensor]:
    """A batch's sums for the engine: each block's two sides, then the counts and the loss's terms.

    An absent side is an empty tensor. The counts of all blocks (each block's ``count``,
    ``output_rows``, ``input_rows``) and the loss's terms are one float64 tensor, not one per
    block: on a GPU each is a copy from the host.
    """
    empty = torch.empty(0, dtype=model.dtype, device=model.device)
    sides = [empty if side is None else side for sums in blocks for side in (sums.output, sums.input)]
    counts = [n for sums in blocks for n in (sums.count, sums.output_rows, sums.input_rows)] + [loss_weight]
    return [*sides, torch.tensor(counts, dtype=torch.float64, device=model.device)]
