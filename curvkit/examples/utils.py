"""Comparison helper used by the tutorials (``from curvkit.examples.utils import report_nonclose``)."""

from __future__ import annotations

from typing import Any

from curvkit.utils import report_mismatches


def report_nonclose(
    array1: Any,
    array2: Any,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    equal_nan: bool = False,
    name1: str = "array1",
    name2: str = "array2",
) -> None:
    """Print whether two arrays match; print their mismatching entries and raise if they do not.

    Entries are close if ``|a1 - a2| <= atol + rtol * |a2|``; see
    :func:`curvkit.utils.report_mismatches`.

    Args:
        array1: NumPy array or tensor.
        array2: NumPy array or tensor, of the same shape.
        rtol: Relative tolerance.
        atol: Absolute tolerance.
        equal_nan: Whether two NaNs count as close.
        name1: Name of ``array1`` in the report.
        name2: Name of ``array2`` in the report.

    Raises:
        ValueError: If the arrays do not match.

    Example:
        >>> import numpy
        >>> report_nonclose(numpy.ones(2), numpy.ones(2))
        Compared arrays match.
    """
    if not report_mismatches(
        array1, array2, rtol=rtol, atol=atol, equal_nan=equal_nan, name1=name1, name2=name2
    ):
        raise ValueError("Compared arrays don't match.")
    print("Compared arrays match.")
