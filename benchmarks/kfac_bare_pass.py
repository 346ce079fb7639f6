"""A bare KFAC factor pass for the benchmark MLP, beside curvkit's: how low a pass can go in torch.

Written for this one network (``nn.Sequential`` of ``nn.Linear`` and ``nn.ReLU``, cross-entropy
with a mean, weights and biases apart): the forward pass without autograd, one sampled target
per datum (``torch.multinomial``), the sampled gradients pulled back by hand, the Gram products
of the layers' inputs and output gradients, scaled and made symmetric. Nothing is checked and
nothing else is supported: what is left of curvkit's time above it is what its generality and
checks cost. Two variants: curvkit's own Gram sums (strips of the lower triangle, then the
mirror), and whole Gram products. The pass with the observed targets ('empirical') is checked
against curvkit's factors before anything is timed.

Usage::

    python benchmarks/kfac_bare_pass.py [--rounds 30] [--output benchmarks/results/kfac_bare_pass.md]
    python benchmarks/kfac_bare_pass.py --quick     # smoke run: data / 8, three rounds
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from problems import PROBLEM_LABELS, gradient_function, make_problem
from torch import nn

from curvkit import KFACLinearOperator
from curvkit.operators._gram_sums import add_gram
from curvkit.structured._factors import symmetrize_


def bare_factors(model: nn.Sequential, data, sampled: bool, triangle: bool) -> list[tuple]:
    """``(G, A)`` of each linear layer (``A`` of its inputs, ``G`` of its output gradients)."""
    layers = [module for module in model if isinstance(module, nn.Linear)]
    inputs_sums, gradient_sums, rows = [None] * len(layers), [None] * len(layers), 0

    def add(sums, index, x):
        if triangle:
            sums[index] = add_gram(sums[index], x)
        else:
            sums[index] = x.T @ x if sums[index] is None else sums[index].addmm_(x.T, x)

    with torch.no_grad():
        for X, y in data:
            inputs, pre_activations = [], []
            x = X
            for layer in layers:
                inputs.append(x)
                x = nn.functional.linear(x, layer.weight, layer.bias)
                pre_activations.append(x)
                x = x.relu()
            probabilities = pre_activations[-1].softmax(1)
            targets = torch.multinomial(probabilities, 1).squeeze(1) if sampled else y
            gradient = probabilities
            gradient[torch.arange(len(targets)), targets] -= 1.0  # per-datum gradient of ℓ_n
            for index in reversed(range(len(layers))):
                add(inputs_sums, index, inputs[index])
                add(gradient_sums, index, gradient)
                if index:
                    gradient = (gradient @ layers[index].weight).mul_(pre_activations[index - 1] > 0)
            rows += len(X)
    scale = 1.0 / rows
    if triangle:
        return [
            (symmetrize_(g, mean=False, scale=scale), symmetrize_(a, mean=False, scale=scale))
            for g, a in zip(gradient_sums, inputs_sums)
        ]
    return [(g.mul_(scale), a.mul_(scale)) for g, a in zip(gradient_sums, inputs_sums)]


def check_against_curvkit(model, loss_func, params, data) -> float:
    """Largest relative difference of the bare 'empirical' factors from curvkit's."""
    kfac = KFACLinearOperator(model, loss_func, params, data, fisher_type="empirical")
    theirs = [(block.output_factor, block.input_factor) for block in kfac.factored.blocks[::2]]
    worst = 0.0
    for triangle in (True, False):
        for mine, reference in zip(bare_factors(model, data, False, triangle), theirs):
            for factor, expected in zip(mine, reference):
                worst = max(worst, float((factor - expected).abs().max() / expected.abs().max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (medians)")
    parser.add_argument("--quick", action="store_true", help="smoke run: data / 8, three rounds")
    parser.add_argument("--output", default=None, help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, loss_func, params, data = make_problem("mlp", torch.device("cpu"), args.quick)
    difference = check_against_curvkit(model, loss_func, params, data)
    assert difference < 1e-5, f"the bare pass's factors are not curvkit's: {difference:.1e}"

    def curvkit_factors(fisher_type: str):
        return lambda: KFACLinearOperator(
            model, loss_func, params, data, check_deterministic=False, fisher_type=fisher_type
        ).compute_kronecker_factors()

    timed = {
        "gradient": gradient_function(model, loss_func, params, data),
        "curvkit 'mc'": curvkit_factors("mc"),
        "bare 'mc': Gram sums in strips, mirrored": lambda: bare_factors(model, data, True, True),
        "bare 'mc': whole Gram products": lambda: bare_factors(model, data, True, False),
        "curvkit 'empirical'": curvkit_factors("empirical"),
        "bare 'empirical': Gram sums in strips, mirrored": lambda: bare_factors(model, data, False, True),
    }
    rounds = 3 if args.quick else args.rounds
    times = {name: [] for name in timed}
    for function in timed.values():
        function()  # warm-up
    for _ in range(rounds):
        for name, function in timed.items():
            start = time.process_time()
            function()
            times[name].append(time.process_time() - start)
    gradient = statistics.median(times["gradient"])
    lines = [
        "## A bare KFAC factor pass beside curvkit's",
        "",
        f"{PROBLEM_LABELS['mlp']}{' (quick: data / 8)' if args.quick else ''}; one thread, CPU time, "
        f"median of {rounds} interleaved rounds; the bare 'empirical' factors equal curvkit's to "
        f"{difference:.1e}.",
        "",
        "| pass | ms | × one gradient |",
        "|---|---:|---:|",
    ]
    for name, samples in times.items():
        median = statistics.median(samples)
        lines.append(f"| {name} | {1e3 * median:.2f} | {median / gradient:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        with open(args.output, "w") as file:
            file.write(table + "\n")


if __name__ == "__main__":
    main()
