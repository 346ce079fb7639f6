"""Tests of ``curvkit.examples.utils.report_nonclose`` and ``curvkit.utils.allclose_report``."""

from __future__ import annotations

import numpy
import pytest
import torch

from curvkit.examples.utils import report_nonclose
from curvkit.utils import allclose_report


@pytest.mark.parametrize("kind", ["numpy", "torch", "mixed"])
def test_report_nonclose_match(kind: str, capsys: pytest.CaptureFixture):
    a = numpy.linspace(0, 1, 6).reshape(2, 3)
    b = a + 1e-12
    if kind in ("torch", "mixed"):
        a = torch.from_numpy(a)
    if kind == "torch":
        b = torch.from_numpy(b)
    report_nonclose(a, b)
    assert capsys.readouterr().out == "Compared arrays match.\n"


def test_report_nonclose_float32_against_float64(capsys: pytest.CaptureFixture):
    """The tutorials compare float32 operator results against float64 products."""
    a = numpy.random.default_rng(0).random(5).astype(numpy.float32)
    report_nonclose(a, a.astype(numpy.float64))
    assert "match" in capsys.readouterr().out


def test_report_nonclose_mismatch(capsys: pytest.CaptureFixture):
    a = numpy.zeros((2, 2))
    b = numpy.array([[0.0, 1.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match=r"Compared arrays don't match\."):
        report_nonclose(a, b, name1="mine", name2="theirs")
    out = capsys.readouterr().out
    assert "1 of 4 entries differ" in out
    assert "at [0, 1]: mine=0.000000e+00, theirs=1.000000e+00" in out


def test_report_nonclose_shape_mismatch(capsys: pytest.CaptureFixture):
    with pytest.raises(ValueError, match="don't match"):
        report_nonclose(numpy.zeros(3), numpy.zeros(4))
    assert "Shapes differ" in capsys.readouterr().out


def test_report_nonclose_tolerances_and_nan():
    report_nonclose(numpy.array([1.0]), numpy.array([1.1]), rtol=0.2)
    with pytest.raises(ValueError):
        report_nonclose(numpy.array([1.0]), numpy.array([1.1]), rtol=0.01)
    report_nonclose(numpy.array([numpy.nan]), numpy.array([numpy.nan]), equal_nan=True)
    with pytest.raises(ValueError):
        report_nonclose(numpy.array([numpy.nan]), numpy.array([numpy.nan]))


def test_allclose_report_match(capsys: pytest.CaptureFixture):
    assert allclose_report(torch.eye(3), torch.eye(3, dtype=torch.float64))
    assert capsys.readouterr().out == ""


def test_allclose_report_mismatch(capsys: pytest.CaptureFixture):
    a = torch.arange(30.0).reshape(5, 6)
    b = a + 1.0
    assert not allclose_report(a, b, rtol=0, atol=0.5)
    out = capsys.readouterr().out
    assert "30 of 30 entries differ" in out
    assert "... and 10 more." in out
    assert "at [0, 0]: tensor1=0.000000e+00, tensor2=1.000000e+00" in out
    assert "max |tensor1 - tensor2| = 1.000e+00" in out
