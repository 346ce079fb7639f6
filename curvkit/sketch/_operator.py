"""What the sketches accept as an operator, and the checks of their common arguments.

skerch's algorithms take any object with ``.shape`` and ``@`` that multiplies torch tensors on
``lop_device`` in ``lop_dtype`` (from the right, ``lop @ X``, and from the left, ``X @ lop``).
Here such an object becomes a curvkit :class:`~curvkit.linear_operator.LinearOperator` whose
products call it with torch tensors as they are (no NumPy round trip, so a GPU operator stays on
its GPU); curvkit operators, tensors and NumPy arrays are taken as they are. The dtype and
device the caller names must be the operator's own: a mismatch is an error, not a silent cast.
A half-precision operator (float16, bfloat16) multiplies in its precision while the sketches'
QR, eigh and SVD run in float32, as the routines of :mod:`curvkit.linalg` do: the results are
float32.
"""

from __future__ import annotations

from typing import Any

import numpy
import torch
from torch import Tensor

from curvkit._boundary import as_integer, as_tensor
from curvkit._precision import HALF_PRECISIONS
from curvkit.linalg._operator import seen_in_float32
from curvkit.linear_operator import DenseLinearOperator, LinearOperator

DTYPES = (torch.float32, torch.float64, *HALF_PRECISIONS)
"""The dtypes an operator may compute in (the sketches compute in float32 around half precision)."""

DEFAULT_BLOCKSIZE = 256
"""Most measurements per product when neither ``meas_blocksize`` nor the operator's ``max_columns`` is set."""

DEFAULT_BLOCK_ENTRIES = 2**21
"""Entries of a default block of measurements (8 MiB in float32), fewer columns for longer ones.

A curvature product's temporaries are a few times its block. Kept under glibc's threshold for
mapping allocations afresh (32 MiB at most), they are reused from one product to the next; above
it, every product's pages are mapped and zero-filled again (measured on the sketch tutorial:
``docs/design-notes.md``, "Sketched decompositions"). The block's memory no longer grows with
the operator's size either.
"""


def checked_dtype(dtype: Any, name: str) -> torch.dtype:
    """``dtype`` if it is float32, float64, float16 or bfloat16.

    Raises:
        TypeError: Naming ``name``, otherwise.
    """
    if dtype not in DTYPES:
        raise TypeError(
            f"{name} must be torch.float32, torch.float64, torch.float16 or torch.bfloat16, got {dtype!r}."
        )
    return dtype


def checked_device(device: Any, name: str) -> torch.device:
    """``device`` as a ``torch.device`` with its index filled in (``'cuda'`` → ``cuda:0``).

    Raises:
        TypeError: Naming ``name``, if it is not a device or a device string.
    """
    try:
        return torch.empty(0, device=device).device
    except (RuntimeError, TypeError) as error:
        raise TypeError(f"{name} must be a torch.device or a device string, got {device!r}.") from error


class _TorchOperator(LinearOperator):
    """An object with ``.shape`` and ``@`` that multiplies torch tensors (a skerch or curvlinops operator).

    ``A X`` is ``lop @ X`` and ``Aᵀ X`` is ``(Xᵀ @ lop)ᵀ``; results come back as tensors of the
    operator's dtype, or the product is refused.
    """

    def __init__(self, lop: Any, dtype: torch.dtype, device: torch.device):
        super().__init__(tuple(int(s) for s in lop.shape), dtype=dtype, device=device)
        self.lop = lop

    def _result(self, result: Any) -> Tensor:
        if isinstance(result, Tensor) and result.dtype != self.dtype:
            raise ValueError(
                f"lop returned a product of dtype {result.dtype}, but lop_dtype is {self.dtype}: "
                "pass the dtype the operator computes in."
            )
        return as_tensor(result, self.dtype, self.device, name="the product of lop")

    def _matmat(self, X: Tensor) -> Tensor:
        return self._result(self.lop @ X)

    def _rmatmat(self, X: Tensor) -> Tensor:
        return self._result(X.T @ self.lop).T


