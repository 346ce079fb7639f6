r"""EKFAC's second pass: the eigenvalue corrections in KFAC's eigenbasis, batch by batch.

An *example* is a sample ``n`` with one column ``k`` of the output factor ``S`` (a Monte-Carlo
sample, a column of the loss Hessian's square root, the observed gradient): its gradient of a
block is ``W_{k,n} = Σ_r u_{k,n,r} v_{k,n,r}ᵀ`` over the rows of every use of every layer
holding it (:mod:`._kfac_plan`), so that the uses add up before squaring; the corrected
eigenvalues are ``(1/K) Σ_{k,n} ((Q_Gᵀ W_{k,n} Q_A)_{ij})²`` with the loss's scale ``1/K``
(George et al. 2018; for type-2 their sum over ``k`` is the GGN's, for 'empirical' the
empirical Fisher's). :class:`~curvkit.structured.EigenvalueCorrections` chooses per block
between per-example gradients and their Gramian and bounds the memory; the per-batch sums go
through the engine's sum (weighted by ``K_b``, divided by ``K`` after the pass).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional

from curvkit._engine import Batch
from curvkit.operators._kfac_plan import BlockPlan
from curvkit.operators._recorded_pass import Chunks, Uses, loss_weight_of, recorded_pass
from curvkit.operators._setup import ModelDataSetup
from curvkit.structured import EigenCorrectedKroneckerLinearOperator, EigenvalueCorrections


def correction_sums(
    setup: ModelDataSetup,
    plans: list[BlockPlan],
    basis: EigenCorrectedKroneckerLinearOperator,
    fisher_type: str,
    mc_samples: int,
    seed: int,
    reduction: str,
    max_entries: int,
) -> list[Tensor]:
    """``Σ_b K_b Σ_{k,n} (Q_Gᵀ W_{k,n} Q_A)²`` per block (float64; ``K_b = 1`` for a sum)."""

    def per_batch(batch: Batch, num_columns: int, chunks: Chunks, total: list[Tensor] | None) -> list[Tensor]:
        corrections = EigenvalueCorrections(basis, max_entries=max_entries)
        weight = loss_weight_of(batch, reduction)
        for width, uses in chunks:  # examples of different columns add up
            for index, (plan, plan_uses) in enumerate(zip(plans, uses)):
                _add_block(corrections, index, plan, plan_uses, width, weight)
            del uses  # this chunk's gradients, before the next chunk is pulled back
        if total is None:
            return corrections.sums
        return [sum_so_far.add_(batch_sum) for sum_so_far, batch_sum in zip(total, corrections.sums)]

    return recorded_pass(setup, plans, fisher_type, mc_samples, seed, None, per_batch, "EKFAC corrections")


def _add_block(
    corrections: EigenvalueCorrections,
    index: int,
    plan: BlockPlan,
    uses: Uses,
    num_columns: int,
    weight: float,
) -> None:
    """Hand one block's examples of the batch to ``corrections``, the uses concatenated along rows."""
    rows_side, columns_side = [], []
    for holder, inputs, gradients in uses:
        layer = holder.layer
        g = layer.rule.output_rows(layer.module, gradients)  # [K, N, R, out]
        if plan.bias_only:
            rows_side.append(g)
            continue
        if holder.is_embedding:
            tokens = inputs.reshape(inputs.shape[0], -1).expand(num_columns, -1, -1)  # [K, N, R]
            if not holder.transposed:  # an input-major table: tokens stand for one-hot rows
                if layer.module.padding_idx is not None:  # its row receives no gradient
                    g = g * (tokens != layer.module.padding_idx).unsqueeze(-1).to(g.dtype)
                rows_side.append(tokens)
                columns_side.append(g)
                continue
            one_hot = functional.one_hot(tokens, layer.module.num_embeddings).to(g.dtype)
            if layer.module.padding_idx is not None:
                one_hot[..., layer.module.padding_idx] = 0
            rows_side.append(one_hot)  # the vocabulary side of a table laid out as a head's [V, d]
            columns_side.append(g)
            continue
        a = layer.rule.input_rows(layer.module, inputs)  # [N, R, in]
        if plan.joined:
            a = torch.cat([a, a.new_ones(*a.shape[:-1], 1)], dim=-1)
        rows_side.append(g)
        columns_side.append(a.expand(num_columns, *a.shape))

    def examples(parts: list[Tensor]) -> Tensor:  # [K, N, ΣR, ·] -> [K·N, ΣR, ·]
        joined = torch.cat(parts, dim=2)
        return joined.reshape(-1, *joined.shape[2:])

    if plan.bias_only:
        corrections.add(index, examples(rows_side), None, scale=weight)
    elif plan.input_major:
        corrections.add(index, examples(columns_side), examples(rows_side), scale=weight)
    else:
        corrections.add(index, examples(rows_side), examples(columns_side), scale=weight)
