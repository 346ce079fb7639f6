"""curvkit: curvature matrices of neural networks as PyTorch-native linear operators.

Operators (:mod:`curvkit.operators`) multiply with the Hessian, GGN, MC-Fisher, empirical
Fisher and Jacobians of a model on a data set; :mod:`curvkit.linalg` holds the randomized
linear algebra that works on them (and on any tensor, NumPy array or SciPy operator);
:mod:`curvkit.structured` the structured operators with closed forms (identity, diagonal,
Kronecker products, block diagonals) and KFAC's / EKFAC's algebra on given factors.
"""

from curvkit import _curvlinops_paths
from curvkit.linalg import (
    CGInverseLinearOperator,
    HutchinsonDiagonalEstimator,
    HutchinsonTraceEstimator,
    HutchPPTraceEstimator,
    LanczosApproximateLogSpectrumCached,
    LanczosApproximateSpectrumCached,
    LSMRInverseLinearOperator,
    NeumannInverseLinearOperator,
    damped,
    hutchinson_diag,
    hutchinson_squared_fro,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_approximate_log_spectrum,
    lanczos_approximate_spectrum,
    lanczos_eigsh,
    power_iteration,
    xdiag,
    xtrace,
)
from curvkit.linear_operator import LinearOperator, as_linear_operator
from curvkit.operators import (
    EFLinearOperator,
    EKFACLinearOperator,
    FisherMCLinearOperator,
    FisherType,
    GGNDiagonalLinearOperator,
    GGNLinearOperator,
    HessianLinearOperator,
    JacobianLinearOperator,
    KFACInverseLinearOperator,
    KFACLinearOperator,
    KFACType,
    TransposedJacobianLinearOperator,
    ggn_diagonal,
)
from curvkit.structured import (
    BlockDiagonalLinearOperator,
    DiagonalLinearOperator,
    EigenKroneckerLinearOperator,
    IdentityLinearOperator,
    KroneckerLinearOperator,
)
from curvkit.submatrix import SubmatrixLinearOperator

__version__ = "0.1.0"

_curvlinops_paths.install()  # curvlinops' module paths, e.g. curvkit.kfac, as aliases

__all__ = [
    "BlockDiagonalLinearOperator",
    "CGInverseLinearOperator",
    "DiagonalLinearOperator",
    "EFLinearOperator",
    "EKFACLinearOperator",
    "EigenKroneckerLinearOperator",
    "FisherMCLinearOperator",
    "FisherType",
    "GGNDiagonalLinearOperator",
    "GGNLinearOperator",
    "HessianLinearOperator",
    "HutchPPTraceEstimator",
    "HutchinsonDiagonalEstimator",
    "HutchinsonTraceEstimator",
    "IdentityLinearOperator",
    "JacobianLinearOperator",
    "KFACInverseLinearOperator",
    "KFACLinearOperator",
    "KFACType",
    "KroneckerLinearOperator",
    "LSMRInverseLinearOperator",
    "LanczosApproximateLogSpectrumCached",
    "LanczosApproximateSpectrumCached",
    "LinearOperator",
    "NeumannInverseLinearOperator",
    "SubmatrixLinearOperator",
    "TransposedJacobianLinearOperator",
    "as_linear_operator",
    "damped",
    "ggn_diagonal",
    "hutchinson_diag",
    "hutchinson_squared_fro",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos_approximate_log_spectrum",
    "lanczos_approximate_spectrum",
    "lanczos_eigsh",
    "power_iteration",
    "xdiag",
    "xtrace",
]
