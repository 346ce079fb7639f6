"""Small helpers for comparing results, used by the tests, the examples and the tutorials."""

from __future__ import annotations

from typing import Any

import numpy
import torch
from torch import Tensor

_MAX_REPORTED = 20


def _as_tensor(array: Any) -> Tensor:
    """A CPU tensor holding ``array`` (a tensor, NumPy array or nested sequence of numbers)."""
    if isinstance(array, Tensor):
        return array.detach().cpu()
    return torch.as_tensor(numpy.asarray(array))


def report_mismatches(
    array1: Any,
    array2: Any,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    equal_nan: bool = False,
    name1: str = "array1",
    name2: str = "array2",
) -> bool:
    r"""Compare two arrays entry-wise and print the entries that are not close.

    Entries are close if :math:`|a_1 - a_2| \le \text{atol} + \text{rtol} \cdot |a_2|` (the rule of
    ``torch.isclose`` and ``numpy.isclose``). Both inputs are compared on the CPU in their common
    dtype; at most 20 mismatches are printed, with their index and ratio.

    Args:
        array1: Tensor, NumPy array or nested sequence.
        array2: The same, of the same shape.
        rtol: Relative tolerance.
        atol: Absolute tolerance.
        equal_nan: Whether two NaNs count as close.
        name1: Name of ``array1`` in the printed report.
        name2: Name of ``array2`` in the printed report.

    Returns:
        Whether the arrays have the same shape and all entries are close.
    """
    tensor1, tensor2 = _as_tensor(array1), _as_tensor(array2)
    if tensor1.shape != tensor2.shape:
        print(f"Shapes differ: {name1} {tuple(tensor1.shape)}, {name2} {tuple(tensor2.shape)}.")
        return False
    dtype = torch.promote_types(tensor1.dtype, tensor2.dtype)
    if not (dtype.is_floating_point or dtype.is_complex):
        dtype = torch.float64
    tensor1, tensor2 = tensor1.to(dtype), tensor2.to(dtype)
    close = torch.isclose(tensor1, tensor2, rtol=rtol, atol=atol, equal_nan=equal_nan)
    if bool(close.all()):
        return True
    mismatches = (~close).nonzero()
    print(f"{len(mismatches)} of {close.numel()} entries differ (rtol={rtol:.1e}, atol={atol:.1e}):")
    for index in mismatches[:_MAX_REPORTED].tolist():
        value1, value2 = tensor1[tuple(index)].item(), tensor2[tuple(index)].item()
        ratio = value1 / value2 if value2 != 0 else float("inf")
        print(f"  at {index}: {name1}={value1:.6e}, {name2}={value2:.6e}, ratio {ratio:.6e}")
    if len(mismatches) > _MAX_REPORTED:
        print(f"  ... and {len(mismatches) - _MAX_REPORTED} more.")
    difference = (tensor1 - tensor2).abs()
    print(f"  max |{name1} - {name2}| = {difference.nan_to_num(nan=float('inf')).max().item():.3e}")
    return False


def allclose_report(tensor1: Tensor, tensor2: Tensor, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
    """Whether two tensors are close entry-wise; print the entries that are not.

    See :func:`report_mismatches` for the closeness rule and the report.

    Args:
        tensor1: First tensor (NumPy arrays work too).
        tensor2: Second tensor, of the same shape.
        rtol: Relative tolerance.
        atol: Absolute tolerance.

    Returns:
        Whether all entries are close.

    Example:
        >>> import torch
        >>> allclose_report(torch.ones(3), torch.ones(3) + 1e-9)
        True
        >>> allclose_report(torch.zeros(2), torch.tensor([0.0, 1.0]), atol=0.1)
        1 of 2 entries differ (rtol=1.0e-05, atol=1.0e-01):
          at [1]: tensor1=0.000000e+00, tensor2=1.000000e+00, ratio 0.000000e+00
          max |tensor1 - tensor2| = 1.000e+00
        False
    """
    return report_mismatches(tensor1, tensor2, rtol=rtol, atol=atol, name1="tensor1", name2="tensor2")
