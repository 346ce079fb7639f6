"""The sketched Hessian eigendecomposition tutorial, timed by phase, against skerch 1.2.0 in the same run.

Runs the tutorial ``examples/tutorial_sketched_hessian_eigh.py`` (39,760-parameter MLP, 2,000
Rademacher measurements, HMT, a-posteriori test with 30 Gaussian vectors) as it is written, once
per fresh process, with curvkit and, given ``--skerch-python``, with skerch 1.2.0 + curvlinops
3.0.1 (whose tutorial it is) in alternating processes, and reports for each

- wall time of ``seigh`` + ``apost_error``, split into operator products (the operator is wrapped to
  time them), noise (drawing test vectors), orthogonalization (curvkit: the preconditioned basis
  and its Gram matrix, or Householder; skerch: its QR), the small eigenproblem and the rest (the
  other linear algebra: ``QᵀAQ``, ``QV``, copies);
- the CPU time of the process over the same span, the peak resident set size of the process
  (``ru_maxrss``: Python, torch, model and data included), and the estimated relative error
  ``(err_sq / frob_sq)^½`` the tutorial prints.

Medians over ``--repeats`` processes per library (default 3), with their range. Nothing here is
imported by curvkit; skerch runs only in its own interpreter.

Usage::

    python benchmarks/sketch_tutorial.py --skerch-python VENV/bin/python --output results/sketch_tutorial.md
    python benchmarks/sketch_tutorial.py --quick          # smoke run: a small MLP, curvkit only
    python benchmarks/sketch_tutorial.py --exact          # also ‖H - Ĥ‖_F exactly (n more products)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import torch

SEED = 12345780
FULL = {"dataset": (2, 50, 784), "mlp": (784, 50, 10), "sketch": 2000, "test": 30}
QUICK = {"dataset": (2, 10, 784), "mlp": (784, 5, 10), "sketch": 300, "test": 30}
PHASES = ("products", "noise", "orthogonalization", "eigenproblem", "rest")


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}


class Timer:
    """Accumulates the time spent inside wrapped functions, per phase (wall clock or process CPU time)."""

    def __init__(self, clock=time.perf_counter):
        self.seconds = defaultdict(float)
        self.depth = 0
        self.clock = clock

    def wrap(self, phase, function):
        def timed(*args, **kwargs):
            if self.depth:  # nested inside another timed phase: counted there
                return function(*args, **kwargs)
            self.depth += 1
            start = self.clock()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[phase] += self.clock() - start
                self.depth -= 1

        return timed

    def patch(self, owner, name, phase):
        setattr(owner, name, self.wrap(phase, getattr(owner, name)))


class TimedOperator:
    """``.shape`` and ``@`` from both sides, timing each product (skerch's operator contract)."""

    def __init__(self, operator, timer):
        self.operator, self.shape = operator, operator.shape
        self.right = timer.wrap("products", lambda X: operator @ X)
        self.left = timer.wrap("products", lambda X: X @ operator)

    def __matmul__(self, X):
        return self.right(X)

    def __rmatmul__(self, X):
        return self.left(X)


def problem(config, gaussian_noise, rademacher_noise, hessian):
    """The tutorial's data, model and Hessian (its own noise functions, as each tutorial has them)."""
    X = gaussian_noise(config["dataset"], seed=SEED, dtype=torch.float32, device="cpu")
    shape = (*config["dataset"][:-1], config["mlp"][-1])
    Y = rademacher_noise(shape, seed=SEED + 1, device="cpu").to(torch.float32)
    dims = config["mlp"]
    layers = [layer for i, o in pairwise(dims) for layer in (torch.nn.Linear(i, o), torch.nn.ReLU())][:-1]
    model = torch.nn.Sequential(*layers)
    params = [p for p in model.parameters() if p.requires_grad]
    H = hessian(model, torch.nn.MSELoss(reduction="mean"), params, list(zip(X, Y)))
    return H, sum(p.numel() for p in params)


def worker(library: str, config: dict, exact: bool, clock: str) -> dict:
    timer = Timer(CLOCK[clock])
    if library == "curvkit":
        import curvkit.linalg._random as random_module
        import curvkit.sketch._symmetric as symmetric
        from curvkit import HessianLinearOperator
        from curvkit.sketch import (
            CompositeLinOp,
            DiagonalLinOp,
            apost_error,
            gaussian_noise,
            rademacher_noise,
            seigh,
        )

        timer.patch(random_module.RandomColumns, "block", "noise")
        timer.patch(symmetric, "well_conditioned_basis_", "orthogonalization")
        timer.patch(symmetric, "orthonormalize_rows_", "orthogonalization")
        timer.patch(symmetric, "sorted_eigh", "eigenproblem")
    else:
        import skerch.algorithms as algorithms
        import skerch.measurements as measurements
        import skerch.recovery as recovery
        from curvlinops import HessianLinearOperator
        from skerch.a_posteriori import apost_error
        from skerch.algorithms import seigh
        from skerch.linops import CompositeLinOp, DiagonalLinOp
        from skerch.utils import gaussian_noise, rademacher_noise

        for cls in (measurements.RademacherNoiseLinOp, measurements.GaussianNoiseLinOp):
            timer.patch(cls, "get_block", "noise")
        for module in (recovery, algorithms):
            timer.patch(module, "qr", "orthogonalization")
        timer.patch(recovery, "eigh", "eigenproblem")
    H, num_params = problem(config, gaussian_noise, rademacher_noise, HessianLinearOperator)
    timed = TimedOperator(H, timer)
    cpu, wall = time.process_time(), timer.clock()
    ews, evs = seigh(
        timed,
        "cpu",
        torch.float32,
        config["sketch"],
        seed=SEED + 2,
        noise_type="rademacher",
        recovery_type="hmt",
    )
    sH = CompositeLinOp((("Q", evs), ("Lbd", DiagonalLinOp(ews)), ("Qt", evs.T)))
    (frob_sq, _, err_sq), _ = apost_error(
        timed, sH, "cpu", torch.float32, num_meas=config["test"], seed=SEED + num_params
    )
    total, cpu = timer.clock() - wall, time.process_time() - cpu
    result = {
        "library": library,
        "total": total,
        "cpu": cpu,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    result.update({phase: timer.seconds[phase] for phase in PHASES[:-1]})
    result["rest"] = total - sum(timer.seconds[phase] for phase in PHASES[:-1])
    result["rel_err"] = float((err_sq / frob_sq) ** 0.5)
    result["orthonormality"] = float(
        (evs.T.double() @ evs.double() - torch.eye(evs.shape[1], dtype=torch.float64)).abs().max()
    )
    if exact:
        result["exact_rel_err"] = exact_error(H, ews, evs)
    return result


def exact_error(H, ews, evs, block: int = 500) -> float:
    """``‖H - U diag(λ) Uᵀ‖_F / ‖H‖_F`` from ``H``'s columns, ``block`` at a time, in float64.

    Holds ``U`` and ``U diag(λ)`` in float64 (two more ``[n, k]`` blocks: the peak memory of an
    ``--exact`` run is not the sketch's).
    """
    n = H.shape[0]
    U = evs.double()
    scaled = U * ews.double()
    error_sq = norm_sq = 0.0
    for start in range(0, n, block):
        stop = min(start + block, n)
        identity = torch.zeros(n, stop - start)
        identity[start:stop].fill_diagonal_(1.0)
        columns = (H @ identity).double()
        error_sq += float((columns - scaled @ U[start:stop].T).square().sum())
        norm_sq += float(columns.square().sum())
    return (error_sq / norm_sq) ** 0.5


def spawn(python: str, library: str, quick: bool, exact: bool, threads: int | None, cpu_time: bool) -> dict:
    command = (
        [python, __file__, "--worker", library]
        + (["--quick"] if quick else [])
        + (["--exact"] if exact else [])
        + (["--threads", str(threads)] if threads else [])
        + (["--cpu-time"] if cpu_time else [])
    )
    repository = str(Path(__file__).resolve().parents[1])
    environment = {"PYTHONPATH": repository} if library == "curvkit" else {}
    completed = subprocess.run(
        command, capture_output=True, text=True, check=False, env={**__import__("os").environ, **environment}
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{library} worker failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def median_range(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def table(runs: dict[str, list[dict]]) -> str:
    rows = ["| | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
    for key, label in [
        ("total", "total s"),
        *[(p, f"{p} s") for p in PHASES],
        ("cpu", "CPU s (process)"),
    ]:
        rows.append(
            f"| {label} | " + " | ".join(median_range([r[key] for r in rs]) for rs in runs.values()) + " |"
        )
    rows.append(
        "| peak RSS MB | "
        + " | ".join(median_range([r["peak_mb"] for r in rs], 0) for rs in runs.values())
        + " |"
    )
    for key, label in [
        ("rel_err", "estimated relative error"),
        ("exact_rel_err", "exact relative error"),
        ("orthonormality", "max abs(UᵀU − I)"),
    ]:
        if all(key in r for rs in runs.values() for r in rs):
            rows.append(
                f"| {label} | "
                + " | ".join(f"{statistics.median([r[key] for r in rs]):.2e}" for rs in runs.values())
                + " |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small MLP, one process, no skerch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skerch-python", help="interpreter with skerch 1.2.0 and curvlinops 3.0.1")
    parser.add_argument("--exact", action="store_true", help="exact relative error (n more products)")
    parser.add_argument("--output", help="also write the table to this Markdown file")
    parser.add_argument("--threads", type=int, help="torch threads per process (default: torch's)")
    parser.add_argument(
        "--cpu-time", action="store_true", help="one thread per process, phases timed by process CPU time"
    )
    parser.add_argument("--worker", choices=["curvkit", "skerch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    config = QUICK if args.quick else FULL
    args.threads = 1 if args.cpu_time else args.threads
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker, config, args.exact, "cpu" if args.cpu_time else "wall")))
        return
    libraries = ["curvkit"] + (["skerch"] if args.skerch_python and not args.quick else [])
    runs = {library: [] for library in libraries}
    for _ in range(1 if args.quick else args.repeats):
        for library in libraries:
            python = args.skerch_python if library == "skerch" else sys.executable
            runs[library].append(spawn(python, library, args.quick, args.exact, args.threads, args.cpu_time))
    text = table(
        {
            ("curvkit" if name == "curvkit" else "skerch 1.2.0 + curvlinops 3.0.1"): rs
            for name, rs in runs.items()
        }
    )
    if "skerch" in runs:
        ratio = statistics.median(r["total"] for r in runs["curvkit"]) / statistics.median(
            r["total"] for r in runs["skerch"]
        )
        cpu_ratio = statistics.median(r["cpu"] for r in runs["curvkit"]) / statistics.median(
            r["cpu"] for r in runs["skerch"]
        )
        text += f"\n\ncurvkit / skerch, medians: total time {ratio:.2f}, process CPU time {cpu_ratio:.2f}"
    size = "quick" if args.quick else "full"
    header = (
        f"Sketch tutorial ({size}): MLP {config['mlp']}, k = {config['sketch']}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{'process CPU time' if args.cpu_time else 'wall clock'}, {len(runs['curvkit'])} processes each"
    )
    print(header + "\n\n" + text)
    if args.output:
        Path(args.output).write_text(f"# {header}\n\n{text}\n")


if __name__ == "__main__":
    main()
