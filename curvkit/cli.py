"""The ``curvkit`` command line: ``curvkit report [options]`` (see ``docs/report.md``).

Bad input (an option out of range, a ``--model`` that does not import or returns something
else than ``(model, loss_function, data)``) prints one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import torch

from curvkit.report import ReportInputError, ReportSettings, build_report, launch
from curvkit.report.settings import DEFAULT_BUDGET, DTYPES, QUICK_BUDGET

EXIT_BAD_INPUT = 2


class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``prog: message``), raised, not printed."""

    def error(self, message: str) -> None:
        raise ReportInputError(f"{message}.")


def parser() -> argparse.ArgumentParser:
    """The parser of ``curvkit report``'s options."""
    top = _OneLineParser(prog="curvkit", description="Curvature of PyTorch networks.")
    commands = top.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    report = commands.add_parser(
        "report",
        help="analyse a model's curvature and write a self-contained HTML page",
        description="Analyse a model's curvature (eigenvalues, traces, spectral densities, KFAC, sketches, "
        "dense matrices) and write index.html, metrics.json and the PNGs.",
    )
    report.add_argument(
        "--model",
        default="mlp",
        help="'mlp' (default) or 'cnn', trained briefly on scikit-learn's digits; or your own "
        "'package.module:function' / 'path/to/file.py:function' returning (model, loss_function, data)",
    )
    report.add_argument("--out", default="curvkit-report", help="output directory (default: curvkit-report/)")
    report.add_argument("--device", help="device to analyse on, e.g. cpu or cuda (default: the model's)")
    report.add_argument("--dtype", choices=list(DTYPES), help="float32 or float64 (default: the model's)")
    report.add_argument(
        "--seed", type=int, default=0, help="seed of training and of every estimate (default 0)"
    )
    report.add_argument("--params", help="regular expression selecting parameters by name (default: all)")
    report.add_argument("--top-k", type=int, default=8, help="number of top eigenvalues (default 8)")
    report.add_argument(
        "--budget",
        type=int,
        help=f"products with curvature operators the estimates share (default {DEFAULT_BUDGET}, "
        f"{QUICK_BUDGET} with --quick)",
    )
    report.add_argument(
        "--quick",
        action="store_true",
        help="shorter training, 512 images for the built-in models, a smaller budget",
    )
    report.add_argument("--no-dense", action="store_true", help="skip the dense matrices of small models")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``curvkit`` with ``argv`` (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 once the report is written (some analyses may have failed; the page
        says which), 2 for bad input.
    """
    try:
        args = parser().parse_args(argv)
        settings = ReportSettings(
            model=args.model,
            out=args.out,
            device=args.device,
            dtype=args.dtype,
            seed=args.seed,
            params=args.params,
            top_k=args.top_k,
            budget=args.budget,
            quick=args.quick,
            dense=not args.no_dense,
        )
        if settings.builtin and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(
                1
            )  # tiny models: a second thread saves little, and stalls on a busy machine
        index = build_report(settings)
    except ReportInputError as error:
        print(f"curvkit report: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if launch.rank() == 0:  # under torchrun, rank 0 wrote it
        print(f"The report is in {index.resolve()}")
    return 0
