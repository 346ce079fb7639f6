"""Memory and time of a 64-column curvature product, split into blocks by ``max_columns``.

A curvature product with ``k`` columns is ``vmap``-ed over them, so it holds ``k`` copies of
the model's activations. ``A.max_columns = b`` multiplies ``b`` columns at a time: memory of a
``b``-column product, plus one primal pass over the data per block. This script prints, for the
Hessian and the GGN of the ``cnn-wide`` problem (``benchmarks/problems.py``; the ``mlp`` one with
``--problem mlp``), the extra peak memory and the time (as a multiple of one gradient) of
``A @ V`` with ``V`` of shape ``[D, 64]``, for ``max_columns`` = ``None`` (all at once), 32, 16,
8 and 1. Each setting runs in a fresh process (peak memory is per process), 3 timed products
after a warm-up, median; float32; default thread count. Time and memory are measured in separate
processes. "time": the allocator settings of ``products.py`` (benchmarks/README.md, "Allocator"),
under which glibc still maps every block over 32 MiB afresh from the OS, with page faults on first
touch; "time, no mmap": ``MALLOC_MMAP_THRESHOLD_=4294967296``, so that such blocks are reused from
the heap too. On CPU the memory is the resident-set high-water mark (``MemoryProbe`` in
``measure.py``).

Usage::

    python benchmarks/column_blocks.py
    python benchmarks/column_blocks.py --problem mlp --device cuda
    python benchmarks/column_blocks.py --quick   # smoke run: in-process, data / 8, no memory
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
from measure import STEADY_MALLOC, MemoryProbe, median_time
from problems import PROBLEM_LABELS, gradient_function, make_problem

import curvkit

NUM_COLUMNS = 64
BLOCKS = (None, 32, 16, 8, 1)
OPERATORS = ("HessianLinearOperator", "GGNLinearOperator")


def worker(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    model, loss_func, params, data = make_problem(args.problem, device, quick=args.quick)
    operator = getattr(curvkit, args.operator)(model, loss_func, params, data, check_deterministic=False)
    operator.max_columns = args.max_columns
    matrix = torch.randn(operator.shape[0], NUM_COLUMNS, device=device)
    if args.mode == "memory":
        probe = MemoryProbe(device)
        return {"peak": probe.peak_during(lambda: operator @ matrix) if probe.available else None}
    gradient = median_time(gradient_function(model, loss_func, params, data), device, repeats=7)
    product = median_time(lambda: operator @ matrix, device)
    return {"dim": operator.shape[0], "ratio": product / gradient}


def spawn(args: argparse.Namespace, operator: str, block: int | None, mode: str) -> dict:
    """One measurement in a fresh process (peak memory is per process); ``--quick``: in this one."""
    if args.quick:
        quick = argparse.Namespace(**{**vars(args), "operator": operator, "max_columns": block})
        return worker(quick) if mode == "time" else {"peak": None, "ratio": None}
    command = [sys.executable, __file__, "--worker", "--mode", mode, "--problem", args.problem]
    command += ["--device", args.device, "--operator", operator]
    command += [] if block is None else ["--max-columns", str(block)]
    # memory: freed tensors go back to the OS, so that the resident set follows the live tensors;
    # time: they stay in the heap, except tensors over 32 MiB (glibc maps each afresh: page faults);
    # time-heap: those too
    allocator = {
        "memory": {"MALLOC_MMAP_THRESHOLD_": "65536"},
        "time": STEADY_MALLOC,
        "time-heap": {**STEADY_MALLOC, "MALLOC_MMAP_THRESHOLD_": str(2**32)},
    }[mode]
    finished = subprocess.run(
        command, capture_output=True, text=True, check=True, env={**os.environ, **allocator}
    )
    return json.loads(finished.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="cnn-wide", choices=sorted(PROBLEM_LABELS))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="smoke run: in-process, data / 8, no memory")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--operator", default=OPERATORS[0], help=argparse.SUPPRESS)
    parser.add_argument("--max-columns", type=int, default=None, help=argparse.SUPPRESS)
    modes = ("time", "time-heap", "memory")
    parser.add_argument("--mode", default="time", choices=modes, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    rows, dim = [], None
    for operator in OPERATORS:
        for block in (None, 16) if args.quick else BLOCKS:
            timing, memory = spawn(args, operator, block, "time"), spawn(args, operator, block, "memory")
            heap = spawn(args, operator, block, "time-heap")
            dim = timing["dim"]
            peak = "–" if memory["peak"] is None else f"{memory['peak'] / 2**20:.0f}"
            heap_ratio = "–" if heap["ratio"] is None else f"{heap['ratio']:.1f}"
            rows.append(f"| {operator} | {block or 'all'} | {peak} | {timing['ratio']:.1f} | {heap_ratio} |")
    print(f"{PROBLEM_LABELS[args.problem]}; D = {dim:,}; {NUM_COLUMNS} columns; torch {torch.__version__},")
    quick = "; QUICK smoke run (data / 8, in-process): numbers not meaningful" if args.quick else ""
    print(f"{args.device}, {torch.get_num_threads()} threads, float32{quick}\n")
    print("| operator | max_columns | extra peak MiB | time (× gradient) | time, no mmap (× gradient) |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
