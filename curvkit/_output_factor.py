r"""The output-space matrix ``Λ`` of ``Jᵀ Λ J`` and its factor ``S``, chosen in one place.

Per batch, the GGN, the Monte-Carlo Fisher and the empirical Fisher differ only in ``Λ``,
block-diagonal over samples, and each has a factor ``Λ_n = S_n S_nᵀ`` of ``K`` columns:

- ``'type-2'`` (GGN): ``Λ = ∇²_f L_b``, factored in closed form
  (:func:`curvkit.losses.output_hessian_sqrt`, ``K`` = output entries per sample, ``C − 1`` per
  position for cross-entropy over ``C`` classes);
- ``'mc'`` (MC-Fisher): ``S = [g̃_1 … g̃_M] / √(c_b M)`` with ``g̃_m = c_b ∇_f (−log q(ỹ_m | f))`` at
  targets ``ỹ_m`` drawn from the model's predictive distribution (``K = M``);
- ``'empirical'`` (EF): the same with the observed targets and ``M = 1``;
- ``'forward-only'`` (KFAC's): no ``Λ`` at all; the output factor is the identity, and no backward
  pass is taken.

The factor ``1/√c_b`` turns the batch-loss gradients (``c_b ∇ℓ_n`` per sample) into
``c_b ∇ℓ_n ∇ℓ_nᵀ``, so that the sum over batches is scaled by one over the total number of
averaged terms; then ``E[MC-Fisher] = GGN`` for every supported loss. The operators
(:class:`~curvkit.GGNLinearOperator`, :class:`~curvkit.FisherMCLinearOperator`,
:class:`~curvkit.EFLinearOperator`), :func:`~curvkit.ggn_diagonal` and KFAC's ``fisher_type``
all choose here, so that a GGN diagonal with ``mode='mc'`` is the MC-Fisher's diagonal draw for
draw, and KFAC's factors are those of the same ``Λ``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial

from torch import Generator, Tensor, einsum

from curvkit._engine import Batch
from curvkit._predictive import sample_targets, sampled_output_gradients
from curvkit.losses import (
    batch_loss_scale,
    hessian_sqrt_columns,
    is_supported,
    output_gradients,
    output_hessian_matmat,
    output_hessian_sqrt_columns,
)

FISHER_TYPES = ("type-2", "mc", "empirical", "forward-only")
"""The output-space matrices, by KFAC's ``fisher_type`` names."""


@dataclass(frozen=True)
class OutputCurvature:
    """``Λ`` of one batch, block-diagonal over samples.

    Attributes:
        matmat: ``[k, *output.shape] ↦ Λ [k, *output.shape]``.
        factor: Computes ``S`` ``[K, *output.shape]`` with ``Λ_n = Σ_j S_{j,n} S_{j,n}ᵀ`` for every
            sample ``n``, or ``None`` if there is none (the layer-factored products need it);
            ``factor(start, stop)``: only the columns ``start, …, stop − 1``.
        rank: ``K`` (``None`` without a factor).
    """

    matmat: Callable[[Tensor], Tensor]
    factor: Callable[..., Tensor] | None = None
    rank: int | None = None


def check_fisher_type(fisher_type: str, argument: str = "fisher_type") -> None:
    """Raise unless ``fisher_type`` is one of :data:`FISHER_TYPES`.

    Raises:
        ValueError: Naming ``argument`` and the allowed values.
    """
    if fisher_type not in FISHER_TYPES:
        raise ValueError(
            f"{argument} must be one of {', '.join(map(repr, FISHER_TYPES))}, got {fisher_type!r}."
        )


def factor_rank(
    fisher_type: str, loss_func: Callable, first_output: Tensor, mc_samples: int = 1
) -> int | None:
    """``K``, the columns of ``S`` per sample, or ``None`` where ``Λ`` has no factor (or none is needed)."""
    if fisher_type == "type-2":
        has_factor = is_supported(loss_func) and first_output.ndim > 0
        return hessian_sqrt_columns(loss_func, first_output) if has_factor else None
    return {"mc": mc_samples, "empirical": 1}.get(fisher_type)


def output_curvature(
    fisher_type: str,
    loss_func: Callable,
    output: Tensor,
    batch: Batch,
    generator: Generator | None = None,
    mc_samples: int = 1,
    symmetric_root: bool = False,
) -> OutputCurvature:
    """``Λ`` and its factor for the batch at ``output`` (module docstring).

    Args:
        fisher_type: One of :data:`FISHER_TYPES` except ``'forward-only'``.
        loss_func: The loss.
        output: The batch's model output (detached).
        batch: The batch (targets, number of loss terms).
        generator: Draws the targets of ``'mc'``, consumed batch by batch.
        mc_samples: ``M`` for ``'mc'``.
        symmetric_root: See :func:`output_factor`.
    """
    if fisher_type == "type-2":
        arguments = (loss_func, output, batch.y)
        supported = is_supported(loss_func)
        # prepared at the first column range (a caller of matmat alone never needs it)
        prepared = cache(partial(output_hessian_sqrt_columns, *arguments, batch.loss_terms, symmetric_root))
        return OutputCurvature(
            partial(output_hessian_matmat, *arguments, loss_terms=batch.loss_terms),
            (lambda start=0, stop=None: prepared()(start, stop)) if supported else None,
            hessian_sqrt_columns(loss_func, output, symmetric_root) if supported else None,
        )
    scale = batch_loss_scale(loss_func, output, batch.y, batch.loss_terms)
    if fisher_type == "empirical":
        gradients = output_gradients(loss_func, output, batch.y).unsqueeze(0)
    elif fisher_type == "mc":
        targets = sample_targets(loss_func, output, batch.y, mc_samples, generator)
        gradients = sampled_output_gradients(loss_func, output, targets, batch.y, batch.loss_terms)
    else:
        raise ValueError(f"Λ is defined for 'type-2', 'mc' and 'empirical', not {fisher_type!r}.")
    return gradient_outer_product(gradients, scale)


def output_factor(
    fisher_type: str,
    loss_func: Callable,
    output: Tensor,
    batch: Batch,
    generator: Generator | None = None,
    mc_samples: int = 1,
    symmetric_root: bool = False,
) -> Tensor | None:
    """``S`` ``[K, *output.shape]`` for the batch, or ``None`` for ``'forward-only'``.

    ``symmetric_root``: for ``'type-2'``, cross-entropy's symmetric root of ``C`` columns per
    position instead of the ``C − 1`` of :func:`curvkit.losses.output_hessian_sqrt`.

    Raises:
        NotImplementedError: For ``'type-2'`` with a loss without a closed-form square root.
    """
    if fisher_type == "forward-only":
        return None
    curvature = output_curvature(fisher_type, loss_func, output, batch, generator, mc_samples, symmetric_root)
    if curvature.factor is None:
        raise NotImplementedError(f"No closed-form Hessian square root for {type(loss_func).__name__}.")
    return curvature.factor()


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

    root = factor**0.5
    return OutputCurvature(apply, lambda start=0, stop=None: gradients[start:stop] * root, gradients.shape[0])
