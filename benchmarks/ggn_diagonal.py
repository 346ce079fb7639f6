"""Time of the GGN diagonal as a multiple of one gradient, side by side with BackPACK.

``ggn_diagonal(mode='exact')`` and ``mode='mc'`` (one sample) on the benchmark problems
(``benchmarks/problems.py``), built with ``check_deterministic=False``; BackPACK 1.7.1's
``DiagGGNExact`` and ``DiagGGNMC`` (MLP and CNN: BackPACK has no rule for the transformer) in a
process of its own, against its own gradient baseline. The column "probe" is the extra time of
``check_deterministic=True`` (the default) in gradients, measured on ``mode='mc'`` (the cheaper
base). Each worker interleaves rounds of
(gradient, exact, mc[, probe]) and reports medians of the ratios' numerator and denominator over
the same rounds; the table gives the median (range) over ``--processes`` fresh processes.

Usage::

    python benchmarks/ggn_diagonal.py --cpu-time --backpack-python /tmp/v-backpack/bin/python
    python benchmarks/ggn_diagonal.py --device cuda
    python benchmarks/ggn_diagonal.py --quick      # smoke run: data / 8, one round, in-process

BackPACK (dev-only; curvkit does not depend on it) goes into a venv of its own::

    python3 -m venv /tmp/v-backpack && /tmp/v-backpack/bin/pip install torch==2.13.0
    /tmp/v-backpack/bin/pip install --no-deps backpack-for-pytorch==1.7.1 unfoldNd einops
    /tmp/v-backpack/bin/pip install -c <(echo torch==2.13.0) numpy scipy tqdm packaging
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from measure import STEADY_MALLOC, publish, synchronize
from problems import PROBLEM_LABELS, PROBLEMS, gradient_function, make_problem

ROUNDS = 5


def _curvkit_calls(model, loss_func, params, data) -> dict:
    from curvkit import ggn_diagonal

    def call(mode: str, check: bool):
        return lambda: ggn_diagonal(model, loss_func, params, data, mode=mode, check_deterministic=check)

    return {"exact": call("exact", False), "mc": call("mc", False), "probed": call("mc", True)}


def _backpack_calls(model, loss_func, params, data) -> dict:
    from backpack import backpack, extend
    from backpack.extensions import DiagGGNExact, DiagGGNMC

    model, loss_func = extend(model), extend(loss_func)

    def call(extension):
        def diagonal():
            for X, y in data:
                with backpack(extension()):
                    loss_func(model(X), y).backward()
            return [
                param.diag_ggn_exact if extension is DiagGGNExact else param.diag_ggn_mc for param in params
            ]

        return diagonal

    return {"exact": call(DiagGGNExact), "mc": call(DiagGGNMC)}


def run_worker(args) -> dict:
    device = torch.device(args.device)
    if args.cpu_time:
        torch.set_num_threads(1)
    clock = time.process_time if args.cpu_time else time.perf_counter
    model, loss_func, params, data = make_problem(args.problem, device, quick=args.quick)
    plain = copy.deepcopy(model)  # the baseline without BackPACK's hooks
    gradient = gradient_function(plain, loss_func, list(plain.parameters()), data)
    try:
        calls = (_curvkit_calls if args.library == "curvkit" else _backpack_calls)(
            model, loss_func, params, data
        )
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}"[:100]}
    functions = {"gradient": gradient, **calls}
    times: dict[str, list[float]] = {name: [] for name in functions}
    rounds = 1 if args.quick else ROUNDS
    for round_index in range(rounds + 1):  # the first round warms up
        for name, function in functions.items():
            synchronize(device)
            start = clock()
            function()
            synchronize(device)
            if round_index > 0 or args.quick:
                times[name].append(clock() - start)
    gradient_time = statistics.median(times["gradient"])
    result = {name: statistics.median(values) / gradient_time for name, values in times.items()}
    if "probed" in result:
        result["probe"] = result.pop("probed") - result["mc"]
    result["gradient_ms"] = 1e3 * gradient_time
    return result


def spawn(python: str, library: str, problem: str, args) -> dict:
    command = [
        python,
        __file__,
        "--worker",
        "--library",
        library,
        "--problem",
        problem,
        "--device",
        args.device,
    ]
    command += ["--cpu-time"] * args.cpu_time + ["--quick"] * args.quick
    environment = {**os.environ, **STEADY_MALLOC}
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if finished.returncode != 0:
        return {"error": finished.stderr.strip().splitlines()[-1][:100]}
    return json.loads(finished.stdout.strip().splitlines()[-1])


def summary(results: list[dict], key: str) -> str:
    values = [result[key] for result in results if key in result]
    if not values:
        errors = [result["error"] for result in results if "error" in result]
        return f"fails: {errors[0]}" if errors else "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.1f}–{max(values):.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="smoke run: data / 8, one round, in-process")
    parser.add_argument("--problems", default=",".join(PROBLEMS), help="comma-separated subset")
    parser.add_argument("--backpack-python", default=None, help="interpreter that can import backpack")
    parser.add_argument("--processes", type=int, default=3, help="processes per library and problem")
    parser.add_argument("--cpu-time", action="store_true", help="one thread, CPU time of the process")
    parser.add_argument("--output", default=None, help="also write the table to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--library", default="curvkit", help=argparse.SUPPRESS)
    parser.add_argument("--problem", default="mlp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0
    problems = [name for name in args.problems.split(",") if name]
    where = "1 thread, CPU time" if args.cpu_time else f"{torch.get_num_threads()} threads, wall clock"
    if args.device == "cuda":
        where = torch.cuda.get_device_name()
    lines = [
        "## The GGN diagonal as multiples of one gradient",
        "",
        f"torch {torch.__version__}, {args.device} ({where}), float32, check_deterministic=False; "
        f"median (range) over {1 if args.quick else args.processes} processes, each the median of "
        f"{1 if args.quick else ROUNDS} interleaved rounds."
        + (" QUICK smoke run: numbers not meaningful." if args.quick else ""),
        f"BackPACK: {'measured with ' + args.backpack_python if args.backpack_python else 'not measured'}.",
        "",
        "| problem | curvkit exact | BackPACK DiagGGNExact | curvkit mc | BackPACK DiagGGNMC | probe |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for problem in problems:
        ours, theirs = [], []
        for _ in range(1 if args.quick else args.processes):
            if args.quick:
                ours.append(run_worker(argparse.Namespace(**{**vars(args), "problem": problem})))
                continue
            ours.append(spawn(sys.executable, "curvkit", problem, args))
            if args.backpack_python and problem != "transformer":
                theirs.append(spawn(args.backpack_python, "backpack", problem, args))
        cells = [summary(ours, "exact"), summary(theirs, "exact"), summary(ours, "mc"), summary(theirs, "mc")]
        lines.append(f"| {PROBLEM_LABELS[problem]} | " + " | ".join(cells) + f" | {summary(ours, 'probe')} |")
    publish(lines, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
