"""KFAC's arguments: the enums curvlinops 3.x names its choices by, and the checks of the rest."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from enum import Enum

from torch import Tensor, nn


class FisherType(str, Enum):
    """KFAC's ``fisher_type`` (curvlinops 3.x's names); plain strings are accepted as well."""

    TYPE2 = "type-2"
    MC = "mc"
    EMPIRICAL = "empirical"
    FORWARD_ONLY = "forward-only"


class KFACType(str, Enum):
    """KFAC's ``kfac_approx`` for weight-sharing layers (Eschenhagen et al. 2023)."""

    EXPAND = "expand"
    REDUCE = "reduce"


LOSS_AVERAGES = (None, "batch", "batch+sequence")


def choice(value: object, choices: type[Enum], name: str) -> str:
    """``value`` (a string or one of ``choices``) as its string.

    Raises:
        ValueError: Naming ``name`` and the choices.
    """
    allowed = [member.value for member in choices]
    found = value.value if isinstance(value, choices) else value
    if not isinstance(found, str) or found not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}.")
    return found


def positions_per_example(loss_func: Callable, output_shape: Sequence[int]) -> int:
    """Loss terms per example besides the likelihood's own axis (a sequence's positions).

    Cross-entropy's class axis is axis 1, MSE's and BCE's the last (curvlinops' convention).
    """
    if len(output_shape) <= 2:
        return 1
    classes = output_shape[1] if isinstance(loss_func, nn.CrossEntropyLoss) else output_shape[-1]
    return math.prod(output_shape[1:]) // classes


def output_shape_of_targets(loss_func: Callable, targets: Tensor) -> tuple[int, ...]:
    """The output shape that ``targets`` imply, up to the number of classes (as curvlinops counts).

    Class indices of cross-entropy lack the class axis (given size 1 here); every other target
    has the output's shape.
    """
    if isinstance(loss_func, nn.CrossEntropyLoss) and not targets.is_floating_point():
        return (*targets.shape[:1], 1, *targets.shape[1:])
    return tuple(targets.shape)
