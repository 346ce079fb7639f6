"""The one place where NumPy and SciPy meet PyTorch.

Everything inside curvkit computes on torch tensors on the operator's device. Inputs that
arrive as NumPy arrays, NumPy scalars or dimensions (or tensors of another dtype) are
converted here, results go back to the caller's kind of array here, and SciPy views of
operators are built here.

curvkit's operators are real (curvature matrices are real), so complex dtypes are refused
with a ``TypeError`` rather than silently losing an imaginary part. NumPy has no ``bfloat16``
(nor float8 types): tensors of those dtypes leave as float32 arrays, which hold them exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Complex, Integral, Real
from typing import Any
from warnings import warn

import numpy
import torch
from scipy.sparse.linalg import LinearOperator as ScipyLinearOperator
from torch import Tensor

_NUMPY_TO_TORCH = {
    numpy.dtype("float16"): torch.float16,
    numpy.dtype("float32"): torch.float32,
    numpy.dtype("float64"): torch.float64,
}
_TORCH_TO_NUMPY = {torch_dtype: numpy_dtype for numpy_dtype, torch_dtype in _NUMPY_TO_TORCH.items()}


def _refuse_complex(what: str) -> TypeError:
    return TypeError(
        f"{what}, but curvkit's linear operators are real (curvature matrices are real) and do not "
        "support complex numbers. For a complex x = u + iv, multiply u and v separately."
    )


def torch_dtype_of(dtype: Any) -> torch.dtype:
    """Translate a NumPy (or torch) dtype into the torch dtype that computes with it.

    Integer and boolean dtypes compute in torch's default floating dtype, as integer arrays do.

    Raises:
        TypeError: If the dtype is complex or neither floating-point, integer nor boolean.
    """
    if isinstance(dtype, torch.dtype):
        if dtype.is_complex:
            raise _refuse_complex(f"dtype is {dtype}")
        return dtype if dtype.is_floating_point else torch.get_default_dtype()
    try:
        dtype = numpy.dtype(dtype)
    except TypeError as error:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype!r}.") from error
    if dtype.kind == "c":
        raise _refuse_complex(f"dtype is {dtype}")
    if dtype.kind in "iub":
        return torch.get_default_dtype()
    if dtype not in _NUMPY_TO_TORCH:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype!r}.")
    return _NUMPY_TO_TORCH[dtype]


def numpy_dtype_of(dtype: torch.dtype) -> numpy.dtype:
    """The NumPy dtype of a torch floating-point dtype; float32 for those NumPy lacks (bfloat16)."""
    return _TORCH_TO_NUMPY.get(dtype, numpy.dtype("float32"))


def as_integer(value: Any, name: str, minimum: int | None = None) -> int:
    """Return ``value`` as an ``int`` if it is an integer ``≥ minimum``.

    The one check of integer arguments (dimensions, counts, seeds) everywhere in curvkit. NumPy
    integers count, and so does a one-element integer tensor (``torch.tensor(3)``, as curvlinops
    takes it); its value is read on the host.

    Raises:
        ValueError: For anything else, booleans included, naming ``name``.
    """
    if isinstance(value, Tensor) and value.numel() == 1:
        # an integer tensor's value; a bool tensor gives a bool and a float one a float, refused below
        value = value.item()
    too_small = minimum is not None and isinstance(value, Integral) and value < minimum
    if isinstance(value, bool) or not isinstance(value, Integral) or too_small:
        kind = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer ≥ {minimum}"
        )
        raise ValueError(f"{name} must be {kind}, got {value!r}.")
    return int(value)


def nonnegative_float(value: Any, name: str) -> float:
    """Return ``value`` as a float if it is a finite real number ``≥ 0``.

    Raises:
        ValueError: Otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < float("inf"):
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}.")
    return float(value)


