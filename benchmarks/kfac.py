"""KFAC and EKFAC as multiples of one gradient, side by side with curvlinops 3.0.1 and BackPACK 1.7.1.

On the MLP and the CNN of ``products.py`` (``benchmarks/problems.py``), float32, each figure a
multiple of one plain-autograd gradient over the same data, timed in the same process:

- **factors**: building ``KFACLinearOperator`` (``check_deterministic=False``) and
  ``compute_kronecker_factors()``, for each ``fisher_type`` ('mc' with one sample, 'type-2',
  'empirical', 'forward-only'; on the CNN also 'type-2' with ``kfac_approx='reduce'``); BackPACK's
  ``KFAC`` (MC, one sample) and ``KFLR`` (type-2), summed over the batches;
- **factor floor**: what every library's 'empirical' factor pass must at least do, in plain torch:
  one gradient with hooks keeping each layer's input and output gradient, and their Gram matrices
  (an upper bound of the floor: KFAC needs no weight gradients);
- **multiply-add floor** (no timing): the factor pass's multiply-adds over one gradient's
  (``arithmetic_floor.py``: forward, the pulled-back columns' backward pass, the Gram products
  as one triangle), what its time over a gradient's cannot undercut while both run at the same
  rate per multiply-add;
- **cached product** ``KFAC @ v`` and ``KFAC @ V`` (16 columns) once the factors exist, and in the
  same rounds the per-layer factor multiplications it consists of: ``G_l W_l A_lᵀ`` (and
  ``G_l b_l``) on the same input's per-layer views, with factors of the same shapes;
- **EKFAC** ('mc', one sample): all of it (``compute_eigenvalue_correction()`` on a fresh
  operator: factor pass, eigendecompositions, correction pass), the eigendecompositions of
  computed factors timed apart, and the correction pass alone, in the eigenbases of computed
  factors (timed directly: as the difference of the other two it carried their noise, the
  eigendecompositions' ±10 % being more than the pass);
- **memory**: the extra peak memory of the factor pass over that of one gradient (from no gradient
  held; separate process), counted twice: as the resident set, measured like ``products.py``,
  and as allocated tensors (the profiler's allocation events, what a GPU's allocator counts; the
  resident set takes in an allocation's pages only once written);
- **accuracy**: ``KFAC @ V`` (``V`` of 4 columns, float64) of curvkit against curvlinops', largest
  entry of the difference over the largest entry of curvlinops' result ('mc' draws differ between
  the libraries and is not compared).

Each worker process interleaves rounds of (gradient, every factor computation, products, EKFAC's
steps) after a warm-up round and reports medians over the rounds; the table gives the median
(range) over ``--processes`` fresh processes per library, the libraries alternating.

Usage::

    python benchmarks/kfac.py --cpu-time --curvlinops-python CURVLINOPS_VENV/bin/python \\
        --backpack-python BACKPACK_VENV/bin/python --output benchmarks/results/kfac.md
    python benchmarks/kfac.py --quick     # smoke run: curvkit only, data / 8, one round, in-process

curvlinops and BackPACK are dev-only (curvkit does not depend on them); each runs in its own
venv, see ``ggn_diagonal.py`` for BackPACK's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from arithmetic_floor import problem_kfac_floors
from kfac_calls import COLUMNS, ROUNDS, factor_settings, run_accuracy, run_memory, run_time
from measure import STEADY_MALLOC, publish
from problems import PROBLEM_LABELS, make_problem

PROBLEMS = ("mlp", "cnn")  # BackPACK and curvlinops' KFAC have no rule for the transformer's layers
FACTOR_TARGET = {"mlp": 2.0, "cnn": 3.0}  # × one gradient
CURVLINOPS_SHARE, PRODUCT_TARGET, CORRECTION_TARGET, MEMORY_TARGET = 0.6, 1.3, 5.0, 1.5
ACCURACY_COLUMNS = 4
MEMORY_COUNTS = {
    "resident": "resident set",
    "allocated": "allocated tensors (the profiler's allocation events, as a GPU's allocator counts)",
}


# ---------------------------------------------------------------------------------- driver
def spawn(python: str, library: str, problem: str, mode: str, args, extra: tuple = ()) -> dict:
    if args.quick:  # smoke run: curvkit in this process
        worker_args = argparse.Namespace(**{**vars(args), "library": library, "problem": problem})
        try:
            return run_time(worker_args)
        except Exception as error:
            return {"error": f"{type(error).__name__}: {error}"[:120]}
    command = [
        python,
        str(Path(__file__).resolve()),
        "--worker",
        mode,
        "--library",
        library,
        "--problem",
        problem,
    ]
    command += ["--cpu-time"] * args.cpu_time + list(extra)
    environment = {**os.environ, **STEADY_MALLOC}
    if mode == "memory":  # large allocations always mmap-ed, so that freed tensors leave the resident set
        environment["MALLOC_MMAP_THRESHOLD_"] = "65536"
    # this checkout's curvkit: the library measured, and the product floors' factors in every venv
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")])
    )
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if finished.returncode != 0:
        return {"error": (finished.stderr.strip().splitlines() or ["(no output)"])[-1][:120]}
    return json.loads(finished.stdout.strip().splitlines()[-1])


def ratios(runs: list[dict], name: str, over: str = "gradient") -> list[float]:
    return [run["seconds"][name] / run["seconds"][over] for run in runs if name in run.get("seconds", {})]


def summary(values: list[float]) -> str:
    if not values:
        return "–"
    middle = f"{statistics.median(values):.2f}"
    return middle if len(values) == 1 else f"{middle} ({min(values):.2f}–{max(values):.2f})"


def error_of(runs: list[dict]) -> str | None:
    return next((run["error"] for run in runs if "error" in run), None)


def accuracy(python: str | None, problem: str, args) -> dict[str, str]:
    """Largest entry of (curvkit − curvlinops) over curvlinops' largest, per row."""
    if python is None or args.quick:
        return {}
    with tempfile.TemporaryDirectory() as folder:
        vectors, ours, theirs = (Path(folder) / name for name in ("V.pt", "ours.pt", "theirs.pt"))
        model, *_ = make_problem(problem, torch.device("cpu"), True)
        D = sum(p.numel() for p in model.parameters())
        torch.save(
            torch.randn(D, ACCURACY_COLUMNS, generator=torch.Generator().manual_seed(2), dtype=torch.float64),
            vectors,
        )
        for library, interpreter, output in (
            ("curvkit", sys.executable, ours),
            ("curvlinops", python, theirs),
        ):
            result = spawn(
                interpreter,
                library,
                problem,
                "accuracy",
                args,
                ("--vectors", str(vectors), "--products", str(output)),
            )
            if "error" in result:
                return {"error": f"{library}: {result['error']}"}
        mine, reference = torch.load(ours), torch.load(theirs)
    return {
        label: f"{((mine[label] - reference[label]).abs().max() / reference[label].abs().max()).item():.1e}"
        for label in reference
    }


