"""curvlinops 3.0.1's module paths import under ``curvkit`` (``from curvkit.kfac import ...``)."""

from __future__ import annotations

import importlib

import pytest

import curvkit
from curvkit._curvlinops_paths import NAMES_BY_PATH, PACKAGES


@pytest.mark.parametrize("path", sorted(NAMES_BY_PATH))
def test_each_path_holds_curvkits_objects_under_curvlinops_names(path):
    module = importlib.import_module(f"curvkit.{path}")
    assert module.__all__ == list(NAMES_BY_PATH[path])
    for name in NAMES_BY_PATH[path]:
        assert getattr(module, name) is getattr(curvkit, name)


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_their_packages_import_too(package):
    assert importlib.import_module(f"curvkit.{package}").__path__ == []


def test_from_imports_as_curvlinops_documentation_writes_them():
    from curvkit.papyan2020traces.spectrum import LanczosApproximateSpectrumCached
    from curvkit.trace.meyer2020hutch import hutchpp_trace

    assert LanczosApproximateSpectrumCached is curvkit.LanczosApproximateSpectrumCached
    assert hutchpp_trace is curvkit.hutchpp_trace


@pytest.mark.parametrize("path", ["nothing", "trace.nothing", "kfac_utils"])
def test_other_paths_do_not_exist(path):
    with pytest.raises(ModuleNotFoundError, match=f"curvkit.{path}"):
        importlib.import_module(f"curvkit.{path}")


def test_curvkits_own_modules_come_first():
    """``curvkit.submatrix`` and ``curvkit.utils`` exist in both: curvkit's files, not aliases."""
    assert importlib.import_module("curvkit.submatrix").__file__.endswith("submatrix.py")
    assert importlib.import_module("curvkit.utils").__file__.endswith("utils.py")
