r"""``Jᵀ Λ J`` through the Jacobian factors of linear layers, for blocks of columns.

If every parameter belongs to an ``nn.Linear`` layer ``z_{l,n} = W_l a_{l,n} + b_l`` or a
convolution ``z_{l,n} = W_l ⋆ a_{l,n} + b_l`` that factors on the batch
(:func:`.recording.per_sample_layers`, and called once on ``[N, in]`` or ``[N, C, *spatial]``:
its inputs ``a_{l,n}`` one per sample, its parameters used nowhere else), sample ``n``'s
Jacobian is a sum over the layers (for a convolution, read ``V a`` as ``V ⋆ a`` and
``Σ_n ġ_n a_nᵀ`` as the kernel gradient, :mod:`.convolution`):

.. math::
    J_n V = \sum_l \frac{\partial f_n}{\partial z_{l,n}} (V_l a_{l,n} + v_l).

With a factor ``Λ_n = S_n S_nᵀ`` of ``K`` columns (:mod:`curvkit._output_factor`),
``G_{l,n} = S_nᵀ ∂f_n/∂z_{l,n}`` (``K × P_l``, ``P_l`` the layer's output entries per sample) is one
backward pass of the ``K`` columns of ``S`` from the output to the layer outputs, and then

.. math::
    u_n = S_n^\top J_n V = \sum_l G_{l,n} (V_l a_{l,n} + v_l), \qquad
    (J^\top Λ J V)_{W_l} = \sum_n G_{l,n}^\top u_n a_{l,n}^\top, \qquad
    (J^\top Λ J V)_{b_l} = \sum_n G_{l,n}^\top u_n.

A column costs two matrix products per layer, ``V_l Aᵀ`` and ``(Gᵀ u) A``, done for all columns
at once; the network between the layers is traversed ``K`` times per batch (the backward pass of
``S``) instead of twice per column (forward tangents, then the backward pass of ``Λ J V``). In
multiply-adds per sample (``m_l`` the layer's, ``in_l · out_l`` for ``nn.Linear``, ``B = Σ m_l``
over the layers whose input depends on the parameters) that saves ``2 k B`` and costs
``K (B + 2 k Σ_l P_l)`` (the operators' cost rule, ``LayerFactorization.worth_it``): it pays for the EF and
MC-Fisher (``K`` = MC samples, usually 1) and for the GGN of classifiers (``K`` = classes) in
blocks of columns. Benchmark MLP and CNN, 16 columns: see ``docs/design-notes.md``.

Samples must not be coupled: the backward pass of ``S`` from the outputs of all samples gives
``Σ_m S_mᵀ ∂f_m/∂z_{l,n}``, which is ``G_{l,n}`` only if ``f_m`` does not depend on ``z_{l,n}``
for ``m ≠ n``. BatchNorm in train mode, or rows that are not samples, break that; the operators
(``operators/_layer_factors.py``) therefore check their first product against the general path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from curvkit._layers.rule import LayerRule


@dataclass(frozen=True)
class LayerFactors:
    """One batch's ``Jᵀ Λ J`` as layer inputs and output-space gradients (module docstring).

    Attributes:
        modules: The layers (``nn.Linear`` or a convolution).
        rules: Their rules (:mod:`.rule`).
        inputs: ``A_l``: ``[N, in_l]`` per linear layer, ``[N, C_l, *spatial]`` per convolution.
        output_shapes: Each layer's output shape per sample (``[out]``, ``[out, *spatial]``).
        gradients: ``G_l`` ``[N, K, P_l]`` per layer, ``P_l`` its output entries per sample
            (sample-major: one matrix product per sample in the contractions with ``u``).
        weight_indices: Position of each layer's weight among the parameters, or ``None``.
        bias_indices: Likewise for the biases.
    """

    modules: list[nn.Module]
    rules: list[type[LayerRule]]
    inputs: list[Tensor]
    output_shapes: list[tuple[int, ...]]
    gradients: list[Tensor]
    weight_indices: list[int | None]
    bias_indices: list[int | None]

    def matmat(self, tangents: list[Tensor]) -> list[Tensor]:
        """``Jᵀ Λ J V`` for tangents ``[k, *θ_p.shape]``, in the same layout.

        Each layer's tangents ``[N, P, k]`` come from its rule
        (:meth:`.linear.LinearRule.tangents_by_position`: one ``bmm`` sharing ``A``; a convolution:
        the ``k`` columns' kernels as ``k · out`` output channels of one convolution), and so do
        its weight products (a matrix product; one weight gradient of the stacked convolution).
        """
        num_columns = tangents[0].shape[0]
        projections = None  # u: [N, K, k]
        for module, rule, inputs, output_shape, gradients, weight, bias in self._layers():
            weight_tangent = None if weight is None else tangents[weight]
            bias_tangent = None if bias is None else tangents[bias]
            layer_tangents = rule.tangents_by_position(
                module, inputs, output_shape, weight_tangent, bias_tangent
            )
            contribution = torch.bmm(gradients, layer_tangents)  # [N, K, k]
            projections = contribution if projections is None else projections.add_(contribution)
        result: list[Tensor | None] = [None] * len(tangents)
        for module, rule, inputs, output_shape, gradients, weight, bias in self._layers():
            pulled_back = torch.bmm(projections.transpose(1, 2), gradients)  # [N, k, P]: Gᵀ u
            flat = pulled_back.view(pulled_back.shape[0], -1)  # [N, k·P]
            if weight is not None:
                result[weight] = rule.weight_products(
                    module, inputs, output_shape, flat, None, None, tangents[weight]
                )
            if bias is not None:
                result[bias] = rule.bias_products(flat, num_columns, output_shape)
        return result

    def _layers(self):
        return zip(
            self.modules,
            self.rules,
            self.inputs,
            self.output_shapes,
            self.gradients,
            self.weight_indices,
            self.bias_indices,
        )