def verdict(value: float, target: float) -> str:
    return "✓" if value <= target else "✗"


def backpack_row(problem: str, name: str) -> str | None:
    """BackPACK's row that ``name`` compares with (KFLR is 'reduce' on convolutions)."""
    if (
        name == "factors 'mc'"
        or name == {"mlp": "factors 'type-2'", "cnn": "factors 'type-2', reduce"}[problem]
    ):
        return "factors 'type-2'" if "type-2" in name else name
    return None


def target_cell(problem: str, name: str, ours: list[dict]) -> str:
    mine = statistics.median(ratios(ours, name))
    if name.startswith("factors"):
        return f"≤ {FACTOR_TARGET[problem]:g} {verdict(mine, FACTOR_TARGET[problem])}"
    if name.startswith("product") and "floor" not in name:
        share = statistics.median(ratios(ours, name, name.replace("product", "product floor")))
        return f"≤ {PRODUCT_TARGET} × floor: {share:.2f} {verdict(share, PRODUCT_TARGET)}"
    if name == "EKFAC correction pass":
        return f"≤ {CORRECTION_TARGET:g} {verdict(mine, CORRECTION_TARGET)}"
    return "–"


def memory_table(problem: str, memory: dict[str, dict]) -> list[str]:
    """Extra peak memory of the factor passes as multiples of one gradient's (each library's own),
    counted as the resident set and, where the profiler gives them, as allocated tensors."""
    lines = []
    ours, theirs = (memory.get(library, {}).get("counts", {}) for library in ("curvkit", "curvlinops"))
    for count, how in MEMORY_COUNTS.items():
        if not ours or ours["gradient"][count] is None:
            continue
        lines += [
            f"Extra peak memory, {how}, × one gradient's ({ours['gradient'][count][0] / 2**20:.1f} MiB); "
            '"kept": what stays after the pass (the factors), "working": peak − kept. '
            f"Target ≤ {MEMORY_TARGET:g}.",
            "",
            "| factor pass | curvkit peak | curvkit working | curvkit kept MiB | curvlinops peak "
            "| curvlinops working | curvlinops kept MiB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name in factor_settings(problem):
            cells = [name]
            for counts in (ours, theirs):
                if counts.get(name, {}).get(count) is None:
                    cells += ["–"] * 3
                    continue
                (peak, kept), gradient_peak = counts[name][count], counts["gradient"][count][0]
                ratio, working = peak / gradient_peak, (peak - kept) / gradient_peak
                cells += [
                    f"{ratio:.2f} {verdict(ratio, MEMORY_TARGET)}",
                    f"{working:.2f} {verdict(working, MEMORY_TARGET)}",
                    f"{kept / 2**20:.1f}",
                ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def table(problem: str, runs: dict[str, list[dict]], agreement: dict) -> list[str]:
    """The problem's Markdown table: one row per timed quantity, the comparisons beside it."""
    ours, theirs, backpack = runs["curvkit"], runs["curvlinops"], runs["backpack"]
    lines = [f"### {problem}: {PROBLEM_LABELS[problem]}", ""]
    if error_of(ours):
        return [*lines, f"curvkit failed: {error_of(ours)}", ""]
    gradient_ms = [run["seconds"]["gradient"] * 1e3 for run in ours]
    lines += [
        f"One gradient: {summary(gradient_ms)} ms (curvkit's processes).",
        "",
        "| × one gradient | curvkit | target | multiply-add floor | curvlinops 3.0.1 "
        "| curvkit / curvlinops (≤ 0.6) | BackPACK 1.7.1 | curvkit vs curvlinops, max rel. diff |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    floors = problem_kfac_floors(problem)  # arithmetic_floor.py: the factor rows' multiply-adds
    names = [
        *factor_settings(problem),
        "factor floor",
        "product",
        "product floor",
        f"product k={COLUMNS}",
        f"product floor k={COLUMNS}",
    ]
    for name in [*names, "EKFAC, all", "EKFAC eigendecompositions", "EKFAC correction pass"]:
        mine, other = ratios(ours, name), ratios(theirs, name)
        bp_name = backpack_row(problem, name)
        bp = ratios(backpack, bp_name) if bp_name else []
        share, bp_cell = "–", summary(bp)
        if mine and other:
            value = statistics.median(mine) / statistics.median(other)
            share = f"{value:.2f}" + (
                f" {verdict(value, CURVLINOPS_SHARE)}" if name.startswith("factors") else ""
            )
        if mine and bp:
            bp_cell += f" {verdict(statistics.median(mine), statistics.median(bp))}"
        compared = agreement.get(name, "own draws" if agreement and name == "factors 'mc'" else "–")
        target = target_cell(problem, name, ours) if mine else "–"
        floor = floors.get(name.removeprefix("factors "))
        floor_cell = "–" if floor is None else f"{floor:.2f}"
        cells = [name, summary(mine), target, floor_cell, summary(other), share, bp_cell, compared]
        lines.append("| " + " | ".join(cells) + " |")
    for library in ("curvlinops", "backpack", "memory", "accuracy"):
        failed = error_of(runs.get(library, [agreement] if library == "accuracy" else []))
        if failed:
            lines.append(f"\n{library} failed: {failed}")
    ekfac = agreement.get("EKFAC 'empirical'")
    if ekfac:
        lines.append(f"\nEKFAC ('empirical') products, curvkit vs curvlinops: max rel. diff {ekfac}.")
    return [*lines, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: curvkit only, data / 8, one round, in-process"
    )
    parser.add_argument("--problems", default=",".join(PROBLEMS), help="comma-separated subset of mlp,cnn")
    parser.add_argument(
        "--curvlinops-python", default=None, help="interpreter that can import curvlinops 3.0.1"
    )
    parser.add_argument("--backpack-python", default=None, help="interpreter that can import backpack 1.7.1")
    parser.add_argument("--processes", type=int, default=3, help="timing processes per library and problem")
    parser.add_argument("--cpu-time", action="store_true", help="one thread, CPU time of the process")
    parser.add_argument("--output", default=None, help="also write the table to this file")
    parser.add_argument("--worker", choices=("time", "memory", "accuracy"), help=argparse.SUPPRESS)
    parser.add_argument("--library", default="curvkit", help=argparse.SUPPRESS)
    parser.add_argument("--problem", default="mlp", help=argparse.SUPPRESS)
    parser.add_argument("--vectors", help=argparse.SUPPRESS)
    parser.add_argument("--products", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_time:
        torch.set_num_threads(1)
    if args.worker:
        print(
            json.dumps({"time": run_time, "memory": run_memory, "accuracy": run_accuracy}[args.worker](args))
        )
        return 0
    problems = [name for name in args.problems.split(",") if name]
    if set(problems) - set(PROBLEMS):
        parser.error(f"unknown problems {sorted(set(problems) - set(PROBLEMS))}; choose from {PROBLEMS}")
    if args.quick:
        args.curvlinops_python = args.backpack_python = None
    processes = 1 if args.quick else args.processes
    where = "1 thread, CPU time" if args.cpu_time else f"{torch.get_num_threads()} threads, wall clock"
    start, load = time.perf_counter(), os.getloadavg()[0]
    lines = [
        "## KFAC and EKFAC as multiples of one gradient",
        "",
        f"CPU ({where}), float32, check_deterministic=False; median (range) over {processes} processes per "
        f"library, each the median of {1 if args.quick else ROUNDS} interleaved rounds"
        + (". QUICK smoke run (data / 8): numbers not meaningful." if args.quick else "."),
        "",
    ]
    pythons = {
        "curvkit": sys.executable,
        "curvlinops": args.curvlinops_python,
        "backpack": args.backpack_python,
    }
    versions: dict[str, str] = {}
    for problem in problems:
        runs: dict[str, list[dict]] = {library: [] for library in pythons}
        for _ in range(processes):  # alternate, so that all libraries see the same drifts in load
            for library, python in pythons.items():
                if python:
                    runs[library].append(spawn(python, library, problem, "time", args))
        memory = {}
        for library in ("curvkit", "curvlinops"):
            if pythons[library] and not args.quick:
                memory[library] = spawn(pythons[library], library, problem, "memory", args)
        runs["memory"] = list(memory.values())
        lines += table(problem, runs, accuracy(args.curvlinops_python, problem, args))
        lines += memory_table(problem, memory)
        versions.update(
            {library: run["torch"] for library, done in runs.items() for run in done if "torch" in run}
        )
    lines.insert(
        3, "torch: " + ", ".join(f"{library} {version}" for library, version in versions.items()) + "."
    )
    lines.append(
        f"Benchmark wall time: {time.perf_counter() - start:.0f} s; 1-minute load average {load:.1f} at the "
        f"start, {os.getloadavg()[0]:.1f} at the end."
    )
    publish(lines, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
