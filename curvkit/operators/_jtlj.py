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
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, einsum

from curvkit.operators._differentiation import Linearization

OutputCurvature = Callable[[Tensor], Tensor]


def jtlj_matmat(
    linearization: Linearization, output_curvature: OutputCurvature, output_tangents: Tensor
) -> list[Tensor]:
    """``Jᵀ Λ (J V)`` from output tangents ``J V`` ``[k, *output.shape]``; ``Λ`` is ``output_curvature``."""
    return linearization.vjp(output_curvature(output_tangents))


def gradient_outer_product(gradients: Tensor, batch_loss_scale: float) -> OutputCurvature:
    """``Λ = (1 / (c_b M)) Σ_m g_m g_mᵀ``, block-diagonal over samples (the batch axis, dim 0).

    Args:
        gradients: ``[M, *output.shape]`` batch-loss gradients w.r.t. the output.
        batch_loss_scale: ``c_b``.

    Returns:
        The map ``[k, *output.shape] ↦ [k, *output.shape]``.
    """
    num_samples = gradients.shape[1]
    flat_gradients = gradients.reshape(gradients.shape[0], num_samples, -1)  # [M, N, C]
    factor = 1.0 / (batch_loss_scale * gradients.shape[0])

    def apply(tangents: Tensor) -> Tensor:
        flat_tangents = tangents.reshape(tangents.shape[0], num_samples, -1)  # [k, N, C]
        projections = einsum("mnc,knc->mkn", flat_gradients, flat_tangents)
        result = einsum("mkn,mnc->knc", projections, flat_gradients)
        return factor * result.reshape(tangents.shape)

    return apply
