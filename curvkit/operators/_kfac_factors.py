r"""KFAC's factor pass: one forward and one backward pass per batch, all factors at once.

Per batch, the layers' uses are recorded (:func:`curvkit._layers.recording.recording`), the
output factor ``S`` (``[K, *output.shape]``, :mod:`curvkit._output_factor`) is pulled back to
every use's output in one batched backward pass (gradients of the layer outputs only: no
parameter gradient is formed), and each block's two sides are accumulated with one matrix
product each (:mod:`._kfac_plan` for what feeds which side). Nothing per sample is formed
beyond what the rules' row views give (a convolution's patches, in chunks of samples).
A layer chain (``nn.Sequential`` of linear layers, convolutions and elementwise segments:
:class:`curvkit._layers.chain.LayerChain`) takes the chain's own pass instead: a forward pass
without autograd graph and the columns pulled back by hand, one transposed product per layer
for all ``K`` columns (a batched autograd pass loops over the columns of a convolution's
transpose); the factors are the same.

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
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from curvkit._engine import Batch
from curvkit._engine.determinism import SharedPassProbe
from curvkit._layers.chain import ChainLinearization, LayerChain
from curvkit._layers.parameters import Layer
from curvkit._layers.recording import (
    autograd_leaves,
    dual_numbers,
    output_gradients,
    recording,
    traced_forward,
)
from curvkit._output_factor import output_factor
from curvkit.losses import batch_generator
from curvkit.operators._kfac_plan import BlockPlan, Holder
from curvkit.operators._setup import ModelDataSetup
from curvkit.structured._factors import symmetrize_

TRACINGS = (autograd_leaves, dual_numbers)
"""Autograd leaves first: their graph walk costs less than dual numbers' second forward pass
(MLP batch of the benchmark: 1.2 against 3.9 ms, one thread)."""

GRAM_STRIP = 256
"""Rows of a Gram matrix's strips (:func:`add_gram`), for factors of at least twice as many."""

PATCH_ENTRIES = 2**22
"""Most entries of a convolution's unfolded patches formed at once (chunks of samples)."""


@dataclass
class FactorSums:
    """One block's accumulated sides for one batch (or the data set)."""

    output: Tensor | None = None  # [rows, rows]; None for 'forward-only' (identity)
    input: Tensor | None = None  # [cols, cols], or [V] diagonal; None for a bias alone
    count: float = 0.0  # (sample, row) pairs of the input side


def _add(total: Tensor | None, value: Tensor) -> Tensor:
    return value if total is None else total.add_(value)


def add_gram(total: Tensor | None, rows: Tensor, alpha: float = 1.0) -> Tensor:
    """``total + alpha Σ_i x_i x_iᵀ`` over the rows of ``rows [..., d]``; in place (new if no ``total``).

    The pass adds every batch's products into the data set's sums (``addmm``), so no per-batch
    Gram matrix is formed and then added. Only the lower triangle is kept up to date (the
    upper one may hold anything): :func:`factor_sums` mirrors it at the end.
    """
    rows = _leading_in_memory_order(rows)
    # per sample where the rows outnumber the features: a product [d, R] @ [R, d] per sample
    # is efficient then (a second convolution's [144, 64] patches were 1.6× slower that way)
    if rows.ndim >= 3 and rows.stride(-1) != 1 and rows.shape[-2] >= rows.shape[-1]:
        return _add_gram_per_sample(total, rows, alpha)
    flat = rows.reshape(-1, rows.shape[-1])
    dim, beta = flat.shape[-1], 0.0 if total is None else 1.0  # beta=0: new entries are ignored
    total = flat.new_empty((dim, dim)) if total is None else total
    if dim < 2 * GRAM_STRIP:
        return total.addmm_(flat.T, flat, beta=beta, alpha=alpha)
    # the lower triangle by strips of rows, each up to its diagonal tile: 62% of the flops for
    # the benchmark CNN's 2049² input factor, and 2.0 against 4.6 ms (one thread; the whole
    # product was slow on that size), 0.68 against 0.95 ms for the MLP's 785²
    for start in range(0, dim, GRAM_STRIP):
        end = min(start + GRAM_STRIP, dim)
        total[start:end, :end].addmm_(flat[:, start:end].T, flat[:, :end], beta=beta, alpha=alpha)
    return total


