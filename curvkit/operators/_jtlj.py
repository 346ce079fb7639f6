"""The structure ``Jᵀ Λ J`` shared by the GGN, the Monte-Carlo Fisher and the empirical Fisher.

Per batch, a tangent ``V`` in parameter space is pushed to output space (``J V``), multiplied
by an output-space matrix ``Λ`` that is block-diagonal over samples, and pulled back
(``Jᵀ Λ J V``). The three matrices differ only in ``Λ``:

- GGN: ``Λ = ∇²_f L_b``, the Hessian of the batch loss w.r.t. the model output;
- MC-Fisher: ``Λ = (1 / (c_b M)) Σ_m g̃_m g̃_mᵀ`` restricted to sample blocks, with
  ``g̃_m = c_b ∇_f (−log q(ỹ_m | f))`` at targets ``ỹ_m`` drawn from the model's predictive
  distribution ``q`` (:func:`curvkit.losses.sampled_output_gradients`);
- empirical Fisher: the same with the observed targets ``y`` and ``M = 1``.

The factor ``1/c_b`` turns the batch-loss gradients (``c_b ∇ℓ_n`` per sample) into
``c_b ∇ℓ_n ∇ℓ_nᵀ``, so that the sum over batches is scaled by one over the total number of
averaged terms (DESIGN.md, "Scaling convention"); then ``E[MC-Fisher] = GGN`` for every loss
(for cross-entropy: with targets that are distributions; unnormalized soft targets of mass
``m`` scale the GGN by ``m``, not the Fisher of the model's likelihood).

Where every parameter sits in an ``nn.Linear`` layer, blocks of columns skip the tangent
propagation through the network: ``Λ = S Sᵀ`` is pulled back to the layer outputs once per batch
(:mod:`._layer_factors`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from torch import Tensor, einsum

from curvkit._engine import Batch
from curvkit.operators._curvature import CurvatureLinearOperator
from curvkit.operators._layer_factors import LayerFactorization


@dataclass(frozen=True)
class OutputCurvature:
    """``Λ`` of one batch, block-diagonal over samples.

    Attributes:
        matmat: ``[k, *output.shape] ↦ Λ [k, *output.shape]``.
        factor: Computes ``S`` ``[K, *output.shape]`` with ``Λ_n = Σ_j S_{j,n} S_{j,n}ᵀ`` for every
            sample ``n``, or ``None`` if there is none (the layer-factored product needs it).
    """

    matmat: Callable[[Tensor], Tensor]
    factor: Callable[[], Tensor] | None = None


class JTLJLinearOperator(CurvatureLinearOperator):
    """A curvature matrix ``Σ_b w_b J_bᵀ Λ_b J_b``; subclasses define ``Λ`` (:meth:`_output_curvature`).

    Blocks of columns go through layer factors where every parameter sits in an ``nn.Linear``
    and that costs less (:mod:`._layer_factors`), else through ``J V`` (forward mode), ``Λ`` and one
    backward pass.
    """

    @cached_property  # on first use: subclasses set what _factor_rank reads after the base's __init__
    def _layer_factorization(self) -> LayerFactorization:
        return LayerFactorization(self._setup, self._factor_rank())

    def _factor_rank(self) -> int | None:
        """``K``: the columns of ``Λ``'s factor per sample, or ``None`` if it has none."""
        return None

    def _output_curvature(self, batch: Batch, output: Tensor, state: Any) -> OutputCurvature:
        """``Λ`` for the batch at ``output`` (``state``: :meth:`_start_product`'s)."""
        raise NotImplementedError

    def _batch_matmat(self, batch: Batch, tangents: list[Tensor], state: Any) -> list[Tensor]:
        curvature: list[OutputCurvature] = []

        def curvature_of(output: Tensor) -> OutputCurvature:  # once per batch and product
            if not curvature:
                curvature.append(
                    self._setup.cached(
                        batch, "output curvature", lambda: self._output_curvature(batch, output, state)
                    )
                )
            return curvature[0]

        def general() -> list[Tensor]:
            linearization, output_tangents = self._setup.linearization_along(batch, tangents)
            return linearization.vjp(curvature_of(linearization.output).matmat(output_tangents))

        result = self._layer_factorization.batch_matmat(batch, tangents, curvature_of, general)
        return general() if result is None else result


def gradient_outer_product(gradients: Tensor, batch_loss_scale: float) -> OutputCurvature:
    """``Λ = (1 / (c_b M)) Σ_m g_m g_mᵀ``, block-diagonal over samples (the batch axis, dim 0).

    Args:
        gradients: ``[M, *output.shape]`` batch-loss gradients w.r.t. the output.
        batch_loss_scale: ``c_b``.

    Returns:
        ``Λ``, with the factor ``S = g / √(c_b M)``.
    """
    num_samples = gradients.shape[1]
    flat_gradients = gradients.reshape(gradients.shape[0], num_samples, -1)  # [M, N, C]
    factor = 1.0 / (batch_loss_scale * gradients.shape[0])

    def apply(tangents: Tensor) -> Tensor:
        flat_tangents = tangents.reshape(tangents.shape[0], num_samples, -1)  # [k, N, C]
        projections = einsum("mnc,knc->mkn", flat_gradients, flat_tangents)
        result = einsum("mkn,mnc->knc", projections, flat_gradients)
        return factor * result.reshape(tangents.shape)

    return OutputCurvature(apply, lambda: gradients * factor**0.5)
