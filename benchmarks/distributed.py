"""Data-parallel products: Hessian and GGN matvecs, KFAC's factors, with 1 and 2 processes on the same data.

For the MLP and the CNN of ``benchmarks/products.py`` (float32, the same batches), each
configuration runs in fresh processes (``torch.multiprocessing`` spawn, gloo on the CPU, one
thread each):

- ``1 process``: the operator without a process group (``process_group=None``);
- ``1 process, group of 1``: the same with a process group of one rank, i.e. the cost of the
  status exchange and the all-reduce alone;
- ``2 processes``: each rank iterates every second batch, products all-reduced.

The timed calls: a Hessian and a GGN matvec, and the factor pass of a ``KFACLinearOperator``
(``'mc'``; ``compute_kronecker_factors()``: one pass over the shard, the factors all-reduced).
Each timed call starts after a barrier. Per call: the CPU time of each rank
(``time.process_time``; the table gives the larger of the two ranks) and the wall time; the
median over ``--repeats`` calls after one warm-up, then the median over ``--rounds`` rounds
that alternate the configurations (so that they see the same drifts in load). On a machine with
2 cores shared with other work, CPU time is the robust figure; the wall time of 2 processes also
waits for the other rank and for the core it shares.

Then the peak memory of ``to_dense()`` with and without ``memory_budget`` (the second part of
the table): a small MLP (64-32-10, :data:`MEMORY_PROBLEM`) on one batch of 2,048 samples, whose
columns each take about a megabyte of activations, in a fresh process whose C allocator returns
freed memory at once (``MALLOC_MMAP_THRESHOLD_=65536``), measured by ``measure.MemoryProbe``
(the resident set's high-water mark; the allocator's peak on CUDA).

Usage::

    python benchmarks/distributed.py [--quick] [--output benchmarks/results/distributed.md]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from measure import MemoryProbe, publish
from problems import PROBLEM_LABELS, make_problem

from curvkit import GGNLinearOperator, HessianLinearOperator, KFACLinearOperator

OPERATORS = {"Hessian": HessianLinearOperator, "GGN": GGNLinearOperator}
KFAC_ROW = "KFAC factors ('mc')"
ROWS = [*OPERATORS, KFAC_ROW]
"""The timed calls: a matvec of each operator, and KFAC's factor pass."""
CONFIGURATIONS = {  # label: (processes, with a process group)
    "1 process": (1, False),
    "1 process, group of 1": (1, True),
    "2 processes": (2, True),
}


def _worker(
    rank: int, world: int, port: int, grouped: bool, problem: str, repeats: int, quick: bool, out: str
) -> None:
    torch.set_num_threads(1)
    group = None
    if grouped:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=timedelta(minutes=5),
        )
        group = dist.group.WORLD
    model, loss_func, params, data = make_problem(problem, torch.device("cpu"), quick)
    shard = data[rank::world]
    results = {}
    for name, call in _timed_calls(model, loss_func, params, shard, group).items():
        call()  # warm-up
        cpu, wall = [], []
        for _ in range(repeats):
            if group is not None:
                dist.barrier()
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            call()
            cpu.append(time.process_time() - cpu_start)
            wall.append(time.perf_counter() - wall_start)
        results[name] = {"cpu": statistics.median(cpu), "wall": statistics.median(wall)}
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    if group is not None:
        dist.barrier()  # no rank tears down the group while the other still uses it
        dist.destroy_process_group()


def _timed_calls(model, loss_func, params, shard, group) -> dict:
    """Per row of :data:`ROWS`: a function doing its work once on this rank's shard."""
    calls = {}
    for name, cls in OPERATORS.items():
        operator = cls(model, loss_func, params, shard, check_deterministic=False, process_group=group)
        vector = torch.randn(operator.shape[1], generator=torch.Generator().manual_seed(0))
        calls[name] = lambda operator=operator, vector=vector: operator @ vector

    kfac = KFACLinearOperator(
        model, loss_func, params, shard, check_deterministic=False, fisher_type="mc", process_group=group
    )
    calls[KFAC_ROW] = kfac.compute_kronecker_factors  # the factor pass, its sums all-reduced
    return calls


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(problem: str, configuration: str, repeats: int, quick: bool) -> dict:
    """Per operator: the larger of the ranks' CPU times and of their wall times (seconds)."""
    world, grouped = CONFIGURATIONS[configuration]
    with TemporaryDirectory() as out:
        mp.start_processes(
            _worker,
            (world, _free_port(), grouped, problem, repeats, quick, out),
            nprocs=world,
            start_method="spawn",
        )
        ranks = [json.loads(Path(out, f"rank{rank}.json").read_text()) for rank in range(world)]
    return {name: {key: max(rank[name][key] for rank in ranks) for key in ("cpu", "wall")} for name in ROWS}


