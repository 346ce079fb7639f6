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

Method (see benchmarks/README.md): each (library, problem) pair is measured in two fresh
subprocesses, one for times and one for memory. Times are medians of 6 runs after one warm-up
(``--quick``: 1 run), float32, default ``torch`` thread count, operators built with
``check_deterministic=False`` (the probe runs only at construction, never during products, and
construction is not timed). Cached operators are timed after one warm-up product that fills the
cache. Memory on CPU is the high-water mark of the resident set size (``VmHWM``, reset through
``/proc/self/clear_refs``) during one call minus the resident size just before it, in a process
started with ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors go back to the OS; on CUDA it
is ``torch.cuda.max_memory_allocated()`` minus the allocated memory before the call. "cache" is
the resident (or allocated) memory that stays after the product that filled the cache.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

NUM_COLUMNS = 16
NOISY_SPREAD = 1.5
PROBLEMS = ("mlp", "cnn", "transformer")
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
# glibc settings of the timing workers (both libraries, and the gradient baseline): freed memory
# stays in the heap instead of going back to the OS, so that a call does not pay page faults for
# memory that the previous call released. See benchmarks/README.md, "Allocator".
STEADY_MALLOC = {"MALLOC_TRIM_THRESHOLD_": str(2**40), "MALLOC_MMAP_THRESHOLD_": str(2**25)}


# ---------------------------------------------------------------------------------- problems
class SequenceClassifier(nn.Module):
    """``nn.TransformerEncoderLayer`` (default settings, dropout 0) and a linear head per position.

    Output ``[N, C, T]`` for ``CrossEntropyLoss`` with sequence targets ``[N, T]``.
    """

    def __init__(self, d_model: int = 32, num_classes: int = 10):
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(
            d_model=d_model, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)).transpose(1, 2)


def make_problem(name: str, device: torch.device, quick: bool):
    """Model, loss, params and data (list of ``(X, y)``) of a benchmark problem, seeded."""
    torch.manual_seed(0)
    shrink = 8 if quick else 1
    if name == "mlp":
        model = nn.Sequential(
            nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )
        num_batches, batch_size = 4, 128 // shrink
        inputs = [torch.randn(batch_size, 784) for _ in range(num_batches)]
        targets = [torch.randint(0, 10, (batch_size,)) for _ in range(num_batches)]
    elif name == "cnn":
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 8 * 8, 10),
        )
        num_batches, batch_size = 2, 64 // shrink
        inputs = [torch.randn(batch_size, 3, 16, 16) for _ in range(num_batches)]
        targets = [torch.randint(0, 10, (batch_size,)) for _ in range(num_batches)]
    elif name == "transformer":
        model = SequenceClassifier()
        num_batches, batch_size, length = 4, 32 // shrink, 16
        inputs = [torch.randn(batch_size, length, 32) for _ in range(num_batches)]
        targets = [torch.randint(0, 10, (batch_size, length)) for _ in range(num_batches)]
    else:
        raise ValueError(f"unknown problem {name!r}")
    model = model.to(device)
    data = [(X.to(device), y.to(device)) for X, y in zip(inputs, targets)]
    params = [p for p in model.parameters() if p.requires_grad]
    return model, nn.CrossEntropyLoss(), params, data


PROBLEM_LABELS = {
    "mlp": "MLP 784-256-256-10, 4 batches of 128, CE",
    "cnn": "CNN conv16-conv32/s2-linear on 3x16x16, 2 batches of 64, CE",
    "transformer": (
        "TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, dropout=0) + linear head, "
        "4 batches of 32 sequences of length 16, sequence CE ([N, C, T] output)"
    ),
}


