"""curvlinops 3.0.1's module paths under ``curvkit``: ``from curvkit.kfac import KFACLinearOperator``.

Code written for curvlinops imports some names from the modules that define them there (its own
documentation does: ``from curvlinops.papyan2020traces.spectrum import ...``); curvkit's
modules are laid out otherwise. These paths are aliases, created when first imported, holding
the names curvlinops defines in them, taken from curvkit's top level. Nothing in curvkit imports
them, and they do not exist until imported (``dir(curvkit)`` does not list them).
"""

from __future__ import annotations

import sys
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType

NAMES_BY_PATH = {
    "diagonal.epperly2024xtrace": ("xdiag",),
    "diagonal.hutchinson": ("hutchinson_diag",),
    "ekfac": ("EKFACLinearOperator",),
    "fisher": ("FisherMCLinearOperator",),
    "ggn": ("GGNLinearOperator",),
    "gradient_moments": ("EFLinearOperator",),
    "hessian": ("HessianLinearOperator",),
    "inverse": (
        "CGInverseLinearOperator",
        "KFACInverseLinearOperator",
        "LSMRInverseLinearOperator",
        "NeumannInverseLinearOperator",
    ),
    "jacobian": ("JacobianLinearOperator", "TransposedJacobianLinearOperator"),
    "kfac": ("FisherType", "KFACLinearOperator", "KFACType"),
    "norm.hutchinson": ("hutchinson_squared_fro",),
    "papyan2020traces.spectrum": (
        "LanczosApproximateLogSpectrumCached",
        "LanczosApproximateSpectrumCached",
        "lanczos_approximate_log_spectrum",
        "lanczos_approximate_spectrum",
    ),
    "trace.epperly2024xtrace": ("xtrace",),
    "trace.hutchinson": ("hutchinson_trace",),
    "trace.meyer2020hutch": ("hutchpp_trace",),
}
"""The public names of curvlinops 3.0.1's modules, by path below the package."""

PACKAGES = frozenset(path.rpartition(".")[0] for path in NAMES_BY_PATH if "." in path)


class CurvlinopsPaths(MetaPathFinder, Loader):
    """Finds ``curvkit.<path>`` for the paths of :data:`NAMES_BY_PATH` (and their packages)."""

    def find_spec(self, fullname: str, path=None, target=None) -> ModuleSpec | None:
        package, _, relative = fullname.partition(".")
        if package != "curvkit" or (relative not in NAMES_BY_PATH and relative not in PACKAGES):
            return None
        return ModuleSpec(fullname, self, is_package=relative in PACKAGES)

    def create_module(self, spec: ModuleSpec) -> None:
        return None  # a plain module

    def exec_module(self, module: ModuleType) -> None:
        relative = module.__name__.partition(".")[2]
        names = NAMES_BY_PATH.get(relative, ())
        curvkit = sys.modules["curvkit"]
        module.__doc__ = f"curvlinops' ``curvlinops.{relative}``: names from curvkit's top level."
        module.__all__ = list(names)
        for name in names:
            setattr(module, name, getattr(curvkit, name))


def install() -> None:
    """Put :class:`CurvlinopsPaths` last on ``sys.meta_path`` (once): curvkit's own modules come first."""
    if not any(isinstance(finder, CurvlinopsPaths) for finder in sys.meta_path):
        sys.meta_path.append(CurvlinopsPaths())
