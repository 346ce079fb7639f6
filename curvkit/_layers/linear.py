r"""``nn.Linear``: ``z_{n,r} = W a_{n,r} + b`` for every row ``r`` of a sample's leading dimensions.

On an input ``[N, in]`` (one row per sample), a per-sample gradient is an outer product
``g_n a_nᵀ``, so the sums of squares the GGN diagonal needs are one matrix product,
``(Σ_k G_k^{⊙2})ᵀ A^{⊙2}``, without per-sample gradients; on ``[N, *leading, in]`` they are
``Σ_r g_{n,r} a_{n,r}ᵀ``, formed in chunks of columns (:mod:`.rule`).

For ``k`` columns laid out sample-major, ``[N, k·out]`` (only for inputs ``[N, in]``), the
products that :mod:`.jtlj` and :mod:`.chain` need are one matrix product each for all columns:
``V a + v`` (:meth:`LinearRule.parameter_tangents`), ``W ȧ`` (:meth:`LinearRule.propagated`),
``Wᵀ g`` (:meth:`LinearRule.transposed`), ``Σ_n ġ_n a_nᵀ + g_n ȧ_nᵀ``
(:meth:`LinearRule.weight_products`), with sums accumulated in place (``addmm_``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from curvkit._layers.rule import LayerRule


class LinearRule(LayerRule):
    """``nn.Linear`` (exactly: a subclass may compute something else)."""

    module_types = (nn.Linear,)

    @classmethod
    def has_sample_rows(cls, module: nn.Module, inputs: Tensor) -> bool:
        return inputs.ndim >= 2

    @classmethod
    def stacks_columns(cls, module: nn.Module, inputs: Tensor) -> bool:
        return inputs.ndim == 2

    @classmethod
    def input_rows(cls, module: nn.Module, inputs: Tensor) -> Tensor:
        return inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])

    @classmethod
    def output_rows(cls, module: nn.Module, output_gradients: Tensor) -> Tensor:
        return output_gradients.reshape(*output_gradients.shape[:2], -1, output_gradients.shape[-1])

    @classmethod
    def squares_without_per_sample_gradients(cls, module: nn.Module, uses: Sequence[object]) -> bool:
        return len(uses) == 1 and uses[0].inputs.ndim == 2

    @classmethod
    def _single_use_squares(
        cls, module: nn.Module, inputs: Tensor, output_gradients: Tensor, names: Sequence[str]
    ) -> dict[str, Tensor] | None:
        if inputs.ndim != 2:
            return None
        summed = output_gradients.square().sum(0)  # [N, out]
        sums = {}
        if "weight" in names:
            sums["weight"] = summed.T @ inputs.square()
        if "bias" in names:
            sums["bias"] = summed.sum(0)
        return sums

    # ------------------------------------------------------------------ k columns, [N, k·out]
    @classmethod
    def parameter_tangents(
        cls,
        module: nn.Module,
        inputs: Tensor,
        output_shape: tuple[int, ...],
        weight: Tensor | None,
        bias: Tensor | None,
    ) -> Tensor | None:
        """``V a + v`` as ``[N, k·out]`` (``None`` if the layer's parameters have no tangent)."""
        if weight is None and bias is None:
            return None
        if weight is None:
            return bias.reshape(1, -1).expand(inputs.shape[0], -1).clone()
        by_rows = weight.reshape(-1, weight.shape[2]).T
        if bias is None:
            return inputs @ by_rows
        return torch.addmm(bias.reshape(1, -1), inputs, by_rows)

    @classmethod
    def tangents_by_position(
        cls,
        module: nn.Module,
        inputs: Tensor,
        output_shape: tuple[int, ...],
        weight: Tensor | None,
        bias: Tensor | None,
    ) -> Tensor:
        """``V a + v`` as ``[N, out, k]``, computed column-major (one ``bmm`` sharing ``A``).

        Measured faster on the benchmark MLP than one ``A [V_1ᵀ … V_kᵀ]``
        (design notes, "Measurements behind the code").
        """
        if weight is None:
            return bias.T.unsqueeze(0).expand(inputs.shape[0], -1, -1)
        expanded = inputs.expand(weight.shape[0], *inputs.shape)
        if bias is None:
            tangents = torch.bmm(expanded, weight.transpose(1, 2))
        else:
            tangents = torch.baddbmm(bias.unsqueeze(1), expanded, weight.transpose(1, 2))
        return tangents.permute(1, 2, 0)

    @classmethod
    def propagated(
        cls,
        module: nn.Module,
        input_tangent: Tensor,
        input_shape: tuple[int, ...],
        num_columns: int,
        into: Tensor | None,
    ) -> Tensor:
        """``into + W ȧ`` for ``ȧ`` ``[N, k·in]``, as ``[N, k·out]`` (in place where ``into`` is given)."""
        num_samples = input_shape[0]
        weight = module.weight.detach()
        flat = input_tangent.view(num_samples * num_columns, -1)
        if into is None:
            return (flat @ weight.T).view(num_samples, -1)
        into.view(flat.shape[0], -1).addmm_(flat, weight.T)
        return into

    @classmethod
    def transposed(
        cls,
        module: nn.Module,
        gradients: Tensor,
        weight: Tensor,
        input_shape: tuple[int, ...],
        output_shape: tuple[int, ...],
        into: Tensor | None = None,
    ) -> Tensor:
        """``into + Wᵀ g`` for ``g`` of ``M = input_shape[0]`` rows (``weight`` maps ``input_shape[1:]``)."""
        weight = weight.detach()
        rows = gradients.reshape(input_shape[0], -1)
        if into is None:
            return rows @ weight
        return into.view(input_shape[0], -1).addmm_(rows, weight)

    @classmethod
    def weight_products(
        cls,
        module: nn.Module,
        inputs: Tensor,
        output_shape: tuple[int, ...],
        gradient_tangent: Tensor,
        gradients: Tensor | None,
        input_tangent: Tensor | None,
        weight: Tensor,
    ) -> Tensor:
        """``Σ_n ġ_n a_nᵀ (+ g_n ȧ_nᵀ)`` as ``[k, *W.shape]`` (``weight``: the tangent, for its shape).

        ``ġ`` ``[N, k·out]``; the second term only where the input tangents ``ȧ`` ``[N, k·in]``
        (and the gradients ``g`` ``[N, out]``) are given.
        """
        num_samples, num_columns = inputs.shape[0], weight.shape[0]
        product = (gradient_tangent.T @ inputs).view(weight.shape)
        if input_tangent is not None:
            columns = input_tangent.view(num_samples, num_columns, -1).transpose(0, 1)
            product.baddbmm_(gradients.T.expand(num_columns, -1, -1), columns)
        return product

    @classmethod
    def bias_products(
        cls, gradient_tangent: Tensor, num_columns: int, output_shape: tuple[int, ...]
    ) -> Tensor:
        """``Σ_n ġ_n`` as ``[k, out]``, for ``ġ`` ``[N, k·out]``."""
        return gradient_tangent.view(gradient_tangent.shape[0], num_columns, -1).sum(0)
