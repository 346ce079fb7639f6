"""KFAC's algebra: its products against the bare per-layer factor multiplications they consist of.

For the factor shapes of ``products.py``'s MLP and CNN (random PSD factors; the data does not
matter to the algebra), this prints the CPU time of

- ``KroneckerFactoredLinearOperator @ V`` (weight and bias apart, or joined as ``[W b]``) and of
  its cached inverses (factor damping; exact damping, four matrix products per block), as a
  multiple of the *floor*: ``G_l W_l A_lᵀ`` (and ``G_l b_l``) per layer, computed with plain torch
  on inputs already split and shaped per layer, which is what the product consists of;
- one batch of EKFAC's eigenvalue corrections, per layer, against forming that batch's
  per-example gradients ``W_n = Σ_t g_nt a_ntᵀ`` alone (the floor of any per-example method).

One thread, CPU time (``time.process_time``), median of 7 after a warm-up, float32.

Usage::

    python benchmarks/kronecker.py           # prints Markdown (about a minute)
    python benchmarks/kronecker.py --quick   # smoke run: 1 repeat, MLP only
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from curvkit.structured import KroneckerBlock, KroneckerFactoredLinearOperator
from curvkit.structured._factors import SHORT_PRODUCT_ROWS

LAYERS = {  # (out, in') of each layer's weight; every layer has a bias
    "mlp": [(256, 784), (256, 256), (10, 256)],
    "cnn": [(16, 27), (32, 144), (10, 2048)],
}
CORRECTION_LAYERS = {  # (name, N, T, out, in'): a batch of layer data
    "mlp": [("linear 784→256", 128, 1, 256, 785)],
    "cnn": [("conv 16→32 (3×3, stride 2)", 64, 64, 32, 145), ("conv 3→16 (3×3)", 64, 256, 16, 28)],
}


def cpu_time(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return statistics.median(times)


def psd(dim: int, generator: torch.Generator) -> torch.Tensor:
    B = torch.randn(dim, dim + 1, generator=generator)
    return B @ B.T / (dim + 1)


def kfac(layers, joined: bool, generator: torch.Generator):
    params, blocks, factors = [], [], []
    for out_features, in_features in layers:
        G, A = psd(out_features, generator), psd(in_features + joined, generator)
        weight, bias = len(params), len(params) + 1
        params += [torch.zeros(out_features, in_features), torch.zeros(out_features)]
        if joined:
            blocks.append(KroneckerBlock((weight, bias), G, A))
        else:
            blocks += [
                KroneckerBlock((weight,), G, A[:in_features, :in_features]),
                KroneckerBlock((bias,), G),
            ]
        factors.append((G, A))
    return KroneckerFactoredLinearOperator(params, blocks), factors


def floor(layers, factors, joined: bool, k: int):
    """``G W Aᵀ`` per layer on inputs already split and shaped: ``[k, out, in]`` (and ``[out, k]``).

    ``A`` is symmetric: stacks of at most 16 rows are multiplied by ``A`` itself, as curvkit's
    product does (the CPU BLAS packs a transposed ``A`` at a cost so few rows do not repay).
    """
    weights = [torch.randn(k, out, inp + joined) for out, inp in layers]
    biases = [torch.randn(out, k) for out, _ in layers]

    def run():
        for (G, A), W, b in zip(factors, weights, biases):
            right = A if joined else A[: W.shape[2], : W.shape[2]]
            G @ W @ (right if W.shape[0] * W.shape[1] <= SHORT_PRODUCT_ROWS else right.T)
            if not joined:
                G @ b

    return run


def products_table(problem: str, repeats: int) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for joined in (False, True):
        operator, factors = kfac(LAYERS[problem], joined, generator)
        inverse = operator.inverse(damping=1e-3)
        exact = operator.inverse(damping=1e-3, use_exact_damping=True)
        for k in (1, 16):
            V = torch.randn(operator.shape[0], k, generator=generator)
            bare = cpu_time(floor(LAYERS[problem], factors, joined, k), repeats)
            cells = [cpu_time(lambda op=op, V=V: op @ V, repeats) / bare for op in (operator, inverse, exact)]
            layout = "[W b] joined" if joined else "W, b apart"
            rows.append(
                f"| {problem} | {layout} | {k} | {bare * 1e3:.2f} | "
                + " | ".join(f"{cell:.2f}" for cell in cells)
                + " |"
            )
    return rows


def corrections_table(problem: str, repeats: int) -> list[str]:
    generator = torch.Generator().manual_seed(1)
    rows = []
    for name, N, T, out_features, in_features in CORRECTION_LAYERS[problem]:
        operator = KroneckerFactoredLinearOperator(
            [torch.zeros(out_features, in_features)],
            [KroneckerBlock((0,), psd(out_features, generator), psd(in_features, generator))],
        )
        corrections = operator.eigenvalue_corrections()
        g, a = (
            torch.randn(N, T, out_features, generator=generator),
            torch.randn(N, T, in_features, generator=generator),
        )
        bare = cpu_time(lambda g=g, a=a: g.transpose(1, 2) @ a, repeats)
        ours = cpu_time(lambda c=corrections, g=g, a=a: c.add(0, g, a), repeats)
        route = (
            "Gramian" if T**2 * (out_features + in_features) < out_features * in_features else "per-example"
        )
        rows.append(f"| {problem} | {name} | {N} × {T} | {route} | {bare * 1e3:.2f} | {ours / bare:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, MLP only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    repeats, problems = (1, ["mlp"]) if args.quick else (7, ["mlp", "cnn"])
    print(f"torch {torch.__version__}, 1 thread, CPU time, float32, median of {repeats}\n")
    print(
        "| problem | blocks | columns | floor ms | KFAC × floor | inverse × floor | exact inverse × floor |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for problem in problems:
        print("\n".join(products_table(problem, repeats)))
    print("\n| problem | layer | N × T | route | forming W_n ms | one batch of corrections × that |")
    print("|---|---|---|---|---:|---:|")
    for problem in problems:
        print("\n".join(corrections_table(problem, repeats)))


if __name__ == "__main__":
    main()
