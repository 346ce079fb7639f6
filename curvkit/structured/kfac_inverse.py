r"""KFAC's inverse, block by block: damped factors, the π heuristic, or exact damping.

For a block ``G ⊗ A`` (curvlinops' ``KFACInverseLinearOperator`` semantics):

- **Factor damping** (default): ``(G + δ_G I)⁻¹ ⊗ (A + δ_A I)⁻¹``, each factor inverted by
  Cholesky (retried in float64 if it fails in float32). ``damping`` is ``δ`` for both, or a pair
  ``(δ_A, δ_G)``. This inverts ``G ⊗ A + δ_A G ⊗ I + δ_G I ⊗ A + δ_A δ_G I``, not
  ``G ⊗ A + δ I``.
- **π heuristic** (Martens & Grosse 2015, section 6.3): ``π = √((tr A / dim A) / (tr G / dim G))``,
  ``δ_A = max(π √δ, min_damping)``, ``δ_G = max(√δ / π, min_damping)``, which keeps the damping
  ``δ_A δ_G = δ`` and splits it in proportion to the factors' average eigenvalues.
- **Exact damping** (Grosse et al. 2023, eq. 21): ``(G ⊗ A + δ I)⁻¹ = (Q_G ⊗ Q_A)
  diag(λ_G ⊗ λ_A + δ)⁻¹ (Q_G ⊗ Q_A)ᵀ`` from the factors' eigendecompositions.

A bias alone (``G ⊗ [1]``) has no input factor to damp: its block is ``(G + δ_G I)⁻¹`` (with
``δ_G = δ`` under the heuristic). Where curvlinops 3.0.1 differs, silently
(``benchmarks/results/kfac_algebra_vs_curvlinops.md``):

- under the heuristic, it damps a bias kept apart by its weight's ``δ_G = √δ / π`` (it inverts a
  layer's ``G`` once for both), so the bias's damping depends on the weight's *inputs*; here a
  block with one factor gets all of ``δ``, as ``δ_A δ_G = δ`` intends. Both agree without the
  heuristic, and for joined weights and biases;
- its exact damping decomposes the factors in their own precision and keeps their negative
  eigenvalues (rounding, for a PSD factor), so ``λ_G λ_A + δ`` can be zero or negative for a small
  ``δ`` — infinite or negative "inverse" eigenvalues; here the decomposition runs in float64 and
  negative eigenvalues are clamped to zero;
- its heuristic, for a factor with zero trace (a layer whose inputs or output gradients vanish),
  falls back to ``δ`` on both factors (adding ``δ²`` instead of ``δ``) or divides by zero; here π
  is then 1 (each factor gets ``max(√δ, min_damping)``), so the block still gains ``δ I``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from curvkit._boundary import nonnegative_float
from curvkit.linear_operator import LinearOperator
from curvkit.structured._factors import damped_inverse, trace64
from curvkit.structured.blocks import (
    KroneckerBlock,
    Placement,
    assembled,
    kronecker_eigenbasis,
    kronecker_operator,
)
from curvkit.structured.eigen_kronecker import EigenKroneckerLinearOperator


@dataclass(frozen=True)
class InverseOptions:
    """The checked arguments of ``inverse`` (see :meth:`KroneckerFactoredLinearOperator.inverse`)."""

    damping: float | tuple[float, float]
    use_heuristic_damping: bool
    min_damping: float
    use_exact_damping: bool
    cache: bool
    retry_double_precision: bool


def inverse_options(
    damping: object,
    use_heuristic_damping: object,
    min_damping: object,
    use_exact_damping: object,
    cache: object,
    retry_double_precision: object,
) -> InverseOptions:
    """Check ``inverse``'s arguments.

    Raises:
        TypeError: If a switch is not a bool.
        ValueError: If a damping is negative or not finite, a pair is not two numbers, a pair is
            given with the heuristic or exact damping, or both of those are selected.
    """
    switches = {
        "use_heuristic_damping": use_heuristic_damping,
        "use_exact_damping": use_exact_damping,
        "cache": cache,
        "retry_double_precision": retry_double_precision,
    }
    for name, value in switches.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}.")
    if isinstance(damping, (tuple, list)):
        if len(damping) != 2:
            raise ValueError(f"damping must be a number or a pair (input, output), got {damping!r}.")
        if use_heuristic_damping or use_exact_damping:
            raise ValueError("Heuristic and exact damping take one damping value, not a pair.")
        checked: float | tuple[float, float] = (
            nonnegative_float(damping[0], "damping[0]"),
            nonnegative_float(damping[1], "damping[1]"),
        )
    else:
        checked = nonnegative_float(damping, "damping")
    if use_heuristic_damping and use_exact_damping:
        raise ValueError("Use either heuristic damping or exact damping, not both.")
    return InverseOptions(
        checked,
        use_heuristic_damping,
        nonnegative_float(min_damping, "min_damping"),
        use_exact_damping,
        cache,
        retry_double_precision,
    )


def factor_dampings(block: KroneckerBlock, options: InverseOptions) -> tuple[float, float | None]:
    """``(δ_G, δ_A)`` for a block's factors (``δ_A`` is ``None`` for a bias alone)."""
    damping = options.damping
    if isinstance(damping, tuple):
        return damping[1], None if block.input_factor is None else damping[0]
    if block.input_factor is None:
        return damping, None
    if not options.use_heuristic_damping:
        return damping, damping
    output_mean = trace64(block.output_factor) / block.output_factor.shape[0]
    input_mean = trace64(block.input_factor) / block.input_factor.shape[0]
    pi = math.sqrt(input_mean / output_mean) if output_mean > 0 and input_mean > 0 else 1.0
    root = math.sqrt(damping)
    return max(root / pi, options.min_damping), max(pi * root, options.min_damping)


def inverse_block(
    block: KroneckerBlock, where: Placement, options: InverseOptions, name: str
) -> LinearOperator:
    """The inverse of one damped block, on the block's parameters."""
    if options.use_exact_damping:
        values, basis = kronecker_eigenbasis(where, block)
        inverse_values = 1.0 / (values + options.damping)
        if not bool(torch.isfinite(inverse_values).all()):
            raise torch.linalg.LinAlgError(
                f"{name} is singular and damping is 0: (G ⊗ A)⁻¹ does not exist. Use a positive damping."
            )
        left, right = where.ordered(basis.output_eigenvectors, basis.input_eigenvectors)
        core = EigenKroneckerLinearOperator(inverse_values.to(block.output_factor.dtype), left, right)
        return assembled(core, where)
    output_damping, input_damping = factor_dampings(block, options)
    retry = options.retry_double_precision
    output_inverse: Tensor = damped_inverse(
        block.output_factor, output_damping, retry, f"{name}'s output factor", block.output_rank
    )
    input_inverse = (
        None
        if block.input_factor is None
        else damped_inverse(
            block.input_factor, input_damping, retry, f"{name}'s input factor", block.input_rank
        )
    )
    return kronecker_operator(where, output_inverse, input_inverse)
