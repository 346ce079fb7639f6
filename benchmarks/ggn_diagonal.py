"""Time of the exact GGN diagonal as a multiple of one gradient, with and without factored layers.

``ggn_diagonal(mode='exact')`` on the benchmark problems (``benchmarks/problems.py``): ``nn.Linear``
layers applied once to one row per sample take the factored path (one batched backward pass to
the layer outputs, one matrix product per layer); the row "per-sample only" forces every
parameter through per-sample vector-Jacobian products under ``vmap``, as before the factored
path existed. Median of 3 after a warm-up; gradient: plain autograd over the same data;
``check_deterministic=False``, as for the operators in ``products.py`` (the probe's two passes
over the data add about one gradient).

Usage::

    python benchmarks/ggn_diagonal.py
"""

from __future__ import annotations

import importlib
from functools import partial

import torch
from measure import median_time
from problems import PROBLEM_LABELS, PROBLEMS, gradient_function, make_problem

from curvkit.operators.ggn_diagonal import ggn_diagonal

CPU = torch.device("cpu")
module = importlib.import_module("curvkit.operators.ggn_diagonal")  # the name is also the function's


def main() -> None:
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads, float32\n")
    print("| problem | factored (× gradient) | per-sample only (× gradient) |")
    print("|---|---:|---:|")
    factored_layers = module.linear_layers
    for problem in PROBLEMS:
        model, loss_func, params, data = make_problem(problem, CPU, quick=False)
        gradient = median_time(gradient_function(model, loss_func, params, data), CPU, repeats=7)
        ratios = []
        for layers in (factored_layers, lambda model, tensors: []):
            module.linear_layers = layers
            diagonal = partial(ggn_diagonal, model, loss_func, params, data, check_deterministic=False)
            ratios.append(median_time(diagonal, CPU) / gradient)
        module.linear_layers = factored_layers
        print(f"| {PROBLEM_LABELS[problem]} | {ratios[0]:.1f} | {ratios[1]:.1f} |")


if __name__ == "__main__":
    main()
