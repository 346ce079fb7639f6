r"""Sums of squared per-sample gradients per parameter, from the layers' records: the GGN diagonal.

With ``K`` output-space columns ``s_{n,k}`` pulled back to every use of every per-sample layer
(:func:`.recording.output_gradients`), parameter ``θ``'s share of the diagonal is

.. math::
    \sum_n \sum_k \Big( \sum_{\text{layers } l \ni θ} \sum_{\text{uses } u \text{ of } l}
    \frac{\partial}{\partial θ} \big(s_{n,k}^\top f_n\big) \Big|_u \Big)^{\odot 2}.

A parameter in one layer takes its rule's :meth:`~.rule.LayerRule.squared_gradient_sums` (one
matrix product for a linear layer's single use on ``[N, in]``); a parameter in several layers
(tied weights) adds their per-sample gradients before squaring, in chunks of samples.

For an ``nn.Sequential`` layer chain (:mod:`.chain`) the columns are pushed back by hand, all at
once (:meth:`.chain.ChainLinearization.output_gradients`), instead of one autograd pass each.
"""

from __future__ import annotations

from torch import Tensor

from curvkit._layers.chain import ChainLinearization
from curvkit._layers.parameters import Layer
from curvkit._layers.rule import chunks


def squared_gradient_sums(layers: list[Layer], gradients: list[list[Tensor]]) -> dict[int, Tensor]:
    """``{parameter position: Σ_{n,k} (per-sample gradient)²}`` for the parameters of ``layers``.

    Args:
        layers: Per-sample layers of the pass (:func:`.recording.per_sample_layers`).
        gradients: ``[K, *use.output.shape]`` per use of each layer
            (:func:`.recording.output_gradients`).
    """
    holders: dict[int, list[tuple[Layer, str, list[tuple[Tensor, Tensor]]]]] = {}
    for layer, layer_gradients in zip(layers, gradients):
        uses = [(use.inputs.detach(), gradient) for use, gradient in zip(layer.uses, layer_gradients)]
        for name, index in layer.indices.items():
            holders.setdefault(index, []).append((layer, name, uses))
    sums = {}
    for index, places in holders.items():
        if len(places) == 1:
            layer, name, uses = places[0]
            sums[index] = layer.rule.squared_gradient_sums(layer.module, uses, [name])[name]
            continue
        num_columns, num_samples = places[0][2][0][1].shape[:2]
        for columns, samples in chunks(num_columns, num_samples, places[0][0].module):
            total = None
            for layer, name, uses in places:
                for inputs, gradients in uses:
                    chunk = layer.rule.per_sample_gradients(
                        layer.module, inputs[samples], gradients[columns, samples]
                    )
                    total = chunk[name] if total is None else total + chunk[name]
            square = total.square().sum((0, 1))
            sums[index] = square if index not in sums else sums[index].add_(square)
    return sums


def chain_squared_gradient_sums(linearization: ChainLinearization, columns: Tensor) -> dict[int, Tensor]:
    """The same for a layer chain (:mod:`.chain`): the columns go back without autograd.

    Args:
        linearization: The batch's forward pass through the chain (``gradients=False``).
        columns: ``[K, *output.shape]``.
    """
    sums = {}
    gradients = linearization.output_gradients(columns)
    for layer, inputs, layer_gradients in zip(linearization.chain.layers, linearization.inputs, gradients):
        names = {name: index for name, index in (("weight", layer.weight_index), ("bias", layer.bias_index))}
        names = {name: index for name, index in names.items() if index is not None}
        if names:
            squares = layer.rule.squared_gradient_sums(layer.module, [(inputs, layer_gradients)], list(names))
            sums.update({index: squares[name] for name, index in names.items()})
    return sums


def worth_it_beside_vjps(layers: list[Layer], num_tensors: int) -> list[Layer]:
    """The per-sample ``layers`` worth taking through their rules, given the parameters they cover.

    Where some parameter is in none of them, per-sample vector-Jacobian products push every
    column back through the model for each sample anyway, and forming the layers' per-sample
    gradients from them costs little more; then only the layers whose squared sums need no
    per-sample gradient at all (:meth:`.rule.LayerRule.squares_without_per_sample_gradients`) stay
    on their rules (otherwise a transformer's exact diagonal pays both paths: docs/design-notes.md).
    A parameter shared with a layer left out leaves with it.
    """
    covered = {index for layer in layers for index in layer.indices.values()}
    if covered == set(range(num_tensors)):
        return layers
    kept = [
        layer for layer in layers if layer.rule.squares_without_per_sample_gradients(layer.module, layer.uses)
    ]
    while True:
        left_out = {index for layer in layers if layer not in kept for index in layer.indices.values()}
        remaining = [layer for layer in kept if not left_out & set(layer.indices.values())]
        if len(remaining) == len(kept):
            return kept
        kept = remaining