MEMORY_PROBLEM = "MLP 64-32-10 (2,410 parameters), 1 batch of 2,048 samples, CE, float32"
BUDGET = 32 * 2**20


def memory_worker(quick: bool) -> dict:
    """Peak memory and time of ``to_dense()`` without and with :data:`BUDGET`, per operator."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    samples = 256 if quick else 2048
    data = [(torch.randn(samples, 64), torch.randint(0, 10, (samples,)))]
    probe, results = MemoryProbe(torch.device("cpu")), {}
    for name, cls in OPERATORS.items():
        for budget in (None, BUDGET):
            operator = cls(model, nn.CrossEntropyLoss(), list(model.parameters()), data)
            operator.memory_budget = budget
            start = time.process_time()
            peak = probe.peak_during(operator.to_dense)
            results[f"{name}, {'no budget' if budget is None else 'budget'}"] = {
                "peak": peak,
                "seconds": time.process_time() - start,
                "columns": operator.columns_per_product,
            }
    return results


def memory_lines(quick: bool) -> list[str]:
    """The memory table, measured in a fresh process (see the module docstring)."""
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    command = [sys.executable, __file__, "--memory-worker"] + (["--quick"] if quick else [])
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, check=True)
    results = json.loads(completed.stdout.splitlines()[-1])
    lines = [
        f"### Peak memory of `to_dense()`: {MEMORY_PROBLEM}",
        "",
        f"Budget {BUDGET / 2**20:.0f} MiB; `to_dense()` multiplies blocks of 256 identity columns, which "
        "the budget splits further. The peak includes the dense matrix itself (2,410² float32: "
        "22.2 MiB) and an identity block (2.4 MiB). CPU time on one thread.",
        "",
        "| operator | budget | peak MiB | columns per product | CPU s |",
        "|---|---|---:|---:|---:|",
    ]
    for key, value in results.items():
        name, budget = key.split(", ")
        columns = value["columns"] or "256 (to_dense's blocks)"
        lines.append(
            f"| {name} | {budget} | {value['peak'] / 2**20:.1f} | {columns} | {value['seconds']:.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: data / 8, 1 round of 3 products")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", default=None, help="also write the table to this file")
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.quick)))
        return 0
    rounds, repeats = (1, 3) if args.quick else (args.rounds, args.repeats)
    load_before = os.getloadavg()[0]
    lines = [
        "## Data-parallel products: 1 and 2 processes, same total data",
        "",
        f"torch {torch.__version__}, CPU, gloo, 1 thread per process, float32; per configuration the "
        f"median of {repeats} calls after a warm-up, median over {rounds} alternating rounds. "
        "CPU time: the larger of the ranks' process CPU times; wall: the larger wall time "
        "(after a barrier).",
        "",
    ]
    for problem in ("mlp", "cnn"):
        samples: dict[str, list[dict]] = {label: [] for label in CONFIGURATIONS}
        for _ in range(rounds):
            for label in CONFIGURATIONS:
                samples[label].append(measure(problem, label, repeats, args.quick))
        lines += [
            f"### {problem}: {PROBLEM_LABELS[problem]}",
            "",
            "| call | configuration | CPU ms per rank | × 1 process | wall ms | × 1 process |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for name in ROWS:
            base = {
                key: statistics.median(s[name][key] for s in samples["1 process"]) for key in ("cpu", "wall")
            }
            for label in CONFIGURATIONS:
                value = {
                    key: statistics.median(s[name][key] for s in samples[label]) for key in ("cpu", "wall")
                }
                lines.append(
                    f"| {name} | {label} | {1e3 * value['cpu']:.1f} | {value['cpu'] / base['cpu']:.2f} "
                    f"| {1e3 * value['wall']:.1f} | {value['wall'] / base['wall']:.2f} |"
                )
        lines.append("")
    lines += [*memory_lines(args.quick), ""]
    lines.append(
        f"1-minute load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end."
    )
    publish(lines, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
