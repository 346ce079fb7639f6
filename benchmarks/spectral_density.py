"""Wall time of a 64-vector Lanczos spectral density of the MLP Hessian.

Compares ``lanczos_approximate_spectrum(H, ncv=64)`` (Papyan, 2020, Algorithm 2) on the Hessian of
the MLP 784-256-256-10 of ``benchmarks/problems.py`` (CE, mean; 4 batches of 128 random samples;
float32; D = 269,322) with one gradient (plain autograd over all batches) and with 64 Hessian
matrix-vector products, which any 64-step Lanczos needs one after the other. The issue's target
is ≤ 1.2 × the 64 products: the re-orthogonalization, the quadrature and the density must cost
little beside the products.

Rows: the two Gram-Schmidt passes per step that step-by-step full re-orthogonalization reads,
alone; the 64 steps of that process (``LanczosProcess``, what densities used before); the
density with boundaries given (the pure Algorithm 2), whose Lanczos runs re-orthogonalize in
block sweeps every 8 steps (``DeferredLanczosProcess``); with boundaries estimated internally,
which reuses the same Krylov space and extends it only if the extreme Ritz values have not
converged to ``boundaries_tol`` (the number of products is printed); and a density averaged
over 8 repeats, whose runs advance in lockstep (one 8-column product per step), to compare with
8 × one run.
Medians of ``--repeats`` interleaved rounds after a warm-up, default torch thread count
(``--threads``); operators built with ``check_deterministic=False`` (construction not timed).

Usage::

    python benchmarks/spectral_density.py
    python benchmarks/spectral_density.py --repeats 1 --cache-batches
    python benchmarks/spectral_density.py --threads 1   # steadier on a shared machine
    python benchmarks/spectral_density.py --quick       # smoke run (CI): data / 8, one round
    python benchmarks/spectral_density.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from measure import synchronize
from problems import gradient_function, make_problem

from curvkit import HessianLinearOperator
from curvkit.linalg import lanczos_approximate_spectrum
from curvkit.linalg.lanczos import LanczosProcess
from curvkit.linear_operator import LinearOperator

NCV = 64
REPEATS = 8


class CountingOperator(LinearOperator):
    """Counts the columns multiplied onto the wrapped operator."""

    def __init__(self, operator: LinearOperator):
        super().__init__(operator.shape, dtype=operator.dtype, device=operator.device, symmetric=True)
        self.operator, self.num_columns = operator, 0

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        self.num_columns += X.shape[1]
        return self.operator.matmat(X)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: data / 8, one round")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--cache-batches", action="store_true", help="HessianLinearOperator(cache_batches=True)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats = 1
    device = torch.device(args.device)
    model, loss_func, params, data = make_problem("mlp", device, quick=args.quick)
    H = HessianLinearOperator(
        model, loss_func, params, data, check_deterministic=False, cache_batches=args.cache_batches
    )
    counting = CountingOperator(H)
    generator = torch.Generator().manual_seed(0)
    # contiguous columns, like the vectors Lanczos multiplies
    vectors = [torch.randn(H.shape[0], 1, generator=generator).to(device) for _ in range(NCV)]

    gradient = gradient_function(model, loss_func, params, data)

    def matvecs() -> None:
        for vector in vectors:
            H.matmat(vector)

    basis = torch.randn(NCV + 1, H.shape[0], device=device)
    residual = torch.randn(H.shape[0], device=device)

    def reorthogonalization() -> None:
        """The memory traffic full re-orthogonalization needs at least: one Gram-Schmidt pass
        (project, then subtract: two reads of the basis) per step."""
        for step in range(NCV):
            coefficients = basis[: step + 1] @ residual
            residual.addmv_(basis[: step + 1].T, coefficients, alpha=-1)

    def step_by_step() -> None:
        """64 steps of Lanczos re-orthogonalized at every step, and its quadrature."""
        process = LanczosProcess(H, vectors[0][:, 0], NCV)
        while process.size < NCV and process.step():
            pass
        process.ritz_pairs()

    grid, _ = lanczos_approximate_spectrum(counting, ncv=NCV, seed=0)
    boundaries = (float(grid[0]), float(grid[-1]))
    counting.num_columns = 0
    lanczos_approximate_spectrum(counting, ncv=NCV, seed=0)
    products_estimated = counting.num_columns

    tasks = {
        "gradient": gradient,
        f"{NCV} Hessian matvecs": matvecs,
        f"{NCV} Gram-Schmidt passes alone": reorthogonalization,
        "Lanczos re-orthogonalized at every step": step_by_step,
        "density, boundaries given": lambda: lanczos_approximate_spectrum(
            H, ncv=NCV, boundaries=boundaries, seed=0
        ),
        "density, boundaries estimated": lambda: lanczos_approximate_spectrum(H, ncv=NCV, seed=0),
        f"density, {REPEATS} repeats in lockstep": lambda: lanczos_approximate_spectrum(
            H, ncv=NCV, boundaries=boundaries, num_repeats=REPEATS, seed=0
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in tasks}
    for round_ in range(args.repeats + 1):
        for name, task in tasks.items():
            synchronize(device)
            start = time.perf_counter()
            task()
            synchronize(device)
            if round_ > 0:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    cached = ", cache_batches=True" if args.cache_batches else ""
    where = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    )
    print(f"torch {torch.__version__}, {where}, D = {H.shape[0]:,}{cached}")
    allocator = ", ".join(f"{key}={value}" for key, value in os.environ.items() if key.startswith("MALLOC_"))
    print(f"median of {args.repeats} rounds; allocator settings: {allocator or 'glibc defaults'}\n")
    print("| task | products | seconds | × gradient | × 64 matvecs | target |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, seconds in median.items():
        products = {
            "gradient": "-",
            "density, boundaries estimated": str(products_estimated),
            f"{NCV} Gram-Schmidt passes alone": "0",
            f"density, {REPEATS} repeats in lockstep": f"{REPEATS} × {NCV}",
        }.get(name, str(NCV))
        target = "≤ 1.2" if name.startswith(("density, boundaries", "Lanczos")) else ""
        ratio_matvecs = seconds / median[f"{NCV} Hessian matvecs"]
        print(
            f"| {name} | {products} | {seconds:.3f} | {seconds / median['gradient']:.1f} | "
            f"{ratio_matvecs:.2f} | {target} |"
        )


if __name__ == "__main__":
    main()
