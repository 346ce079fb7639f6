r"""The shared signature of the per-layer rules: how one layer type's parameters enter its output.

A supported layer computes, per sample ``n`` and per *row* ``r`` of that sample (a position of a
sequence, a pixel of a convolution's output, an index of an embedding's input),

.. math::
    z_{n,r} = W \, ψ(a_n)_r + b,

linear in its parameters: ``ψ(a)`` is the input row itself (``nn.Linear``, with any leading
dimensions), the input patch under the kernel (convolutions: "unfolding"), or a one-hot row
(``nn.Embedding``). So the gradient of any function of the output with respect to the parameters,
given the output gradients ``g_{n,r} = ∂/∂z_{n,r}``, is ``Σ_r g_{n,r} ψ(a_n)_rᵀ`` per sample, and
its sum over the samples one matrix product. Each rule states this for its type, with one
signature for all (as in ASDL, Osawa et al. 2023): the module first, then its recorded input and
the gradients with respect to its output for ``K`` backpropagated columns ``[K, *output.shape]``.

What a rule gives:

- :meth:`LayerRule.refusal`: why an instance of its type is not supported exactly (groups, say);
- :meth:`LayerRule.per_sample_gradients`: ``[K, N, *θ.shape]`` per parameter (EKFAC; the GGN
  diagonal where no cheaper form exists), in chunks of samples and columns (bounded memory);
- :meth:`LayerRule.squared_gradient_sums`: ``Σ_{k,n}`` of their squares over all uses of the
  layer in a pass (the GGN diagonal), without per-sample gradients where the rule knows a
  cheaper form (a linear layer's single use on ``[N, in]``: ``(Σ_k G_k²)ᵀ A²``);
- :meth:`LayerRule.input_rows` and :meth:`LayerRule.output_rows`: ``ψ(a)`` as ``[N, R, in]`` and
  the output gradients as ``[K, N, R, out]``, with the row axis kept, for Kronecker factors
  (KFAC's 'expand' sums over rows and samples, 'reduce' over rows first; Eschenhagen et al. 2023);
  :meth:`LayerRule.gram_rows` gives the input rows with their features in an order that copies
  faster where :meth:`LayerRule.gram_grid` says it pays (a convolution's channels last), for
  KFAC's Gram sums.

The rules of layers whose columns stack (linear layers on ``[N, in]``, convolutions) also give the
products with ``k`` columns laid out sample-major (``[N, k·P]``) that the layer factors of
``Jᵀ Λ J`` (:mod:`.jtlj`) and the Hessian of layer chains (:mod:`.chain`) are built from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

PARAMETER_NAMES = ("weight", "bias")

ELEMENTS_PER_CHUNK = 2**18
"""Per-sample gradients are formed in chunks of at most this many entries (1 MiB in float32)."""


class LayerRule:
    """How a layer type's parameters enter its output (module docstring). Stateless: class methods."""

    module_types: ClassVar[tuple[type[nn.Module], ...]] = ()

    @classmethod
    def refusal(cls, module: nn.Module) -> str | None:
        """Why ``module`` is not supported exactly, or ``None`` if it is."""
        return None

    @classmethod
    def parameters(cls, module: nn.Module) -> dict[str, Tensor]:
        """The layer's own parameters by name (``'weight'``, ``'bias'`` where present)."""
        found = {name: getattr(module, name, None) for name in PARAMETER_NAMES}
        return {name: tensor for name, tensor in found.items() if isinstance(tensor, Tensor)}

    @classmethod
    def has_sample_rows(cls, module: nn.Module, inputs: Tensor) -> bool:
        """Whether ``inputs`` has the shape of a batch of this layer's inputs (samples first)."""
        raise NotImplementedError

    @classmethod
    def stacks_columns(cls, module: nn.Module, inputs: Tensor) -> bool:
        """Whether the column products of :mod:`.jtlj` and :mod:`.chain` apply to this input."""
        return False

    @classmethod
    def input_rows(cls, module: nn.Module, inputs: Tensor) -> Tensor:
        """``ψ(a)`` as ``[N, R, in]`` (in: the weight's entries per output channel)."""
        raise NotImplementedError

    @classmethod
    def gram_rows(cls, module: nn.Module, inputs: Tensor) -> Tensor:
        """:meth:`input_rows` with the features in the grid that :meth:`gram_grid` gave.

        For Gram matrices ``Σ ψ ψᵀ``; called only where :meth:`gram_grid` gave one.
        """
        raise NotImplementedError

    @classmethod
    def gram_grid(cls, module: nn.Module, inputs: Tensor) -> tuple[int, int] | None:
        """``(a, b)`` where :meth:`gram_rows` of batches like ``inputs`` copy faster than :meth:`input_rows`.

        :meth:`gram_rows`' features are then the weight's ``(b, a)`` grid transposed: a Gram
        matrix ``F`` of them is put in the weight's order by one strided copy,
        ``F.view(a, b, a, b).permute(1, 0, 3, 2)`` (gathering by an index takes several times as
        long at thousands of features). ``None``: :meth:`input_rows` it is.
        """
        return None

    @classmethod
    def output_rows(cls, module: nn.Module, output_gradients: Tensor) -> Tensor:
        """``[K, *output.shape]`` as ``[K, N, R, out]``."""
        raise NotImplementedError

    @classmethod
    def per_sample_gradients(
        cls, module: nn.Module, inputs: Tensor, output_gradients: Tensor
    ) -> dict[str, Tensor]:
        """``[K, N, *θ.shape]`` per parameter name: ``Σ_r g_{k,n,r} ψ(a_n)_rᵀ`` and ``Σ_r g_{k,n,r}``.

        The default forms them from :meth:`input_rows` and :meth:`output_rows`; a caller keeps
        its chunks small (:func:`chunks`).
        """
        rows = cls.input_rows(module, inputs)  # [N, R, in]
        return cls._from_rows(module, rows, cls.output_rows(module, output_gradients))

    @classmethod
    def _from_rows(cls, module: nn.Module, rows: Tensor, gradients: Tensor) -> dict[str, Tensor]:
        """:meth:`per_sample_gradients` from input rows ``[N, R, in]`` and output rows ``[K, N, R, out]``."""
        num_columns, num_samples, _, out = gradients.shape
        result = {}
        if module.weight is not None:
            # one product per sample for all columns: [N, K·out, R] @ [N, R, in] (a broadcast
            # matmul over K would copy the rows K times)
            by_sample = gradients.permute(1, 0, 3, 2).reshape(num_samples, num_columns * out, -1)
            weight = torch.bmm(by_sample, rows).view(num_samples, num_columns, *module.weight.shape)
            result["weight"] = weight.transpose(0, 1)
        if getattr(module, "bias", None) is not None:
            result["bias"] = gradients.sum(2)
        return result

    @classmethod
    def squared_gradient_sums(
        cls, module: nn.Module, uses: Sequence[tuple[Tensor, Tensor]], names: Sequence[str]
    ) -> dict[str, Tensor]:
        """``Σ_k Σ_n`` of the squared per-sample gradients, summed over the layer's ``uses`` first.

        Args:
            module: The layer.
            uses: ``(inputs, output_gradients)`` of each use of the layer in the pass, the output
                gradients ``[K, *output.shape]`` for ``K`` backpropagated columns.
            names: The parameters wanted (``'weight'``, ``'bias'``).

        Returns:
            ``{name: Σ_{k,n} (Σ_uses ∂/∂θ per sample and column)²}``, each of the parameter's shape.
        """
        if len(uses) == 1:
            cheap = cls._single_use_squares(module, *uses[0], names)
            if cheap is not None:
                return cheap
        # input rows once per use (an unfolding), products chunk by chunk
        rows = [
            (cls.input_rows(module, inputs), cls.output_rows(module, gradients)) for inputs, gradients in uses
        ]
        sums: dict[str, Tensor] = {}
        num_columns, num_samples = uses[0][1].shape[:2]
        for columns, samples in chunks(num_columns, num_samples, module):
            per_sample: dict[str, Tensor] = {}
            for input_rows, output_rows in rows:
                chunk = cls._from_rows(module, input_rows[samples], output_rows[columns, samples])
                for name in names:
                    total = per_sample.get(name)
                    per_sample[name] = chunk[name] if total is None else total + chunk[name]
            for name, gradient in per_sample.items():
                square = gradient.square().sum((0, 1))
                sums[name] = square if name not in sums else sums[name].add_(square)
        return sums

    @classmethod
    def squares_without_per_sample_gradients(cls, module: nn.Module, uses: Sequence[object]) -> bool:
        """Whether :meth:`squared_gradient_sums` of these uses forms no per-sample gradient."""
        return False

    @classmethod
    def _single_use_squares(
        cls, module: nn.Module, inputs: Tensor, output_gradients: Tensor, names: Sequence[str]
    ) -> dict[str, Tensor] | None:
        """:meth:`squared_gradient_sums` of one use without per-sample gradients, or ``None``."""
        return None


def chunks(num_columns: int, num_samples: int, module: nn.Module) -> list[tuple[slice, slice]]:
    """Slices of columns and samples whose per-sample gradients fit :data:`ELEMENTS_PER_CHUNK`.

    Samples are chunked first (all columns of a few samples at a time): the chunk's per-sample
    gradients stay in the cache while they are squared and summed (faster than all at once:
    docs/design-notes.md); columns only where a single sample's exceed the budget.
    """
    per_column = sum(tensor.numel() for tensor in LayerRule.parameters(module).values())
    samples = max(1, ELEMENTS_PER_CHUNK // max(per_column * num_columns, 1))
    columns = num_columns if samples > 1 else max(1, min(num_columns, ELEMENTS_PER_CHUNK // per_column))
    return [
        (slice(first_column, first_column + columns), slice(first_sample, first_sample + samples))
        for first_column in range(0, num_columns, columns)
        for first_sample in range(0, num_samples, samples)
    ]
