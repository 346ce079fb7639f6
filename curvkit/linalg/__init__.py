"""Linear algebra on any operator with ``@`` and ``.shape``, in PyTorch on the operator's device.

- ``inverse/``: :class:`CGInverseLinearOperator`, :class:`NeumannInverseLinearOperator`,
  :class:`LSMRInverseLinearOperator`, :func:`damped`;
- ``trace/``: :func:`hutchinson_trace`, :func:`hutchpp_trace`, :func:`xtrace` and the classes
  :class:`HutchinsonTraceEstimator`, :class:`HutchPPTraceEstimator`;
- ``diagonal/``: :func:`hutchinson_diag`, :func:`xdiag`, :class:`HutchinsonDiagonalEstimator`;
- ``frobenius``: :func:`hutchinson_squared_fro`;
- ``spectrum/``: :func:`lanczos_approximate_spectrum`, :func:`lanczos_approximate_log_spectrum`
  and their cached classes;
- ``eigen/``: :func:`lanczos_eigsh`, :func:`power_iteration`;
- ``lanczos``: the Lanczos process the last two build on.

Randomized routines take ``seed`` (``int``, ``torch.Generator`` or ``None``, see
:mod:`curvkit.linalg._random`); functions return torch tensors on the operator's device, in its
dtype (spectral densities return NumPy arrays, as in the reference). Half-precision operators
(float16, bfloat16) multiply in their precision, while the routines compute and return in
float32. An object with only ``@`` and ``.shape`` (no ``dtype``) costs them one extra product,
with a zero block, that reveals its precision (:func:`curvkit.linalg._operator.linalg_operator`).
"""

from curvkit.linalg.diagonal import HutchinsonDiagonalEstimator, hutchinson_diag, xdiag
from curvkit.linalg.eigen import lanczos_eigsh, power_iteration
from curvkit.linalg.frobenius import hutchinson_squared_fro
from curvkit.linalg.inverse import (
    CGInverseLinearOperator,
    LSMRInverseLinearOperator,
    NeumannInverseLinearOperator,
    conjugate_gradient,
    damped,
    lsmr,
)
from curvkit.linalg.spectrum import (
    LanczosApproximateLogSpectrumCached,
    LanczosApproximateSpectrumCached,
    lanczos_approximate_log_spectrum,
    lanczos_approximate_spectrum,
)
from curvkit.linalg.trace import (
    HutchinsonTraceEstimator,
    HutchPPTraceEstimator,
    hutchinson_trace,
    hutchpp_trace,
    xtrace,
)

__all__ = [
    "CGInverseLinearOperator",
    "HutchPPTraceEstimator",
    "HutchinsonDiagonalEstimator",
    "HutchinsonTraceEstimator",
    "LSMRInverseLinearOperator",
    "LanczosApproximateLogSpectrumCached",
    "LanczosApproximateSpectrumCached",
    "NeumannInverseLinearOperator",
    "conjugate_gradient",
    "damped",
    "hutchinson_diag",
    "hutchinson_squared_fro",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos_approximate_log_spectrum",
    "lanczos_approximate_spectrum",
    "lanczos_eigsh",
    "lsmr",
    "power_iteration",
    "xdiag",
    "xtrace",
]
