"""The structure ``Jᵀ Λ J`` shared by the GGN, the Monte-Carlo Fisher and the empirical Fisher.

Per batch, a tangent ``V`` in parameter space is pushed to output space (``J V``), multiplied
by an output-space matrix ``Λ`` that is block-diagonal over samples, and pulled back
(``Jᵀ Λ J V``). The three matrices differ only in ``Λ``, which each chooses by its
``fisher_type`` (``'type-2'``, ``'mc'``, ``'empirical'``) in :mod:`curvkit._output_factor`.

Where every parameter sits in an ``nn.Linear`` layer or a convolution, blocks of columns skip the
tangent propagation through the network: ``Λ = S Sᵀ`` is pulled back to the layer outputs once per
batch (:mod:`._layer_factors`).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from torch import Tensor

from curvkit._engine import Batch
from curvkit._output_factor import OutputCurvature, factor_rank, output_curvature
from curvkit._predictive import batch_generator
from curvkit.operators._curvature import CurvatureLinearOperator
from curvkit.operators._layer_factors import LayerFactorization


class JTLJLinearOperator(CurvatureLinearOperator):
    """A curvature matrix ``Σ_b w_b J_bᵀ Λ_b J_b``; subclasses define ``Λ`` (:meth:`_output_curvature`).

    Blocks of columns go through layer factors where every parameter sits in an ``nn.Linear``
    and that costs less (:mod:`._layer_factors`), else through ``J V`` (forward mode), ``Λ`` and one
    backward pass.
    """

    @cached_property  # on first use: subclasses set what _factor_rank reads after the base's __init__
    def _layer_factorization(self) -> LayerFactorization:
        return LayerFactorization(self._setup, self._factor_rank())

    _fisher_type: str
    """Which ``Λ`` (:data:`curvkit._output_factor.FISHER_TYPES`)."""

    def _signature(self) -> str:
        return f"{type(self).__name__}, fisher_type {self._fisher_type}, mc_samples {self._mc_samples()}"

    def _mc_samples(self) -> int:
        """``M``, the targets drawn per sample for ``'mc'``."""
        return 1

    def _factor_rank(self) -> int | None:
        """``K``: the columns of ``Λ``'s factor per sample, or ``None`` if it has none."""
        return factor_rank(
            self._fisher_type, self._setup.loss_func, self._setup.first_output, self._mc_samples()
        )

    def _output_curvature(self, batch: Batch, output: Tensor, state: Any) -> OutputCurvature:
        """``Λ`` for the batch at ``output`` (``state``: :meth:`_start_product`'s seed, if any)."""
        generator = None if state is None else batch_generator(state, batch.global_index, output.device)
        return output_curvature(
            self._fisher_type, self._setup.loss_func, output, batch, generator, self._mc_samples()
        )

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
