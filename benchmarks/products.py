"""Cost of curvature-matrix products, as multiples of one gradient over the same data.

Prints a Markdown table per problem (MLP, CNN, tiny transformer): for the Hessian, GGN,
empirical Fisher (EF) and Monte-Carlo Fisher, with and without ``cache_batches=True``, the time
of a matrix-vector product and of a 16-column matrix-matrix product divided by the time of one
plain-autograd gradient (``loss.backward()`` over all batches), the issue's targets beside them,
and the extra peak memory of each product. If curvlinops can be imported (here, or by the Python
interpreter given with ``--curvlinops-python`` / ``$CURVLINOPS_PYTHON``), its figures are
measured in the same run and printed beside ours. curvkit does not depend on it.

Usage::

    python benchmarks/products.py                      # full run (a few minutes on 2 cores)
    python benchmarks/products.py --quick              # smoke run: small data, one repeat
    python benchmarks/products.py --device cuda
    python benchmarks/products.py --curvlinops-python /tmp/clvenv/bin/python

Method (see benchmarks/README.md): each (library, problem) pair is timed in ``--processes`` fresh
subprocesses (default 3; the two libraries' alternate) and its memory measured in one more. In
each timing process, every ratio is the median of 6 runs after one warm-up (``--quick``: 1 run)
over the median of the gradients timed between them; the table gives the median over the
processes and, in brackets, their range (the same code on the same data varies this much from
one process to the next on a shared machine). float32, default ``torch`` thread count, operators built with
``check_deterministic=False`` (the probe runs only at construction, never during products, and
construction is not timed). Cached operators are timed after one warm-up product that fills the
cache. Memory on CPU is the high-water mark of the resident set size (``VmHWM``, reset through
``/proc/self/clear_refs``) during one call minus the resident size just before it, in a process
started with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors go back to the OS; on CUDA it
is ``torch.cuda.max_memory_allocated()`` minus the allocated memory before the call, after one
warm-up matvec and matmat. "cache" is the resident (or allocated) memory that stays after those
two products, which fill the cache.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch
from measure import STEADY_MALLOC, MemoryProbe, median_time, publish, synchronize
from problems import PROBLEM_LABELS, PROBLEMS, gradient_function, make_problem

NUM_COLUMNS = 16
NOISY_SPREAD = 1.5
OPERATORS = (
    # (row label, class name, extra kwargs, cached)
    ("Hessian", "HessianLinearOperator", {}, False),
    ("GGN", "GGNLinearOperator", {}, False),
    ("EF", "EFLinearOperator", {}, False),
    ("MC-Fisher", "FisherMCLinearOperator", {"mc_samples": 1, "seed": 0}, False),
    ("Hessian, cached", "HessianLinearOperator", {}, True),
    ("GGN, cached", "GGNLinearOperator", {}, True),
    ("EF, cached", "EFLinearOperator", {}, True),
    ("MC-Fisher, cached", "FisherMCLinearOperator", {"mc_samples": 1, "seed": 0}, True),
)
# Targets of issue 2 (multiples of one gradient); None: no target stated.
MATVEC_TARGETS = {"Hessian": 4.0, "GGN": 3.0, "EF": 3.0, "MC-Fisher": 3.0}
MATVEC_TARGETS_CACHED = {"Hessian": 4.0, "GGN": 2.0, "EF": 2.0, "MC-Fisher": 2.0}
MATMAT_TARGETS = {"Hessian": 20.0, "GGN": 16.0}


# ---------------------------------------------------------------------------------- measuring
#: The clock of the measurements: wall time by default; with ``--cpu-time`` the worker runs on one
#: thread and measures its process's CPU time, which other processes on the machine barely affect.
clock = time.perf_counter


def time_operator(operator, gradient, vector, matrix, device, warmup: int, repeats: int) -> dict:
    """Median times of matvec, matmat and, interleaved with them, the gradient.

    Interleaving makes the ratios robust to load that changes during the run (other processes on
    the same cores): each product is compared with gradients timed seconds apart.
    """
    calls = {
        "gradient_s": gradient,
        "matvec_s": lambda: operator @ vector,
        "matmat_s": lambda: operator @ matrix,
    }
    for function in calls.values():
        for _ in range(warmup):  # for a cached operator, the first warm-up product fills the cache
            function()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, function in calls.items():
            synchronize(device)
            start = clock()
            function()
            synchronize(device)
            times[name].append(clock() - start)
    result = {name: statistics.median(values) for name, values in times.items()}
    # max / min of the gradient times of these rounds: > NOISY_SPREAD flags a disturbed measurement
    result["gradient_spread"] = max(times["gradient_s"]) / min(times["gradient_s"])
    return result


def run_worker(args: argparse.Namespace) -> dict:
    """Measure one (library, problem) pair in this process; ``args.mode`` is time or memory."""
    global clock
    if args.cpu_time:
        torch.set_num_threads(1)
        clock = time.process_time
    device = torch.device(args.device)
    library = importlib.import_module(args.library)
    model, loss_func, params, data = make_problem(args.problem, device, args.quick)
    dim = sum(p.numel() for p in params)
    warmup, repeats = (1, 1) if args.quick else (1, 6)
    probe = MemoryProbe(device) if args.mode == "memory" else None
    if probe is not None and not probe.available:
        return {"memory_available": False}

    generator = torch.Generator().manual_seed(1)
    vector = torch.randn(dim, generator=generator).to(device)
    matrix = torch.randn(dim, NUM_COLUMNS, generator=generator).to(device)

    gradient = gradient_function(model, loss_func, params, data)
    result: dict = {"dim": dim, "library": args.library, "torch": torch.__version__}
    if probe is None:
        result["gradient_s"] = median_time(gradient, device, warmup, repeats, clock)
    else:
        gradient()
        for param in params:  # from no gradient held: the peak includes the one it makes
            param.grad = None
        result["gradient_peak"] = probe.peak_during(gradient)
    for param in params:
        param.grad = None

    rows = {}
    for label, class_name, kwargs, cached in OPERATORS:
        if cached and args.library != "curvkit":
            continue
        row: dict = {}
        try:
            cls = getattr(library, class_name)
            options = {"check_deterministic": False, **kwargs}
            if cached:
                options["cache_batches"] = True
            operator = cls(model, loss_func, params, data, **options)
            if probe is None:
                row.update(time_operator(operator, gradient, vector, matrix, device, warmup, repeats))
            else:
                # warm-up: lazy initialisation, num_data, the shortcuts' one-time agreement check;
                # for a cached operator, every cache entry its products use (a block of columns
                # may keep other records than a single vector, e.g. layer factors)
                before = probe.current()
                operator @ vector
                operator @ matrix
                if cached:
                    row["cache"] = probe.current() - before
                row["matvec_peak"] = probe.peak_during(partial(operator.__matmul__, vector))
                row["matmat_peak"] = probe.peak_during(partial(operator.__matmul__, matrix))
            del operator
        except Exception as error:  # report, e.g. missing forward-mode derivatives
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            row = {"error": f"{type(error).__name__}: {message[:90]}"}
        gc.collect()
        rows[label] = row
    result["operators"] = rows
    return result


# ---------------------------------------------------------------------------------- driver
def spawn(python: str, library: str, problem: str, mode: str, args: argparse.Namespace) -> dict:
    if args.quick and python == sys.executable and mode == "time":  # smoke run: no process start-up
        worker_args = argparse.Namespace(
            **{**vars(args), "library": library, "problem": problem, "mode": mode}
        )
        try:
            return run_worker(worker_args)
        except Exception as error:
            return {"failed": f"{type(error).__name__}: {error}"}
    command = [
        python,
        str(Path(__file__).resolve()),
        "--worker",
        "--library",
        library,
        "--problem",
        problem,
        "--mode",
        mode,
        "--device",
        args.device,
    ]
    if args.quick:
        command.append("--quick")
    if args.cpu_time:
        command.append("--cpu-time")
    env = dict(os.environ)
    if mode == "memory":
        # large allocations always mmap-ed, so that freed tensors leave the resident set
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    elif not (args.system_malloc or args.quick):
        env.update(STEADY_MALLOC)
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"failed": f"worker exited with {completed.returncode}: {tail[0]}"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def curvlinops_python(args: argparse.Namespace) -> str | None:
    candidates = [args.curvlinops_python, os.environ.get("CURVLINOPS_PYTHON"), sys.executable]
    for python in candidates:
        if not python:
            continue
        probe = subprocess.run(
            [python, "-c", "import curvlinops"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return python
    return None


def noisy(rows: list[dict]) -> str:
    return " ⚠" if any(row.get("gradient_spread", 1.0) > NOISY_SPREAD for row in rows) else ""


def ratios(rows: list[dict], key: str) -> list[float]:
    """``key``'s time over the gradient's, one value per timing process."""
    return [row[key] / row["gradient_s"] for row in rows]


def summary(values: list[float]) -> str:
    """Median, and the range over processes where there are several."""
    middle = f"{statistics.median(values):.2f}"
    return middle if len(values) == 1 else f"{middle} ({min(values):.1f}–{max(values):.1f})"


def mebibytes(num_bytes: int | None) -> str:
    return "–" if num_bytes is None else f"{num_bytes / 2**20:.1f}"


def verdict(values: list[float], target: float | None) -> str:
    if target is None:
        return "–"
    return f"≤ {target:g} {'✓' if statistics.median(values) <= target else '✗'}"


def operator_rows(runs: list[dict], label: str) -> list[dict] | str:
    """One operator's rows from every timing process, or the first error message."""
    rows = [run.get("operators", {}).get(label, {}) for run in runs]
    for row in rows:
        if "error" in row:
            return row["error"]
    return rows


