"""Products ``Jᵀ Λ J V`` of the GGN, EF and MC-Fisher through layer factors, where they apply and pay.

The mathematics is :mod:`curvkit._layers.jtlj`; this module decides per operator whether to use
it (every parameter in a layer that factors, a cost rule) and checks its first product against
the general path.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor

from curvkit._engine import Batch
from curvkit._layers.jtlj import LayerFactors
from curvkit._layers.recording import output_gradients, recording, traced_forward
from curvkit.operators._setup import ModelDataSetup
from curvkit.operators._shortcut import AgreementCheck


class LayerFactorization:
    """Products ``Jᵀ Λ J V`` through :class:`LayerFactors` for one operator, where they apply and pay.

    Holds what is learned on the way: whether the parameters all sit in factored layers, the
    layers' sizes (both from the first batch), and whether the factored product agrees with the
    general one (:class:`._shortcut.AgreementCheck`: BatchNorm in train mode couples the samples).

    Args:
        setup: The operator's model, data and cache.
        factor_rank: ``K``, the number of columns of ``Λ``'s factor, or ``None`` if it has none.
    """

    def __init__(self, setup: ModelDataSetup, factor_rank: int | None):
        self.setup, self.factor_rank = setup, factor_rank
        model, layer_map = setup.model, setup.layer_map
        self.layers = layer_map.layers
        positions = [index for layer in self.layers for index in layer.indices.values()]
        self.applicable = (
            factor_rank is not None
            and bool(self.layers)
            and layer_map.covers_all(len(model.tensors))
            and len(set(positions)) == len(positions)  # no parameter in two layers (tied weights)
            and all(hasattr(layer.rule, "tangents_by_position") for layer in self.layers)
        )
        self.sizes: tuple[int, int] | None = None  # B and Σ_l P_l, from the first batch
        self.check = AgreementCheck(model.model_func)

    def worth_it(self, num_columns: int) -> bool:
        """Whether ``k`` columns cost less factored: ``K (B + 2 k Σ P) < 2 k B`` (module docstring)."""
        through_network, outputs = self.sizes
        return (
            self.factor_rank * (through_network + 2 * num_columns * outputs)
            < 2 * num_columns * through_network
        )

    def batch_matmat(
        self,
        batch: Batch,
        tangents: list[Tensor],
        curvature_of: Callable,
        general: Callable[[], list[Tensor]],
    ) -> list[Tensor] | None:
        """``Jᵀ Λ J V`` on the batch through layer factors, or ``None`` where they do not apply or pay.

        Args:
            batch: The batch.
            tangents: ``[k, *θ_p.shape]`` per parameter; single vectors (``k = 1``) keep the
                general path.
            curvature_of: Maps the batch output to its ``Λ``
                (:class:`curvkit._output_factor.OutputCurvature`), the same object on every call
                for the batch (so that both paths see one ``Λ``, also a drawn one).
            general: The product on the general path, for the agreement check.
        """
        num_columns = tangents[0].shape[0]
        if (
            not self.applicable
            or self.check.failed
            or num_columns < 2
            or (self.sizes is not None and not self.worth_it(num_columns))
        ):
            return None
        factors = self.setup.cached(batch, "layer factors", lambda: self._factors(batch, curvature_of))
        if factors is None:  # a layer did not factor on this batch
            self.applicable = False
            return None
        if not self.worth_it(num_columns):  # known since this first batch
            return None
        return self.check.checked(factors.matmat(tangents), general)

    def _factors(self, batch: Batch, curvature_of: Callable) -> LayerFactors | None:
        """The batch's factors, or ``None`` if some parameter's layer does not factor on it."""
        model = self.setup.model
        with recording(self.layers):
            # the first batch tells which layer inputs come from the batch (tracing); later ones alike
            output, per_sample = traced_forward(
                model, model.model_func, batch.X, batch.size, self.layers, traced=self.sizes is None
            )
            fast = [
                layer
                for layer in per_sample
                if len(layer.uses) == 1 and layer.rule.stacks_columns(layer.module, layer.uses[0].inputs)
            ]
            if len(fast) != len(self.layers):
                return None
            output_shapes = [tuple(layer.uses[0].output.shape[1:]) for layer in fast]
            if self.sizes is None:
                # per sample: multiply-adds of the layers whose input depends on parameters
                # (output entries times weights per output channel), and output entries
                self.sizes = (
                    sum(
                        math.prod(shape) * layer.module.weight[0].numel()
                        for layer, shape in zip(fast, output_shapes)
                        if layer.uses[0].inputs.requires_grad
                    ),
                    sum(math.prod(shape) for shape in output_shapes),
                )
            factor = curvature_of(output.detach()).factor()
            gradients = output_gradients(fast, output, factor)
            return LayerFactors(
                modules=[layer.module for layer in fast],
                rules=[layer.rule for layer in fast],
                inputs=[layer.uses[0].inputs.detach() for layer in fast],
                output_shapes=output_shapes,
                gradients=[
                    gradient.detach().transpose(0, 1).reshape(batch.size, factor.shape[0], -1)
                    for (gradient,) in gradients
                ],
                weight_indices=[layer.weight_index for layer in fast],
                bias_indices=[layer.bias_index for layer in fast],
            )
