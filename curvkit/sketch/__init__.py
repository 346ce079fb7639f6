"""Sketched eigendecompositions and SVDs with an a-posteriori error certificate.

The import paths of skerch are thin re-exports of this package's modules:
``curvkit.sketch.algorithms`` (:func:`seigh`, :func:`ssvd`), ``.a_posteriori``
(:func:`apost_error`, :func:`apost_error_bounds`, :func:`scree_bounds`), ``.linops``
(:class:`CompositeLinOp`, :class:`DiagonalLinOp`, :class:`SSRFTLinOp`) and ``.utils``
(:func:`gaussian_noise`, :func:`rademacher_noise`). Beyond skerch: :func:`adaptive_seigh`,
power iterations (``seigh(..., power_iters=q)``) and the number of products of each call
(``.num_products`` of the returned tuple). Guide: ``docs/sketch.md``.
"""

from curvkit.sketch.adaptive import adaptive_seigh
from curvkit.sketch.composite import CompositeLinOp, DiagonalLinOp
from curvkit.sketch.eigh import seigh
from curvkit.sketch.error import apost_error, apost_error_bounds, scree_bounds
from curvkit.sketch.noise import gaussian_noise, rademacher_noise
from curvkit.sketch.ssrft import SSRFTLinOp
from curvkit.sketch.svd import ssvd

__all__ = [
    "CompositeLinOp",
    "DiagonalLinOp",
    "SSRFTLinOp",
    "adaptive_seigh",
    "apost_error",
    "apost_error_bounds",
    "gaussian_noise",
    "rademacher_noise",
    "scree_bounds",
    "seigh",
    "ssvd",
]
