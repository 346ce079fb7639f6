"""Name the batch, and what of it, that holds NaN or infinity.

A non-finite entry anywhere in a batch (an input, a target, the model's output, the loss) turns
every product into NaN, and used to surface far from its cause (``atol must be greater than or
equal to zero, but got -nan`` from a comparison of two products). So each batch is checked where
it first passes through: its inputs and targets by the engine as ``data`` yields them (before
they move to the device), its model output and loss by the construction probes
(:mod:`curvkit.operators._setup`, :mod:`curvkit._engine.determinism`; KFAC's on the first batch
of its factor pass). Why there, and what it costs, is in ``docs/design-notes.md`` ("Non-finite
data and bad targets").
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

DATA_HINT = (
    "Clean the data before building the operator (e.g. drop those samples, or replace the entries "
    "with torch.nan_to_num)."
)
MODEL_HINT = (
    "The batch's inputs and targets are finite, so the model's parameters are not, or its forward "
    "pass or the loss overflows on this batch."
)


def nonfinite(tensors: Mapping[str, Tensor]) -> list[str]:
    """The names of the floating-point ``tensors`` that hold NaN or infinity.

    A tensor with a NaN or infinite entry has a non-finite sum, so one sum per tensor clears the
    common case (a reduction that vectorizes, several times faster than ``aminmax`` on the CPU,
    and than ``isfinite(t).all()`` by far). A non-finite sum may also be an overflow of finite
    entries; then the tensor's extremes decide (NaN propagates through both). One read back per
    device for all tensors together.
    """
    floating = {
        name: tensor.detach()
        for name, tensor in tensors.items()
        if isinstance(tensor, Tensor) and tensor.is_floating_point() and tensor.numel() > 0
    }
    by_device: dict[torch.device, list[str]] = {}
    for name, tensor in floating.items():
        by_device.setdefault(tensor.device, []).append(name)
    found = []
    for names in by_device.values():
        if bool(torch.isfinite(torch.stack([floating[name].sum() for name in names])).all()):
            continue
        extremes = [torch.stack(torch.aminmax(floating[name])) for name in names]
        flags = torch.isfinite(torch.stack(extremes)).all(dim=1)
        found += [name for name, finite in zip(names, flags.tolist()) if not finite]
    return found


def check_finite(batch_index: int, tensors: Mapping[str, Tensor], hint: str) -> None:
    """Raise unless every floating-point tensor of batch ``batch_index`` is finite.

    Args:
        batch_index: The batch's position in the data, for the message.
        tensors: What to check, by the name the message uses (``"the input X['x']"``,
            ``"the target y"``, ``"the model output"``, ``"the loss"``).
        hint: How to fix it (:data:`DATA_HINT`, :data:`MODEL_HINT`).

    Raises:
        ValueError: Naming the batch and the tensors that hold NaN or infinity.
    """
    found = nonfinite(tensors)
    if found:
        verb = "holds" if len(found) == 1 else "hold"
        raise ValueError(f"batch {batch_index}: {' and '.join(found)} {verb} NaN or infinity. {hint}")


def named_inputs(X: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A batch input by the names messages use: ``the input X``, or ``the input X['key']`` per entry."""
    if isinstance(X, Mapping):
        return {f"the input X[{key!r}]": value for key, value in X.items()}
    return {"the input X": X}