def sketch_operator(lop: Any, device: Any, dtype: Any, name: str = "lop") -> LinearOperator:
    """``lop`` as a curvkit operator computing in ``dtype`` on ``device``.

    Args:
        lop: A curvkit operator, a tensor, a NumPy array, or any object with ``.shape`` and
            ``@`` that multiplies torch tensors (from both sides where transposes are needed).
        device: The device ``lop`` computes on.
        dtype: The dtype ``lop`` computes in: ``torch.float32``, ``torch.float64``,
            ``torch.float16`` or ``torch.bfloat16``.
        name: The argument's name, for messages.

    Returns:
        The operator (seen in float32 for half precision: module docstring).

    Raises:
        TypeError: If ``lop`` has no 2-d ``.shape`` and ``@``, or ``dtype`` / ``device`` are not
            a float dtype and a device.
        ValueError: If ``lop`` has a dtype or device other than ``dtype`` / ``device``.
    """
    dtype = checked_dtype(dtype, f"{name}_dtype")
    device = checked_device(device, f"{name}_device")
    if isinstance(lop, numpy.ndarray):
        lop = as_tensor(lop, None, device, name=name)
    if isinstance(lop, Tensor):
        lop = DenseLinearOperator(lop)
    if not isinstance(lop, LinearOperator):
        shape = getattr(lop, "shape", None)
        if shape is None or len(shape) != 2 or not hasattr(lop, "__matmul__"):
            raise TypeError(f"{name} must have a 2-d .shape and @, got {type(lop).__name__}.")
    own_dtype, own_device = getattr(lop, "dtype", None), getattr(lop, "device", None)
    if isinstance(own_dtype, torch.dtype) and own_dtype != dtype:
        raise ValueError(f"{name} computes in {own_dtype}, but {name}_dtype is {dtype}.")
    if own_device is not None and checked_device(own_device, f"{name}.device") != device:
        raise ValueError(f"{name} is on {own_device}, but {name}_device is {device}.")
    operator = lop if isinstance(lop, LinearOperator) else _TorchOperator(lop, dtype, device)
    return seen_in_float32(operator)


def check_outer_dims(outer_dims: Any, operator: LinearOperator, name: str = "outer_dims") -> int:
    """``outer_dims`` if it is a positive integer at most the operator's smaller dimension.

    Raises:
        ValueError: Otherwise.
    """
    outer_dims = as_integer(outer_dims, name, minimum=1)
    if outer_dims > min(operator.shape):
        raise ValueError(
            f"{name} must be at most the operator's smaller dimension {min(operator.shape)} "
            f"(shape {tuple(operator.shape)}), got {outer_dims}."
        )
    return outer_dims


def block_width(operator: LinearOperator, meas_blocksize: Any, num_columns: int) -> int:
    """Measurements per product: ``meas_blocksize``, capped by the operator's ``columns_per_product``.

    ``None`` takes the operator's limit, or where it has none (a curvature product's memory grows
    with its columns) :data:`DEFAULT_BLOCK_ENTRIES` entries' worth of columns, at least one and at
    most :data:`DEFAULT_BLOCKSIZE`. The random matrix is the same for every width.

    Raises:
        ValueError: If ``meas_blocksize`` is not ``None`` or a positive integer.
    """
    limit = operator.columns_per_product
    if meas_blocksize is None:
        width = limit or min(DEFAULT_BLOCKSIZE, max(1, DEFAULT_BLOCK_ENTRIES // max(operator.shape)))
    else:
        width = as_integer(meas_blocksize, "meas_blocksize", minimum=1)
        width = min(width, limit or width)
    return max(1, min(width, num_columns))


RECOVERY_TYPES = ("hmt", "nystrom", "singlepass", "oversampled_<N>")


def parse_recovery_type(recovery_type: str, outer_dims: int, max_dims: int) -> tuple[str, int]:
    """``(kind, inner_dims)`` of a recovery type (``inner_dims = 0`` but for ``'oversampled_<N>'``).

    Raises:
        ValueError: If the type is unknown, or ``N`` is not an integer in ``[outer_dims, max_dims]``.
    """
    if recovery_type in ("hmt", "nystrom", "singlepass"):
        return recovery_type, 0
    if isinstance(recovery_type, str) and recovery_type.startswith("oversampled_"):
        suffix = recovery_type.removeprefix("oversampled_")
        if not suffix.isdigit() or not outer_dims <= int(suffix) <= max_dims:
            raise ValueError(
                f"recovery_type 'oversampled_<N>' needs an integer N between outer_dims = {outer_dims} "
                f"and the operator's dimension {max_dims} (inner measurements), got {recovery_type!r}."
            )
        return "oversampled", int(suffix)
    raise ValueError(f"recovery_type must be one of {RECOVERY_TYPES}, got {recovery_type!r}.")
