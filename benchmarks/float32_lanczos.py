"""Float32 accuracy of Lanczos and CG as the dimension grows (issue 13, point 2).

The operator is the issue's diagonal: ``d = 50 · U(0, 1)`` with the top three eigenvalues 71.6,
77.9, 85.5 and 72 more in ``[0, 60)``. For each dimension ``D`` it reports

* ``lanczos_eigsh(k=3, seed=0)``: orthonormality ``max |UᵀU - I|`` and residuals
  ``max ‖A u - θ u‖ / max|θ|`` (both in float64 from the float32 results; the documented bound is
  ``(k + 1) · tol = 4e-6``), the largest eigenvalue error, products, and the time outside products;
  on ``diag(d)``, whose eigenvectors are coordinate vectors, and on ``H diag(d) H`` with a
  Householder reflection ``H = I - 2uuᵀ``, whose eigenvectors ``H eᵢ`` are dense (its products
  sum ``uᵀx`` in float64, so that they are exact to float32 rounding);
* the spectral density's block Lanczos (64 steps): the basis' orthonormality and the error of the
  three top nodes;
* CG (``tol = 1e-5``, a random and an all-ones right-hand side, ``d`` log-spaced in ``[1, 100]``):
  iterations and the true relative residual ``‖b - A x‖ / ‖b‖``.

Times are CPU seconds of the process on one thread (``torch.set_num_threads(1)``), which other
load on a shared machine barely affects. Only public entry points are used, so the script also
runs against an older checkout (``PYTHONPATH=old/checkout python benchmarks/float32_lanczos.py``).

    python benchmarks/float32_lanczos.py --sizes 1e4,1e6,1.1e7
"""

from __future__ import annotations

import argparse
import time

import torch

import curvkit
from curvkit.linalg import conjugate_gradient
from curvkit.linalg.deferred_lanczos import DeferredLanczosProcess

TOP = (71.6, 77.9, 85.5)


class Timed(curvkit.LinearOperator):
    """``diag(d)``, or ``H diag(d) H`` for a unit ``u``, counting product columns and their CPU time."""

    def __init__(self, d: torch.Tensor, u: torch.Tensor | None = None):
        super().__init__((d.numel(), d.numel()), dtype=d.dtype, device=d.device, symmetric=True)
        self.d, self.u, self.columns, self.seconds = d, u, 0, 0.0

    def reflect(self, X: torch.Tensor) -> torch.Tensor:
        if self.u is None:
            return X
        along = (self.u.double() @ X.double()).to(X.dtype)
        return X - 2 * self.u.to(X.dtype)[:, None] * along[None]

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        start = time.process_time()
        result = self.reflect(self.d.to(X.dtype)[:, None] * self.reflect(X))
        self.seconds += time.process_time() - start
        self.columns += X.shape[1]
        return result


def issue_diagonal(D: int) -> torch.Tensor:
    torch.manual_seed(0)
    d = torch.rand(D) * 50
    d[:3] = torch.tensor(TOP)
    d[3:75] = torch.rand(72) * 60
    return d


def gram_error(rows: torch.Tensor) -> float:
    """``max |R Rᵀ - I|`` in float64, for rows ``R`` (summed in slices: no float64 copy of ``R``)."""
    gram = torch.zeros(rows.shape[0], rows.shape[0], dtype=torch.float64)
    for start in range(0, rows.shape[1], 2**18):
        block = rows[:, start : start + 2**18].double()
        gram += block @ block.T
    return float((gram - torch.eye(rows.shape[0], dtype=torch.float64)).abs().max())


def eigsh_row(D: int, reflected: bool) -> str:
    d = issue_diagonal(D)
    u = torch.randn(D, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) if reflected else None
    A = Timed(d, None if u is None else (u / u.norm()).float())
    start = time.process_time()
    values, U = curvkit.lanczos_eigsh(A, k=3, seed=0)
    seconds = time.process_time() - start
    exact = torch.tensor(TOP, dtype=torch.float32).double()
    U64, values64 = U.double(), values.double()
    AU = A.reflect(d.double()[:, None] * A.reflect(U64))  # in float64
    residual = torch.linalg.vector_norm(AU - U64 * values64, dim=0)
    scale = float(values.abs().max())
    overhead = (seconds - A.seconds) / A.columns
    return (
        f"| {D:.2g} | {gram_error(U.T):.1e} | {float(residual.max()) / scale:.1e} | "
        f"{float((values64 - exact).abs().max()):.1e} | {A.columns} | {seconds:.2f} | "
        f"{A.seconds:.2f} | {overhead * 1e3:.1f} |"
    )


def density_row(D: int, ncv: int = 64) -> str:
    d = issue_diagonal(D)
    start_vector = torch.randn(D, generator=torch.Generator().manual_seed(1))
    process = DeferredLanczosProcess(Timed(d), start_vector, ncv)
    start = time.process_time()
    while process.size < ncv and process.step():
        pass
    values = process.ritz_pairs()[0]
    seconds = time.process_time() - start
    top = values[-3:].double() - torch.tensor(TOP, dtype=torch.float32).double()
    return f"| {D:.2g} | {gram_error(process.V[:ncv]):.1e} | {float(top.abs().max()):.1e} | {seconds:.2f} |"


def cg_row(D: int) -> str:
    d = torch.logspace(0, 2, D)[torch.randperm(D, generator=torch.Generator().manual_seed(0))]
    B = torch.stack([torch.randn(D, generator=torch.Generator().manual_seed(1)), torch.ones(D)], 1)
    iterations = [0]
    start = time.process_time()
    X = conjugate_gradient(
        Timed(d), B, tol=1e-5, callback=lambda _: iterations.__setitem__(0, iterations[0] + 1)
    )
    seconds = time.process_time() - start
    true = torch.linalg.vector_norm(B.double() - d.double()[:, None] * X.double(), dim=0)
    relative = true / torch.linalg.vector_norm(B.double(), dim=0)
    return f"| {D:.2g} | {iterations[0]} | {float(relative.max()):.2e} | {seconds:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e4,1e6,1.1e7", help="comma-separated dimensions")
    sizes = [int(float(size)) for size in parser.parse_args().sizes.split(",")]
    torch.set_num_threads(1)
    for reflected in (False, True):
        print(f"### lanczos_eigsh(k=3) on {'H diag(d) H' if reflected else 'diag(d)'}, float32\n")
        print(
            "| D | orthonormality | residual / max abs θ | eigenvalue error | products | CPU s "
            "| of which products | ms per product outside it |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for D in sizes:
            print(eigsh_row(D, reflected), flush=True)
        print()
    print("### Spectral density's Lanczos (64 steps), float32\n")
    print("| D | orthonormality | top-3 node error | CPU s |")
    print("|---|---|---|---|")
    for D in sizes:
        print(density_row(D), flush=True)
    print("\n### CG (tol 1e-5, two right-hand sides), float32\n")
    print("| D | iterations | true relative residual | CPU s |")
    print("|---|---|---|---|")
    for D in sizes:
        print(cg_row(D), flush=True)


if __name__ == "__main__":
    main()