def failure(runs: list[dict]) -> str | None:
    return next((run["failed"] for run in runs if "failed" in run), None)


def format_problem(problem: str, ours: list[dict], ours_memory: dict, theirs: list[dict] | None) -> list[str]:
    lines = [f"### {problem}: {PROBLEM_LABELS[problem]}", ""]
    if failure(ours):
        return [*lines, f"curvkit failed: {failure(ours)}", ""]
    memory_ok = ours_memory.get("memory_available", True) and "failed" not in ours_memory
    gradient_ms = [run["gradient_s"] * 1e3 for run in ours]
    lines.append(
        f"D = {ours[0]['dim']:,} parameters; one gradient (plain autograd, all batches) = "
        f"{summary(gradient_ms)} ms"
        + (f", extra peak memory {mebibytes(ours_memory.get('gradient_peak'))} MiB." if memory_ok else ".")
    )
    if theirs is not None and not failure(theirs):
        their_ms = [run["gradient_s"] * 1e3 for run in theirs]
        lines.append(f"curvlinops' own gradient baseline in its processes: {summary(their_ms)} ms.")
    lines.append("")
    header = (
        "| operator | matvec (× grad) | target | matmat k=16 (× grad) | target | per column (× grad) "
        "| peak MiB matvec | peak MiB matmat | cache MiB |"
    )
    separator = "|---|---:|---|---:|---|---:|---:|---:|---:|"
    if theirs is not None:
        header += " curvlinops matvec (× grad) | curvlinops matmat k=16 (× grad) |"
        separator += "---:|---:|"
    lines += [header, separator]
    for label, _, _, cached in OPERATORS:
        rows = operator_rows(ours, label)
        memory_row = ours_memory.get("operators", {}).get(label, {}) if memory_ok else {}
        base = label.removesuffix(", cached")
        if isinstance(rows, str):
            cells = [label, f"fails: {rows}", "", "", "", "", "", "", ""]
        else:
            matvec, matmat = ratios(rows, "matvec_s"), ratios(rows, "matmat_s")
            matvec_target = (MATVEC_TARGETS_CACHED if cached else MATVEC_TARGETS).get(base)
            cells = [
                label + noisy(rows),
                summary(matvec),
                verdict(matvec, matvec_target),
                summary(matmat),
                verdict(matmat, MATMAT_TARGETS.get(base)),
                f"{statistics.median(matmat) / NUM_COLUMNS:.2f}",
                mebibytes(memory_row.get("matvec_peak")),
                mebibytes(memory_row.get("matmat_peak")),
                mebibytes(memory_row.get("cache")) if cached else "–",
            ]
        if theirs is not None:
            their_rows = "–" if failure(theirs) else operator_rows(theirs, label)
            if cached:
                cells += ["n/a (no cache)", ""]
            elif isinstance(their_rows, str):
                cells += [their_rows if their_rows == "–" else f"fails: {their_rows}", ""]
            else:
                cells += [
                    summary(ratios(their_rows, "matvec_s")) + noisy(their_rows),
                    summary(ratios(their_rows, "matmat_s")) + noisy(their_rows),
                ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="smoke run: data / 8, one repeat")
    parser.add_argument("--problems", default=",".join(PROBLEMS), help="comma-separated subset")
    parser.add_argument("--curvlinops-python", default=None, help="interpreter that can import curvlinops")
    parser.add_argument("--no-curvlinops", action="store_true", help="skip the comparison")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    parser.add_argument("--output", default=None, help="also write the table to this file")
    parser.add_argument(
        "--processes", type=int, default=3, help="timing processes per library and problem (default 3)"
    )
    parser.add_argument(
        "--cpu-time", action="store_true", help="one thread, CPU time of the process (robust to other load)"
    )
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="time with glibc's default heap trimming (page faults included) instead of STEADY_MALLOC",
    )
    # internal: one measurement process
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--library", default="curvkit", help=argparse.SUPPRESS)
    parser.add_argument("--problem", default="mlp", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="time", choices=("time", "memory"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but CUDA is not available")
    problems = [name.strip() for name in args.problems.split(",") if name.strip()]
    unknown = set(problems) - set(PROBLEMS)
    if unknown:
        parser.error(f"unknown problems {sorted(unknown)}; choose from {PROBLEMS}")
    if args.processes < 1:
        parser.error(f"--processes must be at least 1, got {args.processes}")
    if args.quick:  # smoke run: in-process, no memory, curvlinops only if asked for
        args.no_memory, args.processes = True, 1
        args.no_curvlinops = args.no_curvlinops or not (
            args.curvlinops_python or os.environ.get("CURVLINOPS_PYTHON")
        )
    other = None if args.no_curvlinops else curvlinops_python(args)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    start = time.perf_counter()

    device_name = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else ("CPU, 1 thread, CPU time" if args.cpu_time else f"CPU, {torch.get_num_threads()} threads")
    )
    lines = [
        "## Curvature products as multiples of one gradient",
        "",
        f"torch {torch.__version__}, {device_name}, float32, "
        + (
            "QUICK smoke run (data / 8, 1 repeat): numbers not meaningful"
            if args.quick
            else f"per process the median of 6 runs; median (range) over {args.processes} processes"
        )
        + "; operators built with check_deterministic=False.",
        "Allocator: "
        + (
            "glibc defaults (heap trimming on: page faults are part of the times)."
            if args.system_malloc or args.quick
            else "glibc without heap trimming ("
            + ", ".join(f"{key}={value}" for key, value in STEADY_MALLOC.items())
            + ") for both libraries and the gradient baseline."
        ),
        "curvlinops: " + (f"measured with {other}" if other else "not importable, comparison skipped") + ".",
        "",
    ]
    for problem in problems:
        ours, theirs = [], [] if other else None
        for _ in range(args.processes):  # alternate, so that both see the same drifts in load
            ours.append(spawn(sys.executable, "curvkit", problem, "time", args))
            if other:
                theirs.append(spawn(other, "curvlinops", problem, "time", args))
        ours_memory = (
            {"memory_available": False}
            if args.no_memory
            else spawn(sys.executable, "curvkit", problem, "memory", args)
        )
        lines += format_problem(problem, ours, ours_memory, theirs)
    elapsed = time.perf_counter() - start
    load = ""
    if load_before is not None:
        load = f" 1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end."
    lines.append(
        f"⚠: in some process, the gradients timed between this row's products varied by more than "
        f"{NOISY_SPREAD}× (max/min), i.e. other processes disturbed the measurement; rerun on a quiet "
        "machine."
    )
    lines.append("")
    lines.append(f"Benchmark wall time: {elapsed:.0f} s.{load}")
    publish(lines, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
