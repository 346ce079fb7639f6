"""The generalized Gauss-Newton matrix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from warnings import warn

from torch.nn import NLLLoss

from curvkit.losses import is_supported, known_loss
from curvkit.operators._jtlj import JTLJLinearOperator


class GGNLinearOperator(JTLJLinearOperator):
    r"""Generalized Gauss-Newton (GGN) matrix as a linear operator.

    .. math::
        c \sum_{n=1}^N (J_\theta f_\theta(x_n))^\top \nabla^2_{f} \ell(f_\theta(x_n), y_n)
        (J_\theta f_\theta(x_n))

    The output-space Hessian has closed forms for ``MSELoss``, ``CrossEntropyLoss`` and
    ``BCEWithLogitsLoss`` and is differentiated (reverse over reverse) for any other loss.
    The matrix is tagged positive semi-definite for these three (convex) losses; for other
    losses it is PSD only where the loss is convex in the output.

    Arguments as for :class:`~curvkit.operators._curvature.CurvatureLinearOperator`.

    Warns:
        UserWarning: For ``NLLLoss``, which is linear in the model's output (log-probabilities):
            its GGN is zero.
    """

    def __init__(self, model_func: Callable, loss_func: Callable, *args: Any, **kwargs: Any):
        if known_loss(loss_func) is NLLLoss:
            warn(
                "loss_func is NLLLoss, which is linear in the model's output, so the GGN is zero. "
                "For the GGN of a classifier, drop the final LogSoftmax and use CrossEntropyLoss.",
                UserWarning,
                stacklevel=2,
            )
        super().__init__(model_func, loss_func, *args, **kwargs)

    @classmethod
    def _is_psd(cls, loss_func: Callable) -> bool:
        return is_supported(loss_func)

    _fisher_type = "type-2"  # Λ = ∇²_f L_b, factored in closed form where there is one
