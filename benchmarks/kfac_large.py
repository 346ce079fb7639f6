"""KFAC and EKFAC at real model size: the ResNet-18 of ``large_model.py`` (11.2 million weights).

The weights of its convolutions and its linear head (BatchNorm's scales and shifts have no
Kronecker-factored rule, as in curvlinops; KFAC refuses them by name), cross-entropy (mean),
batches of 8 random 3×32×32 images, eval-mode BatchNorm, float32. The script prints

- the factor pass of each fisher type: time as a multiple of one gradient over the same data
  (the same parameters), extra peak memory, the memory of the factors kept, and the working
  memory (peak − kept) as a multiple of the gradient's extra peak. Memory is measured in a
  process of its own, twice: as the resident set (large allocations mmap-ed, so that freed
  tensors leave it, as ``products.py`` and ``kfac.py`` measure) and as the bytes of allocated
  tensors (the profiler's allocation events: what a GPU's allocator counts; the resident set
  counts an allocation's pages only once written, and a factor's upper triangle is written at
  the end of the pass);
- on the 'empirical' factors: a product with one vector and with 16 columns, the damped inverse
  (the factors damped by ``FACTOR_DAMPING`` split by the π heuristic, and the exact
  ``(K + λI)⁻¹`` through the factors' eigendecompositions, with its backward error
  ``‖(K + λI) x − b‖ / ‖b‖``), ``logdet``; EKFAC's eigendecompositions (float64) and its
  correction pass; and the factors' own checks: exact
  symmetry and the most negative eigenvalue relative to the largest of each factor.

Usage::

    python benchmarks/kfac_large.py            # a few minutes on 2 cores
    python benchmarks/kfac_large.py --quick    # smoke run (CI): channels / 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from large_model import resnet18
from measure import STEADY_MALLOC, MemoryProbe, median_time, memory_counts, publish, synchronize
from torch import nn

from curvkit import EKFACLinearOperator, KFACLinearOperator

FISHER_TYPES = ("mc", "type-2", "empirical", "forward-only")
COLUMNS = 16
RELATIVE_DAMPING = 1e-3
"""The exact damping ``λ`` as a multiple of KFAC's mean eigenvalue ``trace(K) / D``."""
FACTOR_DAMPING = 1e-3
"""The damping of the factors, split between them by the π heuristic (Martens & Grosse 2015)."""