def as_tensor(
    array: Tensor | numpy.ndarray,
    dtype: torch.dtype | None,
    device: torch.device | None,
    name: str = "input",
) -> Tensor:
    """Convert a tensor or NumPy array to ``dtype`` on ``device``.

    One rule for every input of another dtype than ``dtype``, floating-point, integer or
    boolean: it is converted with one ``UserWarning``, because the conversion silently loses
    (or invents) digits otherwise (an int64 above 2²⁴ has no float32). ``dtype=None`` and
    ``device=None`` keep the input's; with ``dtype=None``, integer and boolean data (a matrix
    or diagonal that defines an operator) becomes torch's default dtype without a warning, as
    integer arrays compute in it. A read-only array is copied (torch cannot share memory it may
    not write).

    Raises:
        TypeError: If ``array`` is neither a tensor nor a NumPy array, or is complex.
    """
    if isinstance(array, numpy.ndarray):
        if not array.flags.writeable:
            array = numpy.array(array, order="C")
        tensor = torch.from_numpy(numpy.ascontiguousarray(array))
    elif isinstance(array, Tensor):
        tensor = array
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(array).__name__}.")
    if tensor.is_complex():
        raise _refuse_complex(f"{name} is {str(tensor.dtype).removeprefix('torch.')}")
    if dtype is None and not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    if dtype is not None and tensor.dtype != dtype:
        # attributed to this line, not the caller's: Python then shows it once per process (as
        # the seed tutorials show it), not once per line of user code that multiplies
        warn(
            f"{name} is {str(tensor.dtype).removeprefix('torch.')}, while the linear operator is "
            f"{str(dtype).removeprefix('torch.')}. Converting to {str(dtype).removeprefix('torch.')}.",
            UserWarning,
            stacklevel=1,
        )
        tensor = tensor.to(dtype)
    return tensor if device is None else tensor.to(device)


def to_numpy(tensor: Tensor) -> numpy.ndarray:
    """Detach a tensor and return it as a NumPy array on the CPU (bfloat16 becomes float32)."""
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point() and tensor.dtype not in _TORCH_TO_NUMPY:
        tensor = tensor.to(_NUMPY_TO_TORCH[numpy_dtype_of(tensor.dtype)])
    return tensor.numpy()


def real_scalar(value: Any) -> float | None:
    """``value`` as a float if it is a real scalar (number, 0-d tensor or array); ``None`` if no number.

    Raises:
        TypeError: For complex numbers and for tensors or arrays with ``ndim ≥ 1`` (one entry too).
    """
    if isinstance(value, (Tensor, numpy.ndarray)):
        if value.ndim != 0:
            raise TypeError(
                "An operator can be scaled by a scalar (a number or a 0-d tensor or array) only, got a "
                f"{type(value).__name__} of shape {list(value.shape)}. Use @ for products."
            )
        value = value.item()
    if isinstance(value, Complex) and not isinstance(value, Real):
        raise _refuse_complex(f"scalar is {value!r}")
    return float(value) if isinstance(value, Real) else None


def scipy_view(
    shape: tuple[int, int],
    dtype: torch.dtype | None,
    device: torch.device | None,
    product: Callable[[Tensor, bool], Tensor],
    view_dtype: Any = None,
) -> ScipyLinearOperator:
    """A SciPy operator computing ``product(x, transpose)`` in ``dtype`` on ``device``.

    The view's dtype is ``view_dtype`` if given (a NumPy floating-point dtype), else ``dtype``
    in NumPy (float64 if ``None``); a product returns ``numpy.result_type(x.dtype,
    view.dtype)``, as a NumPy matrix would. Returning float32 for float64 vectors instead makes
    SciPy's solvers carry float32 scalars, which NumPy 2 then combines with their float64
    constants in float32: ``lsmr`` (its ``minrbar = 1e100``) warns ``overflow encountered in
    cast`` and reports ``condA = inf``.

    Raises:
        ValueError: If ``view_dtype`` is not a real floating-point NumPy dtype.
    """
    if view_dtype is not None:
        given = view_dtype
        try:
            view_dtype = numpy.dtype(given)
        except TypeError:
            view_dtype = None
        if view_dtype is None or view_dtype.kind != "f":
            raise ValueError(f"dtype must be a real floating-point NumPy dtype or None, got {given!r}.")
    else:
        view_dtype = numpy.dtype("float64") if dtype is None else numpy_dtype_of(dtype)

    def apply(x: Any, transpose: bool) -> numpy.ndarray:
        x = numpy.asarray(x)
        result_dtype = numpy.result_type(x.dtype, view_dtype)
        tensor = as_tensor(x.astype(result_dtype, copy=False), None, device, name="x")
        result = product(tensor.to(dtype or tensor.dtype), transpose)
        return to_numpy(result).astype(result_dtype, copy=False)

    return ScipyLinearOperator(
        shape=shape,
        dtype=view_dtype,
        matvec=lambda x: apply(x, transpose=False),
        rmatvec=lambda x: apply(x, transpose=True),
        matmat=lambda X: apply(X, transpose=False),
        rmatmat=lambda X: apply(X, transpose=True),
    )
