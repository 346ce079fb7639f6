r"""``nn.Embedding``: ``z_{n,r} = W_{i_{n,r}}``, row ``i_{n,r}`` of the table for each index.

With ``ψ(i) = e_i`` (one-hot), this is a linear layer without bias, so the per-sample gradient
of row ``v`` is ``Σ_{r: i_{n,r} = v} g_{n,r}``: the output gradients added into the rows their
indices name. The GGN diagonal needs the squares of these sums, which
:meth:`EmbeddingRule.squared_gradient_sums` forms over the distinct (sample, index) pairs of the
batch only, never as ``[N, V, d]`` per-sample gradients. KFAC's input factor is diagonal, the
index counts (:meth:`EmbeddingRule.index_counts`).

``max_norm`` (which renormalizes rows of the table in place during the forward pass) and
``scale_grad_by_freq`` (whose gradient is not that of the forward pass) are refused; the row
``padding_idx`` receives no gradient, as in ``torch``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from curvkit._layers.rule import LayerRule


class EmbeddingRule(LayerRule):
    """``nn.Embedding`` (exactly this type)."""

    module_types = (nn.Embedding,)

    @classmethod
    def refusal(cls, module: nn.Module) -> str | None:
        if module.max_norm is not None:
            return f"max_norm={module.max_norm} (it changes the table in place during the forward pass)"
        if module.scale_grad_by_freq:
            return "scale_grad_by_freq=True (its gradient is not that of the forward pass)"
        return None

    @classmethod
    def has_sample_rows(cls, module: nn.Module, inputs: Tensor) -> bool:
        return inputs.ndim >= 1 and not inputs.is_floating_point()

    @classmethod
    def index_counts(cls, module: nn.Module, inputs: Tensor) -> Tensor:
        """How often each row is looked up, ``[V]``: the diagonal of ``Σ_{n,r} ψ ψᵀ``."""
        counts = torch.bincount(inputs.flatten(), minlength=module.num_embeddings)
        if module.padding_idx is not None:
            counts[module.padding_idx] = 0
        return counts

    @classmethod
    def output_rows(cls, module: nn.Module, output_gradients: Tensor) -> Tensor:
        return output_gradients.reshape(*output_gradients.shape[:2], -1, output_gradients.shape[-1])

    @classmethod
    def per_sample_gradients(
        cls, module: nn.Module, inputs: Tensor, output_gradients: Tensor
    ) -> dict[str, Tensor]:
        """``[K, N, V, d]``: each sample's gradients added into the rows its indices name."""
        num_columns, num_samples = output_gradients.shape[:2]
        gradients = cls.output_rows(module, output_gradients)  # [K, N, R, d]
        rows = inputs.reshape(num_samples, -1)
        keys = rows + module.num_embeddings * torch.arange(num_samples, device=rows.device).unsqueeze(1)
        result = gradients.new_zeros(num_columns, num_samples * module.num_embeddings, gradients.shape[-1])
        result.index_add_(1, keys.flatten(), gradients.flatten(1, 2))
        result = result.view(num_columns, num_samples, *module.weight.shape)
        if module.padding_idx is not None:
            result[:, :, module.padding_idx] = 0
        return {"weight": result}

    @classmethod
    def squares_without_per_sample_gradients(cls, module: nn.Module, uses: Sequence[object]) -> bool:
        return True

    @classmethod
    def squared_gradient_sums(
        cls, module: nn.Module, uses: Sequence[tuple[Tensor, Tensor]], names: Sequence[str]
    ) -> dict[str, Tensor]:
        """Sums over the distinct (sample, row) pairs of all uses, squared, added into the rows."""
        keys, gradients = [], []
        for inputs, output_gradients in uses:
            num_samples = inputs.shape[0]
            rows = inputs.reshape(num_samples, -1)
            sample = torch.arange(num_samples, device=rows.device).unsqueeze(1)
            keys.append((rows + module.num_embeddings * sample).flatten())
            gradients.append(cls.output_rows(module, output_gradients).flatten(1, 2))  # [K, N·R, d]
        distinct, position = torch.unique(torch.cat(keys), return_inverse=True)
        gradients = torch.cat(gradients, dim=1)
        sums = gradients.new_zeros(gradients.shape[0], distinct.numel(), gradients.shape[-1])
        sums.index_add_(1, position, gradients)
        squares = torch.zeros_like(module.weight, dtype=gradients.dtype)
        squares.index_add_(0, distinct % module.num_embeddings, sums.square().sum(0))
        if module.padding_idx is not None:
            squares[module.padding_idx] = 0
        return {"weight": squares}
