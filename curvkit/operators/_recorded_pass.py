r"""The pass over the data that KFAC's factors and EKFAC's corrections share, batch by batch.

Per batch: one recorded forward pass (:func:`curvkit._layers.recording.recording`), the output
factor ``S`` (``[K, *output.shape]``, :mod:`curvkit._output_factor`; none for 'forward-only'),
and its columns pulled back to every use's output (gradients of the layer outputs only: no
parameter gradient is formed). The first batch is traced to check that every layer is used per
sample; later batches record the same layers without the tracing
(:func:`curvkit._layers.recording.traced_forward`). A layer chain (``nn.Sequential`` of linear
layers, convolutions and elementwise segments: :class:`curvkit._layers.chain.LayerChain`) takes
the chain's own pass instead: its forward pass without autograd graph and the columns pulled
back by hand, one transposed product per layer for all columns of a chunk (a batched autograd
pass loops over the columns of a convolution's transpose); the sums are the same.

Columns in chunks. Pulled back, ``S`` takes ``K`` times the memory of the layers' outputs, and
``K`` is ``C − 1`` per position for a type-2 factor of cross-entropy: a thousand columns for
ImageNet's classes, tens of thousands for a language model's vocabulary. The columns go back in
chunks of :func:`chunk_width` (the callers sum over columns, so a chunk is added and dropped
before the next is pulled back), and ``S`` itself is formed a chunk at a time
(:func:`curvkit.losses.output_hessian_sqrt_columns`): a chunk's columns and their gradients take
at most :data:`COLUMN_SHARE` times the entries of the layers' recorded inputs and outputs, which
a gradient holds as well, so the pass's memory follows the model and the batch, not the number
of columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import partial

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
from curvkit._output_factor import OutputCurvature, output_curvature
from curvkit._predictive import batch_generator
from curvkit.operators._kfac_plan import BlockPlan, Holder
from curvkit.operators._setup import ModelDataSetup

TRACINGS = (autograd_leaves, dual_numbers)
"""Autograd leaves first: their graph walk costs less than dual numbers' second forward pass
(design notes, "Measurements behind the code")."""

COLUMN_SHARE = 0.5
"""A chunk's pulled-back columns take at most this share of the entries of the layers' recorded
inputs and outputs (at least one column)."""

Uses = list[tuple[Holder, Tensor, "Tensor | None"]]
"""Per block: ``(holder, inputs, output gradients [k, *output.shape] or None)`` of every use."""

Chunks = Iterator[tuple[int, list[Uses]]]
"""A batch's chunks of columns: ``(k, uses of each block)`` with ``k`` columns' gradients each."""


def chunk_width(num_columns: int, entries_per_column: int, recorded_entries: int) -> int:
    """Columns pulled back at once: at most ``COLUMN_SHARE · recorded_entries`` entries in all.

    Args:
        num_columns: ``K``.
        entries_per_column: Entries of one column: its part of ``S`` and its gradients at every
            use's output.
        recorded_entries: Entries of the recorded layer inputs and outputs.
    """
    affordable = int(COLUMN_SHARE * recorded_entries) // max(entries_per_column, 1)
    return max(1, min(num_columns, affordable))


def loss_weight_of(batch: Batch, reduction: str) -> float:
    """``K_b`` for a mean loss (a batch's sums are accumulated per term), ``1`` for a sum."""
    return float(batch.loss_terms) if reduction == "mean" else 1.0


def recorded_pass(
    setup: ModelDataSetup,
    plans: list[BlockPlan],
    fisher_type: str,
    mc_samples: int,
    seed: int,
    probe: SharedPassProbe | None,
    per_batch: Callable[[Batch, int, Chunks, list[Tensor] | None], list[Tensor]],
    desc: str,
    finish: Callable[[list[Tensor]], list[Tensor]] | None = None,
) -> list[Tensor]:
    """The sums that ``per_batch(b, K, chunks, sums so far)`` accumulates over the data.

    ``per_batch`` adds batch ``b``'s terms into the sums so far (``None`` at the first batch:
    it returns new ones), unweighted; ``finish`` adds what it held back, after the last batch
    (:meth:`curvkit._engine.MiniBatchEngine.accumulate_over_batches`).
    ``chunks`` yields the ``K`` columns' gradients chunk by chunk (module docstring), one chunk
    of ``K = 1`` without gradients for 'forward-only'; every chunk's uses hold the same inputs.
    """
    model = setup.model
    layers = _plan_layers(plans)
    traced = [True]
    chain = LayerChain.of(model.model_func, setup.layer_map, len(model.tensors)) if model.is_module else None
    # a table tied to a head weighs its embedding rows per column of S against the head's: the
    # factors then depend on the number of columns, which the definition takes as C per position
    symmetric_root = any(holder.transposed for plan in plans for holder in plan.holders)

    def columns_of(batch: Batch, output: Tensor) -> OutputCurvature | None:
        """The output factor ``S``, ``[K, *output.shape]`` by column ranges (``None`` for 'forward-only').

        Also checks the first output (:meth:`ModelDataSetup.check_first_output`: the operator
        was built without a forward pass) and hands the batch's output to the determinism probe,
        if any: both paths below call it once per batch, with the output detached.
        """
        setup.check_first_output(batch, output)
        if probe is not None:
            probe.record(batch, setup.batch_tensors(batch, output))
        if fisher_type == "forward-only":
            return None
        # each batch's draws from (seed, its position in the data): the same on any number of ranks
        generator = batch_generator(seed, batch.global_index, model.device)
        # KFAC's losses all have a root: OutputCurvature.factor(start, stop) gives its columns
        return output_curvature(
            fisher_type, setup.loss_func, output, batch, generator, mc_samples, symmetric_root
        )

    def batch_result(batch: Batch, total: list[Tensor] | None) -> list[Tensor]:
        linearization = (
            None
            if chain is None
            else chain.linearize(
                batch, setup.loss_func, gradients=False, slopes=fisher_type != "forward-only"
            )
        )
        if linearization is not None:
            return per_batch(batch, *_chain_chunks(plans, chain, linearization, columns_of), total)
        with recording(layers):
            output, per_sample = traced_forward(
                model, model.model_func, batch.X, batch.size, layers, traced[0], TRACINGS
            )
            check_per_sample(layers, per_sample)
            traced[0] = False
            factor = columns_of(batch, output.detach())
            all_uses = [use for layer in layers for use in layer.uses]

            def uses_with(gradients: list[Tensor] | None) -> list[Uses]:
                of_use = dict(zip(map(id, all_uses), gradients or [None] * len(all_uses)))
                return [
                    [
                        (holder, use.inputs.detach(), of_use[id(use)])
                        for holder in plan.holders
                        for use in holder.layer.uses
                    ]
                    for plan in plans
                ]

            outputs = sum(use.output.numel() for use in all_uses)
            num_columns, chunks = _chunks(
                factor,
                partial(_flat_output_gradients, layers, output),
                uses_with,
                outputs + output.numel(),
                outputs + sum(use.inputs.numel() for use in all_uses),
            )
            del output  # the chunks hold the graph until the last one is pulled back
            return per_batch(batch, num_columns, chunks, total)

    totals = setup.engine.accumulate_over_batches(batch_result, desc=desc, finish=finish)
    if probe is not None:
        probe.finish()
    return totals


def _chunks(
    factor: OutputCurvature | None,
    pull_back: Callable[[Tensor], list[Tensor]],
    uses_with: Callable[[list[Tensor] | None], list[Uses]],
    entries_per_column: int,
    recorded_entries: int,
) -> tuple[int, Chunks]:
    """``K`` and the chunks of ``S``'s columns, :func:`chunk_width` at a time, pulled back by ``pull_back``.

    ``None`` (``'forward-only'``): one chunk of one column without gradients.
    """
    if factor is None:
        return 1, iter([(1, uses_with(None))])
    width = chunk_width(factor.rank, entries_per_column, recorded_entries)

    def chunks() -> Chunks:
        for start in range(0, factor.rank, width):
            part = factor.factor(start, start + width)
            # no local name for the gradients: the caller drops them before the next chunk
            yield part.shape[0], uses_with(pull_back(part))

    return factor.rank, chunks()


def _flat_output_gradients(layers: list[Layer], output: Tensor, columns: Tensor) -> list[Tensor]:
    """:func:`curvkit._layers.recording.output_gradients` of every use, layer after layer."""
    return [gradient for of_layer in output_gradients(layers, output, columns) for gradient in of_layer]


def _chain_chunks(
    plans: list[BlockPlan],
    chain: LayerChain,
    linearization: ChainLinearization,
    columns_of: Callable[[Batch, Tensor], OutputCurvature | None],
) -> tuple[int, Chunks]:
    """``K`` and the chunks of a chain's pass: its layers' inputs, the columns pulled back by hand.

    A chain uses each layer once, per sample (:class:`curvkit._layers.chain.LayerChain`), so
    its forward pass (no autograd graph) gives every input, and
    :meth:`~curvkit._layers.chain.ChainLinearization.output_gradients` the output gradients:
    one transposed product per layer for all columns of a chunk.
    """
    position = {id(layer.module): index for index, layer in enumerate(chain.layers)}

    def uses_with(gradients: list[Tensor] | None) -> list[Uses]:
        return [
            [
                (
                    holder,
                    linearization.inputs[position[id(holder.layer.module)]],
                    None if gradients is None else gradients[position[id(holder.layer.module)]],
                )
                for holder in plan.holders
            ]
            for plan in plans
        ]

    output, pulled = linearization.output, range(linearization.first, len(chain.layers))
    outputs = sum(output.shape[0] * math.prod(linearization.output_shapes[index]) for index in pulled)
    return _chunks(
        columns_of(linearization.batch, output),
        linearization.output_gradients,
        uses_with,
        outputs + output.numel(),
        outputs + sum(linearization.inputs[index].numel() for index in pulled),
    )


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