def _leading_in_memory_order(rows: Tensor) -> Tensor:
    """``rows`` with the axes before the last two ordered by stride, largest first.

    The Gram matrix sums over them in any order; so ordered, they merge without a copy where
    memory allows (a chain's output gradients ``[K, N, …]`` are a view of ``[N, K, …]``).
    """
    if rows.ndim <= 3:
        return rows
    leading = sorted(range(rows.ndim - 2), key=lambda axis: -rows.stride(axis))
    return rows.permute(*leading, rows.ndim - 2, rows.ndim - 1)


def _add_gram_per_sample(total: Tensor | None, rows: Tensor, alpha: float) -> Tensor:
    """:func:`add_gram` for rows whose features are not contiguous.

    A convolution's patches and output gradients are transposed views of ``[B, d, R]``:
    ``Σ_b X_b X_bᵀ`` by batched products on that layout avoids the copy a ``[B·R, d]`` matrix
    needs (1.07 against 1.8 ms for the benchmark CNN's first convolution, one thread), in
    chunks whose ``[b, d, d]`` products stay small.
    """
    columns = rows.reshape(-1, *rows.shape[-2:]).transpose(1, 2)  # [B, d, R]
    dim = columns.shape[1]
    step = max(1, PATCH_ENTRIES // (dim * dim))
    for start in range(0, columns.shape[0], step):
        chunk = columns[start : start + step]
        products = torch.bmm(chunk, chunk.transpose(1, 2))
        if total is None:
            total = torch.sum(products, 0).mul_(alpha)
        else:
            total.add_(products.sum(0), alpha=alpha)
    return total


def _input_rows(layer: Layer, inputs: Tensor, samples: slice) -> Tensor:
    return layer.rule.input_rows(layer.module, inputs[samples])


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
        num_columns: ``K``, the columns of the output factor (1 for 'forward-only': no gradients,
            the output sides are identities).
        loss_weight: ``K_b`` for a mean loss, ``1`` for a sum: the gradient sides' weight.
    """

    def __init__(self, kfac_approx: str, num_columns: int, loss_weight: float):
        self.reduce, self.num_columns, self.loss_weight = kfac_approx == "reduce", num_columns, loss_weight

    def add_block(
        self, sums: FactorSums, plan: BlockPlan, uses: list[tuple[Holder, Tensor, Tensor | None]]
    ) -> None:
        """Add a block's terms to ``sums``; ``uses``: ``(holder, inputs, output gradients or None)``."""
        reduce = self.reduce and not plan.input_major and not any(h.is_embedding for h, _, _ in uses)
        if reduce:
            return self._add_reduced(sums, plan, uses)
        for holder, inputs, gradients in uses:
            layer = holder.layer
            g = None if gradients is None else layer.rule.output_rows(layer.module, gradients)  # [K, N, R, o]
            if g is not None and holder.transposed:
                # an embedding's gradients lie along a [V, d] block's input side, which is counted
                # per (sample, row), not per column: hence 1/K (module docstring of _kfac_plan)
                sums.input = add_gram(sums.input, g, self.loss_weight / self.num_columns)
            elif g is not None:
                sums.output = add_gram(sums.output, g, self.loss_weight)
            if plan.bias_only:
                continue
            if holder.is_embedding:
                if holder.transposed and g is None:
                    continue  # 'forward-only': its inputs lie along the output side, an identity
                counts = layer.rule.index_counts(layer.module, inputs).to(layer.module.weight.dtype)
                if holder.transposed:  # one-hot rows, the same for every column
                    sums.output = _add(sums.output, torch.diag(counts * self.num_columns))
                else:
                    sums.input = _add(sums.input, counts)
                sums.count += inputs.numel()
                continue
            for samples in _sample_chunks(layer, inputs):
                rows = _input_rows(layer, inputs, samples)  # [n, R, in]
                if plan.joined:
                    rows = _joined(rows)
                sums.input = add_gram(sums.input, rows)
                sums.count += rows.shape[0] * rows.shape[1]
        return None

    def _add_reduced(
        self, sums: FactorSums, plan: BlockPlan, uses: list[tuple[Holder, Tensor, Tensor | None]]
    ) -> None:
        """KFAC-reduce: per sample, gradients summed and inputs averaged over the rows of all uses."""
        gradient_sum, input_sum, rows_per_sample = None, None, 0
        for holder, inputs, gradients in uses:
            layer = holder.layer
            if gradients is not None:
                g = layer.rule.output_rows(layer.module, gradients).sum(2)  # [K, N, out]
                gradient_sum = _add(gradient_sum, g)
            if plan.bias_only:
                continue
            parts = []
            for samples in _sample_chunks(layer, inputs):
                rows = _input_rows(layer, inputs, samples)
                parts.append(rows.sum(1))
                positions = rows.shape[1]
            input_sum = _add(input_sum, torch.cat(parts))
            rows_per_sample += positions
        if gradient_sum is not None:
            sums.output = add_gram(sums.output, gradient_sum, self.loss_weight)
        if input_sum is not None:
            mean = input_sum / rows_per_sample
            if plan.joined:
                mean = _joined(mean)
            sums.input = add_gram(sums.input, mean)
            sums.count += mean.shape[0]


Uses = list[tuple[Holder, Tensor, "Tensor | None"]]
"""Per block: ``(holder, inputs, output gradients [K, *output.shape] or None)`` of every use."""


def recorded_pass(
    setup: ModelDataSetup,
    plans: list[BlockPlan],
    fisher_type: str,
    mc_samples: int,
    seed: int,
    probe: SharedPassProbe | None,
    per_batch: Callable[[Batch, int, list[Uses], list[Tensor] | None], list[Tensor]],
    desc: str,
) -> list[Tensor]:
    """The sums that ``per_batch(b, K, uses of each block, sums so far)`` accumulates over the data.

    ``per_batch`` adds batch ``b``'s terms into the sums so far (``None`` at the first batch:
    it returns new ones), unweighted (:meth:`curvkit._engine.MiniBatchEngine.accumulate_over_batches`).

    Per batch: one recorded forward pass, the output factor ``S`` (``K`` columns; ``K = 1`` and
    no backward pass for 'forward-only') pulled back to every use in one backward pass. The
    first batch is traced to check that every layer is used per sample; later batches record
    the same layers without the tracing (:func:`curvkit._layers.recording.traced_forward`).
    A batch that a layer chain of the model takes goes through the chain instead (module docstring).
    """
    model = setup.model
    layers = _plan_layers(plans)
    traced = [True]
    chain = LayerChain.of(model.model_func, setup.layer_map, len(model.tensors)) if model.is_module else None
    # a table tied to a head weighs its embedding rows per column of S against the head's: the
    # factors then depend on the number of columns, which the definition takes as C per position
    symmetric_root = any(holder.transposed for plan in plans for holder in plan.holders)

    def columns_of(batch: Batch, output: Tensor) -> Tensor | None:
        """The output factor ``S`` ``[K, *output.shape]`` (``None`` for 'forward-only').

        Also hands the batch's output to the determinism probe, if any: both paths below call it
        once per batch, with the output detached.
        """
        if probe is not None:
            probe.record(batch, setup.batch_tensors(batch, output))
        if fisher_type == "forward-only":
            return None
        # each batch's draws from (seed, its position in the data): the same on any number of ranks
        generator = batch_generator(seed, batch.global_index, model.device)
        return output_factor(
            fisher_type, setup.loss_func, output, batch, generator, mc_samples, symmetric_root
        )

    def batch_result(batch: Batch, total: list[Tensor] | None) -> list[Tensor]:
        linearization = None if chain is None else chain.linearize(batch, setup.loss_func, gradients=False)
        if linearization is not None:
            return per_batch(batch, *_chain_uses(plans, chain, linearization, columns_of), total)
        with recording(layers):
            output, per_sample = traced_forward(
                model, model.model_func, batch.X, batch.size, layers, traced[0], TRACINGS
            )
            check_per_sample(layers, per_sample)
            traced[0] = False
            columns = columns_of(batch, output.detach())
            if columns is None:
                num_columns, gradients = 1, [[None] * len(layer.uses) for layer in layers]
            else:
                num_columns, gradients = columns.shape[0], output_gradients(layers, output, columns)
            del output  # and with it the graph, before the factors' products
            of_layer = {id(layer): list(zip(layer.uses, grads)) for layer, grads in zip(layers, gradients)}
            uses = [
                [
                    (holder, use.inputs.detach(), grad)
                    for holder in plan.holders
                    for use, grad in of_layer[id(holder.layer)]
                ]
                for plan in plans
            ]
            return per_batch(batch, num_columns, uses, total)

    totals = setup.engine.accumulate_over_batches(batch_result, desc=desc)
    if probe is not None:
        probe.finish()
    return totals


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
    """Each block's sides summed over the data set, and the loss's divisor ``K`` (``1`` for a sum)."""
    model = setup.model

    def per_batch(
        batch: Batch, num_columns: int, uses: list[Uses], total: list[Tensor] | None
    ) -> list[Tensor]:
        loss_weight = loss_weight_of(batch, reduction)
        accumulator = BatchFactors(kfac_approx, num_columns, loss_weight)
        blocks = [FactorSums() if total is None else _sides(total, index) for index in range(len(plans))]
        for sums, plan, plan_uses in zip(blocks, plans, uses):
            accumulator.add_block(sums, plan, plan_uses)  # the sides in place
        batch_total = [
            *(tensor for sums in blocks for tensor in _flat(sums, model)),
            torch.tensor(loss_weight, dtype=torch.float64, device=model.device),
        ]
        if total is None:
            return batch_total
        # the counts and the loss's terms are this batch's: added; a side is the total itself
        return [old.add_(new) if new.ndim == 0 else new for old, new in zip(total, batch_total)]

    totals = recorded_pass(setup, plans, fisher_type, mc_samples, seed, probe, per_batch, "KFAC factors")
    divisor = float(totals[-1]) if reduction == "mean" else 1.0
    sums = []
    for index in range(len(plans)):
        output, inputs, count = totals[3 * index : 3 * index + 3]
        output, inputs = (_mirrored(side) for side in (output, inputs))
        sums.append(FactorSums(output, inputs, float(count)))
    return sums, divisor


def _mirrored(side: Tensor) -> Tensor | None:
    """A side as :func:`add_gram` left it, made exactly symmetric from its lower triangle (or ``None``)."""
    if side.numel() == 0:
        return None
    return symmetrize_(side, mean=False) if side.ndim == 2 else side


def loss_weight_of(batch: Batch, reduction: str) -> float:
    """``K_b`` for a mean loss (its sides are accumulated per term), ``1`` for a sum."""
    return float(batch.loss_terms) if reduction == "mean" else 1.0


def _sides(total: list[Tensor], index: int) -> FactorSums:
    """Block ``index``'s sides in the flat sums so far (absent ones as ``None``), its count left at 0."""
    output, inputs = total[3 * index : 3 * index + 2]
    return FactorSums(None if output.numel() == 0 else output, None if inputs.numel() == 0 else inputs)


def _flat(sums: FactorSums, model) -> list[Tensor]:
    """A block's sums as three tensors (empty ones for absent sides), for the engine's sum."""
    empty = torch.empty(0, dtype=model.dtype, device=model.device)
    return [
        empty if sums.output is None else sums.output,
        empty if sums.input is None else sums.input,
        torch.tensor(sums.count, dtype=torch.float64, device=model.device),
    ]


def _chain_uses(
    plans: list[BlockPlan],
    chain: LayerChain,
    linearization: ChainLinearization,
    columns_of: Callable[[Batch, Tensor], Tensor | None],
) -> tuple[int, list[Uses]]:
    """``K`` and each block's uses from a chain's pass: its layers' inputs, the columns pulled back by hand.

    A chain uses each layer once, per sample (:class:`curvkit._layers.chain.LayerChain`), so
    its forward pass (no autograd graph) gives every input, and
    :meth:`~curvkit._layers.chain.ChainLinearization.output_gradients` the output gradients:
    one transposed product per layer for all ``K`` columns, where a batched autograd pass
    loops over the columns of a convolution's transpose.
    """
    columns = columns_of(linearization.batch, linearization.output)
    gradients = [None] * len(chain.layers) if columns is None else linearization.output_gradients(columns)
    position = {id(layer.module): index for index, layer in enumerate(chain.layers)}
    uses = [
        [
            (
                holder,
                linearization.inputs[position[id(holder.layer.module)]],
                gradients[position[id(holder.layer.module)]],
            )
            for holder in plan.holders
        ]
        for plan in plans
    ]
    return (1 if columns is None else columns.shape[0]), uses


def _plan_layers(plans: list[BlockPlan]) -> list[Layer]:
    layers: list[Layer] = []
    for plan in plans:
        for holder in plan.holders:
            if all(layer is not holder.layer for layer in layers):
                layers.append(holder.layer)
    return layers


def check_per_sample(layers: list[Layer], per_sample: list[Layer]) -> None:
    """Raise unless every layer was found per sample in the traced pass.

    Raises:
        NotImplementedError: Naming the first layer that is not.
    """
    for layer in layers:
        if all(layer is not other for other in per_sample):
            raise NotImplementedError(
                f"KFAC: layer '{layer.name}' ({type(layer.module).__name__}) is not used per sample in "
                "the forward pass: each call must take an input with the batch's samples on the first "
                "axis, computed from the batch, and its parameters must enter the output only "
                "through such calls (no functional use of them elsewhere, no forward hooks)."
            )