# ---------------------------------------------------------------------------------- measuring
#: The clock of the measurements: wall time by default; with ``--cpu-time`` the worker runs on one
#: thread and measures its process's CPU time, which other processes on the machine barely affect.
clock = time.perf_counter


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(function: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = clock()
        function()
        synchronize(device)
        times.append(clock() - start)
    return statistics.median(times)


class MemoryProbe:
    """Extra peak memory of a call, and memory that stays after it (bytes)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.available = device.type == "cuda" or self._can_reset_rss_peak()

    @staticmethod
    def _can_reset_rss_peak() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            return "VmHWM" in Path("/proc/self/status").read_text()
        except OSError:
            return False

    @staticmethod
    def _status(key: str) -> int:
        match = re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text())
        return int(match.group(1)) * 1024

    def current(self) -> int:
        gc.collect()
        if self.device.type == "cuda":
            synchronize(self.device)
            return torch.cuda.memory_allocated(self.device)
        return self._status("VmRSS")

    def peak_during(self, function: Callable[[], object]) -> int:
        """Peak memory during ``function()`` above the memory in use before it."""
        before = self.current()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        result = function()
        synchronize(self.device)
        peak = (
            torch.cuda.max_memory_allocated(self.device)
            if self.device.type == "cuda"
            else self._status("VmHWM")
        )
        del result
        return peak - before


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


def gradient_function(model, loss_func, params, data) -> Callable[[], list]:
    """One gradient over all batches with plain autograd (what users compare with)."""

    def gradient():
        for param in params:
            param.grad = None
        for X, y in data:
            loss_func(model(X), y).backward()
        return [param.grad for param in params]

    return gradient


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
        result["gradient_s"] = median_time(gradient, device, warmup, repeats)
    else:
        gradient()
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
                if cached:
                    before = probe.current()
                    operator @ vector
                    row["cache"] = probe.current() - before
                else:
                    operator @ vector  # warm-up (lazy initialisation, num_data)
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


def noisy(row: dict) -> str:
    return " ⚠" if row.get("gradient_spread", 1.0) > NOISY_SPREAD else ""


def ratio(seconds: float | None, gradient: float) -> str:
    return "–" if seconds is None else f"{seconds / gradient:.2f}"


def mebibytes(num_bytes: int | None) -> str:
    return "–" if num_bytes is None else f"{num_bytes / 2**20:.1f}"


def verdict(value: float, target: float | None) -> str:
    if target is None:
        return "–"
    return f"≤ {target:g} {'✓' if value <= target else '✗'}"


def format_problem(problem: str, ours: dict, ours_memory: dict, theirs: dict | None) -> list[str]:
    lines = [f"### {problem}: {PROBLEM_LABELS[problem]}", ""]
    if "failed" in ours:
        return [*lines, f"curvkit failed: {ours['failed']}", ""]
    gradient = ours["gradient_s"]
    memory_ok = ours_memory.get("memory_available", True) and "failed" not in ours_memory
    lines.append(
        f"D = {ours['dim']:,} parameters; one gradient (plain autograd, all batches) = "
        f"{gradient * 1e3:.1f} ms"
        + (f", extra peak memory {mebibytes(ours_memory.get('gradient_peak'))} MiB." if memory_ok else ".")
    )
    if theirs is not None and "failed" not in theirs:
        lines.append(
            f"curvlinops' own gradient baseline in its process: {theirs['gradient_s'] * 1e3:.1f} ms."
        )
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
        row = ours["operators"].get(label, {})
        memory_row = ours_memory.get("operators", {}).get(label, {}) if memory_ok else {}
        base = label.removesuffix(", cached")
        if "error" in row:
            cells = [label, f"fails: {row['error']}", "", "", "", "", "", "", ""]
        else:
            matvec = row["matvec_s"] / row["gradient_s"]
            matmat = row["matmat_s"] / row["gradient_s"]
            matvec_target = (MATVEC_TARGETS_CACHED if cached else MATVEC_TARGETS).get(base)
            cells = [
                label + noisy(row),
                f"{matvec:.2f}",
                verdict(matvec, matvec_target),
                f"{matmat:.2f}",
                verdict(matmat, MATMAT_TARGETS.get(base)),
                f"{matmat / NUM_COLUMNS:.2f}",
                mebibytes(memory_row.get("matvec_peak")),
                mebibytes(memory_row.get("matmat_peak")),
                mebibytes(memory_row.get("cache")) if cached else "–",
            ]
        if theirs is not None:
            their_row = theirs.get("operators", {}).get(label) if "failed" not in theirs else None
            if cached or their_row is None:
                cells += ["n/a (no cache)" if cached else "–", ""]
            elif "error" in their_row:
                cells += [f"fails: {their_row['error']}", ""]
            else:
                cells += [
                    ratio(their_row["matvec_s"], their_row["gradient_s"]) + noisy(their_row),
                    ratio(their_row["matmat_s"], their_row["gradient_s"]) + noisy(their_row),
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
    if args.quick:  # smoke run: in-process, no memory, curvlinops only if asked for
        args.no_memory = True
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
            else "median of 6 runs"
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
        ours = spawn(sys.executable, "curvkit", problem, "time", args)
        ours_memory = {} if args.no_memory else spawn(sys.executable, "curvkit", problem, "memory", args)
        if args.no_memory:
            ours_memory = {"memory_available": False}
        theirs = spawn(other, "curvlinops", problem, "time", args) if other else None
        lines += format_problem(problem, ours, ours_memory, theirs)
    elapsed = time.perf_counter() - start
    load = ""
    if load_before is not None:
        load = f" 1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end."
    lines.append(
        f"⚠: the gradients timed between this row's products varied by more than {NOISY_SPREAD}× "
        "(max/min), i.e. other processes disturbed the measurement; rerun on a quiet machine."
    )
    lines.append("")
    lines.append(f"Benchmark wall time: {elapsed:.0f} s.{load}")
    text = "\n".join(lines)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
