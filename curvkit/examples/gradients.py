"""A model's gradient and loss on its data, as newer curvlinops releases import them from ``examples``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from torch import Tensor

from curvkit.losses import reduction_of
from curvkit.operators._setup import ModelDataSetup


def gradient_and_loss(
    model_func: Callable,
    loss_func: Callable,
    params: Sequence[Tensor] | Mapping[str, Tensor],
    data: Iterable,
    batch_size_fn: Callable | None = None,
) -> tuple[list[Tensor], Tensor]:
    """The empirical risk's gradient (one tensor per parameter) and value, in one pass over ``data``.

    As the operators' ``gradient_and_loss()``: batches weighted as the full data set's mean
    (or sum) weights them, the model evaluated batch by batch (unlike
    :func:`curvkit.examples.functorch.functorch_gradient_and_loss`, which concatenates the data).
    """
    setup = ModelDataSetup(model_func, loss_func, params, data, batch_size_fn=batch_size_fn)
    return setup.gradient_and_loss(reduction_of(loss_func))
