"""The one place where NumPy meets PyTorch.

Everything inside curvkit computes on torch tensors on the operator's device. Inputs that
arrive as NumPy arrays (or tensors of another dtype) are converted here, and results go
back to the caller's kind of array here.
"""

from __future__ import annotations

from typing import Any
from warnings import warn

import numpy
import torch
from torch import Tensor

_NUMPY_TO_TORCH = {
    numpy.dtype("float16"): torch.float16,
    numpy.dtype("float32"): torch.float32,
    numpy.dtype("float64"): torch.float64,
    numpy.dtype("complex64"): torch.complex64,
    numpy.dtype("complex128"): torch.complex128,
}


def torch_dtype_of(dtype: Any) -> torch.dtype:
    """Translate a NumPy (or torch) dtype into a torch dtype.

    Raises:
        TypeError: If the dtype has no floating-point torch counterpart.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _NUMPY_TO_TORCH[numpy.dtype(dtype)]
    except (KeyError, TypeError) as error:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype!r}.") from error


def numpy_dtype_of(dtype: torch.dtype) -> numpy.dtype:
    """Translate a torch floating-point dtype into the NumPy dtype of the same precision."""
    return torch.empty((), dtype=dtype).numpy().dtype


def as_tensor(
    array: Tensor | numpy.ndarray,
    dtype: torch.dtype | None,
    device: torch.device | None,
    name: str = "input",
) -> Tensor:
    """Convert a tensor or NumPy array to ``dtype`` on ``device``.

    A precision change is announced with one ``UserWarning`` because it silently loses (or
    invents) digits otherwise. ``dtype=None`` and ``device=None`` keep the input's.

    Raises:
        TypeError: If ``array`` is neither a tensor nor a NumPy array.
    """
    if isinstance(array, numpy.ndarray):
        if array.dtype.kind in "iub":
            array = array.astype(numpy_dtype_of(dtype or torch.get_default_dtype()))
        tensor = torch.from_numpy(numpy.ascontiguousarray(array))
    elif isinstance(array, Tensor):
        tensor = array
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(array).__name__}.")
    if not (tensor.is_floating_point() or tensor.is_complex()):
        tensor = tensor.to(dtype or torch.get_default_dtype())
    if dtype is not None and tensor.dtype != dtype:
        warn(
            f"{name} is {str(tensor.dtype).removeprefix('torch.')}, while the linear operator is "
            f"{str(dtype).removeprefix('torch.')}. Converting to {str(dtype).removeprefix('torch.')}.",
            UserWarning,
            stacklevel=4,
        )
        tensor = tensor.to(dtype)
    return tensor if device is None else tensor.to(device)


def to_numpy(tensor: Tensor) -> numpy.ndarray:
    """Detach a tensor and return it as a NumPy array on the CPU."""
    return tensor.detach().cpu().numpy()