def timed(function: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Wall time of one call (device work included), and its result."""
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return time.perf_counter() - start, result


def factor_checks(kfac: KFACLinearOperator) -> tuple[float, float]:
    """``max |F − Fᵀ|`` over all matrix factors, and ``min_F λ_min(F) / λ_max(F)`` (float64)."""
    asymmetry, negativity = 0.0, float("inf")
    blocks = kfac.state_dict()["factors"]["blocks"]
    for factor in [block[side] for block in blocks for side in ("output_factor", "input_factor")]:
        if factor is None or factor.ndim != 2:
            continue
        asymmetry = max(asymmetry, float((factor - factor.T).abs().max()))
        eigenvalues = torch.linalg.eigvalsh(factor.double())
        negativity = min(negativity, float(eigenvalues[0] / eigenvalues[-1].clamp_min(1e-300)))
    return asymmetry, negativity


class Problem:
    """The ResNet-18 (channels / 8 with ``--quick``), its batches, and the KFAC-ed parameters."""

    def __init__(self, args: argparse.Namespace):
        self.device = torch.device(args.device)
        torch.manual_seed(0)
        self.model = resnet18(width=8 if args.quick else 64).eval().to(self.device)
        self.data = [
            (torch.randn(8, 3, 32, 32, device=self.device), torch.randint(0, 10, (8,), device=self.device))
            for _ in range(args.batches)
        ]
        layers = [module for module in self.model.modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
        self.params = [p for module in layers for p in module.parameters()]
        self.loss_func = nn.CrossEntropyLoss()

    def clear_gradients(self) -> None:
        for p in self.params:
            p.grad = None

    def gradient(self) -> list[torch.Tensor]:
        self.clear_gradients()
        for X, y in self.data:
            self.loss_func(self.model(X), y).backward()
        return [p.grad for p in self.params]

    def factors(self, fisher_type: str) -> KFACLinearOperator:
        kfac = KFACLinearOperator(
            self.model,
            self.loss_func,
            self.params,
            self.data,
            check_deterministic=False,
            fisher_type=fisher_type,
        )
        kfac.compute_kronecker_factors()
        return kfac


def memory_worker(args: argparse.Namespace) -> dict:
    """:func:`measure.memory_counts` of one gradient and of each factor pass."""
    problem = Problem(args)
    probe = MemoryProbe(problem.device)
    if not probe.available:
        return {}
    problem.gradient()  # warm-up: first calls pay one-off costs (lazy imports, the allocator)
    problem.factors("empirical")
    functions = {"gradient": problem.gradient}
    functions.update({fisher_type: partial(problem.factors, fisher_type) for fisher_type in FISHER_TYPES})
    return memory_counts(probe, functions, problem.clear_gradients)


def measured_memory(args: argparse.Namespace) -> dict:
    """:func:`memory_worker` in a process of its own, its large allocations mmap-ed."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-worker",
        "--batches",
        str(args.batches),
    ]
    command += ["--device", args.device] + ["--quick"] * args.quick
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # freed tensors leave the resident set
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def memory_cells(memory: dict, fisher_type: str) -> list[str]:
    """For each count (resident, then allocated): the extra peak in MiB (and, resident, the MiB
    kept), and the working memory × the gradient's extra peak."""
    cells = []
    for count in ("resident", "allocated"):
        measured = memory.get(fisher_type, {}).get(count)
        if measured is None:
            cells += ["–"] * (3 if count == "resident" else 2)
            continue
        (peak, kept), gradient_peak = measured, memory["gradient"][count][0]
        cells += [f"{peak / 2**20:.1f}"] + ([f"{kept / 2**20:.1f}"] if count == "resident" else [])
        cells.append(f"{(peak - kept) / gradient_peak:.2f}")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: channels / 8")
    parser.add_argument("--batches", type=int, default=1, help="batches of 8 images (default 1)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--output", help="also write the tables to this file")
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        print(json.dumps(memory_worker(args)))
        return
    memory = measured_memory(args)
    problem = Problem(args)
    device, params = problem.device, problem.params
    D, total = sum(p.numel() for p in params), sum(p.numel() for p in problem.model.parameters())
    gradient_time = median_time(problem.gradient, device)
    problem.clear_gradients()
    where = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    )
    gradient_peaks = [
        f"{memory['gradient'][count][0] / 2**20:.1f} MiB {count}"
        for count in ("resident", "allocated")
        if memory and memory["gradient"][count] is not None
    ]
    gradient_memory = f", extra peak {', '.join(gradient_peaks)}" if gradient_peaks else ""
    lines = [
        f"ResNet-18{' (channels / 8, QUICK)' if args.quick else ''}: its convolutions' and head's weights, "
        f"D = {D:,} of {total:,} (BatchNorm's have no KFAC rule); {args.batches} batch(es) of 8 images "
        f"3×32×32, CE; torch {torch.__version__}, {where}, float32",
        "",
        f"One gradient: {gradient_time:.3f} s{gradient_memory}",
        "",
        "| factor pass | seconds | × gradient | resident: extra peak MiB | kept MiB | working × gradient's "
        "| allocated: extra peak MiB | working × gradient's |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    problem.factors("empirical")  # warm-up: first calls pay one-off costs (lazy imports, the allocator)
    for fisher_type in FISHER_TYPES:
        seconds = median_time(lambda fisher_type=fisher_type: problem.factors(fisher_type), device, warmup=0)
        cells = [f"'{fisher_type}'", f"{seconds:.3f}", f"{seconds / gradient_time:.2f}"]
        lines.append(f"| {' | '.join(cells + memory_cells(memory, fisher_type))} |")
    kfac = problem.factors("empirical")
    model, loss_func, data = problem.model, problem.loss_func, problem.data

    vector = torch.randn(D, device=device)
    block = torch.randn(D, COLUMNS, device=device)
    damping = RELATIVE_DAMPING * float(kfac.trace) / D
    product = median_time(lambda: kfac @ vector, device)
    block_product = median_time(lambda: kfac @ block, device)
    # the inverses form their factors' inverses (or eigendecompositions) at their first product
    inverse = kfac.inverse(FACTOR_DAMPING, use_heuristic_damping=True)
    cholesky_first, _ = timed(lambda: inverse @ vector, device)
    cholesky_product = median_time(lambda: inverse @ vector, device)
    exact = kfac.inverse(damping=damping, use_exact_damping=True)
    damped = kfac @ vector + damping * vector
    exact_time, solution = timed(lambda: exact @ damped, device)
    residual = float((kfac @ solution + damping * solution - damped).norm() / damped.norm())
    logdet_time, _ = timed(lambda: kfac.logdet, device)
    asymmetry, negativity = factor_checks(kfac)
    ekfac = EKFACLinearOperator(
        model, loss_func, params, data, check_deterministic=False, fisher_type="empirical"
    )
    # EKFAC's two steps timed apart (as benchmarks/kfac_calls.py does): its factors' float64
    # eigendecompositions, then its second pass over the data in their eigenbases
    eigen_time, eigendecomposed = timed(KFACLinearOperator._computed(ekfac).eigendecomposed, device)
    correction_time, corrected = timed(lambda: ekfac._corrected(eigendecomposed), device)
    ekfac._factored = corrected
    ekfac_product = median_time(lambda: ekfac @ vector, device)
    lines += [
        "",
        f"On the 'empirical' factors (λ = {RELATIVE_DAMPING:g} · trace / D = {damping:.3g}):",
        "",
        "| with the factors | seconds | × gradient |",
        "|---|---:|---:|",
        *(
            f"| {name} | {seconds:.3f} | {seconds / gradient_time:.2f} |"
            for name, seconds in [
                ("product, 1 vector", product),
                (f"product, {COLUMNS} columns", block_product),
                ("inverse (damped factors, π heuristic): first product, Cholesky", cholesky_first),
                ("inverse (damped factors, π heuristic): product", cholesky_product),
                ("inverse (exact damping): first product, eigendecompositions", exact_time),
                ("logdet", logdet_time),
                ("EKFAC: the factors' eigendecompositions (float64)", eigen_time),
                ("EKFAC: correction pass", correction_time),
                ("EKFAC: product, 1 vector", ekfac_product),
            ]
        ),
        "",
        f"Checks: x = (K + λI)⁻¹ b, ‖(K + λI) x − b‖ / ‖b‖ = {residual:.1e}; the factors' largest "
        f"|F − Fᵀ| = {asymmetry:.1e}; smallest λ_min / λ_max of a factor = {negativity:.1e}.",
    ]
    publish(lines, args.output)


if __name__ == "__main__":
    if "--memory-worker" not in sys.argv and any(
        os.environ.get(key) != value for key, value in STEADY_MALLOC.items()
    ):
        # glibc reads its settings at start-up: the timings take the benchmarks' allocator settings
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **STEADY_MALLOC})
    main()
