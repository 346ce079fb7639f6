"""Trace estimation error vs number of products: Hutchinson, Hutch++, XTrace on MLP curvature.

Two studies, printed as Markdown tables, plotted to ``benchmarks/results/trace_estimation.png``:

1. **Exact errors** on the Hessian and GGN of an MLP 64-32-10 (D = 2,410; CE, mean; 4 batches of
   128 random samples; float64). The exact trace comes from the dense matrix (``to_dense``, i.e.
   D products in blocks). The estimators then run on that dense matrix: they only see products,
   so their errors are those they would have on the operator (up to rounding), at a fraction of
   the time. Mean relative error over ``--seeds`` seeds per budget.
2. **The MLP 784-256-256-10** of ``benchmarks/problems.py`` (D = 269,322; CE, mean; 4 batches of
   128; float32), where no exact trace is affordable: all three estimators are unbiased, so the
   relative standard deviation of the estimates over seeds is their relative RMS error. Products
   run on the real operators (one block product per block); the wall time per estimate is given.

Usage::

    python benchmarks/trace_estimation.py            # a few minutes on 2 cores
    python benchmarks/trace_estimation.py --quick    # smaller budgets and fewer seeds
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy
import torch
from torch import nn

from curvkit import GGNLinearOperator, HessianLinearOperator
from curvkit.linalg import hutchinson_trace, hutchpp_trace, xtrace

ESTIMATORS = {"Hutchinson": hutchinson_trace, "Hutch++": hutchpp_trace, "XTrace": xtrace}
OPERATORS = {"Hessian": HessianLinearOperator, "GGN": GGNLinearOperator}
RESULTS = Path(__file__).parent / "results"


def mlp_problem(widths: list[int], dtype: torch.dtype, num_batches: int = 4, batch_size: int = 128):
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for d_in, d_out in itertools.pairwise(widths):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).to(dtype)
    data = [
        (torch.randn(batch_size, widths[0], dtype=dtype), torch.randint(0, widths[-1], (batch_size,)))
        for _ in range(num_batches)
    ]
    params = [p for p in model.parameters() if p.requires_grad]
    return model, nn.CrossEntropyLoss(), params, data


def build(kind: str, problem) -> torch.Tensor:
    model, loss_func, params, data = problem
    return OPERATORS[kind](model, loss_func, params, data, check_deterministic=False)


def exact_study(budgets: list[int], seeds: int) -> dict[str, dict[str, list[float]]]:
    problem = mlp_problem([64, 32, 10], torch.float64)
    errors: dict[str, dict[str, list[float]]] = {}
    for kind in OPERATORS:
        dense = build(kind, problem).to_dense()
        exact = float(dense.trace())
        errors[kind] = {
            name: [
                statistics.mean(
                    abs(float(estimator(dense, m, seed=s)) - exact) / abs(exact) for s in range(seeds)
                )
                for m in budgets
            ]
            for name, estimator in ESTIMATORS.items()
        }
        print(f"\n### {kind} of MLP 64-32-10 (D = {dense.shape[0]:,}, exact trace {exact:.6g})\n")
        print("| products | " + " | ".join(f"{name} rel. error" for name in ESTIMATORS) + " |")
        print("|---:|" + "---:|" * len(ESTIMATORS))
        for i, m in enumerate(budgets):
            print(f"| {m} | " + " | ".join(f"{errors[kind][name][i]:.2e}" for name in ESTIMATORS) + " |")
    return errors


def large_study(budgets: list[int], seeds: int) -> dict[str, dict[str, list[float]]]:
    problem = mlp_problem([784, 256, 256, 10], torch.float32)
    spreads: dict[str, dict[str, list[float]]] = {}
    for kind in OPERATORS:
        operator = build(kind, problem)
        spreads[kind] = {name: [] for name in ESTIMATORS}
        print(f"\n### {kind} of MLP 784-256-256-10 (D = {operator.shape[0]:,}), {seeds} seeds\n")
        print("| products | estimator | mean estimate | rel. std (= rel. RMS error) | s per estimate |")
        print("|---:|---|---:|---:|---:|")
        for m in budgets:
            for name, estimator in ESTIMATORS.items():
                start = time.perf_counter()
                estimates = [float(estimator(operator, m, seed=s)) for s in range(seeds)]
                seconds = (time.perf_counter() - start) / seeds
                mean = statistics.mean(estimates)
                spread = statistics.stdev(estimates) / abs(mean)
                spreads[kind][name].append(spread)
                print(f"| {m} | {name} | {mean:.5g} | {spread:.2e} | {seconds:.2f} |")
    return spreads


def plot(budgets, errors, large_budgets, spreads, path: Path) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, kind in zip(axes, OPERATORS):
        for (name, values), color in zip(errors[kind].items(), ("C0", "C1", "C2")):
            ax.loglog(budgets, values, "o-", color=color, label=f"{name} (64-32-10, exact error)")
            ax.loglog(
                large_budgets,
                spreads[kind][name],
                "s--",
                color=color,
                alpha=0.6,
                label=f"{name} (784-256-256-10, rel. std)",
            )
        reference = numpy.array(budgets, dtype=float)
        ax.loglog(
            reference,
            errors[kind]["Hutchinson"][0] * (reference[0] / reference) ** 0.5,
            "k:",
            lw=1,
            label="∝ 1/√m",
        )
        ax.loglog(
            reference, errors[kind]["Hutch++"][0] * reference[0] / reference, "k-.", lw=1, label="∝ 1/m"
        )
        ax.set_title(f"{kind} of an MLP (CE, 4×128 samples)")
        ax.set_xlabel("number of products m")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("relative error of the trace estimate")
    axes[1].legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer budgets and seeds")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--plot", type=Path, default=RESULTS / "trace_estimation.png", help="PNG path")
    args = parser.parse_args()
    budgets = [12, 24, 48, 96, 192] if args.quick else [12, 24, 48, 96, 192, 384, 768]
    large_budgets = [12, 48] if args.quick else [12, 48, 96]
    seeds = args.seeds or (5 if args.quick else 20)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    errors = exact_study(budgets, seeds)
    spreads = large_study(large_budgets, max(3, seeds // 4))
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(budgets, errors, large_budgets, spreads, args.plot)
    print(f"\nPlot: {args.plot}")


if __name__ == "__main__":
    main()
