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
    python benchmarks/ggn_diagonal.py --device cuda
"""

from __future__ import annotations

import argparse
import importlib
from functools import partial

import torch
from measure import median_time
from problems import PROBLEM_LABELS, PROBLEMS, gradient_function, make_problem

from curvkit.operators.ggn_diagonal import ggn_diagonal

module = importlib.import_module("curvkit.operators.ggn_diagonal")  # the name is also the function's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    device = torch.device(parser.parse_args().device)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"torch {torch.__version__}, {where}, float32\n")
    print("| problem | factored (× gradient) | per-sample only (× gradient) |")
    print("|---|---:|---:|")
    factored_layers = module.linear_layers
    for problem in PROBLEMS:
        model, loss_func, params, data = make_problem(problem, device, quick=False)
        gradient = median_time(gradient_function(model, loss_func, params, data), device, repeats=7)
        ratios = []
        for layers in (factored_layers, lambda model, tensors: []):
            module.linear_layers = layers
            diagonal = partial(ggn_diagonal, model, loss_func, params, data, check_deterministic=False)
            ratios.append(median_time(diagonal, device) / gradient)
        module.linear_layers = factored_layers
        print(f"| {PROBLEM_LABELS[problem]} | {ratios[0]:.1f} | {ratios[1]:.1f} |")


if __name__ == "__main__":
    main()
