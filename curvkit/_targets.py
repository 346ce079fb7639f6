"""What the ``torch.nn`` losses curvkit knows accept as targets, checked before anything runs.

A target of the wrong kind used to fail deep inside curvkit (float class indices for
cross-entropy: ``IndexError: tuple index out of range`` while counting the loss terms) or, worse,
give numbers: the closed-form GGN of cross-entropy never calls the loss, so nothing else would
notice. Torch's own rules, which the messages state:

- cross-entropy: class indices (``int64`` or ``uint8``) of the output's shape without the class
  axis (dim 1: ``[N]`` for ``[N, C]``, ``[N, T]`` for ``[N, C, T]``), or class probabilities
  (floating point) of the output's shape; NLL: class indices only;
- MSE: a target that broadcasts to the output (torch warns unless the shapes are equal);
- BCE-with-logits: floating point, of the output's shape.

Other losses and callables get their targets as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss, NLLLoss

from curvkit.losses import LossFunction, known_loss

#: The integer dtypes torch's cross-entropy and NLL losses take as class indices.
CLASS_INDEX_DTYPES = (torch.int64, torch.uint8)


def _shape(shape: Sequence[int]) -> str:
    return str(list(shape))


def _class_index_shape(output_shape: Sequence[int] | None) -> str:
    """The shape of class-index targets for outputs of ``output_shape`` (dim 1 removed)."""
    if output_shape is None:
        return "[N] (outputs [N, C]) or [N, T] (outputs [N, C, T])"
    expected = [*output_shape[:1], *output_shape[2:]] if len(output_shape) > 1 else []
    return _shape(expected)


def target_problem(loss_func: LossFunction, target: Tensor, output_shape: Sequence[int] | None) -> str | None:
    """Why ``target`` does not suit ``loss_func`` for outputs of ``output_shape``, or ``None``.

    ``output_shape=None`` (the output is not known yet) checks what the target tells alone: its
    dtype, and a class axis for probability targets.
    """
    kind = known_loss(loss_func)
    if kind not in (CrossEntropyLoss, NLLLoss, MSELoss, BCEWithLogitsLoss):
        return None
    name = kind.__name__
    if not isinstance(target, Tensor):
        return f"y must be a tensor for {name}, got {type(target).__name__}."
    got = f"got {target.dtype} of shape {_shape(target.shape)}"
    indices = f"class indices ({' or '.join(str(d) for d in CLASS_INDEX_DTYPES)})"
    if kind in (CrossEntropyLoss, NLLLoss) and not target.is_floating_point():
        if target.dtype not in CLASS_INDEX_DTYPES:
            return f"y must hold {indices} for {name}, {got}: pass y.long()."
        expected = _class_index_shape(output_shape)
        if output_shape is not None and _shape(target.shape) != expected:
            return (
                f"y must hold class indices of shape {expected} (the output's shape "
                f"{_shape(output_shape)} without its class axis, dim 1) for {name}, {got}."
            )
        return None
    if kind in (CrossEntropyLoss, NLLLoss):  # floating point
        probabilities = kind is CrossEntropyLoss and target.ndim > 1
        if probabilities and (output_shape is None or tuple(target.shape) == tuple(output_shape)):
            return None
        alternatives = ", or class probabilities (floating point) of the output's shape"
        of_output = "" if output_shape is None else f" {_shape(output_shape)}"
        return (
            f"y must hold {indices} of shape {_class_index_shape(output_shape)}"
            + (alternatives + of_output + "," if kind is CrossEntropyLoss else "")
            + f" for {name}; {got}. Class indices stored as floats: pass y.long()."
        )
    if kind is BCEWithLogitsLoss:
        if not target.is_floating_point():
            return f"y must be floating point (0/1 labels, probabilities) for {name}, {got}: pass y.float()."
        if output_shape is not None and tuple(target.shape) != tuple(output_shape):
            return f"y must have the output's shape {_shape(output_shape)} for {name}, {got}."
        return None
    if output_shape is not None:  # MSELoss
        try:
            torch.broadcast_shapes(target.shape, output_shape)
        except RuntimeError:
            return f"y must have the output's shape {_shape(output_shape)} for {name}, {got}."
    return None


def check_target(
    loss_func: LossFunction,
    target: Tensor,
    batch_index: int,
    output_shape: Sequence[int] | None = None,
) -> None:
    """Raise unless ``target`` suits ``loss_func`` (see the module docstring for the rules).

    Only the tensors' metadata is read: no device synchronization, so it may run on every batch.

    Args:
        loss_func: The loss.
        target: A batch's targets ``y``.
        batch_index: The batch's position, for the message.
        output_shape: The model's output shape on the batch, if known.

    Raises:
        ValueError: Saying what the loss expects and what ``y`` is.
    """
    problem = target_problem(loss_func, target, output_shape)
    if problem is not None:
        raise ValueError(f"batch {batch_index}: {problem}")
